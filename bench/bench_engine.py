"""Engine-level benchmarks: RAM-tier hit overhead and disk-tier gets through TieredCache.

Measures, in one run on this machine:

* a RAM-tier hit (``cache.get``) against a plain ``dict`` lookup of the same
  array: the target is <= 5 us above the dict;
* a get served by the lmdb (SSD) tier, warm page cache, with ``out=`` and
  without, against ``np.copyto`` of the same bytes into a preallocated
  page-aligned buffer: the target is >= 0.8x copyto.

Usage: ``python bench/bench_engine.py [--sizes 4MiB,64MiB] [--repeat 15]``.
Prints medians; the figures in docs/performance.md come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import tiercache
from tiercache.buffers import default_pool
from tiercache.codec import empty_aligned
from tiercache.units import format_size, parse_size


def median_time(fn: Callable[[], object], repeat: int, inner: int = 1) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def bench_ram_hit(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "64MiB",
                          "policy": "lru"},
                         {"name": "ssd", "backend": "lmdb", "path": str(Path(tmp) / "ssd"),
                          "capacity": "64MiB"}]}
        with tiercache.open(cfg) as cache:
            array = np.ones((1024, 1024), np.float32)
            cache.put("w", array)
            plain = {"w": cache.get("w")}
            inner = 20000
            t_dict = median_time(lambda: plain["w"], repeat, inner)
            t_get = median_time(lambda: cache.get("w"), repeat, inner)
    print("RAM-tier hit (4 MiB shard)")
    print(f"  dict lookup        {t_dict * 1e6:8.3f} us")
    print(f"  cache.get (hit)    {t_get * 1e6:8.3f} us")
    print(f"  overhead           {(t_get - t_dict) * 1e6:8.3f} us  (target <= 5 us)")


def bench_disk_get(sizes: list[int], repeat: int) -> None:
    print("\nGet served by the lmdb tier (warm page cache), median GB/s")
    print(f"  {'size':>8} {'copyto':>8} {'get(out)':>9} {'ratio':>6} {'get()':>8} {'ratio':>6}"
          f" {'get() no pool':>14} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"},
                         {"name": "ssd", "backend": "lmdb", "path": str(Path(tmp) / "ssd"),
                          "capacity": "1GiB", "promote_after": "never"}]}
        with tiercache.open(cfg) as cache:
            for nbytes in sizes:
                n = nbytes // 4
                src = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
                cache.put("w", src, tier="ssd")
                dst = empty_aligned(nbytes).view(np.float32)
                out = empty_aligned(nbytes).view(np.float32)
                t_copy = median_time(lambda: np.copyto(dst, src), repeat)  # noqa: B023
                t_out = median_time(lambda: cache.get("w", out=out), repeat)  # noqa: B023
                t_new = median_time(lambda: cache.get("w"), repeat)
                budget = default_pool.max_bytes
                default_pool.clear()
                default_pool.max_bytes = 0  # the "before": every get() takes fresh memory
                try:
                    t_nopool = median_time(lambda: cache.get("w"), repeat)
                finally:
                    default_pool.max_bytes = budget
                assert np.array_equal(out, src)
                gbs = [nbytes / t / 1e9 for t in (t_copy, t_out, t_new, t_nopool)]
                print(f"  {format_size(nbytes):>8} {gbs[0]:8.2f} {gbs[1]:9.2f} "
                      f"{gbs[1] / gbs[0]:6.2f} {gbs[2]:8.2f} {gbs[2] / gbs[0]:6.2f}"
                      f" {gbs[3]:14.2f} {gbs[3] / gbs[0]:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4MiB,64MiB")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    bench_ram_hit(args.repeat)
    bench_disk_get([parse_size(s) for s in args.sizes.split(",")], args.repeat)


if __name__ == "__main__":
    main()
