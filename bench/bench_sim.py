"""Trace replay throughput: requests per second of count-mode replay on the ARC paper's OLTP.

Measures, in one process and one run, on ``data/traces/arc/OLTP.lis.zst``
(914,145 requests):

* ``LRU`` / ``ARC`` fast path: ``policy.replay_count(keys)`` on a fresh policy
  (what ``tiercache simulate`` runs; targets: LRU >= 1M/s, ARC >= 0.5M/s);
* ``LRU`` / ``ARC`` hooks: the generic ``Policy.replay_count`` (one hook call
  per step of the protocol) on the same classes, to show what the fast paths buy;
* libCacheSim's per-request Python API, ``cache.get(req)`` in a Python loop with
  pre-built ``Request`` objects, as a yardstick in the same run: the
  ``vs libCacheSim`` column is tiercache's rate divided by libCacheSim's, and the
  hit counts are checked to be equal;
* wall time of reading the trace and of the whole OLTP sweep of the paper's
  Table IV (LRU and ARC at c = 1000, 2000, 5000, 10000, 15000) through
  :func:`tiercache.sim.simulate`, and with ``--big`` the same for P12 at c = 32768.

Each rate is the median of ``--repeats`` timed runs (min and max shown too);
keys are converted to Python ints before timing starts.

Run::

    .venv/bin/python bench/bench_sim.py               # ~1 min on a 2-core VM
    .venv/bin/python bench/bench_sim.py --big         # + P12 (13.2M requests)
    .venv/bin/python bench/bench_sim.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from tiercache.policies import ARCPolicy, LRUPolicy, Policy
from tiercache.sim import read_trace, simulate

try:
    import libcachesim
except ImportError:  # pragma: no cover - optional yardstick
    libcachesim = None

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces" / "arc"
POLICIES: dict[str, type[Policy]] = {"LRU": LRUPolicy, "ARC": ARCPolicy}
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Run ``fn`` once; (seconds, its result)."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def rates(fn: Callable[[], int], n: int, repeats: int) -> tuple[list[float], int]:
    out = []
    result = 0
    for _ in range(repeats):
        seconds, result = timed(fn)
        out.append(n / seconds)
    return out, result


def fmt(values: list[float]) -> tuple[str, str]:
    return (f"{statistics.median(values):,.0f}",
            f"{min(values):,.0f}..{max(values):,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=int, default=5000, help="pages (default 5000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="also time P12 at c=32768")
    parser.add_argument("--quick", action="store_true", help="200k requests, 2 repeats")
    args = parser.parse_args(argv)
    path = TRACES / "OLTP.lis.zst"
    if not path.exists():
        print(f"bench_sim: {path} not found", file=sys.stderr)
        return 2
    read_s, trace = timed(lambda: read_trace(path))
    if args.quick:
        trace = trace.head(200_000)
        args.repeats = 2
    keys: list[int] = trace.keys.tolist()
    n, c = len(keys), args.capacity
    print(f"# bench_sim: {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, libcachesim "
          f"{getattr(libcachesim, '__version__', 'absent') if libcachesim else 'absent'}")
    print(f"# OLTP: {n:,} requests, read + expanded in {read_s:.2f} s; capacity {c:,} pages; "
          f"median of {args.repeats}")
    requests = None
    if libcachesim is not None:
        requests = [libcachesim.Request(obj_id=k, obj_size=1, clock_time=t)
                    for t, k in enumerate(keys)]
    rows = []
    for label, cls in POLICIES.items():
        def fast_run(cls: type[Policy] = cls) -> int:
            return int(cls(c).replay_count(keys).sum())

        def hooks_run(cls: type[Policy] = cls) -> int:
            return int(Policy.replay_count(cls(c), keys).sum())

        fast, hits = rates(fast_run, n, args.repeats)
        slow, slow_hits = rates(hooks_run, n, max(1, args.repeats // 2))
        assert slow_hits == hits, f"{label}: fast path {hits} hits, hooks {slow_hits}"
        lcs: list[float] | None = None
        if requests is not None:
            def lcs_run(label: str = label) -> int:
                cache = getattr(libcachesim, label)(cache_size=c, hashpower=20)
                get = cache.get
                return sum(1 for r in requests if get(r))

            lcs, lcs_hits = rates(lcs_run, n, args.repeats)
            assert lcs_hits == hits, f"{label}: tiercache {hits} hits, libCacheSim {lcs_hits}"
        rows.append((f"{label} fast path (replay_count)", fast, lcs, hits))
        rows.append((f"{label} hooks (Policy.replay_count)", slow, None, hits))
    print()
    print("| replay (count mode)              |   median req/s |           min..max req/s "
          "| libCacheSim get/s | vs libCacheSim | hit ratio |")
    print("|----------------------------------|----------------|--------------------------"
          "|-------------------|----------------|-----------|")
    for name, values, lcs, hits in rows:
        median, span = fmt(values)
        yard = ratio = ""
        if lcs:
            yard = f"{statistics.median(lcs):,.0f}"
            ratio = f"{statistics.median(values) / statistics.median(lcs):.2f}x"
        print(f"| {name:32s} | {median:>14s} | {span:>24s} | {yard:>17s} | {ratio:>14s} "
              f"| {100 * hits / n:8.2f}% |")
    if not args.quick:
        sweep_s, _ = timed(lambda: len(simulate(trace, ["lru", "arc"],
                                                [1000, 2000, 5000, 10000, 15000])))
        print(f"\nOLTP sweep, LRU + ARC x 5 capacities (10 replays, {10 * n:,} requests) via "
              f"tiercache.sim.simulate: {sweep_s:.1f} s")
    if args.big:
        for name in ("P12", "P6"):
            read_big, big = timed(partial(read_trace, TRACES / f"{name}.lis.zst"))
            big_s, _ = timed(partial(simulate, big, ["lru", "arc"], [32768]))
            print(f"{name} ({len(big):,} requests): read {read_big:.2f} s; LRU + ARC at "
                  f"c=32768: {big_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
