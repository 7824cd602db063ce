"""Zero-copy views stay verified: bytes changed under a live mapping are caught at the
next read, never served as good (issue 11 item 3: views are the default on diskcache
and packed tiers).

A view is a mapping of the page cache, so a view already handed out shows a change
made to the file; what the store guarantees is that its next read verifies the bytes
again and raises (the engine then drops the copy and reads below or from the origin).
The change is seen through the file's size, mtime and ctime; each test waits a few
clock ticks after the store's own write first, since a change landing within the same
file-system timestamp tick as that write is not visible (docs/reliability.md, limits).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import shard

import tiercache
from tiercache.errors import CorruptShardError
from tiercache.origins import NpyDirOrigin
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.packed import PackedStore

NBYTES = 256 * 1024  # large enough for diskcache to keep it in a value file of its own
TICK_S = 0.05  # past the file system's timestamp granularity (a few ms)


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of ``path`` in place, as another program (or a bad tool) would."""
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset)
    finally:
        os.close(fd)


def test_packed_byte_flipped_under_a_live_view_is_caught(tmp_path: Path) -> None:
    store = PackedStore(tmp_path / "packed")
    try:
        good = shard(1, NBYTES)
        store.put("w", good)
        store.put("other", shard(2, NBYTES))
        view = store.get_view("w")  # verified now
        assert view is not None
        np.testing.assert_array_equal(view, good)
        assert store.get_view("w") is view  # cached, not re-hashed
        time.sleep(TICK_S)
        (_key, offset, length), = [row for row in store.layout() if row[0] == "w"]
        flip_byte(store.data_file, offset + length - 1)  # the payload's last byte
        assert not np.array_equal(view, good)  # the live mapping shows the change ...
        with pytest.raises(CorruptShardError, match="checksum"):
            store.get_view("w")  # ... and the next read refuses it
        other = store.get_view("other")  # an untouched shard is re-verified and served
        assert other is not None
        np.testing.assert_array_equal(other, shard(2, NBYTES))
    finally:
        store.close()


def test_packed_own_writes_keep_earlier_views_verified(tmp_path: Path) -> None:
    """The store's own appends change the file too, but do not cost a re-check."""
    store = PackedStore(tmp_path / "packed")
    try:
        store.put("w", shard(1, NBYTES))
        assert store.get_view("w") is not None
        assert not store.needs_check("w")
        store.put("later", shard(3, NBYTES))
        assert store.get_view("w") is not None
        assert not store.needs_check("w")
    finally:
        store.close()


def test_diskcache_byte_flipped_under_a_live_view_is_caught(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path / "dc")
    try:
        good = shard(1, NBYTES)
        store.put("w", good)
        time.sleep(TICK_S)
        view = store.get_view("w")
        assert view is not None
        np.testing.assert_array_equal(view, good)
        path = store.value_file("w")
        assert path is not None
        flip_byte(path, path.stat().st_size - 1)
        assert not np.array_equal(view, good)
        with pytest.raises(CorruptShardError, match="checksum"):
            store.get_view("w")
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["packed", "diskcache"])
def test_the_cache_never_serves_a_view_changed_underneath(tmp_path: Path, backend: str) -> None:
    """Through the engine, with the default config (views on): the changed copy is
    dropped and the shard comes from the origin, right."""
    good = shard(4, NBYTES)
    NpyDirOrigin.write(tmp_path / "origin", {"w": good})
    cfg = {"origin": {"kind": "npy", "path": str(tmp_path / "origin")},
           "tiers": [{"name": "disk", "backend": backend, "path": str(tmp_path / "disk"),
                      "capacity": "16MiB"}]}
    with tiercache.open(cfg) as cache:
        assert cache.tier("disk").zero_copy  # the default where the backend can
        cache.put("w", good)
        time.sleep(TICK_S)
        first = cache.get("w")
        np.testing.assert_array_equal(first, good)
        assert not first.flags.writeable
        store = cache.tier("disk").store
        if isinstance(store, PackedStore):
            (_key, offset, length), = store.layout()
            flip_byte(store.data_file, offset + length - 1)
        else:
            assert isinstance(store, DiskcacheStore)
            path = store.value_file("w")
            assert path is not None
            flip_byte(path, path.stat().st_size - 1)
        np.testing.assert_array_equal(cache.get("w"), good)
        assert cache.stats()["tiers"]["disk"]["corrupt"] == 1


def test_views_are_the_default_where_the_backend_serves_them(tmp_path: Path) -> None:
    cfg = {"tiers": [
        {"name": "a", "backend": "packed", "path": str(tmp_path / "a"), "capacity": "1MiB"},
        {"name": "b", "backend": "diskcache", "path": str(tmp_path / "b"), "capacity": "1MiB"},
        {"name": "c", "backend": "lmdb", "path": str(tmp_path / "c"), "capacity": "1MiB"},
        {"name": "d", "backend": "packed", "path": str(tmp_path / "d"), "capacity": "1MiB",
         "zero_copy": False}]}
    with tiercache.open(cfg) as cache:
        assert [t.zero_copy for t in cache.tiers] == [True, True, False, False]
        cache.put("w", shard(5), tier="d")
        copy = cache.get("w")
        assert copy.flags.writeable  # a copying tier hands out the caller's own array
