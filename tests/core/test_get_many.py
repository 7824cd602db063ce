"""``TieredCache.get_many``: a layer's shards in one call, exactly as one ``get`` each.

The fast path (one hold of the lock for the run of keys a memory top tier or a
checked zero-copy view serves, the prefetcher told once) must leave every
observable the same as sequential gets: values, tier statistics, placement
(promotions, OPT's choices), the cursor and the recorded trace.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard

import tiercache
from tiercache.errors import CacheClosedError, ShardNotFoundError
from tiercache.origins import NpyDirOrigin
from tiercache.serving.prefetcher import Prefetcher

KiB = 1024
KEYS = [f"blk.{i}.weight" for i in range(12)]
# timings differ between any two runs; everything else must not
TIMED = ("latency", "stall_s", "wait_s")


def layout(root: Path, *, ram_policy: str = "opt", origin: Path | None = None) -> dict[str, Any]:
    """RAM (memory) over a packed zero-copy SSD over a diskcache HDD (copies): every
    kind of holder a get can find."""
    cfg: dict[str, Any] = {"mode": "inclusive", "record_trace": str(root / "trace.csv"),
                           "tiers": [
        {"name": "ram", "backend": "memory", "capacity": "40KiB", "policy": ram_policy},
        {"name": "ssd", "backend": "packed", "path": str(root / "ssd"), "capacity": "120KiB",
         "policy": "lru", "zero_copy": True, "promote_after": 1},
        {"name": "hdd", "backend": "diskcache", "path": str(root / "hdd"),
         "capacity": "4MiB", "policy": "lru", "promote_after": 2}]}
    if origin is not None:
        cfg["origin"] = {"kind": "npy", "path": str(origin)}
    return cfg


def fill(cache: tiercache.TieredCache) -> None:
    for i, key in enumerate(KEYS[:8]):
        cache.put(key, shard(i, nbytes=12 * KiB), tier="ssd" if i % 3 else "hdd")


def untimed(stats: Any) -> Any:
    if isinstance(stats, dict):
        return {k: untimed(v) for k, v in stats.items() if not any(t in k for t in TIMED)}
    return stats


def observe(cache: tiercache.TieredCache) -> tuple[Any, ...]:
    return (untimed(cache.stats()), {k: cache.where(k) for k in KEYS}, cache.cursor)


@pytest.mark.parametrize("ram_policy", ["opt", "lru"])
@pytest.mark.parametrize("declared", [True, False])
def test_get_many_is_sequential_gets(tmp_path: Path, ram_policy: str, declared: bool) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    for i, key in enumerate(KEYS[8:], start=8):  # the last keys only in the origin
        np.save(origin / f"{key}.npy", shard(i, nbytes=12 * KiB))
    seen: list[tuple[Any, ...]] = []
    for name, batched in (("full", False), ("one", False), ("many", True)):
        root = tmp_path / name
        root.mkdir()
        with tiercache.open(layout(root, ram_policy=ram_policy, origin=origin)) as cache:
            if name == "full":  # no fast path: every get through the full lookup
                cache._resident_holder = lambda *a: None  # type: ignore[method-assign]
            fill(cache)
            if declared:
                cache.declare_schedule(KEYS)
            values = []
            for _ in range(4):  # passes: promotions, then a steady state
                for start in range(0, len(KEYS), 3):  # "layers" of three shards
                    chunk = KEYS[start:start + 3]
                    got = (cache.get_many(chunk) if batched
                           else [cache.get(k) for k in chunk])
                    values += [np.array(v) for v in got]
                    assert len(got) == len(chunk)
            seen.append((values, observe(cache)))
            for tier in cache.tiers:
                tier.check_invariants()
        seen[-1] += ((root / "trace.csv").read_text(),)
    (full, state_full, trace_full), (one, state_one, trace_one), \
        (many, state_many, trace_many) = seen
    for i, (a, b, c) in enumerate(zip(full, one, many, strict=True)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, shard(i % len(KEYS), nbytes=12 * KiB))
    assert state_full == state_one == state_many
    assert trace_full == trace_one == trace_many
    assert trace_one.count("\n") >= 4 * len(KEYS)
    ssd_hits = state_many[0]["tiers"]["ssd"]["hits"]
    assert ssd_hits > 0  # the zero-copy views were exercised


def test_get_many_takes_the_fast_path_for_resident_keys(tmp_path: Path) -> None:
    with tiercache.open(layout(tmp_path)) as cache:
        fill(cache)
        keys = [k for k in KEYS[:8] if cache.where(k)[0] == "ssd"]
        cache.get_many(keys)  # first views: checked by the full lookup
        calls: list[str] = []
        full = cache._get

        def counted(key: str, *args: Any) -> Any:
            calls.append(key)
            return full(key, *args)

        cache._get = counted  # type: ignore[method-assign,assignment]
        cache.get_many(keys)
        assert calls == [], "a checked view should not need the full lookup"


def test_get_many_raises_at_the_first_missing_key(tmp_path: Path) -> None:
    with tiercache.open(layout(tmp_path)) as cache:
        fill(cache)
        before = cache.tier("ssd").stats.hits + cache.tier("hdd").stats.hits
        with pytest.raises(ShardNotFoundError, match="nope"):
            cache.get_many([KEYS[1], "nope", KEYS[2]])
        after = cache.tier("ssd").stats.hits + cache.tier("hdd").stats.hits
        assert after == before + 1  # the key before it was read, the one after it not
        assert cache.get_many([]) == []


def test_get_many_on_a_closed_cache_raises(tmp_path: Path) -> None:
    cache = tiercache.open(layout(tmp_path))
    fill(cache)
    cache.get_many(KEYS[:3])
    cache.close()
    with pytest.raises(CacheClosedError):
        cache.get_many(KEYS[:3])


def test_get_many_never_serves_a_stale_value_under_concurrent_puts(tmp_path: Path) -> None:
    """A writer replaces two shards with arrays filled with a version number; every
    array get_many returns is whole (one version) and versions never go back."""
    with tiercache.open(layout(tmp_path, ram_policy="lru")) as cache:
        keys = ["a", "b"]
        for key in keys:
            cache.put(key, np.zeros(2048, np.float32), tier="ssd")
        stop = threading.Event()
        failures: list[str] = []

        def writer() -> None:
            for version in range(1, 200):
                for key in keys:
                    cache.put(key, np.full(2048, version, np.float32),
                              tier="ssd" if version % 2 else None)
            stop.set()

        thread = threading.Thread(target=writer)
        thread.start()
        last = {key: -1.0 for key in keys}
        reads = 0
        while not stop.is_set() or reads < 50:
            for key, value in zip(keys, cache.get_many(keys), strict=True):
                if value.min() != value.max():
                    failures.append(f"{key}: torn value")
                if value[0] < last[key]:
                    failures.append(f"{key}: version {value[0]} after {last[key]}")
                last[key] = float(value[0])
            reads += 1
            if reads > 100_000:
                break
        thread.join()
        assert failures == []
        assert [float(v[0]) for v in cache.get_many(keys)] == [199.0, 199.0]


@pytest.mark.parametrize("steps", [1, 2, 5, 6])
def test_prefetcher_told_once_after_several_steps_keeps_the_same_window(
        tmp_path: Path, steps: int) -> None:
    """notify(c + steps) after notify(c) leaves the window as notify at every step does
    (a move of more than ``depth`` steps is a jump: the window is rebuilt)."""
    windows = []
    for run, stride in enumerate((1, steps)):
        root = tmp_path / f"run{run}"
        root.mkdir()
        with tiercache.open(layout(root)) as cache:
            fill(cache)
            cache.declare_schedule(KEYS[:8])
            prefetcher = Prefetcher(cache, depth=5)  # not started: notify only
            cursors = list(range(0, 16, stride))
            cursors += [15] if cursors[-1] != 15 else []
            for cursor in cursors:
                prefetcher.notify(cursor % 8)
            windows.append((set(prefetcher._inline), set(prefetcher._deferred)))
            prefetcher.stop()
    assert windows[0] == windows[1]
    inline, deferred = windows[0]
    assert inline | deferred == {(15 + s) % 8 for s in range(1, 6)}
    assert deferred  # the diskcache tier's shards need a copy: the thread's job


def test_npy_origin_keys_come_through_get_many(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    np.save(origin / "w.npy", shard(3))
    assert NpyDirOrigin(origin).get("w") is not None
    with tiercache.open(layout(tmp_path, origin=origin)) as cache:
        first, again = cache.get_many(["w", "w"])
        np.testing.assert_array_equal(first, shard(3))
        np.testing.assert_array_equal(again, shard(3))
        assert cache.where("w")  # admitted on the way


def test_a_reader_that_loses_every_race_with_a_writer_still_finds_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each unlocked read of a disk tier sees the key change under it (a writer's put
    lands meanwhile), as many times as the lookup retries: the key is still there, so
    the get must serve it (read under the lock), never report it missing."""
    from tiercache.core import lookup

    with tiercache.open(layout(tmp_path, ram_policy="lru")) as cache:
        value = np.arange(1024, dtype=np.float32)
        cache.put("k", value, tier="hdd")
        hdd = cache.tiers[2]
        real = hdd.read
        calls = [0]

        def racing(key: str, out: np.ndarray | None = None) -> np.ndarray | None:
            calls[0] += 1
            if calls[0] <= lookup._MAX_RETRIES:
                with cache._lock:
                    cache._bump(key)  # what a concurrent put of the key does first
            return real(key, out)

        monkeypatch.setattr(hdd, "read", racing)
        got = cache.get("k")
        np.testing.assert_array_equal(got, value)
        assert calls[0] == lookup._MAX_RETRIES + 1
        assert cache.get_many(["k"])[0].tolist() == value.tolist()
