"""Stores: the shared contract, corruption detection, the codec, growth, concurrency, registry."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

import hypothesis.extra.numpy as hnp
import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, rule

import tiercache.stores as stores_pkg
from tiercache import codec
from tiercache.buffers import PAGE_BYTES
from tiercache.errors import CorruptShardError, ShardFormatError
from tiercache.stores import available_backends, open_store
from tiercache.stores.base import Store, VerifyMode
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.memory import MemoryStore
from tiercache.stores.packed import PackedStore
from tiercache.stores.registry import DiskStoreClass
from tiercache.testing import StoreContract, ViewStoreContract, assert_same

BACKENDS = ["memory", "lmdb", "diskcache", "packed"]


def _opener(backend: str, directory: Path, **options: Any) -> Callable[..., Store]:
    def make(verify: VerifyMode = "always") -> Store:
        if backend == "memory":
            return MemoryStore()
        if backend == "lmdb":
            return LmdbStore(directory, verify=verify, **options)
        if backend == "packed":
            return PackedStore(directory, verify=verify)
        return DiskcacheStore(directory, verify=verify)
    return make


# -- the contract, once per backend -------------------------------------------------


class TestStoreContract(StoreContract):
    @pytest.fixture(params=BACKENDS)
    def backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def store_dir(self, backend: str, tmp_path: Path) -> Path | None:
        return None if backend == "memory" else tmp_path / "tier"

    @pytest.fixture
    def make_store(self, backend: str, store_dir: Path | None,
                   tmp_path: Path) -> Callable[..., Store]:
        return _opener(backend, store_dir or tmp_path)


class TestViewStoreContract(ViewStoreContract):
    """The zero-copy view contract, for the backends that declare ``zero_copy``."""

    @pytest.fixture(params=[b for b in BACKENDS if b in ("diskcache", "packed")])
    def backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def make_store(self, backend: str, tmp_path: Path) -> Callable[..., Store]:
        return _opener(backend, tmp_path / "tier")


def test_the_view_contract_covers_every_zero_copy_backend() -> None:
    from tiercache.stores.registry import backend_spec

    declared = {b for b in BACKENDS if backend_spec(b).zero_copy}
    assert declared == {"diskcache", "packed"}


# -- corruption ---------------------------------------------------------------------

PAYLOAD = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)  # 64 KiB
SMALL = np.arange(30, dtype=np.int16)  # stays inline in diskcache's sqlite


class LmdbRaw:
    """Edit an lmdb store's raw values while the store is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self) -> tuple[lmdb.Environment, lmdb._Database, lmdb._Database]:
        env = lmdb.open(str(self.path), max_dbs=2, map_size=1 << 30)
        return env, env.open_db(b"hdr"), env.open_db(b"data")

    def read(self, key: str, part: str) -> bytes:
        env, hdr, data = self._open()
        with env, env.begin() as txn:
            value = txn.get(codec.key_bytes(key), db=hdr if part == "hdr" else data)
        assert value is not None
        return value

    def write(self, key: str, part: str, value: bytes | None) -> None:
        env, hdr, data = self._open()
        with env, env.begin(write=True) as txn:
            db = hdr if part == "hdr" else data
            if value is None:
                txn.delete(codec.key_bytes(key), db=db)
            else:
                txn.put(codec.key_bytes(key), value, db=db)


class DiskcacheRaw:
    """Edit a diskcache store's raw values (file or inline sqlite BLOB) while it is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _row(self, key: str) -> tuple[str | None, bytes | None]:
        with sqlite3.connect(self.path / "cache.db") as con:
            ((filename, value),) = con.execute(
                "SELECT filename, value FROM Cache WHERE key = ?",
                (codec.key_bytes(key),)).fetchall()
        return filename, value

    def read(self, key: str) -> bytes:
        filename, value = self._row(key)
        if filename is None:
            assert value is not None
            return bytes(value)
        return (self.path / filename).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        filename, _value = self._row(key)
        if filename is None:
            with sqlite3.connect(self.path / "cache.db") as con:
                con.execute("UPDATE Cache SET value = ? WHERE key = ?",
                            (data, codec.key_bytes(key)))
        else:
            (self.path / filename).write_bytes(data)

    def sql(self, statement: str, *args: object) -> None:
        with sqlite3.connect(self.path / "cache.db") as con:
            con.execute(statement, args)


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    edited = bytearray(data)
    edited[index] ^= mask
    return bytes(edited)


HEADER_OFFSETS = {"magic": 0, "version": 8, "flags": 10, "header length": 12,
                  "payload length": 16, "payload checksum": 24, "key hash": 32,
                  "header checksum": 40, "ndim": 48, "dtype length": 49, "shape": 64,
                  "dtype": 64 + 2 * 8 + 1, "padding": 127}


class TestLmdbCorruption:
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        path = tmp_path / "tier"
        with LmdbStore(path) as store:
            store.put("k", PAYLOAD)
            store.put("other", PAYLOAD * 2)
        return path

    def _assert_corrupt(self, path: Path, key: str = "k") -> None:
        with LmdbStore(path) as store:
            with pytest.raises(CorruptShardError):
                store.get(key)
            with pytest.raises(CorruptShardError):
                store.get(key, out=np.empty_like(PAYLOAD))
            assert key in store  # the store leaves the entry for the tier to delete
            assert store.delete(key)

    @pytest.mark.parametrize("index", [0, 1, 4095, 32768, 65535])
    def test_payload_flip(self, path: Path, index: int) -> None:
        raw = LmdbRaw(path)
        raw.write("k", "data", _flip(raw.read("k", "data"), index))
        self._assert_corrupt(path)

    @pytest.mark.parametrize("field", list(HEADER_OFFSETS))
    def test_header_flip(self, path: Path, field: str) -> None:
        raw = LmdbRaw(path)
        raw.write("k", "hdr", _flip(raw.read("k", "hdr"), HEADER_OFFSETS[field]))
        self._assert_corrupt(path)
        with LmdbStore(path) as store:
            store.put("k", PAYLOAD)
        raw.write("k", "hdr", _flip(raw.read("k", "hdr"), HEADER_OFFSETS[field]))
        with LmdbStore(path) as store, pytest.raises(CorruptShardError):
            store.info("k")

    def test_truncated_or_missing_payload(self, path: Path) -> None:
        raw = LmdbRaw(path)
        raw.write("k", "data", raw.read("k", "data")[:-1])
        self._assert_corrupt(path)
        with LmdbStore(path) as store:
            store.put("k", PAYLOAD)
        raw.write("k", "data", None)
        self._assert_corrupt(path)

    def test_shard_under_wrong_key(self, path: Path) -> None:
        raw = LmdbRaw(path)
        for part in ("hdr", "data"):
            raw.write("k", part, raw.read("other", part))
        self._assert_corrupt(path)

    def test_verify_never_returns_damaged_payload_but_checks_header(self, path: Path) -> None:
        raw = LmdbRaw(path)
        raw.write("k", "data", _flip(raw.read("k", "data"), 100))
        with LmdbStore(path, verify="never") as store:
            damaged = store.get("k")
            assert damaged is not None
            diff = np.flatnonzero(damaged.view(np.uint8) != PAYLOAD.view(np.uint8))
            assert diff.tolist() == [100]  # exactly the flipped byte, returned as stored
        raw.write("k", "hdr", _flip(raw.read("k", "hdr"), HEADER_OFFSETS["shape"]))
        with LmdbStore(path, verify="never") as store, pytest.raises(CorruptShardError):
            store.get("k")

    def test_values_are_raw_never_pickled(self, path: Path) -> None:
        raw = LmdbRaw(path)
        assert raw.read("k", "hdr").startswith(codec.MAGIC)
        assert raw.read("k", "data") == PAYLOAD.tobytes()


class RawEditor(Protocol):
    """What the corruption tests need of a raw editor: a key's stored bytes, read and written."""

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...


class RawEditorClass(Protocol):
    """Constructor of a :class:`RawEditor`: the store's folder."""

    def __call__(self, path: Path) -> RawEditor: ...


class ShardBytesCorruption:
    """Damage shards the stores keep as header + payload bytes (diskcache, packed):
    the checks both share. A subclass names the store, its raw editor and
    ``_assert_corrupt``."""

    store_cls: ClassVar[DiskStoreClass]
    raw_cls: ClassVar[RawEditorClass]

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        path = tmp_path / "tier"
        with self.store_cls(path) as store:
            store.put("k", PAYLOAD)
            store.put("other", PAYLOAD * 2)
            store.put("small", SMALL)
            store.put("small2", SMALL * 2)
        return path

    def _assert_corrupt(self, path: Path, key: str) -> None:
        raise NotImplementedError

    @pytest.mark.parametrize("key", ["k", "small"])
    @pytest.mark.parametrize("where", ["first", "middle", "last"])
    def test_payload_flip(self, path: Path, key: str, where: str) -> None:
        raw = self.raw_cls(path)
        data = raw.read(key)
        index = {"first": 128, "middle": len(data) // 2 + 64, "last": len(data) - 1}[where]
        raw.write(key, _flip(data, index))
        self._assert_corrupt(path, key)

    def test_values_are_raw_never_pickled(self, path: Path) -> None:
        raw = self.raw_cls(path)
        for key, array in (("k", PAYLOAD), ("small", SMALL)):
            data = raw.read(key)
            assert data.startswith(codec.MAGIC)
            assert data.endswith(array.tobytes())


class TestDiskcacheCorruption(ShardBytesCorruption):
    store_cls = DiskcacheStore
    raw_cls = DiskcacheRaw

    def _assert_corrupt(self, path: Path, key: str) -> None:
        array = SMALL if key.startswith("small") else PAYLOAD
        with DiskcacheStore(path) as store:
            with pytest.raises(CorruptShardError):
                store.get(key)
            with pytest.raises(CorruptShardError):
                store.get(key, out=np.empty_like(array))
            assert key in store
            assert store.delete(key)

    @pytest.mark.parametrize("key", ["k", "small"])
    @pytest.mark.parametrize("field", list(HEADER_OFFSETS))
    def test_header_flip(self, path: Path, key: str, field: str) -> None:
        raw = DiskcacheRaw(path)
        raw.write(key, _flip(raw.read(key), HEADER_OFFSETS[field]))
        self._assert_corrupt(path, key)

    @pytest.mark.parametrize("key", ["k", "small"])
    @pytest.mark.parametrize("cut", [1, 64, 10_000])
    def test_truncated_or_extended(self, path: Path, key: str, cut: int) -> None:
        raw = DiskcacheRaw(path)
        data = raw.read(key)
        raw.write(key, data[:-cut] if cut < len(data) else data[:10])
        self._assert_corrupt(path, key)
        with DiskcacheStore(path) as store:
            store.put(key, SMALL if key == "small" else PAYLOAD)
        raw.write(key, raw.read(key) + b"\x00")
        self._assert_corrupt(path, key)

    @pytest.mark.parametrize("pair", [("k", "other"), ("small", "small2")])
    def test_shard_under_wrong_key(self, path: Path, pair: tuple[str, str]) -> None:
        raw = DiskcacheRaw(path)
        raw.write(pair[0], raw.read(pair[1]))
        self._assert_corrupt(path, pair[0])

    def test_pickle_mode_is_refused(self, path: Path) -> None:
        DiskcacheRaw(path).sql("UPDATE Cache SET mode = 4 WHERE key = ?", codec.key_bytes("k"))
        with DiskcacheStore(path) as store, pytest.raises(CorruptShardError, match="pickle"):
            store.get("k")

    def test_verify_never_returns_damaged_payload(self, path: Path) -> None:
        raw = DiskcacheRaw(path)
        data = raw.read("k")
        raw.write("k", _flip(data, len(data) - 1))
        with DiskcacheStore(path, verify="never") as store:
            damaged = store.get("k")
            assert damaged is not None
            diff = np.flatnonzero(damaged.view(np.uint8) != PAYLOAD.view(np.uint8))
            assert diff.tolist() == [PAYLOAD.nbytes - 1]




class PackedRaw:
    """Edit a packed store's index rows and data file bytes while the store is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _sql(self, statement: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.path / "index.sqlite") as con:
            return con.execute(statement, args).fetchall()

    def row(self, key: str) -> tuple[int, int]:
        ((offset, length),) = self._sql("SELECT offset, length FROM shards WHERE key = ?",
                                        codec.key_bytes(key))
        return int(str(offset)), int(str(length))

    def set_row(self, key: str, offset: int, length: int) -> None:
        self._sql("UPDATE shards SET offset = ?, length = ? WHERE key = ?", offset, length,
                  codec.key_bytes(key))

    def data_file(self) -> Path:
        ((generation,),) = self._sql("SELECT value FROM meta WHERE name = 'generation'")
        return self.path / f"data.{generation}.bin"

    def read(self, key: str) -> bytes:
        offset, length = self.row(key)
        with open(self.data_file(), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def write(self, key: str, data: bytes) -> None:
        """Overwrite ``key``'s bytes in place (same offset)."""
        offset, _length = self.row(key)
        with open(self.data_file(), "r+b") as f:
            f.seek(offset)
            f.write(data)


class TestPackedCorruption(ShardBytesCorruption):
    store_cls = PackedStore
    raw_cls = PackedRaw

    def _assert_corrupt(self, path: Path, key: str) -> None:
        array = SMALL if key.startswith("small") else PAYLOAD
        with PackedStore(path) as store:
            with pytest.raises(CorruptShardError):
                store.get(key)
            with pytest.raises(CorruptShardError):
                store.get(key, out=np.empty_like(array))
            with pytest.raises(CorruptShardError):
                store.get_view(key)
            assert key in store  # the store leaves the entry for the tier to delete
            assert store.delete(key)
            other = "other" if key == "k" else "small2" if key == "small" else "k"
            assert store.get(other) is not None  # the neighbours are untouched

    @pytest.mark.parametrize("key", ["k", "small"])
    @pytest.mark.parametrize("field", list(HEADER_OFFSETS))
    def test_header_flip(self, path: Path, key: str, field: str) -> None:
        raw = PackedRaw(path)
        raw.write(key, _flip(raw.read(key), HEADER_OFFSETS[field]))
        self._assert_corrupt(path, key)
        with PackedStore(path) as store:
            store.put(key, SMALL if key == "small" else PAYLOAD)
        raw.write(key, _flip(raw.read(key), HEADER_OFFSETS[field]))
        with PackedStore(path) as store, pytest.raises(CorruptShardError):
            store.info(key)

    def test_data_file_cut_short(self, path: Path) -> None:
        raw = PackedRaw(path)
        offset, length = raw.row("other")  # the last large shard; cut into it
        assert offset > raw.row("k")[0]
        with open(raw.data_file(), "r+b") as f:
            f.truncate(offset + length - 1)
        with PackedStore(path) as store:
            assert_same(store.get("k"), PAYLOAD)
        raw.set_row("small", offset, length)  # a row past the end
        self._assert_corrupt(path, "other")

    @pytest.mark.parametrize("delta", [-64, 64])
    def test_row_length_disagrees_with_header(self, path: Path, delta: int) -> None:
        raw = PackedRaw(path)
        offset, length = raw.row("k")
        raw.set_row("k", offset, length + delta)
        self._assert_corrupt(path, "k")

    @pytest.mark.parametrize("pair", [("k", "other"), ("small", "small2")])
    def test_shard_under_wrong_key(self, path: Path, pair: tuple[str, str]) -> None:
        raw = PackedRaw(path)
        raw.set_row(pair[0], *raw.row(pair[1]))
        self._assert_corrupt(path, pair[0])

    def test_verify_never_returns_damaged_payload_but_checks_header(self, path: Path) -> None:
        raw = PackedRaw(path)
        data = raw.read("k")
        raw.write("k", _flip(data, len(data) - 1))
        with PackedStore(path, verify="never") as store:
            damaged = store.get("k")
            assert damaged is not None
            diff = np.flatnonzero(damaged.view(np.uint8) != PAYLOAD.view(np.uint8))
            assert diff.tolist() == [PAYLOAD.nbytes - 1]
            view = store.get_view("k")
            assert view is not None
            assert np.flatnonzero(view.view(np.uint8) != PAYLOAD.view(np.uint8)).tolist() == \
                [PAYLOAD.nbytes - 1]
        raw.write("k", _flip(raw.read("k"), HEADER_OFFSETS["shape"]))
        with PackedStore(path, verify="never") as store, pytest.raises(CorruptShardError):
            store.get("k")



# -- codec --------------------------------------------------------------------------

DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
KEYS = st.text(max_size=40)


class TestCodec:
    @given(array=ARRAYS, key=KEYS, store_key=st.booleans())
    @settings(max_examples=300, deadline=None)
    def test_roundtrip(self, array: np.ndarray, key: str, store_key: bool) -> None:
        data = codec.encode(key, array, store_key=store_key)
        assert len(data) % 64 == (array.nbytes % 64)
        header = codec.decode_header(data, key)
        assert header.key == (key if store_key else None)
        assert header.accounted_nbytes == codec.stored_nbytes(array)
        result = codec.decode(data, key)
        assert_same(result, array)
        assert result.flags.writeable
        if array.nbytes:
            assert result.ctypes.data % PAGE_BYTES == 0

    @given(array=ARRAYS, key=KEYS, data=st.data())
    @settings(max_examples=500, deadline=None)
    def test_any_byte_flip_is_detected(self, array: np.ndarray, key: str,
                                       data: st.DataObject) -> None:
        encoded = codec.encode(key, array, store_key=data.draw(st.booleans()))
        index = data.draw(st.integers(0, len(encoded) - 1))
        mask = data.draw(st.integers(1, 255))
        with pytest.raises(CorruptShardError):
            codec.decode(_flip(encoded, index, mask), key)

    @given(array=ARRAYS, key=KEYS, data=st.data())
    @settings(max_examples=200, deadline=None)
    def test_truncation_is_detected(self, array: np.ndarray, key: str,
                                    data: st.DataObject) -> None:
        encoded = codec.encode(key, array)
        cut = data.draw(st.integers(0, len(encoded) - 1))
        with pytest.raises(CorruptShardError):
            codec.decode(encoded[:cut], key)

    @given(array=ARRAYS, key=KEYS, other=KEYS)
    @settings(max_examples=200, deadline=None)
    def test_wrong_key_is_detected(self, array: np.ndarray, key: str, other: str) -> None:
        if key == other:
            return
        with pytest.raises(CorruptShardError, match="key"):
            codec.decode(codec.encode(key, array), other)

    @pytest.mark.parametrize("size", [0, 1, 4095, codec.CHUNK_BYTES + 3,
                                      codec.HASH_SOURCE_FIRST_MAX_BYTES + 1])
    def test_copy_verified_both_orders(self, size: int) -> None:
        src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        dst = codec.empty_aligned(size)
        codec.copy_verified(dst, src.tobytes(), codec.payload_checksum(src))
        assert np.array_equal(dst, src)
        if size:
            with pytest.raises(CorruptShardError, match="checksum"):
                codec.copy_verified(dst, src.tobytes(), codec.payload_checksum(src) ^ 1)

    @pytest.mark.parametrize("nbytes", [0, 1, 4096, 5_000_000])
    def test_empty_aligned(self, nbytes: int) -> None:
        buf = codec.empty_aligned(nbytes)
        assert buf.dtype == np.uint8 and buf.shape == (nbytes,)
        assert buf.ctypes.data % PAGE_BYTES == 0
        assert buf.flags.writeable and buf.flags.c_contiguous

    def test_check_storable(self) -> None:
        codec.check_storable(np.zeros((1,) * 32))
        with pytest.raises(ShardFormatError, match="dimensions"):
            codec.check_storable(np.zeros((1,) * 33))
        with pytest.raises(ShardFormatError, match="dtype"):
            codec.check_storable(np.zeros(2, dtype=object))
        with pytest.raises(ShardFormatError):
            codec.check_storable(np.float32(1.0))

    def test_no_pickle_anywhere(self) -> None:
        sources = [Path(codec.__file__), *Path(stores_pkg.__file__).parent.glob("*.py")]
        for source in sources:
            assert "pickle.load" not in source.read_text(), source


# -- lmdb map growth -------------------------------------------------------------------


def test_lmdb_put_far_larger_than_the_map(tmp_path: Path) -> None:
    big = np.random.default_rng(3).standard_normal(4 << 20).astype(np.float32)  # 16 MiB
    with LmdbStore(tmp_path / "tier", map_size_bytes=256 * 1024) as store:
        before = store.map_size_bytes
        store.put("big", big)
        for i in range(5):
            store.put(f"more{i}", big[: (i + 1) << 20])
        assert store.map_size_bytes > before + big.nbytes
        assert_same(store.get("big"), big)
    with LmdbStore(tmp_path / "tier", map_size_bytes=256 * 1024) as reopened:
        assert_same(reopened.get("big"), big)
        assert len(list(reopened.keys())) == 6


def test_lmdb_map_sized_from_capacity(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "tier", capacity_bytes=64 << 30) as store:
        assert store.map_size_bytes >= 128 << 30


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_put_get_delete(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    keys = [f"k{i}" for i in range(6)]
    # every key has a few candidate values of different sizes (inline and file-backed)
    candidates = {key: [rng.integers(0, 1 << 30, size, dtype=np.int64)
                        for size in (3, 5000, 40_000)] for key in keys}
    options = {"map_size_bytes": 1 << 20} if backend == "lmdb" else {}  # forces remaps
    store = _opener(backend, tmp_path / "tier", **options)()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        pick = random.Random(seed)
        try:
            for _ in range(300):
                key = pick.choice(keys)
                op = pick.random()
                if op < 0.4:
                    store.put(key, pick.choice(candidates[key]))
                elif op < 0.9:
                    got = store.get(key)
                    if got is not None:
                        assert any(got.shape == c.shape and np.array_equal(got, c)
                                   for c in candidates[key]), f"foreign value under {key}"
                else:
                    store.delete(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        for key in store.keys():
            assert_same_any(store.get(key), candidates[key])
    finally:
        store.close()


def test_lmdb_remap_while_reading(tmp_path: Path) -> None:
    """Remapping invalidates zero-copy views: readers must never see it mid-copy."""
    value = np.random.default_rng(9).standard_normal(1 << 18)  # 2 MiB
    store = LmdbStore(tmp_path / "tier")
    store.put("k", value)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                assert_same(store.get("k"), value)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(300):
            store.grow_map(0)  # what a MapResizedError triggers: set_mapsize under the guard
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        store.close()
    assert errors == []


def assert_same_any(actual: np.ndarray | None, options: list[np.ndarray]) -> None:
    assert actual is not None
    assert any(actual.shape == o.shape and np.array_equal(actual, o) for o in options)


# -- a model-based test: every operation mirrored into a dict ------------------------------


class StoreModel(RuleBasedStateMachine):
    """Random put/get/delete/keys/reopen sequences against a dict of expected arrays."""

    backend = "lmdb"
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="tiercache-model-"))
        self.make = _opener(self.backend, self.dir / "tier")
        self.store = self.make()
        self.model: dict[str, np.ndarray] = {}

    @initialize(target=keys)
    def first_key(self) -> str:
        return "k"

    @rule(target=keys, key=st.text(max_size=8))
    def new_key(self, key: str) -> str:
        return key

    @rule(key=keys, array=ARRAYS)
    def put(self, key: str, array: np.ndarray) -> None:
        assert self.store.put(key, array) == self.store.stored_size(array)
        self.model[key] = array.copy()

    @rule(key=keys)
    def get(self, key: str) -> None:
        got = self.store.get(key)
        if key in self.model:
            assert_same(got, self.model[key])
        else:
            assert got is None

    @rule(key=keys)
    def delete(self, key: str) -> None:
        assert self.store.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule()
    def keys_match(self) -> None:
        assert sorted(self.store.keys()) == sorted(self.model)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self.make()

    def teardown(self) -> None:
        import shutil

        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DiskcacheModel(StoreModel):
    backend = "diskcache"


class PackedModel(StoreModel):
    backend = "packed"


_model_settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
TestLmdbModel = StoreModel.TestCase
TestLmdbModel.settings = _model_settings
TestDiskcacheModel = DiskcacheModel.TestCase
TestDiskcacheModel.settings = _model_settings
TestPackedModel = PackedModel.TestCase
TestPackedModel.settings = _model_settings


# -- registry ---------------------------------------------------------------------------


def test_registry(tmp_path: Path) -> None:
    from tiercache.stores.redis import RedisStore  # the redis extra is a test dependency

    assert available_backends() == ["diskcache", "lmdb", "memory", "packed", "redis"]
    backends = stores_pkg.STORE_BACKENDS
    assert backends == {"memory": MemoryStore, "lmdb": LmdbStore, "diskcache": DiskcacheStore,
                        "packed": PackedStore, "redis": RedisStore}
    assert isinstance(open_store("memory", None), MemoryStore)
    for backend, cls in (("lmdb", LmdbStore), ("diskcache", DiskcacheStore),
                         ("packed", PackedStore)):
        with open_store(backend, tmp_path / backend, verify="never",
                        capacity_bytes=1 << 20) as store:
            assert isinstance(store, cls)
            assert store.verify == "never"
        with pytest.raises(ValueError, match="path"):
            open_store(backend, None)
    with pytest.raises(LookupError, match="diskcache, lmdb, memory, packed, redis"):
        open_store("memcached", tmp_path)


@pytest.mark.parametrize("cls", [LmdbStore, DiskcacheStore, PackedStore])
def test_unknown_verify_mode_is_refused(cls: DiskStoreClass, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verify"):
        cls(tmp_path / "tier", verify=cast(Any, "sometimes"))
    assert not (tmp_path / "tier").exists()


def test_closed_store_raises(tmp_path: Path) -> None:
    from tiercache.errors import CacheClosedError, StoreError

    for store in (LmdbStore(tmp_path / "l"), DiskcacheStore(tmp_path / "d"),
                  PackedStore(tmp_path / "p")):
        store.close()
        with pytest.raises((StoreError, CacheClosedError), match="closed"):
            store.get("k")
        with pytest.raises((StoreError, CacheClosedError), match="closed"):
            store.put("k", np.array(1))


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before


# -- one process per tier folder (lock_tier_folder) -----------------------------------------

TIER_STORES: dict[str, Callable[[Path], Store]] = {
    "lmdb": lambda p: LmdbStore(p, capacity_bytes=1 << 20, map_size_bytes=64 << 20),
    "diskcache": lambda p: DiskcacheStore(p, capacity_bytes=1 << 20),
}


def _try_to_open(backend: str, folder: Path) -> str:
    """In a second process: open the tier's store, report how it went."""
    from tiercache.errors import StoreError

    try:
        TIER_STORES[backend](folder).close()
    except StoreError as exc:
        return str(exc)
    return "opened"


@pytest.mark.parametrize("backend", sorted(TIER_STORES))
def test_a_second_process_cannot_open_a_tier_folder_in_use(tmp_path: Path,
                                                           backend: str) -> None:
    import os

    from memcap import run_capped

    folder = tmp_path / "tier"
    store = TIER_STORES[backend](folder)
    store.put("k", np.arange(4, dtype=np.int8))
    try:
        other = run_capped(_try_to_open, backend, folder, timeout_s=60)
        assert other.ok, other.describe()
        message = other.value
        assert f"tier folder {folder} is in use by another process (pid {os.getpid()})" in \
            message, message
        assert "redis" in message and "its own folder" in message
        store.reopen()  # releases the lock and takes it again
        again = run_capped(_try_to_open, backend, folder, timeout_s=60)
        assert again.ok and "in use" in again.value, again
    finally:
        store.close()
    after = run_capped(_try_to_open, backend, folder, timeout_s=60)  # closed: free again
    assert after.ok and after.value == "opened", after


def test_the_folder_lock_is_close_on_exec_and_records_the_pid(tmp_path: Path) -> None:
    import fcntl
    import os

    from tiercache.errors import StoreError
    from tiercache.stores.base import LOCK_FILE_NAME, lock_tier_folder

    handle = lock_tier_folder(tmp_path / "t")  # creates the folder
    assert handle.held and handle.path == tmp_path / "t" / LOCK_FILE_NAME
    assert (tmp_path / "t" / LOCK_FILE_NAME).read_text().strip() == str(os.getpid())
    fd = handle.fileno()
    assert fd is not None and fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    with pytest.raises(StoreError, match="in use"):  # a second store in this process too
        lock_tier_folder(tmp_path / "t")
    handle.release()
    handle.release()  # idempotent
    assert not handle.held
    lock_tier_folder(tmp_path / "t").release()  # free again


def test_stores_opened_without_a_capacity_share_a_folder(tmp_path: Path) -> None:
    """Readers beside one writer (docs/reliability.md#concurrency) stay possible: only a
    tier's store (given a capacity) or ``exclusive=True`` takes the lock."""
    from tiercache.errors import StoreError

    with DiskcacheStore(tmp_path / "d") as a, DiskcacheStore(tmp_path / "d") as b:
        a.put("k", np.arange(3, dtype=np.int8))
        assert b.get("k") is not None
    with DiskcacheStore(tmp_path / "e", exclusive=True), pytest.raises(StoreError, match="use"):
        DiskcacheStore(tmp_path / "e", capacity_bytes=1 << 20)


def test_willneed_is_a_deprecated_name_of_advise(tmp_path: Path) -> None:
    """``Store.willneed`` became ``Store.advise`` (issue 13): the old name still works,
    called or overridden, with a DeprecationWarning."""
    with PackedStore(tmp_path / "p") as store:
        store.put("k", np.arange(1024, dtype=np.float32))
        with pytest.warns(DeprecationWarning, match="advise"):
            assert store.willneed("k") == store.advise("k") > 0

    with pytest.warns(DeprecationWarning, match="Old.willneed is deprecated"):
        class Old(MemoryStore):
            def willneed(self, key: str) -> int:
                return 7

    assert Old().advise("k") == 7
    assert MemoryStore().advise("k") == 0
