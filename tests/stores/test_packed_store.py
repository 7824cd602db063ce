"""The packed store: one append-only data file, memory-mapped views, compaction, several
instances and processes on one folder, damage and crash leftovers; and the features built
for it: shards written in reading order, ``TieredCache.advise``, prefetch staging and the
buffer pool's bound on free buffers."""

from __future__ import annotations

import ast
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard, three_tier_config
from memcap import run_capped

import tiercache
from tiercache import codec
from tiercache.buffers import MIN_POOLED_BYTES, BufferPool
from tiercache.errors import (
    CacheClosedError,
    CorruptShardError,
    MediumDamagedError,
    StoreError,
)
from tiercache.models.importers.base import CacheSink, PlannedShard, in_reading_order
from tiercache.models.importers.synthetic import synthetic_hparams, synthetic_llama
from tiercache.models.llama import LlamaHParams, llama_schedule
from tiercache.origins import NpyDirOrigin
from tiercache.stores.disk import DiskStore
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.packed import PackedStore
from tiercache.stores.packed import store as packed_store
from tiercache.stores.packed.datafile import (
    LARGE_ALIGN_BYTES,
    LARGE_SHARD_BYTES,
    SMALL_ALIGN_BYTES,
)
from tiercache.testing import ARRAYS, assert_same

KiB = 1024
MiB = 1 << 20
BIG = 96 * KiB  # a large shard: page aligned
SMALL = 2 * KiB  # a small one: 64-byte aligned


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PackedStore]:
    with PackedStore(tmp_path / "tier") as s:
        yield s


def data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("data.*.bin"))


def generation(folder: Path) -> int:
    (name,) = data_files(folder)
    return int(name.split(".")[1])


def flip_byte(path: Path, offset: int) -> None:
    """Flip one bit of the byte at ``offset`` of ``path``, in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


class ChecksumCounter:
    """Counts calls of ``codec.payload_checksum`` (the hash a view's first check runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = codec.payload_checksum

        def counting(payload: Any) -> int:
            self.calls += 1
            return real(payload)

        monkeypatch.setattr(codec, "payload_checksum", counting)


# -- views ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARRAYS))
def test_views_of_every_kind_of_array(store: PackedStore, name: str) -> None:
    array = ARRAYS[name]
    store.put(name, array)
    view = store.get_view(name)
    assert_same(view, array)
    assert view is not None and not view.flags.writeable and view.flags.c_contiguous
    assert view.ctypes.data % 64 == 0 or view.nbytes == 0
    with pytest.raises(ValueError):
        view[...] = 0  # read-only: the file can never be written through a view


def test_layout_alignment_and_sizes(store: PackedStore) -> None:
    arrays = {"small": shard(1, SMALL), "big": shard(2, BIG), "tiny": np.arange(3, dtype=np.int8),
              "big2": shard(3, BIG + 12)}
    for key, array in arrays.items():
        store.put(key, array)
    layout = store.layout()
    assert [k for k, _, _ in layout] == list(arrays)  # appended in put order
    end = 0
    for key, offset, length in layout:
        assert offset >= end
        assert length == store.stored_size(arrays[key])
        align = LARGE_ALIGN_BYTES if length >= LARGE_SHARD_BYTES else SMALL_ALIGN_BYTES
        assert offset % align == 0
        end = offset + length
    live, size = store.disk_usage()
    assert live == sum(length for _, _, length in layout)
    assert size == end
    assert list(store.keys()) == list(arrays)


def test_views_survive_overwrite_delete_and_compaction(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    store = PackedStore(folder)
    old_big, old_small = shard(1, BIG), shard(2, SMALL)
    store.put("big", old_big)
    store.put("small", old_small)
    big_view, small_view = store.get_view("big"), store.get_view("small")
    assert store.get_view("big") is big_view  # cached
    new_big = shard(3, BIG)
    store.put("big", new_big)
    store.delete("small")
    assert_same(big_view, old_big)
    assert_same(small_view, old_small)
    assert_same(store.get_view("big"), new_big)
    assert store.get_view("small") is None and "small" not in store
    assert data_files(folder) == ["data.0.bin"]
    store.compact()
    assert data_files(folder) == ["data.1.bin"]  # the old file is unlinked...
    assert_same(big_view, old_big)  # ...but its mapping still reads the old bytes
    assert_same(small_view, old_small)
    compacted = store.get_view("big")
    assert compacted is not None and compacted is not big_view
    assert_same(compacted, new_big)
    store.close()
    assert_same(big_view, old_big)  # and views outlive the store
    assert_same(compacted, new_big)


def test_a_second_view_of_an_unchanged_shard_is_not_rehashed(
        store: PackedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put("a", shard(1, BIG))
    store.put("b", shard(2, SMALL))
    counter = ChecksumCounter(monkeypatch)
    first = store.get_view("a")
    assert counter.calls == 1  # the first view checks the payload
    for _ in range(3):
        assert store.get_view("a") is first
    assert store.advise("a") > 0
    assert counter.calls == 1  # later views (and read-ahead) do not hash again
    store.put("b", shard(3, SMALL))  # our own write to another key keeps a's view
    calls = counter.calls
    assert store.get_view("a") is first
    assert counter.calls == calls
    store.put("a", shard(4, BIG))  # a new stored shard: checked once more
    calls = counter.calls
    assert_same(store.get_view("a"), shard(4, BIG))
    store.get_view("a")
    assert counter.calls == calls + 1


def test_advise_returns_the_stored_length(store: PackedStore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    big, small = shard(1, BIG), shard(2, SMALL)
    store.put("big", big)
    store.put("small", small)
    lengths = {key: length for key, _offset, length in store.layout()}
    assert store.advise("big") == lengths["big"] == store.stored_size(big)
    assert store.advise("small") == lengths["small"] == store.stored_size(small)
    assert store.advise("missing") == 0
    store.delete("small")
    assert store.advise("small") == 0
    counter = ChecksumCounter(monkeypatch)
    store.put("fresh", shard(3, BIG))
    calls = counter.calls
    assert store.needs_check("fresh")
    assert store.advise("fresh") == store.stored_size(shard(3, BIG))
    assert counter.calls == calls  # read-ahead never waits for the bytes (no hashing)...
    assert store.needs_check("fresh")
    assert_same(store.get_view("fresh"), shard(3, BIG))
    assert counter.calls == calls + 1  # ...the first view verifies
    assert not store.needs_check("fresh")
    assert_same(store.get_view("fresh"), shard(3, BIG))
    assert counter.calls == calls + 1


# -- compaction ----------------------------------------------------------------------------


def test_compaction_reclaims_dead_space_and_keeps_every_shard(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    arrays = {f"k{i}": shard(i, BIG if i % 3 == 0 else SMALL) for i in range(12)}
    with PackedStore(folder) as store:
        for key, array in arrays.items():
            store.put(key, array)
        for i in range(0, 12, 2):
            store.put(f"k{i}", shard(100 + i, BIG if i % 3 == 0 else SMALL))
            arrays[f"k{i}"] = shard(100 + i, BIG if i % 3 == 0 else SMALL)
        for i in range(1, 12, 4):
            store.delete(f"k{i}")
            del arrays[f"k{i}"]
        live, before = store.disk_usage()
        assert before > live + BIG  # dead space from the overwrites and deletes
        reclaimed = store.compact()
        live_after, after = store.disk_usage()
        assert live_after == live
        assert reclaimed == before - after > 0
        assert after < live + LARGE_ALIGN_BYTES * len(arrays)  # only alignment padding left
        for key, array in arrays.items():
            assert_same(store.get(key), array)
    with PackedStore(folder) as reopened:
        assert sorted(reopened.keys()) == sorted(arrays)
        for key, array in arrays.items():
            assert_same(reopened.get(key), array)
        assert data_files(folder) == ["data.1.bin"]


def test_compact_in_a_given_order(store: PackedStore) -> None:
    arrays = {f"k{i}": shard(i, BIG if i % 2 else SMALL) for i in range(8)}
    for key, array in arrays.items():
        store.put(key, array)
    order = ["k5", "k2", "missing", "k7", "k2", "k0"]  # unknown keys and repeats are ignored
    store.compact(order)
    layout = store.layout()
    assert [k for k, _, _ in layout] == ["k5", "k2", "k7", "k0", "k1", "k3", "k4", "k6"]
    end = 0
    for key, offset, length in layout:
        align = LARGE_ALIGN_BYTES if length >= LARGE_SHARD_BYTES else SMALL_ALIGN_BYTES
        assert offset >= end and offset % align == 0
        end = offset + length
        assert_same(store.get(key), arrays[key])
    assert list(store.keys()) == [k for k, _, _ in layout]
    store.compact(list(reversed(list(arrays))))
    assert [k for k, _, _ in store.layout()] == list(reversed(list(arrays)))


def test_compaction_runs_by_itself_once_dead_bytes_pass_live_and_minimum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_store, "COMPACT_MIN_DEAD_BYTES", 256 * KiB)
    folder = tmp_path / "tier"
    store = PackedStore(folder)
    for i in range(4):
        store.put(f"k{i}", shard(i, BIG))
    first_view = store.get_view("k0")
    overwrites = 0
    while generation(folder) == 0:
        live, size = store.disk_usage()
        assert size - live <= max(256 * KiB, live)  # not before dead bytes pass both
        overwrites += 1
        assert overwrites < 10, "never compacted"
        store.put("k0", shard(100 + overwrites, BIG))
    assert overwrites >= 3  # 3 dead copies of 96 KiB are still under 256 KiB + live
    live, size = store.disk_usage()
    assert size <= live + 4 * LARGE_ALIGN_BYTES
    assert data_files(folder) == ["data.1.bin"]
    assert_same(first_view, shard(0, BIG))
    assert_same(store.get("k0"), shard(100 + overwrites, BIG))
    for i in range(1, 4):
        assert_same(store.get(f"k{i}"), shard(i, BIG))
    for i in range(1, 4):  # deletes count too
        store.delete(f"k{i}")
    assert generation(folder) == 2
    assert [k for k, _, _ in store.layout()] == ["k0"]
    store.close()


def test_no_compaction_below_the_minimum_dead_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    with PackedStore(folder) as store:
        for i in range(30):  # 30 x 96 KiB dead, far more than live, under the 64 MiB default
            store.put("k", shard(i, BIG))
        live, size = store.disk_usage()
        assert size > 20 * live
        assert data_files(folder) == ["data.0.bin"]


def test_compact_with_zero_minimum_keeps_the_file_tight(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_store, "COMPACT_MIN_DEAD_BYTES", 0)
    folder = tmp_path / "tier"
    rng = np.random.default_rng(3)
    expected: dict[str, np.ndarray] = {}
    with PackedStore(folder) as store:
        for i in range(200):
            key = f"k{int(rng.integers(10))}"
            if rng.random() < 0.2:
                store.delete(key)
                expected.pop(key, None)
            else:
                expected[key] = shard(i, int(rng.integers(1, 160)) * KiB)
                store.put(key, expected[key])
            live, size = store.disk_usage()
            assert size <= 2 * live + LARGE_ALIGN_BYTES * (len(expected) + 1)
            assert len(data_files(folder)) == 1
        assert generation(folder) > 10
        assert sorted(store.keys()) == sorted(expected)
        for key, array in expected.items():
            assert_same(store.get(key), array)


# -- several instances and processes on one folder -----------------------------------------


def test_another_instance_sees_puts_overwrites_deletes_and_compactions(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    a, b = PackedStore(folder), PackedStore(folder)
    try:
        a.put("k", shard(1, BIG))
        a.put("other", shard(2, SMALL))
        cached = b.get_view("k")  # b caches its view and entry of k
        assert_same(cached, shard(1, BIG))
        assert "k" in b and "nope" not in b
        a.put("k", shard(3, BIG))  # overwritten through a
        fresh = b.get_view("k")
        assert fresh is not cached
        assert_same(fresh, shard(3, BIG))
        assert_same(b.get("k"), shard(3, BIG))
        assert_same(cached, shard(1, BIG))  # the view cached before stays the old snapshot
        info = b.info("k")
        assert info is not None and info.stored_nbytes == b.stored_size(shard(3, BIG))
        assert "k" in b
        a.delete("k")  # deleted through a: b's cached entry must not answer
        assert "k" not in b
        assert b.get_view("k") is None and b.get("k") is None and b.info("k") is None
        assert_same(fresh, shard(3, BIG))
        other_view = b.get_view("other")
        a.put("late", shard(4, BIG))
        a.compact(["late", "other"])  # a new data file, the old one unlinked
        assert data_files(folder) == ["data.1.bin"]
        assert_same(b.get_view("other"), shard(2, SMALL))
        assert_same(b.get_view("late"), shard(4, BIG))
        assert_same(other_view, shard(2, SMALL))
        assert [k for k, _, _ in b.layout()] == ["late", "other"]
        b.put("from-b", shard(5, SMALL))  # b writes into the file a compacted into
        assert data_files(folder) == ["data.1.bin"]
        assert_same(a.get_view("from-b"), shard(5, SMALL))
        assert [k for k, _, _ in a.layout()] == ["late", "other", "from-b"]
        b.compact()
        assert_same(a.get("late"), shard(4, BIG))
        assert data_files(folder) == ["data.2.bin"]
        assert a.disk_usage() == b.disk_usage()
    finally:
        a.close()
        b.close()


def _try_open(folder: str) -> str:  # runs in a forked child process
    try:
        PackedStore(folder, capacity_bytes=1 << 20).close()
    except StoreError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "opened"


def test_a_tier_store_holds_its_folder_against_other_processes(tmp_path: Path) -> None:
    """A tier's store (capacity given: exclusive) holds lock_tier_folder's lock: another
    process -- or another exclusive store here -- is refused with the holder's pid, and
    the folder is free again once closed, after a reopen and after a failed open."""
    folder = tmp_path / "tier"
    with PackedStore(folder, capacity_bytes=1 << 20) as store:
        store.put("k", shard(1, SMALL))
        refused = run_capped(_try_open, str(folder), timeout_s=60)
        assert refused.ok, refused.describe()
        assert refused.value.startswith("StoreError: tier folder"), refused.value
        assert f"in use by another process (pid {os.getpid()})" in refused.value
        with pytest.raises(StoreError, match=r"in use by another store of this process"):
            PackedStore(folder, capacity_bytes=1 << 20)
        store.reopen()
        assert "in use" in run_capped(_try_open, str(folder), timeout_s=60).value
        assert_same(store.get("k"), shard(1, SMALL))  # the refused opens changed nothing
    assert run_capped(_try_open, str(folder), timeout_s=60).value == "opened"
    with sqlite3.connect(folder / "index.sqlite") as con:
        con.execute("UPDATE meta SET value = 2 WHERE name = 'format'")
    con.close()
    with pytest.raises(StoreError, match="format 2"):
        PackedStore(folder, capacity_bytes=1 << 20)
    assert "format 2" in run_capped(_try_open, str(folder), timeout_s=60).value  # not "in use"


KEYS = 6
ROUNDS = 60


def _sizes(i: int) -> int:
    return (100, 5000, 20000)[i % 3]  # int64 elements: 800 B, 40 KB, 160 KB


def _versioned(i: int, version: int) -> np.ndarray:
    return np.full(_sizes(i), i * 1000 + version, np.int64)


def _final(i: int) -> np.ndarray | None:
    return None if (ROUNDS + i) % 5 == 0 else _versioned(i, ROUNDS)


def _write_rounds(path: str, go: Any) -> None:  # pragma: no cover - child process
    packed_store.COMPACT_MIN_DEAD_BYTES = 256 * KiB  # automatic compactions too
    store = PackedStore(path)
    go.wait(60)
    for r in range(1, ROUNDS + 1):
        for i in range(KEYS):
            if (r + i) % 5 == 0:
                store.delete(f"k{i}")
            else:
                store.put(f"k{i}", _versioned(i, r))
        if r % 7 == 0:
            store.compact([f"k{i}" for i in reversed(range(KEYS))])
        time.sleep(0.004)
    store.put("done", np.array(ROUNDS))
    store.close()


def test_a_writer_process_and_a_reader_share_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    reader = PackedStore(folder)
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    child = ctx.Process(target=_write_rounds, args=(str(folder), go))
    child.start()
    held: list[tuple[np.ndarray, bytes]] = []  # views and their bytes when first seen
    versions: set[int] = set()
    try:
        go.set()
        deadline = time.monotonic() + 60
        while "done" not in reader and time.monotonic() < deadline:
            for i in range(KEYS):
                key = f"k{i}"
                for got in (reader.get(key), reader.get_view(key)):
                    if got is None:
                        continue
                    assert got.shape == (_sizes(i),) and got.dtype == np.int64
                    value = int(got[0])
                    assert value // 1000 == i, f"{key} holds another key's value {value}"
                    assert (got == value).all(), f"{key}: a mix of versions"
                    versions.add(value % 1000)
                view = reader.get_view(key)
                if view is not None and len(held) < 200:
                    held.append((view, view.tobytes()))
        child.join(60)
        assert child.exitcode == 0
        assert "done" in reader
        assert len(versions) >= 3, versions  # the reads did overlap the writes
        for view, seen in held:  # views stay what they were, whatever the writer did
            assert view.tobytes() == seen
        for i in range(KEYS):
            expected = _final(i)
            if expected is None:
                assert reader.get(f"k{i}") is None and f"k{i}" not in reader
            else:
                assert_same(reader.get(f"k{i}"), expected)
                assert_same(reader.get_view(f"k{i}"), expected)
        assert len(data_files(folder)) == 1  # every compaction unlinked the old file
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        reader.close()


def test_threads_read_views_while_another_overwrites_and_compacts(tmp_path: Path) -> None:
    store = PackedStore(tmp_path / "tier")
    values = {f"k{i}": [shard(10 * i + v, BIG if i % 2 else SMALL) for v in range(3)]
              for i in range(4)}
    for key, options in values.items():
        store.put(key, options[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for key, options in values.items():
                    view = store.get_view(key)
                    assert view is not None
                    assert any(np.array_equal(view, o) for o in options), key
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(60):
            for key, options in values.items():
                store.put(key, options[n % 3])
            if n % 10 == 0:
                store.compact()
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.close()
    assert errors == []


# -- damage and crash leftovers ------------------------------------------------------------


def test_a_flipped_payload_byte_is_corrupt_for_get_and_view(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    with PackedStore(folder) as store:
        store.put("a", shard(1, BIG))
        store.put("b", shard(2, SMALL))
        offset, length = {k: (o, n) for k, o, n in store.layout()}["a"]
    flip_byte(folder / "data.0.bin", offset + length - 7)
    with PackedStore(folder) as store:
        with pytest.raises(CorruptShardError, match="checksum"):
            store.get_view("a")
        with pytest.raises(CorruptShardError, match="checksum"):
            store.get("a")
        assert store.advise("a") > 0  # read-ahead does not verify...
        assert store.needs_check("a")  # ...and a failed check is never cached as verified
        with pytest.raises(CorruptShardError):
            store.get_view("a")
        assert_same(store.get_view("b"), shard(2, SMALL))
    with PackedStore(folder, verify="never") as store:  # only the payload check is skipped
        damaged = store.get_view("a")
        assert damaged is not None
        assert (damaged.view(np.uint8) != shard(1, BIG).view(np.uint8)).sum() == 1


def test_a_row_past_the_end_of_the_data_file_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    with PackedStore(folder) as store:
        store.put("a", shard(1, SMALL))
        store.put("b", shard(2, BIG))
        offset = {k: o for k, o, _ in store.layout()}["b"]
    os.truncate(folder / "data.0.bin", offset + 200)  # e.g. bytes lost in an OS crash
    with PackedStore(folder) as store:
        assert_same(store.get("a"), shard(1, SMALL))
        for read in (store.get, store.get_view, store.advise, store.info):
            with pytest.raises(CorruptShardError, match="past the end"):
                read("b")
        assert "b" in store
        assert store.delete("b")
        store.put("c", shard(3, BIG))  # the store goes on working
        assert_same(store.get_view("c"), shard(3, BIG))
    os.truncate(folder / "data.0.bin", 10)  # cut into a header
    with PackedStore(folder) as store, pytest.raises(CorruptShardError):
        store.get("a")


def test_a_missing_data_file_is_a_store_error_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    with PackedStore(folder) as store:
        store.put("a", shard(1, SMALL))
    (folder / "data.0.bin").unlink()
    with pytest.raises(StoreError, match="missing") as info:
        PackedStore(folder)
    assert str(folder) in str(info.value)
    empty = tmp_path / "empty"
    PackedStore(empty).close()
    (empty / "data.0.bin").unlink()
    with PackedStore(empty) as store:  # no rows: nothing lost, the file is created again
        assert list(store.keys()) == []
        store.put("a", shard(1, SMALL))
        assert_same(store.get("a"), shard(1, SMALL))


def test_an_index_of_another_format_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    with PackedStore(folder) as store:
        store.put("a", shard(1, SMALL))
    with sqlite3.connect(folder / "index.sqlite") as con:
        con.execute("UPDATE meta SET value = 2 WHERE name = 'format'")
    with pytest.raises(StoreError, match="format 2") as info:
        PackedStore(folder)
    assert str(folder) in str(info.value)
    (folder / "index.sqlite").unlink()
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        (folder / extra).unlink(missing_ok=True)
    (folder / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="index"):
        PackedStore(folder)


def test_bytes_of_a_killed_writer_are_skipped_and_compacted_away(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    with PackedStore(folder) as store:
        store.put("a", shard(1, BIG))
        store.put("b", shard(2, SMALL))
    garbage = codec.encode("ghost", shard(9, BIG))[:70_000]  # a header and half a payload
    with open(folder / "data.0.bin", "ab") as f:  # written, but the row never committed
        f.write(garbage)
    size_with_garbage = (folder / "data.0.bin").stat().st_size
    with PackedStore(folder) as store:
        assert sorted(store.keys()) == ["a", "b"] and "ghost" not in store
        assert_same(store.get("a"), shard(1, BIG))
        assert_same(store.get_view("b"), shard(2, SMALL))
        store.put("c", shard(3, BIG))
        offset = {k: o for k, o, _ in store.layout()}["c"]
        assert offset >= size_with_garbage and offset % LARGE_ALIGN_BYTES == 0
        assert_same(store.get_view("c"), shard(3, BIG))
        live, size = store.disk_usage()
        assert size - live > len(garbage)  # dead space...
        store.compact()
        live, size = store.disk_usage()
        assert size < live + 3 * LARGE_ALIGN_BYTES  # ...reclaimed by the next compaction
        for key, seed, n in (("a", 1, BIG), ("b", 2, SMALL), ("c", 3, BIG)):
            assert_same(store.get(key), shard(seed, n))


def test_sweep_orphans_removes_stale_generations_never_the_current(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    old = time.time() - 3600
    with PackedStore(folder) as store:
        store.put("a", shard(1, BIG))
        stray = folder / "data.7.bin"  # left by a compaction a crash interrupted
        stray.write_bytes(b"x" * 5000)
        young = folder / "data.8.bin"
        young.write_bytes(b"y")
        unrelated = folder / "data.x.bin"
        unrelated.write_bytes(b"z")
        for path in (stray, unrelated, folder / "data.0.bin"):
            os.utime(path, (old, old))
        assert store.sweep_orphans() == 1  # counted, not removed
        assert stray.exists()
        assert store.sweep_orphans(remove=True) == 1
        assert not stray.exists()
        assert young.exists() and unrelated.exists()  # too young / not a data file
        assert (folder / "data.0.bin").exists()
        assert store.sweep_orphans(remove=True, min_age_s=0) == 1
        assert not young.exists()
        store.compact()  # now generation 1 is current
        leftover = folder / "data.0.bin"
        leftover.write_bytes(b"half a compaction")
        os.utime(leftover, (old, old))
        os.utime(folder / "data.1.bin", (old, old))
        assert store.sweep_orphans(remove=True, min_age_s=0) == 1
        assert data_files(folder) == ["data.1.bin", "data.x.bin"]
        assert_same(store.get("a"), shard(1, BIG))


def test_verify_repair_counts_and_removes_orphans_of_a_packed_tier(tmp_path: Path) -> None:
    cfg = {"tiers": [{"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"),
                      "capacity": "4MiB"}]}
    with tiercache.open(cfg) as cache:
        cache.put("k", shard(1, BIG))
        orphan = tmp_path / "ssd" / "data.5.bin"
        orphan.write_bytes(b"o" * 100)
        report = cache.verify(orphan_min_age_s=0)
        assert report["ok"] and report["tiers"]["ssd"]["orphans"] == 1
        assert orphan.exists()
        cache.verify(repair=True, orphan_min_age_s=0)
        assert not orphan.exists()
        assert_same(cache.get("k"), shard(1, BIG))


def test_a_corrupt_packed_copy_is_dropped_and_served_from_the_origin(tmp_path: Path) -> None:
    NpyDirOrigin.write(tmp_path / "origin", {"w": shard(1, BIG)})
    cfg = {"origin": {"kind": "npy", "path": str(tmp_path / "origin")},
           "tiers": [{"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"),
                      "capacity": "4MiB", "zero_copy": True}]}
    with tiercache.open(cfg) as cache:
        cache.put("w", shard(1, BIG))
        store = cache.tier("ssd").store
        assert isinstance(store, PackedStore)
        offset, length = {k: (o, n) for k, o, n in store.layout()}["w"]
        flip_byte(tmp_path / "ssd" / "data.0.bin", offset + length // 2)
        assert cache.verify()["tiers"]["ssd"]["corrupt_keys"] == ["w"]
        assert_same(cache.get("w"), shard(1, BIG))  # the view's check fails: origin
        assert cache.stats()["tiers"]["ssd"]["corrupt"] == 2
        assert cache.where("w") == ["ssd"]  # re-admitted from the origin, intact
        assert_same(cache.get("w"), shard(1, BIG))


def test_a_closed_store_raises_cache_closed_error_and_its_views_stay_valid(
        tmp_path: Path) -> None:
    store = PackedStore(tmp_path / "tier")
    store.put("a", shard(1, BIG))
    view = store.get_view("a")
    store.close()
    for call in (lambda: store.get("a"), lambda: store.get_view("a"), lambda: store.info("a"),
                 lambda: "a" in store, lambda: store.advise("a"), store.layout,
                 store.disk_usage, store.compact, store.sweep_orphans, store.keys,
                 lambda: store.put("b", np.array(1)), lambda: store.delete("a")):
        with pytest.raises(CacheClosedError, match="closed"):
            call()
    assert_same(view, shard(1, BIG))
    store.reopen()
    assert_same(store.get_view("a"), shard(1, BIG))
    store.close()


def test_failed_opens_do_not_leak_file_descriptors(tmp_path: Path) -> None:
    """A tier retries opening a broken folder again and again: each try must clean up."""
    folder = tmp_path / "tier"
    PackedStore(folder).close()
    with sqlite3.connect(folder / "index.sqlite") as con:
        con.execute("UPDATE meta SET value = 2 WHERE name = 'format'")

    def try_open() -> None:
        with pytest.raises(StoreError):
            PackedStore(folder)

    try_open()  # warm-up: whatever sqlite keeps open once
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        try_open()
    assert len(os.listdir("/proc/self/fd")) - before <= 1


def test_a_removed_folder_is_noticed_and_reopened(tmp_path: Path) -> None:
    origin = {f"w{i}": shard(100 + i, BIG) for i in range(3)}
    NpyDirOrigin.write(tmp_path / "origin", origin)
    cfg = three_tier_config(tmp_path, origin=tmp_path / "origin", ssd="1MiB")
    cfg["tiers"][1].update(backend="packed", zero_copy=True)
    with tiercache.open(cfg) as cache:
        for tier in cache.tiers:
            tier.retry_backoff_s = tier.retry_backoff_max_s = 0.01
        for key, array in origin.items():
            cache.put(key, array, tier="ssd")
        shutil.rmtree(tmp_path / "ssd")
        for key, array in origin.items():  # the unlinked files still serve the right bytes
            assert_same(cache.get(key), array)
        cache.put("probe", shard(7), tier="ssd")  # the write notices the folder is gone
        ssd = cache.stats()["tiers"]["ssd"]
        assert ssd["degraded"] and "removed" in ssd["degraded_reason"]
        assert cache.where("probe") == ["hdd"]
        for key, array in origin.items():
            assert_same(cache.get(key), array)
        time.sleep(0.05)
        cache.put("fresh", shard(8), tier="ssd")  # the retry reopens an empty folder
        assert (tmp_path / "ssd" / "index.sqlite").is_file()
        assert cache.where("fresh") == ["ssd"]
        assert_same(cache.get("fresh"), shard(8))
        assert not cache.stats()["tiers"]["ssd"]["degraded"]
        cache.check_invariants()


# -- reading order -------------------------------------------------------------------------


def _plan(keys: list[str]) -> list[PlannedShard]:
    return [PlannedShard(k, (1,), np.dtype(np.float32), lambda: np.zeros(1, np.float32))
            for k in keys]


def test_in_reading_order_sorts_by_first_schedule_position() -> None:
    plan = _plan(["z-extra", "c", "a", "y-extra", "b", "d"])
    schedule = ["a", "b", "c", "missing", "d", "a"]  # "a" read first and last (tied embeddings)
    ordered = in_reading_order(plan, schedule)
    assert [p.key for p in ordered] == ["a", "b", "c", "d", "z-extra", "y-extra"]
    assert ordered[0] is plan[2]  # the planned shards themselves, loaders included
    assert [p.key for p in in_reading_order(plan, [])] == [p.key for p in plan]
    assert in_reading_order([], schedule) == []
    # a key repeated early must not push a later listed key among the unlisted ones
    early = in_reading_order(_plan(["z", "d", "a"]), ["a", "b", "a", "d"])
    assert [p.key for p in early] == ["a", "d", "z"]


def _first_appearance(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def _reversed_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make models list their tensors in reverse reading order (as some GGUF files do)."""
    real = LlamaHParams.tensor_shapes

    def backwards(self: LlamaHParams) -> dict[str, tuple[int, ...]]:
        return dict(reversed(list(real(self).items())))

    monkeypatch.setattr(LlamaHParams, "tensor_shapes", backwards)


def _packed_cache(tmp_path: Path) -> dict[str, Any]:
    return {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "64KiB"},
        {"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"), "capacity": "16MiB",
         "zero_copy": True}]}


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_import_lays_shards_out_in_reading_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tied: bool) -> None:
    _reversed_shapes(monkeypatch)
    hp = synthetic_hparams(layers=3, dim=64, vocab=300, tied=tied)
    schedule = llama_schedule(hp)
    assert next(iter(hp.tensor_shapes())) != schedule[0]  # the plan does come out of order
    with tiercache.open(_packed_cache(tmp_path)) as cache:
        manifest = synthetic_llama(CacheSink(cache, "ssd"), hp, seed=1, progress=False)
        store = cache.tier("ssd").store
        assert isinstance(store, PackedStore)
        layout = [k for k, _, _ in store.layout()]
        assert layout == _first_appearance(schedule)
        assert sorted(layout) == sorted(manifest.tensors)
        offsets = [o for _, o, _ in store.layout()]
        assert offsets == sorted(offsets)


def test_gguf_import_lays_shards_out_in_reading_order(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from gguf_fixtures import write_tiny_gguf

    from tiercache.models.importers.gguf import import_gguf

    with monkeypatch.context() as patch:  # a GGUF file whose tensors are in reverse order
        _reversed_shapes(patch)
        write_tiny_gguf(tmp_path / "tiny.gguf")
    with tiercache.open(_packed_cache(tmp_path)) as cache:
        manifest = import_gguf(tmp_path / "tiny.gguf", CacheSink(cache, "ssd"), progress=False)
        store = cache.tier("ssd").store
        assert isinstance(store, PackedStore)
        layout = [k for k, _, _ in store.layout()]
        assert layout == _first_appearance(llama_schedule(manifest.llama_hparams()))


# -- the engine: advise, prefetch over a zero-copy packed tier, staging ----------------------

LAYERS = [f"blk.{i}.weight" for i in range(12)]


def _advise_config(root: Path, origin: Path | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"mode": "inclusive", "tiers": [
        {"name": "ram", "backend": "memory", "capacity": "256KiB"},
        {"name": "ssd", "backend": "lmdb", "path": str(root / "ssd"), "capacity": "2MiB",
         "promote_after": "never"},
        {"name": "hdd", "backend": "packed", "path": str(root / "hdd"), "capacity": "8MiB",
         "zero_copy": True, "promote_after": "never"}]}
    if origin is not None:
        cfg["origin"] = {"kind": "npy", "path": str(origin)}
    return cfg


def test_advise_depends_on_where_the_fastest_copy_is(tmp_path: Path) -> None:
    with tiercache.open(_advise_config(tmp_path)) as cache:
        cache.put("in-ram", shard(1), tier="ram")
        cache.put("on-lmdb", shard(2), tier="ssd")
        cache.put("on-packed", shard(3, BIG), tier="hdd")
        assert cache.where("on-packed") == ["hdd"]
        assert cache.advise("on-lmdb") is None  # a copy is needed: prefetch's job
        assert cache.advise("in-ram") == 0  # already at the top
        assert cache.advise("nowhere") == 0  # nothing to do without an origin
        # not verified yet: reading it whole to check it is the prefetch thread's job
        assert cache.advise("on-packed") is None
        assert_same(cache.get("on-packed"), shard(3, BIG))  # the first view verifies it
        advised = cache.advise("on-packed")
        assert isinstance(advised, int)
        assert advised == cache.tier("hdd").store.stored_size(shard(3, BIG))
        loop = cache.stats()["loop"]
        assert loop["prefetched"] == 1 and loop["prefetched_bytes"] == advised
        assert cache.where("on-packed") == ["hdd"]  # read ahead in place, not copied up
    assert cache.advise("on-packed") == 0  # closed: nothing to do
    NpyDirOrigin.write(tmp_path / "origin", {"far": shard(4)})
    with tiercache.open(_advise_config(tmp_path / "o", tmp_path / "origin")) as cache:
        assert cache.advise("far") is None  # the origin has it: a copy is needed


def test_prefetcher_reads_ahead_on_a_zero_copy_packed_tier_without_copies(tmp_path: Path) -> None:
    with tiercache.open(_advise_config(tmp_path)) as cache:
        for i, key in enumerate(LAYERS):
            cache.put(key, shard(i, BIG), tier="hdd")
        cache.declare_schedule(LAYERS)
        cache.start_prefetcher(depth=3)
        for _ in range(2):
            for i, key in enumerate(LAYERS):
                got = cache.get(key)
                assert_same(got, shard(i, BIG))
                assert not got.flags.writeable  # a view of the data file
        loop = cache.stats()["loop"]
        assert loop["prefetched"] >= len(LAYERS) and loop["staged_hits"] == 0
        assert cache.staged() == {}
        assert all(cache.where(key) == ["hdd"] for key in LAYERS)


def _staging_config(root: Path) -> dict[str, Any]:
    # RAM (OPT) holds 4 of the 12 shards; the SSD tier is lmdb: reads are copies
    return three_tier_config(root, mode="inclusive", ram="64KiB", ssd="2MiB", hdd="4MiB",
                             ram_policy="opt", promote_after="always")


def test_prefetched_copies_are_staged_for_the_loop(tmp_path: Path) -> None:
    with tiercache.open(_staging_config(tmp_path)) as cache:
        for i, key in enumerate(LAYERS):
            cache.put(key, shard(i), tier="ssd")
        cache.declare_schedule(LAYERS)
        cache.start_prefetcher(depth=2)
        for _ in range(4):
            for i, key in enumerate(LAYERS):
                assert_same(cache.get(key), shard(i))
                time.sleep(0.005)  # the layer's compute, while the prefetcher reads
        loop = cache.stats()["loop"]
        assert loop["gets"] == 4 * len(LAYERS)
        assert loop["staged_hits"] > 0
        assert loop["stalls"] < loop["gets"] // 2
        assert sum(cache.staged().values()) <= cache.staging_max_bytes
        cache.put("extra", shard(50), tier="ssd")  # not scheduled: stays staged until read
        assert cache.prefetch("extra") == shard(50).nbytes
        assert cache.staged().get("extra", 0) >= shard(50).nbytes
        cache.stop_prefetcher()
        assert cache.staged() == {}
        assert_same(cache.get("extra"), shard(50))
        staged_hits = loop["staged_hits"]
        for i, key in enumerate(LAYERS):  # without a prefetcher nothing is staged
            assert_same(cache.get(key), shard(i))
        assert cache.prefetch(LAYERS[5]) in (0, shard(5).nbytes)
        assert cache.staged() == {}
        assert cache.stats()["loop"]["staged_hits"] == staged_hits


def test_a_staged_copy_never_outlives_a_put_or_delete(tmp_path: Path) -> None:
    with tiercache.open(_staging_config(tmp_path)) as cache:
        for i, key in enumerate(LAYERS):
            cache.put(key, shard(i), tier="ssd")
        cache.declare_schedule(LAYERS)
        cache.start_prefetcher(depth=2)  # idle: no get has moved the cursor yet
        key = "extra"  # not in the schedule: its gets move no cursor, wake no prefetcher
        cache.put(key, shard(50), tier="ssd")
        assert cache.prefetch(key) == shard(50).nbytes
        assert key in cache.staged() and cache.where(key) == ["ssd"]
        assert cache.prefetch(key) == 0  # already staged
        cache.put(key, shard(55), tier="ssd")  # a new value: the staged copy is stale
        assert key not in cache.staged()
        assert cache.stats()["loop"]["staged_hits"] == 0
        assert cache.prefetch(key) == shard(55).nbytes
        assert_same(cache.get(key), shard(55))  # served from staging
        assert cache.stats()["loop"]["staged_hits"] == 1
        assert key not in cache.staged()
        other = "extra2"
        cache.put(other, shard(60), tier="ssd")
        assert cache.prefetch(other) == shard(60).nbytes
        cache.delete(other)
        assert cache.staged() == {}
        assert cache.get(other, None) is None
        assert cache.stats()["loop"]["staged_hits"] == 1


# -- the buffer pool's bound on free buffers -------------------------------------------------

N = MIN_POOLED_BYTES


def test_buffer_pool_keeps_at_most_max_free_bytes_of_free_buffers() -> None:
    pool = BufferPool(max_free_bytes=3 * N)
    held = [pool.acquire(N + k * 64 * KiB) for k in range(8)]  # 8 size classes
    tracked = pool.stats()["tracked_bytes"]
    assert tracked >= 8 * N
    del held
    assert pool.stats()["free_bytes"] == tracked  # all free, none released yet
    extra = pool.acquire(20 * N)  # must allocate: releases the free buffers beyond the bound
    stats = pool.stats()
    assert stats["free_bytes"] <= 3 * N
    assert stats["free_bytes"] > 0  # it keeps up to the bound, not nothing
    assert extra.nbytes == 20 * N
    unbounded = BufferPool()
    held = [unbounded.acquire(N + k * 64 * KiB) for k in range(8)]
    del held
    unbounded.acquire(20 * N)
    assert unbounded.stats()["free_bytes"] > 3 * N  # the default bound is far above


def test_buffer_pool_bound_still_recycles_and_skips_oversized_buffers() -> None:
    pool = BufferPool(max_free_bytes=2 * N)
    a = pool.acquire(N)
    address = a.ctypes.data
    del a
    b = pool.acquire(N)
    assert b.ctypes.data == address and pool.reused == 1  # within the bound: reused
    del b
    big = pool.acquire(4 * N)  # larger than the bound: never tracked (never kept free)
    assert big.nbytes == 4 * N
    assert pool.stats()["tracked_bytes"] == pool.size_class(N)
    del big
    assert pool.stats()["free_bytes"] == pool.size_class(N)


# -- the disk-store base every disk store shares (issue 13) -----------------------------------

#: Each disk store and the file whose identity its health check compares.
DISK_STORES: list[tuple[type[DiskStore], str]] = [
    (PackedStore, "index.sqlite"), (LmdbStore, "data.mdb"), (DiskcacheStore, "cache.db")]


def _store_id(value: object) -> str:
    return getattr(value, "__name__", str(value))


def _disk_store(cls: type[DiskStore], folder: Path, **kwargs: Any) -> DiskStore:
    if cls is LmdbStore:
        kwargs.setdefault("map_size_bytes", 64 << 20)  # a small map: many of them open at once
    return cls(folder, **kwargs)


@pytest.mark.parametrize(("cls", "identity_file"), DISK_STORES, ids=_store_id)
def test_every_disk_store_reports_and_recovers_through_the_shared_base(
        tmp_path: Path, cls: type[DiskStore], identity_file: str) -> None:
    folder = tmp_path / "tier"
    store = _disk_store(cls, folder, capacity_bytes=1 << 20)
    assert isinstance(store, DiskStore) and store.persistent and store.identity_file == \
        identity_file
    with pytest.raises(ValueError, match="verify must be"):
        _disk_store(cls, tmp_path / "other", verify="sometimes")
    store.put("a", shard(1))
    assert store.check_health() is None
    shutil.rmtree(folder)
    assert f"{folder / identity_file} was removed" in (store.check_health() or "")
    store.reopen()  # a new, empty folder, locked again
    assert store.check_health() is None and store.get("a") is None
    with pytest.raises(StoreError, match="in use by another store of this process"):
        _disk_store(cls, folder, capacity_bytes=1 << 20)
    store.close()
    assert store.check_health() == f"{cls.backend} store {folder} is closed"
    _disk_store(cls, folder, capacity_bytes=1 << 20).close()  # the lock went with the close


@pytest.mark.parametrize(("cls", "identity_file"), DISK_STORES, ids=_store_id)
def test_a_failed_reopen_keeps_the_folder_until_close(
        tmp_path: Path, cls: type[DiskStore], identity_file: str) -> None:
    """Every disk store alike: a reopen that finds a damaged medium keeps the tier folder's
    lock (the tier retries; no other process slips in meanwhile), and close releases it."""
    folder = tmp_path / "tier"
    store = _disk_store(cls, folder, capacity_bytes=1 << 20)
    store.put("a", shard(1))
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / identity_file).write_bytes(b"not a medium " * 512)
    with pytest.raises(MediumDamagedError, match=identity_file):
        store.reopen()
    with pytest.raises(StoreError, match="in use by another store of this process"):
        _disk_store(cls, folder, capacity_bytes=1 << 20)
    store.close()
    with pytest.raises(MediumDamagedError, match=identity_file):  # the lock is free again
        _disk_store(cls, folder, capacity_bytes=1 << 20)


def test_no_store_module_over_600_lines_nor_class_over_400() -> None:
    """The size limits of issue 13, for the stores: a module that outgrows them is split
    along its seams (as packed/ and lmdb_meta.py were)."""
    root = Path(tiercache.__file__).parent / "stores"
    too_big = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 600:
            too_big.append(f"{path.relative_to(root)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None \
                    and node.end_lineno - node.lineno + 1 > 400:
                too_big.append(f"{path.relative_to(root)}: class {node.name} has "
                               f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_big, too_big
