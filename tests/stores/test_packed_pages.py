"""The packed store's page-cache calls (release after use, evictions noticed, reads
left to the prefetcher's threads) and the prefetcher's keep set over them: a loop
larger than memory keeps a fixed part of its zero-copy shards in the page cache and
lets the rest go right after use -- never the bytes: a view stays right."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.buffers import pages_resident
from tiercache.serving import prefetcher as prefetcher_module
from tiercache.stores.packed import PackedStore
from tiercache.stores.packed.readahead import drop_range

KiB = 1024
REPO = Path(__file__).resolve().parents[2]


def _drops_pages(folder: Path) -> bool:
    """Whether ``posix_fadvise(DONTNEED)`` empties the page cache of a file here (not
    on tmpfs, whose pages are the file)."""
    probe = folder / "probe"
    probe.write_bytes(os.urandom(256 * KiB))
    with probe.open("rb") as f:
        os.fsync(f.fileno())
        mapping = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        view = np.frombuffer(mapping, np.uint8)
        int(view.sum())
        drop_range(mapping, f.fileno(), 0, len(mapping))
        dropped = not pages_resident(view)
        del view
        mapping.close()
    probe.unlink()
    return dropped


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a file system whose page cache can be dropped: ``tmp_path``, or one
    beside the repository when that is tmpfs."""
    if _drops_pages(tmp_path):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix=".test-pages-", dir=REPO))
    try:
        assert _drops_pages(path), "no file system here lets the page cache be dropped"
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _array(seed: int, nbytes: int = 512 * KiB) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(nbytes // 4).astype(np.float32)


def _synced_store(folder: Path) -> PackedStore:
    store = PackedStore(folder / "packed")
    store.put("a", _array(1))
    store.put("b", _array(2))
    os.sync()  # clean pages: only clean pages leave the page cache on request
    return store


def test_release_drops_the_pages_not_the_bytes(folder: Path) -> None:
    store = _synced_store(folder)
    try:
        va, vb = store.get_view("a"), store.get_view("b")
        assert va is not None and vb is not None
        float(va.sum()) + float(vb.sum())
        assert pages_resident(va) and pages_resident(vb)
        released = store.release("a")
        assert released > 0 and released % 4096 == 0 and released <= va.nbytes + 4096
        assert not pages_resident(va)
        assert pages_resident(vb)  # only that shard
        assert not store.viewed("a")  # the next advise reads it ahead again
        np.testing.assert_array_equal(va, _array(1))  # a touch reads the file again
        assert store.release("nope") == 0
    finally:
        store.close()


def test_a_shard_read_before_and_evicted_is_counted_not_read_ahead(folder: Path) -> None:
    store = _synced_store(folder)
    try:
        view = store.get_view("a")
        assert view is not None
        float(view.sum())
        assert store.advise("a") > 0 and store.page_evictions() == 0  # resident
        entry, _ = store._views["a"]
        assert isinstance(view.base, mmap.mmap)
        drop_range(view.base, store._data.fd, entry.offset, entry.length)  # "the kernel"
        assert store.advise("a") == entry.length
        assert store.page_evictions() == entry.length
        store.release("a")  # released on purpose: read ahead, not counted
        store.advise("a")
        assert store.page_evictions() == entry.length
        np.testing.assert_array_equal(view, _array(1))
    finally:
        store.close()


def _layout(root: Path) -> dict[str, Any]:
    return {"mode": "inclusive", "tiers": [
        {"name": "ram", "backend": "memory", "capacity": "600KiB", "policy": "opt"},
        {"name": "ssd", "backend": "packed", "path": str(root / "ssd"), "capacity": "64MiB",
         "policy": "lru", "zero_copy": True, "promote_after": 1}]}


KEYS = [f"blk.{i}.weight" for i in range(12)]


@contextlib.contextmanager
def _thrashing(folder: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[tuple[tiercache.TieredCache, list[int]]]:
    """A cache holding :data:`KEYS` on its packed tier, the schedule declared, whose
    page-cache evictions are the returned counter (the test adds what a pass lost)."""
    with tiercache.open(_layout(folder)) as cache:
        for i, key in enumerate(KEYS):
            cache.put(key, _array(i), tier="ssd")
        os.sync()
        cache.declare_schedule(KEYS)
        evictions = [0]
        monkeypatch.setattr(cache, "page_evictions", lambda: evictions[0])
        yield cache, evictions


@pytest.mark.parametrize("drop_behind", [True, False])
def test_under_pressure_the_prefetcher_keeps_a_part_and_releases_the_rest(
        folder: Path, monkeypatch: pytest.MonkeyPatch, drop_behind: bool) -> None:
    monkeypatch.setattr(prefetcher_module, "page_cache_room_bytes", lambda: 3 << 20)
    with _thrashing(folder, monkeypatch) as (cache, evictions):
        batch: list[str] = []
        released: list[str] = []
        release = cache.release

        def watched_release(key: str) -> int:
            assert key not in batch, f"{key} released while the loop holds it"
            done = release(key)
            if done:
                released.append(key)
            return done

        monkeypatch.setattr(cache, "release", watched_release)
        prefetcher = cache.start_prefetcher(depth=3, drop_behind=drop_behind)
        for _ in range(6):
            for start in range(0, len(KEYS), 3):  # a "layer" of three shards at a time
                batch[:] = KEYS[start:start + 3]
                for key, value in zip(batch, cache.get_many(batch), strict=True):
                    np.testing.assert_array_equal(value, _array(KEYS.index(key)))
            evictions[0] += 8 << 20  # every pass the page cache loses the loop
        keep = prefetcher.keep
        loop = cache.stats()["loop"]
        if not drop_behind:
            assert released == [] and not keep.active and loop["released"] == 0
            assert loop["page_cache"] is None
            return
        assert loop["page_cache"]["passes"] >= 5 and loop["page_cache"]["active"]
        assert keep.active and keep.members is not None
        assert released and not set(released) & keep.members
        assert loop["released"] > 0 and loop["released_bytes"] > 0
        in_ram = {k for k in KEYS if cache.where(k)[0] == "ram"}
        assert not set(released) & in_ram  # a memory tier's copy is never "released"
        assert keep.target_bytes is not None and keep.kept_bytes <= keep.target_bytes <= 3 << 20


def test_read_once_copies_the_bytes_and_leaves_no_pages_behind(folder: Path) -> None:
    store = _synced_store(folder)
    try:
        vb = store.get_view("b")
        assert vb is not None
        float(vb.sum())
        copy = store.read_once("a")  # verifies "a" (first read in this process)
        assert copy is not None and copy.flags.writeable and copy.flags.c_contiguous
        assert copy.ctypes.data % 4096 == 0
        np.testing.assert_array_equal(copy, _array(1))
        view = store.get_view("a")  # verified by the copy: the view reads nothing
        assert view is not None and not pages_resident(view)
        assert pages_resident(vb)  # only that shard's pages went
        copy[:] = 0  # a private copy: the stored bytes stay
        np.testing.assert_array_equal(store.read_once("a"), _array(1))
        assert store.read_once("nope") is None
    finally:
        store.close()


def _flip_payload_byte(store: PackedStore, key: str) -> None:
    view = store.get_view(key)  # (verifies the intact shard first)
    assert view is not None
    entry, _ = store._views[key]
    fd = os.open(store.data_file, os.O_RDWR)
    try:
        where = entry.offset + entry.header.header_nbytes + 100
        os.pwrite(fd, bytes([os.pread(fd, 1, where)[0] ^ 0x40]), where)
    finally:
        os.close(fd)


def test_read_once_checks_a_shard_as_a_view_would(folder: Path) -> None:
    """Not verified in this process, or the file changed underneath: the copy is
    verified, and a changed byte is an error, never the bytes served."""
    store = _synced_store(folder)
    try:
        _flip_payload_byte(store, "a")  # another program writes into the file
        with pytest.raises(tiercache.CorruptShardError, match="checksum"):
            store.read_once("a")
        np.testing.assert_array_equal(store.read_once("b"), _array(2))  # re-verified: fine
    finally:
        store.close()
    again = PackedStore(folder / "packed")  # a new process: nothing verified yet
    try:
        with pytest.raises(tiercache.CorruptShardError, match="checksum"):
            again.read_once("a")
    finally:
        again.close()


def test_read_once_of_a_memory_tier_is_a_plain_get() -> None:
    from tiercache.stores.memory import MemoryStore

    store = MemoryStore()
    store.put("k", _array(3))
    np.testing.assert_array_equal(store.read_once("k"), _array(3))
    assert store.read_once("nope") is None


@pytest.mark.parametrize("stream", [True, False])
def test_the_prefetcher_streams_what_the_keep_set_releases(
        folder: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    """Shards outside the keep set are read ahead once (read_once, staged within
    max_bytes) and served from there, exactly; a put meanwhile wins over the copy."""
    monkeypatch.setattr(prefetcher_module, "page_cache_room_bytes", lambda: 3 << 20)
    once: list[str] = []
    read_once = PackedStore.read_once

    def recorded(self: PackedStore, key: str) -> np.ndarray | None:
        once.append(key)
        return read_once(self, key)

    monkeypatch.setattr(PackedStore, "read_once", recorded)
    budget = 4 << 20
    with _thrashing(folder, monkeypatch) as (cache, evictions):
        prefetcher = cache.start_prefetcher(depth=3, drop_behind=True, max_bytes=budget,
                                            stream=stream)
        values = {key: _array(i) for i, key in enumerate(KEYS)}
        most_staged = 0
        for round_ in range(10):
            for start in range(0, len(KEYS), 3):
                batch = KEYS[start:start + 3]
                for key, value in zip(batch, cache.get_many(batch), strict=True):
                    np.testing.assert_array_equal(value, values[key])
                most_staged = max(most_staged, sum(cache.staged().values()))
            evictions[0] += 8 << 20  # every pass the page cache loses the loop
            if round_ == 7 and stream:  # a new value while its streamed copy waits
                deadline = time.monotonic() + 10
                waiting: list[str] = []
                while not waiting and time.monotonic() < deadline:
                    waiting = [k for k in cache.staged() if k in prefetcher.streamed]
                    time.sleep(0.005)
                assert waiting, "the prefetcher staged no streamed copy ahead of the loop"
                values[waiting[0]] = _array(100)
                cache.put(waiting[0], values[waiting[0]], tier="ssd")
        keep = prefetcher.keep
        assert keep.active and keep.members is not None
        loop = cache.stats()["loop"]
        if not stream:
            assert not prefetcher.streamed and not once and loop["staged_hits"] == 0
            return
        streamed = set(prefetcher.streamed)
        assert streamed and not streamed & keep.members
        assert all(size <= budget // 4 for size in prefetcher.streamed.values())
        assert once and set(once) <= streamed  # nothing kept or in RAM read that way
        assert loop["staged_hits"] > 0
        assert most_staged <= budget
