"""Newcomer layouts against all-in-RAM: decode speed and disk writes per token.

What a user gets without reading docs/serving.md: SmolLM2 imported with
``tiercache import smollm2 --config X`` into each layout, then served with
``tiercache.load_model(X)`` (schedule declared and prefetch on, the defaults),
greedy decoding of one prompt. Layouts (RAM = 25 % of the 513 MiB of float32
weights = 128 MiB, where there is a RAM tier):

``all-in-RAM``
    one 1 GiB memory tier over a packed SSD tier (the model fits in RAM): the
    baseline of every ratio.
``README``
    README's example: exclusive, ARC RAM tier, packed SSD tier 256 MiB with LFU and
    ``promote_after = 2``, diskcache HDD tier 4 GiB.
``README lmdb-SSD``
    the same with an lmdb SSD tier (README's example until 2026-12-05): lmdb copies
    and checksums every read, about 15 ms of CPU per 256 MiB here.
``3-tier opt/packed``
    opt RAM tier / packed SSD tier 256 MiB (default LRU) / diskcache HDD tier 4 GiB.
``tiercache init``
    what ``tiercache init --model smollm2 --ram 25%`` writes (the recommended layout).

Each layout runs two warm-up generations of ``--warmup`` tokens (the tiers settle:
promotions, the first passes; the decoder switches to the whole step in one call once
every shard is found in memory or in the page cache, checked every 16 passes, and
compiles it -- seconds -- and the second generation compiles the prompt pass for it),
then ``--repeat`` timed generations of ``--tokens`` tokens; the figure is the median
decode rate (tokens/s of one-token passes, ``model.timings``), and the process's CPU
time per token (all its threads: what copying costs, less sensitive than the rate to
other load on a shared machine). Layouts are interleaved round by round. Disk writes per
steady-state token are the bytes written to persistent tiers during the timed
generations, per decoded token, as a share of the model's bytes.

Usage::

    python bench/bench_layouts.py                      # ~6 min on the 2-core VM
    python bench/bench_layouts.py --tokens 16 --repeat 3 --json out.json

The figures in docs/performance.md ("Layouts a newcomer writes") come from this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

PROMPT = "The capital of France is"

LAYOUTS: dict[str, str] = {
    "all-in-RAM": """
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
""",
    "README": """
mode = "exclusive"
[[tiers]]
name = "ram"
backend = "memory"
capacity = "128MiB"
policy = "arc"
[[tiers]]
name = "ssd"
backend = "packed"
path = "ssd"
capacity = "256MiB"
policy = "lfu"
promote_after = 2
[[tiers]]
name = "hdd"
backend = "diskcache"
path = "hdd"
capacity = "4GiB"
policy = "lru"
""",
    "3-tier opt/packed": """
mode = "exclusive"
[[tiers]]
name = "ram"
backend = "memory"
capacity = "128MiB"
policy = "opt"
[[tiers]]
name = "ssd"
backend = "packed"
path = "ssd"
capacity = "256MiB"
[[tiers]]
name = "hdd"
backend = "diskcache"
path = "hdd"
capacity = "4GiB"
""",
}
#: README's example with an lmdb SSD tier, as README showed it until 2026-12-05.
LAYOUTS["README lmdb-SSD"] = LAYOUTS["README"].replace('backend = "packed"', 'backend = "lmdb"')


def _tiercache(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tiercache", *args], check=True,
                   stdout=subprocess.DEVNULL)


def prepare(root: Path, names: list[str], dtype: str = "float32") -> dict[str, Path]:
    """Write each layout's TOML and import SmolLM2 into it (as ``dtype``), as a newcomer
    would."""
    configs: dict[str, Path] = {}
    for name in names:
        folder = root / name.replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True)
        config = folder / "tiers.toml"
        if name == "tiercache init":
            _tiercache("init", "--model", "smollm2", "--ram", "25%", "--dtype", dtype,
                       "--output", str(config))
        else:
            config.write_text(LAYOUTS[name].lstrip())
        started = time.perf_counter()
        _tiercache("import", "smollm2", "--config", str(config), "--no-progress",
                   "--dtype", dtype)
        print(f"  imported into {name!r} in {time.perf_counter() - started:.0f} s", flush=True)
        configs[name] = config
    return configs


def _disk_written(cache: Any) -> int:
    return sum(t.stats.bytes_written for t in cache.tiers if t.store.persistent)


def measure(model: Any, prompt_ids: list[int], tokens: int) -> dict[str, float]:
    """One timed greedy generation: decode rate and disk bytes written."""
    model.timings.reset()
    written = _disk_written(model.cache)
    cpu = time.process_time()
    out = list(model.generate_ids(prompt_ids, tokens, stop_at_eos=False))
    cpu = time.process_time() - cpu
    timing = model.timings.as_dict()
    return {"tokens": len(out), "decode_tokens_per_s": timing["decode_tokens_per_s"],
            "fetch_s": timing["fetch_s"], "compute_s": timing["compute_s"],
            "cpu_s_per_token": cpu / max(1, len(out)),
            "disk_written": _disk_written(model.cache) - written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16, help="timed tokens per run (16)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="tokens of each of the two warm-up generations (20)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per layout (3)")
    parser.add_argument("--layouts", default="all-in-RAM,README,README lmdb-SSD,3-tier opt/packed,"
                                             "tiercache init")
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--dtype", default="float32",
                        help="tiercache import --dtype (float32, the figures in the docs; "
                             "native: the GGUF's own blocks)")
    args = parser.parse_args()
    names = [n.strip() for n in args.layouts.split(",") if n.strip()]
    import tiercache

    with tempfile.TemporaryDirectory(prefix="tc-layouts-") as tmp:
        print("importing SmolLM2 into each layout ...", flush=True)
        configs = prepare(Path(tmp), names, args.dtype)
        models = {name: tiercache.load_model(configs[name], warn=False) for name in names}
        model_bytes = next(iter(models.values())).manifest.total_bytes
        prompt_ids = next(iter(models.values())).encode_prompt(PROMPT)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        try:
            for name, model in models.items():
                started = time.perf_counter()
                for _ in range(2):
                    list(model.generate_ids(prompt_ids, args.warmup, stop_at_eos=False))
                print(f"  warm-up {name!r}: {time.perf_counter() - started:.1f} s", flush=True)
            for round_no in range(args.repeat):
                for name, model in models.items():
                    runs[name].append(measure(model, prompt_ids, args.tokens))
                print(f"  round {round_no + 1}/{args.repeat} done", flush=True)
            stats = {name: model.cache.stats() for name, model in models.items()}
        finally:
            for model in models.values():
                model.close()
    base = statistics.median(r["decode_tokens_per_s"] for r in runs[names[0]])
    print(f"\nSmolLM2 {args.dtype} ({model_bytes / 2**20:.0f} MiB), {args.tokens} tokens x "
          f"{args.repeat}, machine {platform.node()} ({os.cpu_count()} CPUs)")
    print(f"{'layout':<20} {'tok/s':>7} {'x ' + names[0]:>14} {'CPU ms/token':>13} "
          f"{'disk written/token':>20}")
    results = {}
    for name in names:
        rate = statistics.median(r["decode_tokens_per_s"] for r in runs[name])
        tokens = sum(r["tokens"] for r in runs[name])
        written = sum(r["disk_written"] for r in runs[name])
        share = written / tokens / model_bytes
        cpu = statistics.median(r["cpu_s_per_token"] for r in runs[name])
        results[name] = {"tokens_per_s": rate, "ratio": rate / base,
                         "cpu_s_per_token": cpu, "disk_written_per_token": written / tokens,
                         "disk_written_share_of_model": share, "runs": runs[name],
                         "stats": stats[name]}
        print(f"{name:<20} {rate:7.2f} {rate / base:13.2f}x {1e3 * cpu:13.1f} "
              f"{100 * share:19.3f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"model_bytes": model_bytes, "results": results},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
