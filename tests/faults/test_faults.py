"""Faults: ENOSPC, EIO, EACCES, a removed tier folder, lmdb map full, intermittent errors.

The cache must keep serving from the other tiers and the origin, mark the failing
tier ``degraded`` (with a reason) in ``stats()``, and recover once the fault is
gone; no exception reaches a caller while a good copy exists. Faults are
injected by :class:`tiercache.testing.FaultyStore` wrapped around the real
lmdb and diskcache stores (raw ``OSError`` with an errno, the worst case), and
for real where the OS allows it (a removed folder; a full tmpfs, root only).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from helpers import shard, three_tier_config

import tiercache
from tiercache import TieredCache
from tiercache.errors import StoreError, TierCacheError
from tiercache.origins import NpyDirOrigin
from tiercache.stores import lmdb_env, lmdb_store
from tiercache.testing import FaultyStore

KiB = 1024
BACKOFF_S = 0.05
#: Every FaultyStore made here, for the figures printed at the end of the module.
_ALL: list[FaultyStore] = []


@pytest.fixture(scope="module", autouse=True)
def _report_injected() -> Iterator[None]:
    yield
    print(f"\nfaults injected by FaultyStore in {len(_ALL)} stores: "
          f"{sum(s.injected for s in _ALL)}")


def _faulty(cache: TieredCache, *names: str) -> list[FaultyStore]:
    """Wrap the named tiers' stores in FaultyStore and shorten their retry backoff."""
    wrapped = []
    for name in names:
        tier = cache.tier(name)
        tier.store = FaultyStore.wrap(tier.store)
        wrapped.append(tier.store)
        _ALL.append(tier.store)
    for tier in cache.tiers:
        tier.retry_backoff_s = BACKOFF_S
        tier.retry_backoff_max_s = 4 * BACKOFF_S
    return wrapped


def _state(cache: TieredCache, name: str) -> dict[str, Any]:
    return dict(cache.stats()["tiers"][name])


@pytest.fixture
def origin(tmp_path: Path) -> dict[str, np.ndarray]:
    arrays = {f"w{i}": shard(100 + i) for i in range(24)}
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    return arrays


@pytest.fixture
def cache(tmp_path: Path, origin: dict[str, np.ndarray]) -> Iterator[TieredCache]:
    with tiercache.open(three_tier_config(tmp_path, origin=tmp_path / "origin")) as c:
        yield c


def _wait_backoff() -> None:
    time.sleep(4 * BACKOFF_S + 0.02)


def test_enospc_on_ssd_puts_go_to_hdd_and_the_tier_recovers(cache: TieredCache) -> None:
    (ssd,) = _faulty(cache, "ssd")
    full = ssd.fail(errno.ENOSPC, ops={"put"})
    for i in range(12):  # 12 x 16 KiB through a 64 KiB RAM tier: victims must go down
        cache.put(f"k{i}", shard(i))
    s = _state(cache, "ssd")
    assert s["degraded"] and "No space left" in s["degraded_reason"]
    assert s["resident_count"] == 0 and s["errors"] >= 1
    assert _state(cache, "hdd")["demotions_in"] >= 1  # the demotion fell through to hdd
    for i in range(12):
        np.testing.assert_array_equal(cache.get(f"k{i}"), shard(i))
    assert full.fired >= 1
    full.clear()
    _wait_backoff()
    for i in range(12, 20):
        cache.put(f"k{i}", shard(i))
    s = _state(cache, "ssd")
    assert not s["degraded"] and s["degraded_reason"] is None and s["recoveries"] == 1
    assert s["resident_count"] > 0
    for i in range(20):
        np.testing.assert_array_equal(cache.get(f"k{i}"), shard(i))
    cache.check_invariants()


def test_degraded_tier_is_skipped_until_its_retry_time(cache: TieredCache) -> None:
    (ssd,) = _faulty(cache, "ssd")
    fault = ssd.fail(errno.EIO, ops={"put"})
    cache.put("a", shard(1), tier="ssd")
    assert cache.where("a") == ["hdd"]
    fired = fault.fired
    cache.put("b", shard(2), tier="ssd")  # within the backoff: not even tried
    assert fault.fired == fired and cache.where("b") == ["hdd"]
    assert _state(cache, "ssd")["skipped_degraded"] >= 1
    _wait_backoff()
    cache.put("c", shard(3), tier="ssd")  # retried (and failing again: backoff doubles)
    assert fault.fired == fired + 1


def test_eio_on_reads_serves_from_the_origin(cache: TieredCache,
                                             origin: dict[str, np.ndarray]) -> None:
    (ssd,) = _faulty(cache, "ssd")
    for key in ("w1", "w2", "w3"):
        cache.put(key, origin[key], tier="ssd")
    ssd.fail(errno.EIO, ops={"get"})
    for _ in range(3):
        for key in ("w1", "w2", "w3"):
            np.testing.assert_array_equal(cache.get(key), origin[key])
    s = _state(cache, "ssd")
    assert s["degraded"] and "Input/output error" in s["degraded_reason"]
    assert cache.stats()["origin"]["hits"] >= 3


def test_eio_on_the_only_copy_is_a_miss_not_a_crash(cache: TieredCache) -> None:
    (ssd,) = _faulty(cache, "ssd")
    cache.put("only", shard(5), tier="ssd")
    ssd.fail(errno.EIO, ops={"get"})
    assert cache.get("only", None) is None
    with pytest.raises(KeyError):
        cache.get("only")
    ssd.heal()
    np.testing.assert_array_equal(cache.get("only"), shard(5))  # the copy is still there


def test_eacces_on_delete_never_serves_the_stale_copy(cache: TieredCache,
                                                      tmp_path: Path) -> None:
    (ssd,) = _faulty(cache, "ssd")
    cache.put("k", shard(1), tier="ssd")
    denied = ssd.fail(errno.EACCES, ops={"delete"})
    cache.put("k", shard(2))  # must not fail although the old copy cannot be deleted
    np.testing.assert_array_equal(cache.get("k"), shard(2))
    # written through to a persistent tier too: its newer write sequence beats the stale
    # SSD copy if the process dies before the delete is retried
    assert cache.where("k") == ["ram", "hdd"]
    s = _state(cache, "ssd")
    assert s["degraded"] and "Permission denied" in s["degraded_reason"]
    assert s["pending_deletes"] == 1
    assert ssd.inner.get("k") is not None  # the stale entry is still on the medium ...
    with pytest.raises(StoreError, match="not durable"):  # a restart now would bring it back
        cache.delete("k")
    assert cache.get("k", None) is None  # ... but never served
    denied.clear()
    _wait_backoff()
    cache.put("other", shard(3), tier="ssd")  # a successful write: recovery, pending retried
    assert _state(cache, "ssd")["pending_deletes"] == 0
    assert ssd.inner.get("k") is None


def test_the_newest_copy_is_not_dropped_while_a_stale_one_waits_for_its_delete(
        tmp_path: Path) -> None:
    """A put whose older copy a tier could not delete writes the new value to another
    persistent tier; evicting that copy out of the hierarchy while the stale one is
    still on the medium would let a restart bring the older value back (found by the
    crash test: an acknowledged version replaced by an older one after SIGKILL). The
    drop waits until the stale copy is deleted."""
    cfg = three_tier_config(tmp_path, hdd="256KiB")
    with tiercache.open(cfg) as cache:
        (ssd,) = _faulty(cache, "ssd")
        cache.put("k", shard(1), tier="ssd")
        ssd.fail(errno.EACCES, ops={"delete"})
        cache.put("k", shard(2))
        assert cache.where("k") == ["ram", "hdd"]
        refused = 0
        for i in range(40):  # enough to evict "k" out of the 256 KiB HDD tier
            try:
                cache.put(f"filler{i}", shard(50 + i), tier="hdd")
            except TierCacheError:  # no room: the HDD's LRU victim is "k", kept for now
                refused += 1
        assert refused
        assert "hdd" in cache.where("k")  # the newest durable copy stayed
        np.testing.assert_array_equal(cache.get("k"), shard(2))
        cache.check_invariants()
    with tiercache.open(cfg) as cache:  # the stale SSD copy is still on the medium
        got = cache.get("k", None)
        assert got is None or np.array_equal(got, shard(2)), "the older value came back"


def test_a_put_over_a_stale_copy_writes_the_new_value_before_removing_any(
        tmp_path: Path) -> None:
    """Found by the crash test: with an older copy waiting for its delete on the SSD, a
    put used to delete the previous value's durable copy first and write the new one
    after; a kill in between left the stale copy the newest on disk. Now the new value
    is written first -- into the stale tier itself when it takes writes, which
    overwrites the stale bytes."""
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        (ssd,) = _faulty(cache, "ssd")
        cache.put("k", shard(1), tier="ssd")
        ssd.fail(errno.EACCES, ops={"delete"})  # the disk refuses deletes, not writes
        cache.put("k", shard(2))
        assert cache.where("k") == ["ram", "hdd"] and "k" in cache.tier("ssd").pending_deletes
        cache.put("k", shard(3))
        np.testing.assert_array_equal(ssd.inner.get("k"), shard(3))  # stale bytes replaced
        assert "k" not in cache.tier("ssd").pending_deletes
        assert "hdd" not in cache.where("k")  # the previous durable copy went after
        np.testing.assert_array_equal(cache.get("k"), shard(3))
        cache.check_invariants()
    with tiercache.open(cfg) as cache:
        np.testing.assert_array_equal(cache.get("k"), shard(3))


def test_a_failed_promotion_never_drops_the_newest_copy_while_a_stale_one_waits(
        tmp_path: Path) -> None:
    """Found by the crash test (a disk-full round: an acknowledged version replaced by an
    older one after the kill). Exclusive mode moved a shard up between persistent tiers
    by deleting it below first; with the tier above full and the one below too, the
    re-admit failed and the newest durable copy was dropped while an older copy still
    waited for its delete -- a restart served the older value. Now, while a stale copy
    waits, the shard is removed below only after the tier above took it."""
    cfg = three_tier_config(tmp_path, promote_after=1)
    with tiercache.open(cfg) as cache:
        ssd, hdd = _faulty(cache, "ssd", "hdd")
        cache.put("k", shard(1), tier="ssd")
        ssd.fail(errno.EACCES, ops={"delete"})
        cache.put("k", shard(2), tier="hdd")  # the SSD's shard(1) waits for its delete
        assert cache.where("k") == ["hdd"] and "k" in cache.tier("ssd").pending_deletes
        ssd.fail(errno.ENOSPC, ops={"put", "delete"})  # both disks full now
        hdd.fail(errno.ENOSPC, ops={"put"})
        for _ in range(3):  # gets from the HDD tier: promotions that fail
            np.testing.assert_array_equal(cache.get("k"), shard(2))
        assert cache.where("k") == ["hdd"]  # the newest durable copy stayed
    with tiercache.open(cfg) as cache:
        got = cache.get("k", None)
        assert got is None or np.array_equal(got, shard(2)), "the older value came back"


def test_pending_delete_is_retried_at_close(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        (ssd,) = _faulty(cache, "ssd")
        cache.put("k", shard(1), tier="ssd")
        denied = ssd.fail(errno.EACCES, ops={"delete"})
        with pytest.raises(StoreError, match="not durable"):
            cache.delete("k")
        denied.clear()
    with tiercache.open(cfg) as cache:
        assert cache.get("k", None) is None  # not resurrected by the restart


def test_demotion_into_a_failing_tier_tries_the_next(cache: TieredCache) -> None:
    ssd, hdd = _faulty(cache, "ssd", "hdd")
    ssd.fail(errno.ENOSPC, ops={"put"})
    for i in range(8):
        cache.put(f"k{i}", shard(i))
    assert _state(cache, "hdd")["demotions_in"] >= 4
    hdd.fail(errno.ENOSPC, ops={"put"})  # now nothing below RAM takes anything
    with pytest.raises(TierCacheError, match=r"could not be stored.*could not make room"):
        for i in range(8, 16):
            cache.put(f"k{i}", shard(i))
    for i in range(8):  # everything acknowledged is still served
        np.testing.assert_array_equal(cache.get(f"k{i}"), shard(i))
    cache.check_invariants()


def test_promotion_into_a_failing_tier_keeps_the_shard(tmp_path: Path) -> None:
    with tiercache.open(three_tier_config(tmp_path, promote_after=1)) as cache:
        (ssd,) = _faulty(cache, "ssd")
        cache.put("k", shard(9), tier="hdd")
        ssd.fail(errno.EIO, ops={"put"})
        for _ in range(3):
            np.testing.assert_array_equal(cache.get("k"), shard(9))
        assert cache.where("k") == ["hdd"]
        cache.check_invariants()


@pytest.mark.parametrize(("name", "nbytes"), [("ssd", 16 * KiB), ("hdd", 40 * KiB)])
def test_tier_folder_removed_under_a_running_cache(tmp_path: Path, name: str,
                                                   nbytes: int) -> None:
    """lmdb, and diskcache for shards kept inline in sqlite (< 32 KiB), go on serving the
    right bytes from the unlinked files until the next write to the tier notices; diskcache
    value files (>= 32 KiB) vanish at once and the first read notices."""
    origin = {f"w{i}": shard(100 + i, nbytes=nbytes) for i in range(3)}
    NpyDirOrigin.write(tmp_path / "origin", origin)
    with tiercache.open(three_tier_config(tmp_path, origin=tmp_path / "origin")) as cache:
        _faulty(cache)  # short backoff only
        for key in origin:
            cache.put(key, origin[key], tier=name)
        shutil.rmtree(tmp_path / name)
        for key in origin:  # never an error, never other bytes
            np.testing.assert_array_equal(cache.get(key), origin[key])
        if name == "ssd":  # nothing failed yet: the next write notices
            cache.put("probe", shard(76), tier=name)
            assert cache.where("probe") == ["hdd"]
        for key in origin:
            np.testing.assert_array_equal(cache.get(key), origin[key])
        s = _state(cache, name)
        assert s["degraded"] and "removed" in s["degraded_reason"], s["degraded_reason"]
        assert s["resident_count"] == 0 and s["lost"] >= 1
        _wait_backoff()
        cache.put("fresh", shard(77), tier=name)  # the retry reopens the folder
        assert (tmp_path / name).is_dir()
        s = _state(cache, name)
        assert not s["degraded"] and s["recoveries"] == 1
        assert cache.where("fresh") == [name]
        np.testing.assert_array_equal(cache.get("fresh"), shard(77))
        cache.check_invariants()
    with tiercache.open(three_tier_config(tmp_path)) as cache:
        np.testing.assert_array_equal(cache.get("fresh"), shard(77))


def test_lost_last_tier_is_reopened_at_once_when_nothing_else_can_take_a_shard(
        tmp_path: Path) -> None:
    with tiercache.open(three_tier_config(tmp_path)) as cache:
        _faulty(cache)
        cache.put("old", shard(1), tier="hdd")  # 16 KiB: inline in sqlite
        shutil.rmtree(tmp_path / "hdd")
        np.testing.assert_array_equal(cache.get("old"), shard(1))  # from the unlinked db
        cache.put("new", shard(2), tier="hdd")  # noticed, and no tier below: reopen now
        assert (tmp_path / "hdd").is_dir() and cache.where("new") == ["hdd"]
        s = _state(cache, "hdd")
        assert not s["degraded"] and s["recoveries"] == 1 and s["lost"] == 1
        assert cache.get("old", None) is None  # gone with its folder: a miss, no error
        cache.check_invariants()


def test_lmdb_map_full_degrades_and_recovers(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with tiercache.open(three_tier_config(tmp_path, ssd="1MiB")) as cache:
        _faulty(cache)
        store = cache.tier("ssd").store
        assert isinstance(store, lmdb_store.LmdbStore)
        store.set_map_size(64 * KiB)  # a map far too small, and growth refused:
        monkeypatch.setattr(lmdb_env, "MAX_GROW_ATTEMPTS", 1)
        monkeypatch.setattr(store, "grow_map", lambda need: None)
        cache.put("big", shard(1, nbytes=200 * KiB), tier="ssd")
        s = _state(cache, "ssd")
        assert s["degraded"] and "grow the map" in s["degraded_reason"]
        assert cache.where("big") == ["hdd"]
        monkeypatch.undo()  # growth works again
        _wait_backoff()
        cache.put("big2", shard(2, nbytes=200 * KiB), tier="ssd")
        assert cache.where("big2") == ["ssd"] and not _state(cache, "ssd")["degraded"]
        np.testing.assert_array_equal(cache.get("big"), shard(1, nbytes=200 * KiB))


def test_stores_convert_driver_errors_to_store_error(tmp_path: Path) -> None:
    lm = lmdb_store.LmdbStore(tmp_path / "l", map_size_bytes=64 * KiB)
    cast(Any, lm).grow_map = lambda need: None
    with lm, pytest.raises(StoreError, match="could not grow"):
        lm.put("k", shard(1, nbytes=256 * KiB))
    from tiercache.stores.diskcache_store import DiskcacheStore
    dc = DiskcacheStore(tmp_path / "d")
    with dc:
        dc.put("k", shard(2, nbytes=64 * KiB))
        (tmp_path / "d" / "cache.db").chmod(0o000)  # root ignores modes: break the db instead
        with contextlib.closing(sqlite3.connect(tmp_path / "d" / "cache.db")) as other:
            other.execute("DROP TABLE Cache")
        for call in (lambda: dc.get("k"), lambda: dc.put("j", shard(3)),
                     lambda: dc.delete("k"), lambda: list(dc.keys()), lambda: "k" in dc):
            with pytest.raises(StoreError):
                call()
        (tmp_path / "d" / "cache.db").chmod(0o644)


def test_intermittent_faults_everywhere_never_wrong_never_raise(
        tmp_path: Path, origin: dict[str, np.ndarray]) -> None:
    """2,000 random operations while ~12% of disk-tier I/O calls fail (EIO/ENOSPC/EACCES).

    A put may fail (TierCacheError) only when no tier can take the shard at that
    moment; a get never raises and never returns bytes other than those put."""
    rng = np.random.default_rng(5)
    with tiercache.open(three_tier_config(tmp_path, origin=tmp_path / "origin",
                                          ssd="96KiB", hdd="256KiB")) as cache:
        stores = _faulty(cache, "ssd", "hdd")
        for i, store in enumerate(stores):
            for j, code in enumerate((errno.EIO, errno.ENOSPC, errno.EACCES)):
                store.fail(code, ops={"get", "put", "delete", "info"}, probability=0.04,
                           seed=10 * i + j)
        keys = list(origin)
        extra = {f"x{i}": shard(500 + i) for i in range(6)}  # no origin copy: a miss is allowed
        put_failures = 0
        for _ in range(2000):
            r = rng.random()
            if r < 0.4:
                key = (keys + list(extra))[int(rng.integers(len(keys) + len(extra)))]
                try:
                    cache.put(key, origin[key] if key in origin else extra[key])
                except TierCacheError:
                    put_failures += 1  # only when no tier at all could take it now
            elif r < 0.45:
                # a disk may refuse the delete: not durable (StoreError), never served again
                with contextlib.suppress(StoreError):
                    cache.delete(keys[int(rng.integers(len(keys)))])
            else:
                key = (keys + list(extra))[int(rng.integers(len(keys) + len(extra)))]
                got = cache.get(key, None)
                want = origin.get(key, extra.get(key))
                if key in origin:
                    assert got is not None, key  # the origin always has it
                if got is not None:
                    np.testing.assert_array_equal(got, want)
            cache.check_invariants()
        injected = sum(s.injected for s in stores)
        assert injected > 100
        assert put_failures < 20, put_failures
        errors = sum(cache.stats()["tiers"][n]["errors"] for n in ("ssd", "hdd"))
        assert errors > 0


# -- a real full disk: tmpfs (root only) -----------------------------------------------


@pytest.mark.parametrize("backend", ["lmdb", "diskcache", "packed"])
def test_real_enospc_on_a_full_filesystem(small_fs: Path, tmp_path: Path, backend: str) -> None:
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "32KiB"},
        {"name": "small", "backend": backend, "path": str(small_fs / "tier"),
         "capacity": "64MiB"},  # configured larger than the file system: it fills up
        {"name": "big", "backend": "diskcache", "path": str(tmp_path / "big"),
         "capacity": "64MiB"}]}
    with tiercache.open(cfg) as cache:
        _faulty(cache)
        for i in range(60):  # 60 x 32 KiB = 1.9 MiB > 1.2 MiB
            cache.put(f"k{i}", shard(i, nbytes=32 * KiB), tier="small")
        s = _state(cache, "small")
        assert s["degraded"], s
        assert "space" in s["degraded_reason"].lower() or "full" in s["degraded_reason"].lower()
        assert _state(cache, "big")["resident_count"] > 0
        for i in range(60):
            np.testing.assert_array_equal(cache.get(f"k{i}"), shard(i, nbytes=32 * KiB))
        subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
        _wait_backoff()
        cache.put("after", shard(99, nbytes=32 * KiB), tier="small")
        assert cache.where("after") == ["small"] and not _state(cache, "small")["degraded"]
        cache.check_invariants()
