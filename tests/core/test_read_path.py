"""The loop's read path with its weights in RAM: one short hold of the cache lock per
get, and a prefetcher that does nothing for shards that are RAM hits (issue 17 item 2)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from helpers import shard

import tiercache
from tiercache.serving.keep import Candidate
from tiercache.serving.prefetcher import Prefetcher

KEYS = [f"blk.{i}.weight" for i in range(40)]


class CountingLock:
    """An RLock that counts its acquisitions (what a get costs in lock traffic)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.acquired = 0

    def __enter__(self) -> bool:
        self._lock.acquire()
        self.acquired += 1
        return True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()


def ram_config(root: Path) -> dict[str, Any]:
    return {"tiers": [{"name": "ram", "backend": "memory", "capacity": "4MiB"},
                      {"name": "ssd", "backend": "lmdb", "path": str(root / "ssd"),
                       "capacity": "4MiB"}]}


def test_a_scheduled_ram_hit_takes_the_lock_once_and_wakes_nothing(tmp_path: Path) -> None:
    with tiercache.open(ram_config(tmp_path)) as cache:
        for i, key in enumerate(KEYS):
            cache.put(key, shard(i), tier="ssd")
        cache.declare_schedule(KEYS)
        prefetcher = cache.start_prefetcher(depth=8)
        for _ in range(2):  # the first pass brings every shard up
            for key in KEYS:
                cache.get(key)
        assert all(cache.where(key)[0] == "ram" for key in KEYS)
        prefetcher.stop()  # settle the thread, then count what a steady pass costs
        prefetcher = cache.start_prefetcher(depth=8)
        for key in KEYS:  # the new prefetcher's first pass classifies its windows
            cache.get(key)
        wakes, passes = prefetcher.wakeups, prefetcher.passes
        stalls = cache.stats()["loop"]["stalls"]
        lock = CountingLock()
        cache._lock = lock  # type: ignore[assignment]
        for i, key in enumerate(KEYS):
            np.testing.assert_array_equal(cache.get(key), shard(i))
        assert lock.acquired == len(KEYS)  # one hold per get: no lock for the prefetcher
        assert (prefetcher.wakeups, prefetcher.passes) == (wakes, passes)
        assert cache.stats()["loop"]["stalls"] == stalls


class FakeTarget:
    """A cache stand-in: every fourth shard needs a copy (``advise`` says None), the
    others are RAM hits (0)."""

    def __init__(self, keys: list[str]) -> None:
        self.schedule = tuple(keys)
        self.tiers = [type("T", (), {"capacity_bytes": 1 << 30})()]
        self.prefetched: list[str] = []

    def advise(self, key: str, *, watch: bool = False) -> int | None:
        return None if KEYS.index(key) % 4 == 0 else 0

    def prefetch(self, key: str, *, once: bool = False) -> int:
        self.prefetched.append(key)
        return 1

    def pending(self, key: str) -> bool:
        return False

    def release(self, key: str) -> int:
        return 0

    def page_evictions(self) -> int:
        return 0  # the page cache holds the loop: nothing is ever released

    def keep_candidates(self) -> list[Candidate]:
        raise AssertionError("asked for candidates without evictions")


def test_the_thread_wakes_once_per_shard_to_copy_not_once_per_get() -> None:
    copies = {key for i, key in enumerate(KEYS) if i % 4 == 0}
    target = FakeTarget(KEYS)
    prefetcher = Prefetcher(target, depth=4)
    prefetcher.start()
    try:
        for position in range(len(KEYS)):
            prefetcher.notify(position)
            deadline = threading.Event()
            for _ in range(200):  # let the thread catch up, as a layer's compute would
                if set(target.prefetched) >= copies & {KEYS[(position + s) % len(KEYS)]
                                                       for s in range(1, 5)}:
                    break
                deadline.wait(0.005)
    finally:
        prefetcher.stop()
    # every shard that needs a copy was copied up once, ahead of its use; no RAM hit was
    assert sorted(target.prefetched) == sorted(copies)
    # one wake-up per shard to copy (and the first window): the old rule woke the thread
    # on every step while anything in its window needed a copy, to fetch nothing new
    assert 1 <= prefetcher.wakeups <= len(copies) + 1
