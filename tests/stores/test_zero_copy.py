"""Zero-copy serving: diskcache value files and the packed store's data file memory-mapped
into read-only arrays."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard

import tiercache
from tiercache import codec
from tiercache.errors import ConfigError, CorruptShardError
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.packed import PackedStore
from tiercache.stores.registry import DiskStoreClass

KiB = 1024
#: The backends whose stores serve views (``zero_copy = true``).
VIEW_STORES: dict[str, DiskStoreClass] = {"diskcache": DiskcacheStore, "packed": PackedStore}


@pytest.fixture(params=sorted(VIEW_STORES))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_cls(backend: str) -> DiskStoreClass:
    return VIEW_STORES[backend]


def test_view_is_zero_copy_read_only_and_aligned(tmp_path: Path, store_cls: DiskStoreClass) -> None:
    store = store_cls(tmp_path / "hdd")
    a = shard(1, nbytes=256 * KiB)
    store.put("w", a)
    view = store.get_view("w")
    assert view is not None
    np.testing.assert_array_equal(view, a)
    assert view.dtype == a.dtype and view.shape == a.shape
    assert not view.flags.writeable
    assert isinstance(view.base, mmap.mmap)  # a memory map, not a copy
    assert view.ctypes.data % 64 == 0
    assert store.get_view("missing") is None
    store.close()


def test_view_survives_overwrite_and_delete(tmp_path: Path, store_cls: DiskStoreClass) -> None:
    store = store_cls(tmp_path / "hdd")
    old, new = shard(2, nbytes=128 * KiB), shard(3, nbytes=128 * KiB)
    store.put("w", old)
    view = store.get_view("w")
    store.put("w", new)
    store.delete("w")
    np.testing.assert_array_equal(view, old)  # an immutable snapshot of the old file
    assert store.get_view("w") is None
    store.close()
    np.testing.assert_array_equal(view, old)  # and it outlives the store


def test_small_inline_values_are_decoded(tmp_path: Path, store_cls: DiskStoreClass) -> None:
    store = store_cls(tmp_path / "hdd")
    store.put("s", np.arange(5, dtype=np.int16))
    view = store.get_view("s")
    assert view is not None and not view.flags.writeable
    np.testing.assert_array_equal(view, np.arange(5, dtype=np.int16))
    store.close()


def test_first_view_verifies_later_views_do_not_rehash(tmp_path: Path, store_cls: DiskStoreClass,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_cls(tmp_path / "hdd")
    store.put("w", shard(4, nbytes=256 * KiB))
    calls: list[int] = []
    real = codec.payload_checksum

    def counting(payload: Any) -> int:
        calls.append(len(payload))
        return real(payload)

    monkeypatch.setattr(codec, "payload_checksum", counting)
    for _ in range(3):
        store.get_view("w")
    assert len(calls) == 1
    store.close()


def test_corrupt_file_is_detected_on_first_view(tmp_path: Path, backend: str,
                                                store_cls: DiskStoreClass) -> None:
    store = store_cls(tmp_path / "hdd")
    store.put("w", shard(5, nbytes=256 * KiB))
    if backend == "diskcache":
        (value_file,) = [p for p in (tmp_path / "hdd").rglob("*.val")]
    else:
        (value_file,) = [p for p in (tmp_path / "hdd").glob("data.*.bin")]
    with open(value_file, "r+b") as f:  # one payload byte, in place
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CorruptShardError):
        store.get_view("w")
    with pytest.raises(CorruptShardError):
        store.get_view("w")  # a failed check is not remembered as verified
    store.close()


def _config(root: Path, zero_copy: bool = True, backend: str = "diskcache") -> dict[str, Any]:
    return {"mode": "inclusive", "tiers": [
        {"name": "ram", "backend": "memory", "capacity": "256KiB", "policy": "lru"},
        {"name": "ssd", "backend": backend, "path": str(root / "ssd"), "capacity": "8MiB",
         "zero_copy": zero_copy, "promote_after": "never"}]}


def test_engine_serves_views_from_a_zero_copy_tier(tmp_path: Path, backend: str) -> None:
    with tiercache.open(_config(tmp_path, backend=backend)) as cache:
        a = shard(6, nbytes=512 * KiB)
        cache.put("w", a, tier="ssd")
        got = cache.get("w")
        np.testing.assert_array_equal(got, a)
        assert isinstance(got.base, mmap.mmap) and not got.flags.writeable
        out = np.empty_like(a)
        assert cache.get("w", out=out) is out  # an explicit buffer still gets a copy
        np.testing.assert_array_equal(out, a)
        cache.declare_schedule(["w"])
        # warms the page cache, no copy into RAM (packed counts the bytes it advised: the
        # stored shard, header included)
        advised = cache.tier("ssd").store.stored_size(a) if backend == "packed" else a.nbytes
        assert cache.prefetch("w") == advised
        assert cache.where("w") == ["ssd"]


def test_promotion_from_a_view_copies_into_ram(tmp_path: Path, backend: str) -> None:
    cfg = _config(tmp_path, backend=backend)
    cfg["tiers"][1]["promote_after"] = 1
    with tiercache.open(cfg) as cache:
        a = shard(7, nbytes=64 * KiB)
        cache.put("w", a, tier="ssd")
        view = cache.get("w")
        assert cache.where("w") == ["ram", "ssd"]
        cached = cache.get("w")
        assert cached is not view and not isinstance(cached.base, mmap.mmap)
        np.testing.assert_array_equal(cached, a)


def test_zero_copy_needs_a_backend_that_can(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg["tiers"][1]["backend"] = "lmdb"
    with pytest.raises(ConfigError, match="zero-copy"):
        tiercache.load_config(cfg)
    cfg = _config(tmp_path)
    cfg["tiers"][1]["zero_copy"] = "yes"
    with pytest.raises(ConfigError, match="true or false"):
        tiercache.load_config(cfg)


def test_cached_views_notice_rewrites_and_deletes(tmp_path: Path,
                                                  store_cls: DiskStoreClass) -> None:
    store = store_cls(tmp_path / "hdd")
    a, b = shard(8, nbytes=128 * KiB), shard(9, nbytes=128 * KiB)
    store.put("w", a)
    first = store.get_view("w")
    assert store.get_view("w") is first  # cached: no new mapping
    store.put("w", b)
    np.testing.assert_array_equal(store.get_view("w"), b)
    other = store_cls(tmp_path / "hdd")  # another writer (as another process would be)
    other.put("w", a)
    np.testing.assert_array_equal(store.get_view("w"), a)  # the old file is gone: re-read
    other.delete("w")
    assert store.get_view("w") is None
    np.testing.assert_array_equal(first, a)  # old views stay valid snapshots
    other.close()
    store.close()
