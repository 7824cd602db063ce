"""Integrity: corrupt copies are detected wherever they are read, dropped, counted, logged
once, and the shard comes from the next tier or the origin; ``verify`` scrubs every tier.

Paths covered: get, the read of a victim during demotion, promotion, prefetch, the
index built on open (damaged headers), and the ``TieredCache.verify`` /
``tiercache verify`` scrub (exit status, --repair, --json, orphan files).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard, three_tier_config

import tiercache
from tiercache import TieredCache, codec
from tiercache.cli import main
from tiercache.origins import NpyDirOrigin
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.packed import PackedStore

KiB = 1024


def corrupt(cache: TieredCache, tier: str, key: str, *, where: str = "payload") -> None:
    """Flip one byte of ``key``'s stored copy in ``tier`` (its payload or its header),
    through the open store's own handles (lmdb cannot be opened twice in a process)."""
    store = cache.tier(tier).store
    kb = codec.key_bytes(key)
    if isinstance(store, LmdbStore):
        def flip(raw: bytes) -> bytes:
            data = bytearray(raw)
            data[len(data) // 2 if where == "payload" else 20] ^= 0x40
            return bytes(data)

        store.rewrite_raw(key, "payload" if where == "payload" else "header", flip)
        return
    if isinstance(store, PackedStore):
        ((offset, length),) = [(o, n) for k, o, n in store.layout() if k == key]
        with open(store.data_file, "r+b") as f:
            f.seek(offset + (length - 1 if where == "payload" else 20))
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x40]))
        return
    assert isinstance(store, DiskcacheStore)
    with sqlite3.connect(store.path / "cache.db") as con:
        ((filename, value),) = con.execute(
            "SELECT filename, value FROM Cache WHERE key = ?", (kb,)).fetchall()
        data = bytearray((store.path / filename).read_bytes() if filename else value)
        data[-1 if where == "payload" else 20] ^= 0x40
        if filename:
            (store.path / filename).write_bytes(bytes(data))
        else:
            con.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(data), kb))


@pytest.fixture
def origin(tmp_path: Path) -> dict[str, np.ndarray]:
    arrays = {f"w{i}": shard(200 + i) for i in range(16)}
    arrays["big"] = shard(300, nbytes=64 * KiB)  # a diskcache value file
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    return arrays


def _cfg(tmp_path: Path, hdd_backend: str = "diskcache", **kw: Any) -> dict[str, Any]:
    cfg = three_tier_config(tmp_path, origin=tmp_path / "origin", **kw)
    cfg["tiers"][2]["backend"] = hdd_backend
    return cfg


def _corrupt_logs(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "corrupt" in r.getMessage() and repr(key) in r.getMessage()]


@pytest.mark.parametrize(("tier", "key", "hdd_backend"), [
    ("ssd", "w1", "diskcache"), ("hdd", "w1", "diskcache"), ("hdd", "big", "diskcache"),
    ("hdd", "w1", "packed"), ("hdd", "big", "packed")])
@pytest.mark.parametrize("where", ["payload", "header"])
def test_get_drops_a_corrupt_copy_and_serves_the_origin(
        tmp_path: Path, origin: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture,
        tier: str, key: str, hdd_backend: str, where: str) -> None:
    with tiercache.open(_cfg(tmp_path, hdd_backend)) as cache:
        cache.put(key, origin[key], tier=tier)
        corrupt(cache, tier, key, where=where)
        with caplog.at_level(logging.WARNING, logger="tiercache"):
            for _ in range(3):  # the scrub reads the same corrupt copy again and again
                assert cache.verify()["tiers"][tier]["corrupt_keys"] == [key]
            for _ in range(4):
                np.testing.assert_array_equal(cache.get(key), origin[key])
                out = np.empty_like(origin[key])
                np.testing.assert_array_equal(cache.get(key, out=out), origin[key])
        assert cache.stats()["tiers"][tier]["corrupt"] == 4  # 3 scrubs + the get that dropped it
        assert tier not in cache.where(key)
        assert len(_corrupt_logs(caplog, key)) == 1  # once, not per read


def test_a_new_corrupt_copy_after_a_put_is_logged_again(
        tmp_path: Path, origin: dict[str, np.ndarray],
        caplog: pytest.LogCaptureFixture) -> None:
    with tiercache.open(_cfg(tmp_path)) as cache, \
            caplog.at_level(logging.WARNING, logger="tiercache"):
        for _ in range(2):
            cache.put("w2", origin["w2"], tier="ssd")
            corrupt(cache, "ssd", "w2")
            cache.get("w2")
            cache.get("w2")
        assert len(_corrupt_logs(caplog, "w2")) == 2
        assert cache.stats()["tiers"]["ssd"]["corrupt"] == 2


def test_corrupt_victim_found_during_demotion_is_dropped_not_moved(
        tmp_path: Path, origin: dict[str, np.ndarray]) -> None:
    with tiercache.open(_cfg(tmp_path)) as cache:
        for i in range(7):  # 7 x (16 KiB + header): the 128 KiB SSD tier is nearly full
            cache.put(f"w{i}", origin[f"w{i}"], tier="ssd")
        assert cache.where("w0") == ["ssd"]
        corrupt(cache, "ssd", "w0")  # the LRU victim
        cache.put("w8", origin["w8"], tier="ssd")  # evicts w0: its read for the move fails
        s = cache.stats()["tiers"]
        assert s["ssd"]["corrupt"] == 1 and s["ssd"]["evictions"] >= 1
        assert cache.where("w0") == []  # not demoted to hdd with bad bytes
        np.testing.assert_array_equal(cache.get("w0"), origin["w0"])
        cache.check_invariants()


def test_corrupt_copy_is_never_promoted(tmp_path: Path, origin: dict[str, np.ndarray]) -> None:
    with tiercache.open(_cfg(tmp_path, promote_after=1)) as cache:
        cache.put("w3", shard(999), tier="hdd")  # a value the origin does not have
        corrupt(cache, "hdd", "w3")
        got = cache.get("w3")
        np.testing.assert_array_equal(got, origin["w3"])  # never the damaged bytes
        assert cache.where("w3") == ["ram"]  # the origin's copy was admitted at the top
        assert cache.stats()["tiers"]["hdd"]["corrupt"] == 1


def test_prefetch_drops_a_corrupt_copy(tmp_path: Path, origin: dict[str, np.ndarray]) -> None:
    with tiercache.open(_cfg(tmp_path)) as cache:
        cache.put("w4", origin["w4"], tier="ssd")
        corrupt(cache, "ssd", "w4")
        assert cache.prefetch("w4") == 0
        assert cache.stats()["tiers"]["ssd"]["corrupt"] == 1
        assert cache.where("w4") == []
        np.testing.assert_array_equal(cache.get("w4"), origin["w4"])
        assert cache.prefetch("w5") == origin["w5"].nbytes  # from the origin: fine


@pytest.mark.parametrize("hdd_backend", ["diskcache", "packed"])
def test_damaged_header_found_on_open_is_dropped(tmp_path: Path, origin: dict[str, np.ndarray],
                                                 hdd_backend: str) -> None:
    with tiercache.open(_cfg(tmp_path, hdd_backend)) as cache:
        cache.put("w6", origin["w6"], tier="ssd")
        cache.put("w7", origin["w7"], tier="hdd")
        corrupt(cache, "ssd", "w6", where="header")
        corrupt(cache, "hdd", "w7", where="header")
    with tiercache.open(_cfg(tmp_path, hdd_backend)) as cache:  # opening never fails on damage
        s = cache.stats()["tiers"]
        assert s["ssd"]["corrupt"] == 1 and s["hdd"]["corrupt"] == 1
        assert cache.where("w6") == [] and cache.where("w7") == []
        report = cache.verify()  # dropped on open, still reported: damage happened
        assert not report["ok"]
        for tier, key in (("ssd", "w6"), ("hdd", "w7")):
            entry = report["tiers"][tier]
            assert (entry["corrupt"], entry["repaired"], entry["corrupt_keys"]) == (1, 1, [key])
        np.testing.assert_array_equal(cache.get("w6"), origin["w6"])


def test_verify_reports_repairs_and_checks_payloads_even_when_reads_do_not(
        tmp_path: Path, origin: dict[str, np.ndarray]) -> None:
    cfg = _cfg(tmp_path)
    cfg["tiers"][1]["verify"] = "never"  # reads skip the payload hash; the scrub does not
    with tiercache.open(cfg) as cache:
        for i in range(6):
            cache.put(f"w{i}", origin[f"w{i}"], tier="ssd" if i % 2 else "hdd")
        cache.put("big", origin["big"], tier="hdd")
        cache.put("ramonly", origin["w9"])
        corrupt(cache, "ssd", "w1")
        corrupt(cache, "hdd", "big")
        report = cache.verify()
        assert not report["ok"]
        t = report["tiers"]
        assert (t["ssd"]["checked"], t["ssd"]["ok"], t["ssd"]["corrupt"]) == (3, 2, 1)
        assert (t["hdd"]["checked"], t["hdd"]["ok"], t["hdd"]["corrupt"]) == (4, 3, 1)
        assert t["ssd"]["corrupt_keys"] == ["w1"] and t["hdd"]["corrupt_keys"] == ["big"]
        assert t["ram"]["checked"] == 1 and t["ram"]["ok"] == 1
        assert "w1" in cache and "big" in cache  # without repair nothing is removed
        report = cache.verify(repair=True)
        assert not report["ok"] and report["tiers"]["ssd"]["repaired"] == 1
        assert "w1" not in cache and "big" not in cache
        assert cache.verify()["ok"]
        np.testing.assert_array_equal(cache.get("big"), origin["big"])
        cache.check_invariants()


def test_verify_finds_orphan_files_and_repair_removes_them(tmp_path: Path) -> None:
    with tiercache.open(three_tier_config(tmp_path)) as cache:
        cache.put("k", shard(1, nbytes=64 * KiB), tier="hdd")
        orphan = tmp_path / "hdd" / "ab" / "cd" / "left-by-a-crash.val"
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"x" * 5000)
        old = time.time() - 3600
        os.utime(orphan, (old, old))
        report = cache.verify()
        assert report["ok"] and report["tiers"]["hdd"]["orphans"] == 1  # a leak, not corruption
        assert orphan.exists()
        cache.verify(repair=True)
        assert not orphan.exists()
        np.testing.assert_array_equal(cache.get("k"), shard(1, nbytes=64 * KiB))


def _write_toml(tmp_path: Path) -> Path:
    toml = tmp_path / "tiers.toml"
    toml.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "64KiB"\n'
                    '[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "ssd"\n'
                    'capacity = "256KiB"\n'
                    '[[tiers]]\nname = "hdd"\nbackend = "diskcache"\npath = "hdd"\n'
                    'capacity = "4MiB"\n')
    return toml


def test_verify_command_exit_status_json_and_repair(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    toml = _write_toml(tmp_path)
    with tiercache.open(toml) as cache:
        for i in range(6):
            cache.put(f"k{i}", shard(i), tier="ssd" if i % 2 else "hdd")
    assert main(["verify", str(toml)]) == 0
    assert "no corruption found" in capsys.readouterr().out
    with tiercache.open(toml) as cache:
        corrupt(cache, "ssd", "k1", where="header")  # found on open: kept for the report
        corrupt(cache, "hdd", "k2")
    assert main(["verify", "--json", str(toml)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["tiers"]["ssd"]["corrupt_keys"] == ["k1"]
    assert report["tiers"]["hdd"]["corrupt_keys"] == ["k2"]
    assert main(["verify", str(toml)]) == 1  # still there: verify alone changes nothing
    out = capsys.readouterr().out
    assert "CORRUPTION FOUND" in out and "'k1'" in out
    assert main(["verify", "--repair", str(toml)]) == 1  # found (and removed)
    assert "removed" in capsys.readouterr().out
    assert main(["verify", str(toml)]) == 0
    with tiercache.open(toml) as cache:
        assert sorted(cache.keys()) == ["k0", "k3", "k4", "k5"]


def test_verify_command_in_a_subprocess(tmp_path: Path) -> None:
    toml = _write_toml(tmp_path)
    with tiercache.open(toml) as cache:
        cache.put("k", shard(1), tier="hdd")
        corrupt(cache, "hdd", "k")
    proc = subprocess.run([sys.executable, "-m", "tiercache", "verify", str(toml)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "CORRUPTION FOUND" in proc.stdout and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tiers]]\nname = 3\n")
    proc = subprocess.run([sys.executable, "-m", "tiercache", "verify", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_lmdb_compaction_keeps_every_shard_and_shrinks_the_file(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "t", capacity_bytes=1 << 20)
    with store:
        arrays = {f"k{i}": shard(i, nbytes=(i % 7 + 1) * 9000) for i in range(60)}
        for key, array in arrays.items():
            store.put(key, array)
        for i in range(0, 60, 2):
            store.delete(f"k{i}")
        before = store.file_nbytes()
        after = store.compact()
        assert after < before
        for i in range(1, 60, 2):
            np.testing.assert_array_equal(store.get(f"k{i}"), arrays[f"k{i}"])
        assert store.get("k0") is None
        store.put("new", shard(5))
        np.testing.assert_array_equal(store.get("new"), shard(5))
    with LmdbStore(tmp_path / "t") as reopened:  # and the compacted file reopens
        assert len(list(reopened.keys())) == 31


def test_random_corruption_campaign_detects_all_and_loses_nothing(tmp_path: Path) -> None:
    """Damage one random byte (header or payload) of half the stored copies: every one is
    detected, counted and dropped, and every get still returns the origin's exact bytes."""
    rng = np.random.default_rng(11)
    arrays = {f"s{i}": shard(400 + i, nbytes=int(rng.choice([4 * KiB, 16 * KiB, 48 * KiB])))
              for i in range(40)}
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    with tiercache.open(_cfg(tmp_path, ssd="512KiB", hdd="4MiB")) as cache:
        for i, (key, array) in enumerate(arrays.items()):
            cache.put(key, array, tier="ssd" if i % 2 else "hdd")
        damaged = {}
        for key in rng.choice(sorted(arrays), size=20, replace=False):
            tier = cache.where(str(key))[0]
            corrupt(cache, tier, str(key), where=str(rng.choice(["payload", "header"])))
            damaged[str(key)] = tier
        report = cache.verify()
        found = {k for t in report["tiers"].values() for k in t["corrupt_keys"]}
        assert found == set(damaged)
        for key, array in arrays.items():
            np.testing.assert_array_equal(cache.get(key), array)
        s = cache.stats()["tiers"]
        dropped = sum(s[t]["corrupt"] for t in ("ssd", "hdd"))
        assert dropped == 2 * len(damaged)  # once by the scrub, once by the get that dropped it
        assert cache.verify()["ok"]
    print(f"corruption campaign: {len(damaged)} damaged copies, {len(found)} found by verify, "
          f"all {len(arrays)} shards served intact")
