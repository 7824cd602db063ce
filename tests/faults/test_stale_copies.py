"""An older copy left on a full disk never comes back after a restart.

A delete the medium refuses leaves a *stale* copy, to be deleted when the tier
recovers. While it waits, a later put or delete of the key must not delete the
newest durable copy: a process that died then (here: closed with the fault still
on, so the last retry fails too) would come back with the stale copy -- older than
the last acknowledged value. Found by tests/faults/test_crash.py (one failure in
several hundred kills: "got version 56000013, allowed acked 57000040"). The rule
(docs/reliability.md): after a restart a key reads as a miss, its last acknowledged
value, or the value of a put that raised -- never older bytes.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import shard, three_tier_config

import tiercache
from tiercache import TieredCache
from tiercache.errors import StoreError
from tiercache.testing import FaultyStore

BACKOFF_S = 0.05


def _faulty(cache: TieredCache, name: str) -> FaultyStore:
    tier = cache.tier(name)
    tier.store = FaultyStore.wrap(tier.store)
    for t in cache.tiers:
        t.retry_backoff_s = BACKOFF_S
        t.retry_backoff_max_s = 4 * BACKOFF_S
    return tier.store


def _stale_ssd_copy(cache: TieredCache) -> FaultyStore:
    """shard(1) put in the SSD tier; its delete refused; shard(2) put (acknowledged:
    written through to the HDD tier, whose newer sequence beats the stale copy)."""
    ssd = _faulty(cache, "ssd")
    cache.put("k", shard(1), tier="ssd")
    ssd.fail(errno.EACCES, ops={"delete"})
    cache.put("k", shard(2))
    assert cache.where("k") == ["ram", "hdd"]
    assert "k" in cache.tier("ssd").pending_deletes
    return ssd


def _failed_delete(cache: TieredCache) -> FaultyStore:
    """:func:`_stale_ssd_copy`, then a delete of "k" that cannot be made durable."""
    ssd = _stale_ssd_copy(cache)
    with pytest.raises(StoreError, match=r"not durable.*its last value"):
        cache.delete("k")
    return ssd


def _reopened_value(cfg: dict[str, object]) -> np.ndarray | None:
    with tiercache.open(cfg) as cache:
        got = cache.get("k", None)
        cache.check_invariants()
        return None if got is None else np.array(got)


@pytest.mark.parametrize("mode", ["exclusive", "inclusive"])
def test_a_failed_delete_keeps_the_last_value_not_the_stale_one(tmp_path: Path,
                                                                mode: str) -> None:
    cfg = three_tier_config(tmp_path, mode=mode)
    with tiercache.open(cfg) as cache:
        _failed_delete(cache)
        assert cache.get("k", None) is None  # not served by this process
        hdd = cache.tier("hdd")
        assert "k" in hdd.held_deletes and hdd.store.get("k") is not None  # kept on disk
        assert cache.stats()["tiers"]["hdd"]["pending_deletes"] == 1
        cache.put("other", shard(7))  # unrelated writes leave the held copy alone
        assert hdd.store.get("k") is not None
    # closed with the SSD still refusing deletes: both copies are on disk
    got = _reopened_value(cfg)
    assert got is not None, "the last value's durable copy was deleted"
    np.testing.assert_array_equal(got, shard(2))  # the last acknowledged value, not shard(1)


def test_a_failed_delete_completes_in_order_once_the_disk_recovers(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        ssd = _failed_delete(cache)
        ssd.heal()
        time.sleep(4 * BACKOFF_S + 0.02)
        cache.put("other", shard(3), tier="ssd")  # a write: recovery, the stale copy goes
        assert "k" not in cache.tier("ssd").pending_deletes
        assert cache.tier("hdd").store.get("k") is not None  # held until close or next use
        with pytest.raises(KeyError):
            cache.get("k")
        assert cache.delete("k") is False  # nothing served; the held copy is deleted now
        assert cache.tier("hdd").store.get("k") is None
        assert cache.stats()["tiers"]["hdd"]["pending_deletes"] == 0
    assert _reopened_value(cfg) is None  # the delete is complete


def test_close_deletes_the_held_copy_after_the_stale_one(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        ssd = _failed_delete(cache)
        ssd.heal()  # the disk recovered, nothing written since: close's retry
    assert _reopened_value(cfg) is None


@pytest.mark.parametrize("mode", ["exclusive", "inclusive"])
def test_a_put_no_disk_takes_keeps_the_last_value_not_the_stale_one(tmp_path: Path,
                                                                    mode: str) -> None:
    cfg = three_tier_config(tmp_path, mode=mode)
    with tiercache.open(cfg) as cache:
        ssd = _stale_ssd_copy(cache)
        ssd.fail(errno.ENOSPC, ops={"put"})
        hdd = _faulty(cache, "hdd")
        hdd.fail(errno.ENOSPC, ops={"put"})
        with pytest.raises(StoreError, match=r"not durable.*value before it"):
            cache.put("k", shard(3))
        np.testing.assert_array_equal(cache.get("k"), shard(3))  # served here
        assert cache.where("k") == ["ram"]
        assert "k" in cache.tier("hdd").held_deletes
    got = _reopened_value(cfg)
    assert got is not None and np.array_equal(got, shard(2)), (
        "a restart after a put that raised must give its value or the one before")


def test_a_held_copy_is_replaced_by_the_next_put(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        _failed_delete(cache)
        cache.put("k", shard(4))  # the SSD still refuses deletes: written through again
        np.testing.assert_array_equal(cache.get("k"), shard(4))
        assert "k" not in cache.tier("hdd").held_deletes  # overwritten by the new value
        cache.check_invariants()
    got = _reopened_value(cfg)
    assert got is not None and np.array_equal(got, shard(4))


def test_a_demotion_of_the_new_value_replaces_the_held_copy(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        ssd = _stale_ssd_copy(cache)
        ssd.fail(errno.ENOSPC, ops={"put"})
        hdd = _faulty(cache, "hdd")
        full = hdd.fail(errno.ENOSPC, ops={"put"})
        with pytest.raises(StoreError, match="not durable"):
            cache.put("k", shard(3))
        full.clear()
        time.sleep(4 * BACKOFF_S + 0.02)
        for i in range(6):  # 6 x 16 KiB through the 64 KiB RAM tier: "k" is demoted
            cache.put(f"x{i}", shard(20 + i))
        assert cache.where("k") == ["hdd"] and "k" not in cache.tier("hdd").held_deletes
        np.testing.assert_array_equal(cache.get("k"), shard(3))
        cache.check_invariants()
    got = _reopened_value(cfg)
    assert got is not None and np.array_equal(got, shard(3))
