"""Fetch and handoff per token with every weight in RAM, for one or more source trees.

Issue 17 item 2: with every weight in the memory tier, fetch + handoff must be a
small share (<= 5 %) of a decode step. This imports SmolLM2 once into the
"all-in-RAM" layout of bench/bench_layouts.py (a 1 GiB memory tier over a
packed zero-copy SSD tier), then serves it from each tree given with
``--tree`` (e.g. ``git worktree add /tmp/base HEAD`` for the "before"), each in
its own process (``PYTHONPATH=TREE``) on its own copy of the imported folder.
The processes stay loaded and are asked in turn for one generation per round,
so the trees are compared within the same minutes on a machine whose speed
drifts. Reported per forward pass (``model.timings``): fetch (time in
``cache.get``), handoff (numpy -> tensor), compute, and the decode step.

Usage::

    python bench/bench_fetch.py --tree /tmp/base --tree . --tokens 32 --repeat 5

Prints medians over rounds (the warm-up generation, which brings every shard
into RAM, is not counted). ``--floor`` also serves each round from a plain dict
of the same arrays: the fetch time no cache can beat in this loop. ``--json
FILE`` writes every round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"

CONFIG = """
mode = "exclusive"
[[tiers]]
name = "ram"
backend = "memory"
capacity = "1GiB"
[[tiers]]
name = "ssd"
backend = "packed"
path = "ssd"
capacity = "1GiB"
zero_copy = true
"""


class _DictProvider:
    """The floor: the same arrays from a plain dict (no cache in the way)."""

    def __init__(self, arrays: dict[str, Any]) -> None:
        self.arrays = arrays

    def get(self, key: str) -> Any:
        return self.arrays[key]


def child(config: str, warmup: int, floor: bool) -> None:
    """Serve requests from the parent: each stdin line ``N`` runs one generation of N
    tokens and answers one JSON line of per-pass timings (with ``floor``, also the
    fetch time of the same generation served from a dict of the same arrays)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tiercache

    model = tiercache.load_model(config, warn=False)
    prompt_ids = model.encode_prompt(PROMPT)
    list(model.generate_ids(prompt_ids, warmup, stop_at_eos=False))
    print(json.dumps({"ready": tiercache.__file__}), flush=True)
    for line in sys.stdin:
        tokens = int(line)
        model.timings.reset()
        before = dict(model.cache.stats()["loop"])
        list(model.generate_ids(prompt_ids, tokens, stop_at_eos=False))
        t = model.timings.as_dict()
        passes = t["forward_passes"]
        loop = model.cache.stats()["loop"]
        floor_ms = None
        if floor:
            cache = model.cache
            model.llama.provider = _DictProvider({k: cache.get(k) for k in set(cache.schedule)})
            model.timings.reset()
            list(model.generate_ids(prompt_ids, tokens, stop_at_eos=False))
            floor_t = model.timings.as_dict()
            floor_ms = 1e3 * floor_t["fetch_s"] / floor_t["forward_passes"]
            model.llama.provider = cache
        print(json.dumps({
            "floor_fetch_ms": floor_ms,
            "fetch_ms": 1e3 * t["fetch_s"] / passes,
            "handoff_ms": 1e3 * t["handoff_s"] / passes,
            "compute_ms": 1e3 * t["compute_s"] / passes,
            "decode_ms": 1e3 / t["decode_tokens_per_s"],
            "shards_per_pass": t["shards_fetched"] / passes,
            "stalls": loop.get("stalls", 0) - before.get("stalls", 0),
            "prefetched": loop.get("prefetched", 0) - before.get("prefetched", 0),
        }), flush=True)
    model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", default=[],
                        help="a source tree to measure (repeatable; default: this one)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per round (32)")
    parser.add_argument("--warmup", type=int, default=4, help="warm-up tokens (4)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (5)")
    parser.add_argument("--json", help="write every round to this file")
    parser.add_argument("--dtype", default="float32", help="tiercache import --dtype (float32)")
    parser.add_argument("--floor", action="store_true",
                        help="also time each round served from a dict of the same arrays")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.warmup, args.floor)
        return
    trees = [str(Path(t).resolve()) for t in (args.tree or [Path(__file__).parents[1]])]
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="tc-fetch-") as tmp:
        base = Path(tmp) / "import"
        base.mkdir()
        (base / "tiers.toml").write_text(CONFIG.lstrip())
        subprocess.run([sys.executable, "-m", "tiercache", "import", "smollm2", "--config",
                        str(base / "tiers.toml"), "--no-progress", "--dtype", args.dtype],
                       check=True,
                       stdout=subprocess.DEVNULL, cwd=tmp,  # not this tree's package
                       env={**os.environ, "PYTHONPATH": trees[0]})
        procs: dict[str, subprocess.Popen[str]] = {}
        try:
            for i, tree in enumerate(trees):
                folder = Path(tmp) / f"tree{i}"
                shutil.copytree(base, folder)
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--child", str(folder / "tiers.toml"),
                     "--warmup", str(args.warmup), *(["--floor"] if args.floor else [])],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "1"})
                procs[tree] = proc
                assert proc.stdout is not None
                ready = json.loads(proc.stdout.readline())["ready"]
                print(f"  {tree}: loaded ({ready})", flush=True)
            for _ in range(args.repeat):
                for tree, proc in procs.items():
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(f"{args.tokens}\n")
                    proc.stdin.flush()
                    runs[tree].append(json.loads(proc.stdout.readline()))
        finally:
            for proc in procs.values():
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait()
    print(f"\nSmolLM2 {args.dtype} all-in-RAM, {args.tokens} tokens x {args.repeat} rounds, "
          f"machine {platform.node()} ({os.cpu_count()} CPUs); ms per forward pass, median")
    fields = ("fetch_ms", "handoff_ms", "compute_ms", "decode_ms")
    print(f"{'tree':<40} " + " ".join(f"{f:>11}" for f in fields) + f" {'fetch+handoff':>14}")
    summary: dict[str, Any] = {}
    for tree in trees:
        med = {f: statistics.median(r[f] for r in runs[tree]) for f in fields}
        share = statistics.median((r["fetch_ms"] + r["handoff_ms"]) / r["decode_ms"]
                                  for r in runs[tree])
        floors = [r["floor_fetch_ms"] for r in runs[tree] if r["floor_fetch_ms"] is not None]
        floor = statistics.median(floors) if floors else None
        summary[tree] = {**med, "fetch_handoff_share": share, "floor_fetch_ms": floor,
                         "runs": runs[tree]}
        print(f"{tree[-40:]:<40} " + " ".join(f"{med[f]:11.2f}" for f in fields)
              + f" {100 * share:13.1f}%"
              + (f"  (dict floor: fetch {floor:.2f})" if floor is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
