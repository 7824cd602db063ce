"""Opening a cache never loses data, and read-only commands change nothing (issues 11, 12).

- A capacity lowered below what a tier holds deletes nothing on open, ``stats`` or
  ``verify``; the tier opens over capacity and gives the excess back by demotion.
- ``tiercache stats`` / ``verify`` create no folder, delete nothing, record nothing.
- Copies of a key left in two tiers by a failure are resolved by write sequence.
- A medium too damaged to open gives a degraded tier; ``verify --repair`` empties it.
- The per-key version map stays bounded; a closed cache raises CacheClosedError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard

import tiercache
from tiercache.cli import main
from tiercache.errors import CacheClosedError, MediumDamagedError, TierCacheError

KiB = 1024


def _two_tier(root: Path, backend: str, capacity: str, *, mode: str = "exclusive",
              record: Path | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"mode": mode, "tiers": [
        {"name": "ssd", "backend": backend, "path": str(root / "ssd"), "capacity": capacity},
        {"name": "hdd", "backend": "diskcache", "path": str(root / "hdd"), "capacity": "64MiB"},
    ]}
    if record is not None:
        cfg["record_trace"] = str(record)
    return cfg


def _write_toml(path: Path, cfg: dict[str, Any]) -> Path:
    lines = [f'mode = "{cfg["mode"]}"']
    if "record_trace" in cfg:
        lines.append(f'record_trace = "{cfg["record_trace"]}"')
    for t in cfg["tiers"]:
        lines.append("[[tiers]]")
        lines += [f'{k} = "{v}"' for k, v in t.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _stored_keys(root: Path, backend: str) -> int:
    from tiercache.stores import open_store

    with open_store(backend, root / "ssd") as store:
        return len(list(store.keys()))


@pytest.mark.parametrize("backend", ["lmdb", "diskcache", "packed"])
def test_a_lowered_capacity_deletes_nothing(tmp_path: Path, backend: str) -> None:
    values = {f"w{i}": shard(i, 100 * KiB) for i in range(60)}  # 6 MB
    with tiercache.open(_two_tier(tmp_path, backend, "8MiB")) as cache:
        for key, value in values.items():
            cache.put(key, value, tier="ssd")
    toml = _write_toml(tmp_path / "tiers.toml", _two_tier(tmp_path, backend, "1MiB"))
    assert main(["verify", str(toml)]) == 0
    assert main(["stats", str(toml)]) == 0
    assert _stored_keys(tmp_path, backend) == 60  # read-only commands deleted nothing
    with tiercache.open(toml) as cache:  # a plain open neither
        ssd = cache.stats()["tiers"]["ssd"]
        assert ssd["resident_count"] == 60 and ssd["over_capacity_bytes"] > 5_000_000
        cache.check_invariants()
        cache.put("new", shard(99, 100 * KiB), tier="ssd")  # needs room: the excess moves down
        assert cache.stats()["tiers"]["ssd"]["over_capacity_bytes"] == 0
        assert cache.stats()["tiers"]["hdd"]["demotions_in"] >= 50
        for key, value in values.items():  # demoted, never dropped
            np.testing.assert_array_equal(cache.get(key), value)
        cache.check_invariants()


def test_read_only_commands_create_record_and_delete_nothing(tmp_path: Path) -> None:
    trace = tmp_path / "runs" / "today.csv"
    cfg = _two_tier(tmp_path / "cache", "lmdb", "4MiB", record=trace)
    toml = _write_toml(tmp_path / "rec.toml", cfg)
    assert main(["stats", str(toml)]) == 0
    assert main(["verify", str(toml)]) == 0
    assert not (tmp_path / "cache").exists()  # no tier folder was created
    assert not trace.exists()  # nothing was recorded
    with tiercache.open(toml) as cache:
        cache.put("k", shard(1))
        for _ in range(2000):
            cache.get("k")
    lines = trace.read_text().splitlines()
    assert len(lines) == 2001
    assert main(["stats", str(toml)]) == 0
    assert main(["verify", str(toml)]) == 0
    assert trace.read_text().splitlines() == lines  # not truncated, nothing appended


def test_a_read_only_cache_refuses_writes(tmp_path: Path) -> None:
    cfg = _two_tier(tmp_path, "lmdb", "4MiB")
    with tiercache.open(cfg) as cache:
        cache.put("k", shard(1))
    with tiercache.TieredCache.from_config(cfg, read_only=True) as cache:
        np.testing.assert_array_equal(cache.get("k"), shard(1))
        with pytest.raises(TierCacheError, match="read-only"):
            cache.put("k", shard(2))
        with pytest.raises(TierCacheError, match="read-only"):
            cache.delete("k")


def _put_raw(cache: tiercache.TieredCache, tier: str, key: str, value: np.ndarray) -> None:
    """Write straight into one tier's medium, bypassing the engine: what a failure leaves."""
    cache.tier(tier).store.put(key, value)


@pytest.mark.parametrize("newer", ["ssd", "hdd"])
def test_duplicates_left_by_a_failure_resolve_to_the_newest_write(tmp_path: Path,
                                                                  newer: str) -> None:
    cfg = _two_tier(tmp_path, "lmdb", "4MiB")
    older = "hdd" if newer == "ssd" else "ssd"
    with tiercache.open(cfg) as cache:
        _put_raw(cache, older, "k", shard(1))   # e.g. a put reported failed that landed
        _put_raw(cache, newer, "k", shard(2))   # the acknowledged put after it
    with tiercache.open(cfg) as cache:
        np.testing.assert_array_equal(cache.get("k"), shard(2))
        assert cache.where("k") == [newer]
        assert cache.duplicates_dropped == 1
    with tiercache.open(cfg) as cache:  # the stale copy was deleted, not just hidden
        assert cache.where("k") == [newer]


@pytest.mark.parametrize(("mode", "kept"), [("exclusive", ["ssd"]), ("inclusive", ["ssd", "hdd"])])
def test_same_value_copies_keep_the_fastest_or_all(tmp_path: Path, mode: str,
                                                   kept: list[str]) -> None:
    cfg = _two_tier(tmp_path, "lmdb", "4MiB", mode=mode)
    with tiercache.open(cfg) as cache:
        _put_raw(cache, "hdd", "k", shard(3))
        _put_raw(cache, "ssd", "k", shard(3))  # an interrupted demotion: same value twice
    with tiercache.open(cfg) as cache:
        assert cache.where("k") == kept
        np.testing.assert_array_equal(cache.get("k"), shard(3))


def test_a_read_only_open_resolves_duplicates_without_deleting(tmp_path: Path) -> None:
    cfg = _two_tier(tmp_path, "lmdb", "4MiB")
    with tiercache.open(cfg) as cache:
        _put_raw(cache, "ssd", "k", shard(1))
        _put_raw(cache, "hdd", "k", shard(2))
    with tiercache.TieredCache.from_config(cfg, read_only=True) as cache:
        np.testing.assert_array_equal(cache.get("k"), shard(2))
    assert _stored_keys(tmp_path, "lmdb") == 1  # the stale copy is still there ...
    with tiercache.open(cfg) as cache:  # ... until a writable open drops it
        np.testing.assert_array_equal(cache.get("k"), shard(2))
    assert _stored_keys(tmp_path, "lmdb") == 0


def test_a_damaged_medium_opens_degraded_and_repair_empties_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _two_tier(tmp_path, "lmdb", "4MiB")
    with tiercache.open(cfg) as cache:
        cache.put("k", shard(1), tier="hdd")
    (tmp_path / "ssd" / "junk").write_bytes(b"left by the damaged medium")
    from tiercache.stores import lmdb_store

    original = lmdb_store.LmdbStore.__init__

    def damaged(self: Any, *args: Any, **kwargs: Any) -> None:
        raise MediumDamagedError(f"{tmp_path / 'ssd' / 'data.mdb'}: truncated (injected)")

    monkeypatch.setattr(lmdb_store.LmdbStore, "__init__", damaged)
    with tiercache.open(cfg) as cache:  # opens: the damaged tier is degraded, not fatal
        ssd = cache.stats()["tiers"]["ssd"]
        assert ssd["degraded"] and "truncated (injected)" in ssd["degraded_reason"]
        np.testing.assert_array_equal(cache.get("k"), shard(1))
        cache.put("k2", shard(2))  # goes to the healthy tier
        assert cache.where("k2") == ["hdd"]
    toml = _write_toml(tmp_path / "tiers.toml", cfg)
    assert main(["verify", "--json", str(toml)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["tiers"]["ssd"]["corrupt"] == 1
    assert "truncated (injected)" in report["tiers"]["ssd"]["corrupt_keys"][0]
    assert (tmp_path / "ssd" / "junk").exists()  # read-only: nothing touched
    monkeypatch.setattr(lmdb_store.LmdbStore, "__init__", original)

    def damaged_until_emptied(self: Any, path: Path, *args: Any, **kwargs: Any) -> None:
        if (Path(path) / "junk").exists():
            raise MediumDamagedError(f"{path}/data.mdb: truncated (injected)")
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(lmdb_store.LmdbStore, "__init__", damaged_until_emptied)
    assert main(["verify", "--repair", "--json", str(toml)]) == 1  # found (and repaired)
    report = json.loads(capsys.readouterr().out)
    assert report["tiers"]["ssd"]["repaired"] == 1
    assert not (tmp_path / "ssd" / "junk").exists()
    with tiercache.open(cfg) as cache:
        assert not cache.stats()["tiers"]["ssd"]["degraded"]
        cache.put("k3", shard(3), tier="ssd")
        assert cache.where("k3") == ["ssd"]
    assert main(["verify", str(toml)]) == 0


def test_verify_names_the_manifest_shards_that_are_missing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _two_tier(tmp_path, "lmdb", "4MiB")
    toml = _write_toml(tmp_path / "tiers.toml", cfg)
    from tiercache.models.manifest import ModelManifest, TensorInfo

    ModelManifest("bert", name="m", tensors={f"t{i}": TensorInfo((4,), "float32", 16)
                                             for i in range(5)}
                  ).save(tmp_path / "tiers.model.json")
    with tiercache.open(toml) as cache:
        for i in range(3):
            cache.put(f"t{i}", np.zeros(4, np.float32))
    assert main(["verify", str(toml)]) == 1
    out = capsys.readouterr().out
    assert "missing: 2 shard(s)" in out and "'t3'" in out and "'t4'" in out
    assert "no corruption found" not in out
    with tiercache.open(toml) as cache:
        for i in range(3, 5):
            cache.put(f"t{i}", np.zeros(4, np.float32))
    assert main(["verify", str(toml)]) == 0


def test_the_version_map_stays_bounded(tmp_path: Path) -> None:
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}]}
    with tiercache.open(cfg) as cache:
        one = np.zeros(1, np.uint8)
        for i in range(140_000):
            cache.put(f"k{i}", one)
            cache.delete(f"k{i}")
        assert cache.versions_tracked <= 65_536 + 1


def test_a_closed_cache_raises_cache_closed_error(tmp_path: Path) -> None:
    cache = tiercache.open(_two_tier(tmp_path, "lmdb", "4MiB"))
    cache.put("k", shard(1))
    cache.close()
    with pytest.raises(CacheClosedError):
        cache.get("k")
    with pytest.raises(CacheClosedError):
        cache.put("k", shard(1))


def _hold_open(cfg: dict[str, Any], ready: Any, done: Any) -> None:
    with tiercache.open(cfg):
        ready.set()
        done.wait(60)


@pytest.mark.parametrize("backend", ["lmdb", "diskcache", "packed"])
def test_stats_and_verify_read_beside_the_owner_and_repair_is_refused(
        tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    import multiprocessing

    cfg = _two_tier(tmp_path, backend, "4MiB")
    with tiercache.open(cfg) as cache:
        cache.put("k", shard(1), tier="ssd")
    toml = _write_toml(tmp_path / "tiers.toml", cfg)
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    owner = ctx.Process(target=_hold_open, args=(cfg, ready, done))
    owner.start()
    try:
        assert ready.wait(60)
        assert main(["stats", str(toml)]) == 0      # a reader beside the owner
        assert main(["verify", str(toml)]) == 0
        capsys.readouterr()
        assert main(["verify", "--repair", str(toml)]) == 2  # a writer is refused, clearly
        assert "in use by another process" in capsys.readouterr().err
    finally:
        done.set()
        owner.join(60)
    assert owner.exitcode == 0
