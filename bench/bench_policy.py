"""Policy bookkeeping throughput: how many hook calls per second a policy sustains.

Measures, in one process and one run:

* ``LRU on_hit``: ``policy.on_hit(key)`` on resident keys (target: >= 1M/s);
* ``<policy> miss path``: one full admission of a new key into a full cache,
  ``on_miss + victim + on_evict + on_insert``, for LRU, LFU and ARC (count
  mode: every size 1, so exactly one eviction per miss);
* the same streams through libCacheSim's per-request Python API,
  ``cache.get(req)`` with pre-built ``Request`` objects, as a yardstick: the
  ``vs libCacheSim`` column is tiercache's rate divided by libCacheSim's.

Each figure is the median of ``--repeats`` timed runs (min and max shown too).
Keys are Python ints; the request streams are generated before timing starts.

Run::

    .venv/bin/python bench/bench_policy.py            # ~30 s on a 2-core VM
    .venv/bin/python bench/bench_policy.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tiercache.policies import ARCPolicy, LFUPolicy, LRUPolicy, Policy

try:
    import libcachesim
except ImportError:  # pragma: no cover - optional yardstick
    libcachesim = None

POLICIES: dict[str, type[Policy]] = {"LRU": LRUPolicy, "LFU": LFUPolicy, "ARC": ARCPolicy}


@dataclass
class Result:
    name: str
    rates: list[float]  # operations per second, one per repeat
    yardstick: str = ""
    yardstick_rates: list[float] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def _timed(fn: Callable[[], int]) -> float:
    """Run ``fn`` (returns its operation count) once; operations per second."""
    gc.collect()
    t0 = time.perf_counter()
    ops = fn()
    return ops / (time.perf_counter() - t0)


# --- tiercache -----------------------------------------------------------------------


def lru_hits(capacity: int, n_ops: int, seed: int) -> Callable[[], int]:
    """``on_hit`` on random resident keys of a full LRU of ``capacity`` keys."""
    policy = LRUPolicy(capacity)
    for key in range(capacity):
        policy.on_insert(key, 1)
    rng = random.Random(seed)
    keys = [rng.randrange(capacity) for _ in range(n_ops)]

    def run() -> int:
        hit = policy.on_hit
        for key in keys:
            hit(key)
        return len(keys)

    return run


def ordereddict_move_to_end(capacity: int, n_ops: int, seed: int) -> Callable[[], int]:
    """The floor under LRU on_hit: ``OrderedDict.move_to_end`` called directly."""
    od: OrderedDict[int, int] = OrderedDict((key, 1) for key in range(capacity))
    rng = random.Random(seed)
    keys = [rng.randrange(capacity) for _ in range(n_ops)]

    def run() -> int:
        move = od.move_to_end
        for key in keys:
            move(key)
        return len(keys)

    return run


def miss_path(cls: type[Policy], capacity: int, n_ops: int) -> Callable[[], int]:
    """Admit ``n_ops`` new keys into a full cache: one eviction each."""
    policy = cls(capacity)
    for key in range(capacity):
        policy.on_miss(key, 1)
        policy.on_insert(key, 1)
    keys = range(capacity, capacity + n_ops)

    def run() -> int:
        on_miss, victim, on_evict, on_insert = (policy.on_miss, policy.victim,
                                                policy.on_evict, policy.on_insert)
        for key in keys:
            on_miss(key, 1)
            on_evict(victim(key))
            on_insert(key, 1)
        return len(keys)

    return run


# --- libCacheSim ---------------------------------------------------------------------


def lcs_stream(cache_cls_name: str, capacity: int, ids: list[int],
               warm: list[int]) -> Callable[[], int]:
    """``cache.get(req)`` over pre-built requests for ``ids`` after ``warm`` requests."""
    assert libcachesim is not None
    cache = getattr(libcachesim, cache_cls_name)(cache_size=capacity, hashpower=16)
    for t, key in enumerate(warm):
        cache.get(libcachesim.Request(obj_id=key, obj_size=1, clock_time=t))
    base = len(warm)
    reqs = [libcachesim.Request(obj_id=key, obj_size=1, clock_time=base + t)
            for t, key in enumerate(ids)]

    def run() -> int:
        get = cache.get
        for req in reqs:
            get(req)
        return len(reqs)

    return run


# --- driver ----------------------------------------------------------------------------


def measure(make: Callable[[], Callable[[], int]], repeats: int) -> list[float]:
    """``repeats`` timings, each on a freshly built (untimed) state."""
    return [_timed(make()) for _ in range(repeats)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--hit-ops", type=int, default=1_000_000,
                        help="on_hit calls per repeat (default 1,000,000)")
    parser.add_argument("--miss-ops", type=int, default=200_000,
                        help="admissions per repeat (default 200,000)")
    parser.add_argument("--capacity", type=int, default=10_000,
                        help="resident keys (count mode; default 10,000)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.hit_ops, args.miss_ops = 3, 100_000, 20_000

    cap, reps = args.capacity, args.repeats
    results: list[Result] = []

    res = Result("LRU on_hit", measure(partial(lru_hits, cap, args.hit_ops, 1), reps))
    if libcachesim is not None:
        rng = random.Random(1)  # the same keys lru_hits draws
        ids = [rng.randrange(cap) for _ in range(args.hit_ops)]
        res.yardstick = "libCacheSim LRU get (hit)"
        res.yardstick_rates = measure(partial(lcs_stream, "LRU", cap, ids, list(range(cap))),
                                      reps)
    results.append(res)
    results.append(Result("OrderedDict.move_to_end (floor)",
                          measure(partial(ordereddict_move_to_end, cap, args.hit_ops, 1), reps)))

    new_ids = list(range(cap, cap + args.miss_ops))
    for label, cls in POLICIES.items():
        res = Result(f"{label} miss path", measure(partial(miss_path, cls, cap, args.miss_ops),
                                                   reps))
        if libcachesim is not None:
            res.yardstick = f"libCacheSim {label} get (miss)"
            res.yardstick_rates = measure(
                partial(lcs_stream, label, cap, new_ids, list(range(cap))), reps)
        results.append(res)

    print(f"# tiercache policy bookkeeping -- Python {platform.python_version()} "
          f"({sys.implementation.name}), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"libcachesim {getattr(libcachesim, '__version__', 'n/a') if libcachesim else 'absent'}")
    print(f"# capacity {cap} keys (count mode), median of {reps} repeats; "
          f"{args.hit_ops:,} hits / {args.miss_ops:,} misses per repeat")
    header = (f"| {'operation':<32} | {'median ops/s':>13} | {'min..max ops/s':>23} "
              f"| {'libCacheSim get/s':>17} | {'vs libCacheSim':>14} |")
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for r in results:
        lo, hi = min(r.rates), max(r.rates)
        spread = f"{lo:,.0f}..{hi:,.0f}"
        if r.yardstick_rates:
            ref = statistics.median(r.yardstick_rates)
            ref_s, ratio = f"{ref:,.0f}", f"{r.median / ref:.2f}x"
        else:
            ref_s, ratio = "", ""
        print(f"| {r.name:<32} | {r.median:>13,.0f} | {spread:>23} | {ref_s:>17} | {ratio:>14} |")
    lru_hit = results[0].median
    verdict = "meets" if lru_hit >= 1_000_000 else "MISSES"
    print(f"\nLRU on_hit: {lru_hit:,.0f}/s {verdict} the 1,000,000/s target.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
