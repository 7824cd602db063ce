"""Movement rules between tiers: what survives a kill, what is written, what is promoted.

- A promotion out of a persistent tier into a memory tier leaves the persistent copy:
  a SIGKILL never loses a shard that reached disk (issue 11, item 1).
- Evicting a shard whose copy of the same version already lives below writes nothing.
- With a declared schedule, a promotion that would evict a shard needed sooner than the
  promoted one is skipped, whatever the tier's policy: no policy thrashes a loop larger
  than its tier, and disk tiers see no writes in the steady state (issue 11, item 3).
- Without a schedule the policy alone decides, as before.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard, three_tier_config

import tiercache

LAYERS = [f"blk.{i}.weight" for i in range(12)]


def _fill(cache: tiercache.TieredCache, tier: str = "ssd") -> None:
    for i, key in enumerate(LAYERS):
        cache.put(key, shard(i), tier=tier)


def _passes(cache: tiercache.TieredCache, n: int) -> None:
    for _ in range(n):
        for i, key in enumerate(LAYERS):
            np.testing.assert_array_equal(cache.get(key), shard(i))


def _promote_all_then_die(cfg: dict[str, Any]) -> None:
    cache = tiercache.open(cfg)
    for _ in range(3):
        for key in LAYERS:
            cache.get(key)
    assert all("ram" in cache.where(k) for k in LAYERS)
    os.kill(os.getpid(), signal.SIGKILL)


def test_sigkill_after_promotion_into_memory_loses_nothing(tmp_path: Path) -> None:
    # RAM holds every shard, so promotion takes them all out of the SSD tier's reach
    cfg = three_tier_config(tmp_path, ram="4MiB", ssd="4MiB", promote_after=1)
    with tiercache.open(cfg) as cache:
        _fill(cache)
    child = multiprocessing.get_context("fork").Process(target=_promote_all_then_die,
                                                        args=(cfg,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    with tiercache.open(cfg) as cache:
        assert sorted(cache.keys()) == sorted(LAYERS)
        _passes(cache, 1)


def test_promotion_into_memory_keeps_the_persistent_copy_in_exclusive_mode(
        tmp_path: Path) -> None:
    with tiercache.open(three_tier_config(tmp_path, promote_after=1)) as cache:
        cache.put("k", shard(1), tier="hdd")
        cache.get("k")
        assert cache.where("k") == ["ssd"]  # between persistent tiers, exclusive moves
        cache.get("k")
        assert cache.where("k") == ["ram", "ssd"]
        cache.check_invariants()


def test_evicting_a_clean_shard_writes_nothing(tmp_path: Path) -> None:
    # no schedule: the policy promotes every shard; RAM (4 shards) evicts all the time
    cfg = three_tier_config(tmp_path, ram="64KiB", ssd="2MiB", promote_after=1)
    with tiercache.open(cfg) as cache:
        _fill(cache)
        written = {n: t["bytes_written"] for n, t in cache.stats()["tiers"].items()}
        _passes(cache, 3)
        stats = cache.stats()["tiers"]
    assert stats["ram"]["evictions"] >= 20
    assert stats["ram"]["clean_drops"] == stats["ram"]["evictions"]
    assert stats["ssd"]["bytes_written"] == written["ssd"]
    assert stats["hdd"]["bytes_written"] == written["hdd"]


def test_a_dirty_memory_shard_is_still_written_down(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path, ram="64KiB", ssd="2MiB")
    with tiercache.open(cfg) as cache:
        for i in range(8):  # put into RAM only: its eviction must write it down
            cache.put(f"k{i}", shard(i))
        assert all(cache.where(f"k{i}") for i in range(8))
        assert cache.stats()["tiers"]["ram"]["demotions_out"] >= 4
    with tiercache.open(cfg) as cache:
        for i in range(8):
            np.testing.assert_array_equal(cache.get(f"k{i}"), shard(i))


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock", "lfu", "arc", "2q", "sieve",
                                    "s3fifo", "wtinylfu", "opt"])
def test_no_policy_thrashes_a_loop_larger_than_ram(tmp_path: Path, policy: str) -> None:
    cfg = three_tier_config(tmp_path, mode="exclusive", ram="64KiB", ssd="2MiB",
                            ram_policy=policy, promote_after=1)
    with tiercache.open(cfg) as cache:  # RAM holds 4 of the 12 shards
        _fill(cache)
        cache.declare_schedule(LAYERS)
        _passes(cache, 2)
        before = cache.stats()["tiers"]
        _passes(cache, 4)
        after = cache.stats()["tiers"]
        cache.check_invariants()
    ram_hits = after["ram"]["hits"] - before["ram"]["hits"]
    promotions = after["ram"]["promotions_in"] - before["ram"]["promotions_in"]
    assert ram_hits >= 4 * 3, (policy, ram_hits)
    assert promotions <= 4, (policy, promotions)
    for tier in ("ssd", "hdd"):
        assert after[tier]["bytes_written"] == before[tier]["bytes_written"], tier


@pytest.mark.parametrize("ssd_policy", ["lru", "lfu", "arc"])
def test_disk_tiers_are_not_rewritten_when_the_ssd_is_smaller_than_the_loop(
        tmp_path: Path, ssd_policy: str) -> None:
    cfg = three_tier_config(tmp_path, mode="exclusive", ram="32KiB", ssd="96KiB", hdd="4MiB",
                            ram_policy="arc", ssd_policy=ssd_policy, promote_after=2)
    with tiercache.open(cfg) as cache:
        _fill(cache, tier="hdd")
        cache.declare_schedule(LAYERS)
        _passes(cache, 3)
        before = cache.stats()["tiers"]
        _passes(cache, 5)
        after = cache.stats()["tiers"]
        cache.check_invariants()
    for tier in ("ssd", "hdd"):
        assert after[tier]["bytes_written"] == before[tier]["bytes_written"], (tier, after)
    assert after["ssd"]["hits"] - before["ssd"]["hits"] >= 5 * 3


def test_without_a_schedule_the_policy_alone_decides(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path, mode="exclusive", ram="64KiB", ssd="2MiB",
                            promote_after=1)
    with tiercache.open(cfg) as cache:
        _fill(cache)
        _passes(cache, 3)  # no schedule: LRU admits every promoted shard, as it always did
        ram = cache.stats()["tiers"]["ram"]
    assert ram["promotions_in"] >= 3 * 12 - 4
    assert ram["bypassed"] == 0
