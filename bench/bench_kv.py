"""KV-block reuse: time to first token of a long shared document with and without reuse.

Issue 15 item 5. SmolLM2-135M (its Q4_1 GGUF, imported native; the RAM tier
holds the weights decoded). A ~``--doc-tokens`` document (the start of
docs/architecture.md, tokenized and cut) followed by ``--questions`` different
questions; each request is ``document ids + question ids`` and decodes
``--new-tokens`` greedy tokens. Per question, in the same child process, the
request runs once **recomputed** (``kv_cache=False``) and once **reusing** the
document's cached KV blocks; the ratio is per question, reported as the median.
Three places the blocks come from:

``RAM``
    one process: the first question's request computes the blocks and keeps
    them in the RAM tier (``kv_capacity = "25%"``), the next ones reuse them;
``SSD, new process``
    a second process over the same SSD tier with ``kv_capacity = "0"`` on its
    RAM tier (so every block is read from the SSD tier), page cache dropped
    before it starts (as root): the blocks the first process flushed on close;
``Redis, second worker``
    two workers sharing a Redis tier (a throw-away local ``redis-server``): the
    first computes the blocks, the second -- another process with its own RAM
    tier, ``kv_capacity = "0"`` -- reuses them through Redis.

Also reported: KV bytes per token, tokens reused, and the decode time per
token of a short prompt before and after the RAM tier took its KV share
(weights' decode speed with KV sharing the tiers). Every child warms up on an
unrelated prompt first (TensorFlow traces), and every request's tokens are
checked equal with and without reuse.

Usage::

    python bench/bench_kv.py                         # ~6 minutes on the 2-core VM
    python bench/bench_kv.py --no-redis --json out.json

Thread-safety: a single-threaded script (children are separate processes).
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
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Which module holds the read path?", "What does a tier own?",
    "How are shards demoted?", "Where is the eviction policy chosen?",
    "What happens to a corrupt shard?", "How does prefetch know the order?",
    "Which stores are persistent?", "What is a manifest?",
    "How is the Redis tier shared?", "What does the simulator replay?",
    "Who calls the policy hooks?", "What is zero-copy here?",
]


def _tiers(ssd: Path, *, kv_capacity: str, redis_url: str | None = None,
           namespace: str = "") -> str:
    """A TOML layout: a decoded RAM tier for every weight, then packed SSD or Redis."""
    ram = ("[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\ncapacity = \"900MiB\"\n"
           f"policy = \"opt\"\nrepresentation = \"decoded\"\nkv_capacity = \"{kv_capacity}\"\n")
    if redis_url is not None:
        return ("mode = \"inclusive\"\n" + ram + "[[tiers]]\nname = \"shared\"\n"
                f"backend = \"redis\"\ncapacity = \"1GiB\"\nurl = \"{redis_url}\"\n"
                f"namespace = \"{namespace}\"\n")
    return ("mode = \"inclusive\"\n" + ram + "[[tiers]]\nname = \"ssd\"\nbackend = \"packed\"\n"
            f"path = \"{ssd}\"\ncapacity = \"1GiB\"\nzero_copy = true\npromote_after = 1\n")


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# --- the child: one process serving requests ---------------------------------------------
def child(job: dict[str, Any]) -> dict[str, Any]:
    """Run the requests of ``job`` in this process; return every measurement."""
    import numpy as np

    import tiercache

    out: dict[str, Any] = {"requests": []}
    with tiercache.load_model(job["config"], manifest=job["manifest"], prefetch=0,
                              warn=False, kv_block_tokens=job["block_tokens"]) as model:
        doc = model.tokenizer.encode(job["document"])[:job["doc_tokens"]]
        warm = model.tokenizer.encode(" ".join(["warm up the traces"] * 600))[:len(doc) + 40]
        first = len(doc) + len(model.tokenizer.encode(
            "\n\nQuestion: " + job["questions"][0] + "\nAnswer:"))
        for n in (len(warm), 40, 24, first, first):  # trace the prompt pass, unrelated ids
            list(model.generate_ids(warm[:n], 2, kv_cache=False))
        short = model.tokenizer.encode("The capital of France is")

        def decode_ms() -> float:
            model.timings.reset()
            list(model.generate_ids(short, 24, kv_cache=False, stop_at_eos=False))
            return 1000 * model.timings.decode_s / max(1, model.timings.decoded_tokens)

        out["decode_ms_before"] = statistics.median(decode_ms() for _ in range(3))
        if job.get("populate"):
            q = model.tokenizer.encode("\n\nQuestion: " + job["questions"][0] + "\nAnswer:")
            list(model.generate_ids(doc + q, job["new_tokens"]))
        for question in job["questions"]:
            ids = doc + model.tokenizer.encode("\n\nQuestion: " + question + "\nAnswer:")
            row: dict[str, Any] = {"prompt_tokens": len(ids)}
            for mode in ("recompute", "reuse"):
                model.timings.reset()
                started = time.perf_counter()
                tokens = list(model.generate_ids(ids, job["new_tokens"],
                                                 kv_cache=mode == "reuse", stop_at_eos=False))
                row[mode] = {"ttft_s": model.timings.ttft_s,
                             "total_s": time.perf_counter() - started,
                             "reused": model.timings.prompt_tokens_reused, "tokens": tokens}
            row["same_tokens"] = row["recompute"]["tokens"] == row["reuse"]["tokens"]
            out["requests"].append(row)
        out["decode_ms_after"] = statistics.median(decode_ms() for _ in range(3))
        prefix = model.llama.prefix_cache
        out["kv_bytes_per_token"] = prefix.bytes_per_token if prefix else None
        out["stats"] = {name: {k: t[k] for k in ("kv_blocks", "kv_bytes", "resident_bytes")}
                        for name, t in model.cache.stats()["tiers"].items()}
        out["doc_tokens"] = len(doc)
        out["numpy"] = np.__version__
    return out


def _run_child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", f.name],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    return result


def _summary(name: str, result: dict[str, Any]) -> dict[str, Any]:
    rows = result["requests"]
    hits = [r for r in rows if r["reuse"]["reused"] > 0]
    ratio = [r["reuse"]["ttft_s"] / r["recompute"]["ttft_s"] for r in hits]
    total = [r["reuse"]["total_s"] / r["recompute"]["total_s"] for r in hits]
    return {
        "where": name, "requests": len(rows), "hits": len(hits),
        "same_tokens": all(r["same_tokens"] for r in rows),
        "recompute_ttft_ms": 1000 * statistics.median(r["recompute"]["ttft_s"] for r in rows),
        "reuse_ttft_ms": (1000 * statistics.median(r["reuse"]["ttft_s"] for r in hits)
                          if hits else None),
        "first_hit_ttft_ms": 1000 * hits[0]["reuse"]["ttft_s"] if hits else None,
        "ttft_ratio": statistics.median(ratio) if ratio else None,
        "total_ratio": statistics.median(total) if total else None,
        "tokens_reused": statistics.median(r["reuse"]["reused"] for r in hits) if hits else 0,
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in rows),
        "decode_ms_before": result["decode_ms_before"],
        "decode_ms_after": result["decode_ms_after"],
        "kv_bytes_per_token": result["kv_bytes_per_token"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc-tokens", type=int, default=1500)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--block-tokens", type=int, default=64)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(Path(args.child).read_text())
        print("RESULT " + json.dumps(child(job)), flush=True)
        return 0

    from tiercache.cli import main as cli

    print(f"machine: {platform.node() or 'vm'}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print("command: python " + " ".join([Path(__file__).name, *sys.argv[1:]]), flush=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tiercache-bench-kv-"))
    work.mkdir(parents=True, exist_ok=True)
    document = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    questions = (QUESTIONS * (args.questions // len(QUESTIONS) + 1))[:args.questions]
    base = {"document": document, "doc_tokens": args.doc_tokens, "questions": questions,
            "new_tokens": args.new_tokens, "block_tokens": args.block_tokens}
    summaries = []
    raws: dict[str, Any] = {}
    ssd = work / "ssd"
    ram_cfg = work / "ram.toml"
    ram_cfg.write_text(_tiers(ssd, kv_capacity="25%"), encoding="utf-8")
    if cli(["import", "smollm2", "--config", str(ram_cfg), "--no-progress"]) != 0:
        return 1
    manifest = str(work / "ram.model.json")
    print("RAM: one process, blocks kept in the RAM tier...", flush=True)
    result = _run_child({**base, "config": str(ram_cfg), "manifest": manifest,
                         "populate": True}, args.timeout)
    summaries.append(_summary("RAM, same process", result))
    raws["ram"] = result
    ssd_cfg = work / "ssd.toml"
    ssd_cfg.write_text(_tiers(ssd, kv_capacity="0"), encoding="utf-8")
    dropped = _drop_caches()
    print(f"SSD: a new process, page cache {'dropped' if dropped else 'NOT dropped'}...",
          flush=True)
    result = _run_child({**base, "config": str(ssd_cfg), "manifest": manifest}, args.timeout)
    summaries.append(_summary("SSD tier, new process", result))
    raws["ssd"] = result
    if not args.no_redis:
        from bench_redis import redis_server  # a throw-away local server

        with redis_server(None) as url:
            first = work / "worker1.toml"
            second = work / "worker2.toml"
            first.write_text(_tiers(ssd, kv_capacity="0", redis_url=url, namespace="kv"),
                             encoding="utf-8")
            second.write_text(_tiers(ssd, kv_capacity="0", redis_url=url, namespace="kv"),
                              encoding="utf-8")
            if cli(["import", "smollm2", "--config", str(first), "--no-progress"]) != 0:
                return 1
            print("Redis: worker 1 computes the blocks, worker 2 reuses them...", flush=True)
            _run_child({**base, "config": str(first), "manifest": str(work / "worker1.model.json"),
                        "populate": True, "questions": questions[:1]}, args.timeout)
            result = _run_child({**base, "config": str(second),
                                 "manifest": str(work / "worker1.model.json")}, args.timeout)
            summaries.append(_summary("Redis, second worker", result))
            raws["redis"] = result
    print()
    print(f"SmolLM2-135M, document {summaries[0]['prompt_tokens'] - 12:.0f}+ tokens, "
          f"{args.questions} questions, {args.new_tokens} new tokens, blocks of "
          f"{args.block_tokens}; KV {summaries[0]['kv_bytes_per_token']} bytes/token")
    header = (f"{'blocks from':24} {'recompute':>10} {'reuse':>8} {'x TTFT':>7} "
              f"{'x total':>8} {'reused':>7} {'same':>5} {'decode ms b/a':>14}")
    print(header)
    print("-" * len(header))
    for s in summaries:
        reuse = f"{s['reuse_ttft_ms']:.0f}" if s["reuse_ttft_ms"] is not None else "-"
        ratio = f"{s['ttft_ratio']:.3f}" if s["ttft_ratio"] is not None else "-"
        total = f"{s['total_ratio']:.2f}" if s["total_ratio"] is not None else "-"
        print(f"{s['where']:24} {s['recompute_ttft_ms']:>8.0f}ms {reuse:>6}ms {ratio:>7} "
              f"{total:>8} {s['tokens_reused']:>7.0f} {s['same_tokens']!s:>5} "
              f"{s['decode_ms_before']:>6.1f}/{s['decode_ms_after']:<6.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"summaries": summaries, "raw": raws}, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["same_tokens"] for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
