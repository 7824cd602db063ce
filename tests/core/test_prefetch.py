"""Schedule declaration, the prefetcher, in-flight de-duplication and stall accounting."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest
from helpers import shard, three_tier_config

import tiercache
from tiercache.origins import NpyDirOrigin
from tiercache.serving.prefetcher import Prefetcher

KiB = 1024
LAYERS = [f"blk.{i}.weight" for i in range(12)]


def loop_config(root: Path, *, ram: str = "64KiB", origin: Path | None = None) -> dict[str, Any]:
    cfg = three_tier_config(root, mode="inclusive", ram=ram, ssd="2MiB", hdd="4MiB",
                            promote_after="never", origin=origin)
    return cfg


def run_passes(cache: tiercache.TieredCache, passes: int, compute_s: float) -> None:
    for _ in range(passes):
        for i, key in enumerate(LAYERS):
            np.testing.assert_array_equal(cache.get(key), shard(i))
            time.sleep(compute_s)  # the layer's "compute", during which the prefetcher works


def fill(cache: tiercache.TieredCache) -> None:
    for i, key in enumerate(LAYERS):
        cache.put(key, shard(i), tier="ssd")


def test_prefetch_brings_a_shard_to_the_top(tmp_path: Path) -> None:
    with tiercache.open(loop_config(tmp_path)) as cache:
        fill(cache)
        assert cache.prefetch(LAYERS[0]) == shard(0).nbytes
        assert cache.where(LAYERS[0])[0] == "ram"
        assert cache.prefetch(LAYERS[0]) == 0  # already there
        assert cache.prefetch("nowhere") == 0
        stats = cache.stats()["loop"]
        assert stats["prefetched"] == 1 and stats["prefetched_bytes"] == shard(0).nbytes


def test_prefetch_from_the_origin(tmp_path: Path) -> None:
    NpyDirOrigin.write(tmp_path / "origin", {k: shard(i) for i, k in enumerate(LAYERS)})
    with tiercache.open(loop_config(tmp_path, origin=tmp_path / "origin")) as cache:
        assert cache.prefetch(LAYERS[3]) > 0
        assert cache.where(LAYERS[3]) == ["ram"]
        np.testing.assert_array_equal(cache.get(LAYERS[3]), shard(3))
        assert cache.stats()["origin"]["hits"] == 0  # the get was a RAM hit


def test_prefetcher_cuts_stalls_and_keeps_values_right(tmp_path: Path) -> None:
    results = {}
    for prefetch in (False, True):
        root = tmp_path / str(prefetch)
        with tiercache.open(loop_config(root)) as cache:  # RAM holds 4 of 12 shards
            fill(cache)
            cache.declare_schedule(LAYERS)
            if prefetch:
                cache.start_prefetcher(depth=2)
            run_passes(cache, passes=3, compute_s=0.01)
            results[prefetch] = cache.stats()["loop"]
    assert results[False]["gets"] == results[True]["gets"] == 3 * len(LAYERS)
    assert results[False]["stalls"] >= 2 * len(LAYERS)  # a loop larger than RAM misses a lot
    assert results[False]["prefetched"] == 0
    assert results[True]["prefetched"] > 0
    assert results[True]["stalls"] < results[False]["stalls"] / 2


def test_get_waits_for_an_inflight_prefetch_instead_of_reading_twice(tmp_path: Path) -> None:
    with tiercache.open(loop_config(tmp_path)) as cache:
        fill(cache)
        ssd = cache.tier("ssd")
        real_read = ssd.read
        calls: list[str] = []
        started = threading.Event()

        def slow_read(key: str, out: np.ndarray | None = None) -> np.ndarray | None:
            calls.append(key)
            started.set()
            time.sleep(0.2)
            return real_read(key, out)

        cast(Any, ssd).read = slow_read
        t = threading.Thread(target=cache.prefetch, args=(LAYERS[5],))
        t.start()
        assert started.wait(5)
        np.testing.assert_array_equal(cache.get(LAYERS[5]), shard(5))
        t.join()
        assert calls == [LAYERS[5]]
        assert cache.stats()["loop"]["prefetch_wait_s"] > 0.05


class ScheduleSpy(tiercache.policies.LRUPolicy):
    """An LRU that records the schedule hooks the engine calls."""

    name = "schedule-spy"
    seen: ClassVar[list[Any]] = []

    def set_schedule(self, keys: Sequence[Hashable] | None) -> None:
        assert keys is not None
        ScheduleSpy.seen.append(("schedule", tuple(keys)))

    def on_cursor(self, position: int) -> None:
        ScheduleSpy.seen.append(("cursor", position))


def test_schedule_hooks_reach_policies(tmp_path: Path) -> None:
    tiercache.register_policy(ScheduleSpy)
    try:
        cfg = loop_config(tmp_path)
        cfg["tiers"][0]["policy"] = "schedule-spy"
        ScheduleSpy.seen.clear()
        with tiercache.open(cfg) as cache:
            fill(cache)
            cache.declare_schedule(LAYERS)
            cache.get(LAYERS[2])
            cache.get(LAYERS[7])
            cache.get("not-scheduled", None)
        assert ScheduleSpy.seen[0] == ("schedule", tuple(LAYERS))
        assert ("cursor", 2) in ScheduleSpy.seen and ("cursor", 7) in ScheduleSpy.seen
        assert len([e for e in ScheduleSpy.seen if e[0] == "cursor"]) == 2
    finally:
        from tiercache.policies import _REGISTRY
        _REGISTRY.pop("schedule-spy", None)


def test_a_key_listed_twice_moves_the_cursor_to_its_next_occurrence(tmp_path: Path) -> None:
    with tiercache.open(loop_config(tmp_path)) as cache:
        fill(cache)
        schedule = [LAYERS[0], LAYERS[1], LAYERS[2], LAYERS[0]]  # tied embeddings: first, last
        cache.declare_schedule(schedule)
        seen = []
        for key in schedule * 2:
            cache.get(key)
            seen.append(cache.cursor)
        assert seen == [0, 1, 2, 3, 0, 1, 2, 3]
        with pytest.raises(ValueError):
            cache.declare_schedule([])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_prefetcher_keeps_up_to_workers_reads_in_flight(tmp_path: Path, workers: int) -> None:
    with tiercache.open(loop_config(tmp_path, ram="512KiB")) as cache:
        fill(cache)
        ssd = cache.tier("ssd")
        real_read = ssd.read
        lock = threading.Lock()
        active = peak = 0
        read: list[str] = []

        def slow_read(key: str, out: np.ndarray | None = None) -> np.ndarray | None:
            nonlocal active, peak
            if not threading.current_thread().name.startswith("tiercache-prefetch-read"):
                return real_read(key, out)  # the loop's own read
            with lock:
                active += 1
                peak = max(peak, active)
                read.append(key)
            try:
                time.sleep(0.05)
                return real_read(key, out)
            finally:
                with lock:
                    active -= 1

        cast(Any, ssd).read = slow_read
        cache.declare_schedule(LAYERS)
        prefetcher = cache.start_prefetcher(depth=6, workers=workers)
        assert prefetcher.workers == workers
        np.testing.assert_array_equal(cache.get(LAYERS[0]), shard(0))
        deadline = time.monotonic() + 10
        while len(read) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(read) == sorted(LAYERS[1:7])
        assert peak == workers
        for i in range(1, 7):
            np.testing.assert_array_equal(cache.get(LAYERS[i]), shard(i))
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(cache, workers=0)


def test_close_stops_the_prefetcher(tmp_path: Path) -> None:
    cache = tiercache.open(loop_config(tmp_path))
    fill(cache)
    cache.declare_schedule(LAYERS)
    prefetcher = cache.start_prefetcher()
    cache.get(LAYERS[0])
    cache.close()
    assert not prefetcher.running


def _loop_hits(tmp_path: Path, policy: str, prefetch: bool) -> dict[str, Any]:
    cfg = three_tier_config(tmp_path / f"{policy}-{prefetch}", mode="inclusive", ram="64KiB",
                            ssd="2MiB", hdd="4MiB", ram_policy=policy, promote_after="always")
    with tiercache.open(cfg) as cache:  # RAM holds 4 of the 12 shards
        fill(cache)
        cache.declare_schedule(LAYERS)
        if prefetch:
            cache.start_prefetcher(depth=2)
        run_passes(cache, passes=4, compute_s=0.01 if prefetch else 0.0)
        stats = cache.stats()
    return {"ram_hits": stats["tiers"]["ram"]["hits"], **stats["loop"]}


def test_a_loop_larger_than_ram_defeats_neither_opt_nor_lru(tmp_path: Path) -> None:
    lru = _loop_hits(tmp_path, "lru", prefetch=False)
    opt = _loop_hits(tmp_path, "opt", prefetch=False)
    # Belady keeps C-1 = 3 of the 12 shards per pass after the first; with the schedule
    # declared the engine no longer promotes a shard over one needed sooner, so LRU keeps
    # a fixed part of the loop too instead of cycling every shard through (0 hits before)
    assert opt["ram_hits"] >= 3 * 3
    assert lru["ram_hits"] >= 3 * 3


def test_opt_with_prefetcher_is_not_fooled_by_prefetch_admissions(tmp_path: Path) -> None:
    opt = _loop_hits(tmp_path, "opt", prefetch=True)
    # prefetched shards are ranked by their distance from the loop's cursor: the
    # shard the loop needs next is never evicted to make room for one further ahead
    assert opt["stalls"] <= 2, opt


def test_opt_bypasses_promotions_that_would_push_out_nearer_shards(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path, mode="inclusive", ram="64KiB", ssd="2MiB", hdd="4MiB",
                            ram_policy="opt", promote_after="always")
    with tiercache.open(cfg) as cache:  # RAM holds 4 of the 12 shards
        fill(cache)
        cache.declare_schedule(LAYERS)
        run_passes(cache, passes=2, compute_s=0.0)
        before = cache.stats()["tiers"]["ram"]
        run_passes(cache, passes=3, compute_s=0.0)
        after = cache.stats()["tiers"]["ram"]
    # steady state: Belady keeps 3 shards per pass and refuses to churn the rest
    assert after["hits"] - before["hits"] >= 3 * 3
    assert after["promotions_in"] - before["promotions_in"] <= 3 * 2
    assert after["bypassed"] - before["bypassed"] >= 3 * 6


def test_staging_keeps_the_copies_needed_soonest(tmp_path: Path) -> None:
    with tiercache.open(loop_config(tmp_path)) as cache:
        fill(cache)
        cache.declare_schedule(LAYERS)
        budget = 3 * shard(0).nbytes + 1024  # room for three staged copies
        cache.start_prefetcher(depth=2, max_bytes=budget)
        for key in LAYERS[1:6]:  # nearest first, as the prefetcher reads them
            cache.prefetch(key)
        # full at the fourth: the copies needed next stay, the far ones are refused
        # (dropping the oldest would have kept blk.3-5 and thrown away blk.1-2)
        assert sorted(cache.staged()) == sorted(LAYERS[1:4])
        cache.stop_prefetcher()
