"""TieredCache behaviour: lookup, promotion, demotion, modes, origin, persistence."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard, three_tier_config

import tiercache
from tiercache import ShardNotFoundError, TieredCache
from tiercache.origins import NpyDirOrigin

KiB = 1024


def test_put_get_roundtrip_keeps_dtype_and_shape(cfg3: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f16": np.linspace(0, 1, 7, dtype=np.float16),
        "i64be": np.arange(5, dtype=">i8"),
        "bool": np.array([[True, False], [False, True]]),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), dtype=np.int32),
    }
    with tiercache.open(cfg3) as cache:
        for k, a in arrays.items():
            cache.put(k, a)
        for k, a in arrays.items():
            got = cache.get(k)
            assert got.dtype == a.dtype and got.shape == a.shape
            np.testing.assert_array_equal(got, a)


def test_missing_key_raises_keyerror_or_returns_default(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        with pytest.raises(KeyError):
            cache.get("nope")
        with pytest.raises(ShardNotFoundError):
            cache.get("nope")
        assert cache.get("nope", default=None) is None
        assert "nope" not in cache
        cache.put("k", shard(1))
        assert "k" in cache
        assert cache.delete("k") is True
        assert cache.delete("k") is False
        assert cache.get("k", None) is None


def test_ram_hit_returns_same_read_only_array(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        cache.put("k", shard(2))
        a, b = cache.get("k"), cache.get("k")
        assert a is b
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0] = 1


def test_put_copies_the_callers_array(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        src = shard(3)
        cache.put("k", src)
        src[...] = 0
        assert cache.get("k").any()


def test_get_into_out_buffer(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        a = shard(4)
        cache.put("k", a)
        cache.put("low", a * 2, tier="hdd")
        for key, want in (("k", a), ("low", a * 2)):
            out = np.empty_like(a)
            assert cache.get(key, out=out) is out
            np.testing.assert_array_equal(out, want)
        with pytest.raises(ValueError):
            cache.get("k", out=np.empty((3,), dtype=np.float32))


def test_overflow_demotes_and_exclusive_keeps_one_copy(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        for i in range(12):  # 12 x 16 KiB > 64 KiB RAM tier
            cache.put(f"k{i}", shard(i))
        s = cache.stats()["tiers"]
        assert s["ram"]["resident_bytes"] <= 64 * KiB
        assert s["ram"]["evictions"] > 0 and s["ssd"]["demotions_in"] > 0
        assert s["ram"]["demotions_out"] == s["ssd"]["demotions_in"]
        for i in range(12):
            assert len(cache.where(f"k{i}")) == 1
            np.testing.assert_array_equal(cache.get(f"k{i}"), shard(i))
        cache.check_invariants()


@pytest.mark.parametrize(("rule", "hits_needed"), [(1, 1), ("always", 1), (2, 2), (3, 3)])
def test_promotion_after_n_hits(tmp_path: Path, rule: Any, hits_needed: int) -> None:
    with tiercache.open(three_tier_config(tmp_path, promote_after=rule)) as cache:
        cache.put("k", shard(5), tier="hdd")
        for _ in range(hits_needed - 1):
            cache.get("k")
            assert cache.where("k") == ["hdd"]
        cache.get("k")
        assert cache.where("k") == ["ssd"]
        for _ in range(hits_needed):
            cache.get("k")
        # promoted into memory: the persistent copy stays (a kill must not lose it)
        assert cache.where("k") == ["ram", "ssd"]
        s = cache.stats()["tiers"]
        assert s["hdd"]["promotions_out"] == 1 and s["ssd"]["promotions_in"] == 1
        assert s["ssd"]["promotions_out"] == 1 and s["ram"]["promotions_in"] == 1


def test_promote_never(tmp_path: Path) -> None:
    with tiercache.open(three_tier_config(tmp_path, promote_after="never")) as cache:
        cache.put("k", shard(6), tier="ssd")
        for _ in range(5):
            np.testing.assert_array_equal(cache.get("k"), shard(6))
        assert cache.where("k") == ["ssd"]
        assert cache.stats()["tiers"]["ssd"]["hits"] == 5


def test_inclusive_promotion_keeps_lower_copy_and_eviction_drops_it(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path, mode="inclusive", promote_after=1)
    with tiercache.open(cfg) as cache:
        cache.put("k", shard(7), tier="ssd")
        cache.get("k")
        assert cache.where("k") == ["ram", "ssd"]
        written_before = cache.stats()["tiers"]["ssd"]["bytes_written"]
        for i in range(8):  # push k out of RAM
            cache.put(f"f{i}", shard(100 + i))
        assert "ram" not in cache.where("k")
        s = cache.stats()["tiers"]
        # k was dropped from RAM, not rewritten into the SSD tier that already had it
        assert cache.where("k")[0] == "ssd"
        assert s["ssd"]["bytes_written"] >= written_before
        np.testing.assert_array_equal(cache.get("k"), shard(7))
        cache.check_invariants()


def test_inclusive_demotion_skips_write_when_copy_below(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path, mode="inclusive", promote_after=1, ram="24KiB")
    with tiercache.open(cfg) as cache:
        cache.put("k", shard(8), tier="ssd")
        cache.get("k")  # promoted, copy stays in ssd
        ssd_written = cache.stats()["tiers"]["ssd"]["bytes_written"]
        cache.put("other", shard(9))  # evicts k from RAM (24 KiB holds one 16 KiB shard)
        assert cache.where("k") == ["ssd"]
        after = cache.stats()["tiers"]["ssd"]
        # only "other"'s own demotion later could write; k's eviction wrote nothing
        assert after["bytes_written"] == ssd_written
        assert after["demotions_in"] == 0


def test_shard_larger_than_tier_skips_it(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        big = shard(10, nbytes=100 * KiB)  # > 64 KiB RAM, < 128 KiB SSD
        cache.put("big", big)
        assert cache.where("big") == ["ssd"]
        assert cache.stats()["tiers"]["ram"]["skipped_too_large"] == 1
        huge = shard(11, nbytes=1024 * KiB)
        cache.put("huge", huge)
        assert cache.where("huge") == ["hdd"]
        for _ in range(3):  # promotions never go into a tier too small
            np.testing.assert_array_equal(cache.get("huge"), huge)
        assert cache.where("huge") == ["hdd"]
        with pytest.raises(tiercache.TierCacheError):
            cache.put("too-big", shard(12, nbytes=8 * 1024 * KiB))


def test_origin_serves_missing_shard_and_fills_top_tier(tmp_path: Path) -> None:
    arrays = {f"w{i}": shard(20 + i) for i in range(3)}
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    with tiercache.open(three_tier_config(tmp_path, origin=tmp_path / "origin")) as cache:
        np.testing.assert_array_equal(cache.get("w1"), arrays["w1"])
        assert cache.where("w1") == ["ram"]
        assert cache.stats()["origin"]["hits"] == 1
        cache.get("w1")
        assert cache.stats()["origin"]["hits"] == 1
        with pytest.raises(KeyError):
            cache.get("absent")


def test_capacity_never_exceeded_under_mixed_sizes(cfg3: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    with tiercache.open(cfg3) as cache:
        for step in range(300):
            key = f"k{rng.integers(40)}"
            if rng.random() < 0.5:
                cache.put(key, shard(step, nbytes=int(rng.integers(1, 40)) * KiB))
            else:
                cache.get(key, None)
            cache.check_invariants()


def test_disk_tiers_survive_reopen_and_flush_writes_ram_down(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    with tiercache.open(cfg) as cache:
        cache.put("ram-only", shard(30))
        cache.put("on-hdd", shard(31), tier="hdd")
        assert cache.where("ram-only") == ["ram"]
    with tiercache.open(cfg) as cache:
        assert cache.where("ram-only") == ["ssd"]
        np.testing.assert_array_equal(cache.get("ram-only"), shard(30))
        np.testing.assert_array_equal(cache.get("on-hdd"), shard(31))
        cache.check_invariants()


def test_no_flush_on_close_loses_only_ram(tmp_path: Path) -> None:
    cfg = three_tier_config(tmp_path)
    cfg["flush_on_close"] = False
    with tiercache.open(cfg) as cache:
        cache.put("ram-only", shard(32))
        cache.put("on-ssd", shard(33), tier="ssd")
    with tiercache.open(cfg) as cache:
        assert "ram-only" not in cache
        assert "on-ssd" in cache


def test_corrupt_lower_copy_is_dropped_and_origin_serves(tmp_path: Path) -> None:
    arrays = {"w": shard(40, nbytes=64 * KiB)}
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    cfg = three_tier_config(tmp_path, origin=tmp_path / "origin")
    with tiercache.open(cfg) as cache:
        # a different value in the HDD tier, then corrupt it on disk
        cache.put("w", shard(41, nbytes=64 * KiB), tier="hdd")
        hdd = cache.tier("hdd").store
        files = [p for p in (tmp_path / "hdd").rglob("*") if p.is_file() and p.suffix == ".val"]
        assert files, "expected diskcache to keep the 64 KiB shard as a file"
        data = bytearray(files[0].read_bytes())
        data[-1] ^= 0xFF
        files[0].write_bytes(bytes(data))
        got = cache.get("w")
        np.testing.assert_array_equal(got, arrays["w"])  # never the corrupt bytes
        assert cache.stats()["tiers"]["hdd"]["corrupt"] == 1
        assert "hdd" not in cache.where("w")
        assert hdd is cache.tier("hdd").store


def test_stats_has_required_fields(cfg3: dict[str, Any]) -> None:
    with tiercache.open(cfg3) as cache:
        cache.put("k", shard(50))
        cache.get("k")
        cache.get("x", None)
        s = cache.stats()
    required = {"hits", "misses", "bytes_read", "bytes_written", "evictions", "promotions_in",
                "promotions_out", "demotions_in", "demotions_out", "resident_bytes",
                "resident_count", "get_latency_p50_s", "get_latency_p99_s", "capacity_bytes"}
    for name in ("ram", "ssd", "hdd"):
        assert required <= set(s["tiers"][name])
    assert s["tiers"]["ram"]["hits"] == 1
    assert s["tiers"]["ram"]["misses"] == 1
    assert s["tiers"]["ram"]["get_latency_p50_s"] is not None


def test_closed_cache_refuses_work(cfg3: dict[str, Any]) -> None:
    cache = TieredCache.from_config(cfg3)
    cache.close()
    cache.close()
    with pytest.raises(tiercache.TierCacheError):
        cache.get("k")


def test_threads_share_a_cache_safely(cfg3: dict[str, Any]) -> None:
    values = {f"k{i}": [shard(1000 * i + v) for v in range(3)] for i in range(10)}
    errors: list[BaseException] = []

    with tiercache.open(cfg3) as cache:
        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(300):
                    key = f"k{rng.integers(10)}"
                    if rng.random() < 0.3:
                        cache.put(key, values[key][int(rng.integers(3))])
                    else:
                        got = cache.get(key, None)
                        if got is not None:
                            assert any(np.array_equal(got, v) for v in values[key])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        cache.check_invariants()
