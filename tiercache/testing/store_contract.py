"""Conformance tests every :class:`~tiercache.stores.base.Store` must pass.

Use by subclassing :class:`StoreContract` in a test module and providing a
``make_store`` fixture: a callable ``make_store(verify="always") -> Store``
that opens the store under test, always on the same directory
(``store_dir``, ``None`` for volatile stores) within one test, so calling it
again after ``close()`` reopens the same contents. Needs the
``tiercache[testing]`` extra (pytest, hypothesis)::

    import pytest
    from tiercache.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store_dir(self, tmp_path):
            return tmp_path / "tier"

        @pytest.fixture
        def make_store(self, store_dir):
            return lambda verify="always": MyStore(store_dir, verify=verify)

Tests are gated by what the store *declares*, never by trying a call and
catching the failure: ``persistent`` stores must reopen with their contents
and return private page-aligned arrays. A store that declares ``zero_copy``
also runs :class:`ViewStoreContract` (subclass both): read-only zero-copy views
(:meth:`~tiercache.stores.base.Store.get_view`) that outlive an overwrite or a
delete. Nothing is skipped: a store that does not declare ``zero_copy`` simply
does not subclass the view contract (and fails it if it does).

Each test builds its own store; nothing here is shared between threads. The
whole contract puts a few MiB per store and runs in about a second per store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import CacheClosedError, ShardFormatError
from ..stores.base import Store
from . import missing_extra

try:
    import pytest
except ImportError as exc:  # pragma: no cover - exercised in a child process
    raise missing_extra(exc, __name__) from exc

MakeStore = Callable[..., Store]

#: Keys that would escape a directory, break a file name, an lmdb key or UTF-8.
NASTY_KEYS = [
    "../../etc/passwd", "/abs", "/abs/path/x", "a/../../b", "..", ".", "",
    "nul\x00byte", "\x00", "x" * 2000, "é" * 600, "emoji 🚀🧠", "lone \ud800 surrogate",
    "\udfff", "C:\\Windows\\system32", "new\nline", " ", "a" * 511, "b" * 512,
]


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((64, 48)).astype(np.float32)
    return {
        "0-d float64": np.array(3.5),
        "0-d bool": np.array(True),
        "empty": np.zeros((0, 3), np.int32),
        "empty 1-d": np.zeros(0, np.float16),
        "float16": rng.standard_normal((7, 5)).astype(np.float16),
        "bool": rng.random(33) > 0.5,
        "int64": np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 10,
        "big-endian f4": np.arange(10, dtype=">f4") / 3,
        "big-endian i8": np.arange(6, dtype=">i8").reshape(2, 3),
        "uint16": np.arange(1000, dtype=np.uint16),
        "complex64": (rng.standard_normal(9) + 1j).astype(np.complex64),
        "nan and inf": np.array([np.nan, np.inf, -np.inf, -0.0], np.float32),
        "non-contiguous slice": base[::2, 1::3],
        "fortran order": np.asfortranarray(base),
        "negative strides": base[::-1, ::-1],
        "inline-sized": rng.standard_normal(1000).astype(np.float32),   # 4 KB
        "file-sized": rng.standard_normal(50_000).astype(np.float32),   # 200 KB
        "many dims": np.zeros((1,) * 32, np.uint8),
    }


ARRAYS = _arrays()


def assert_same(actual: np.ndarray | None, expected: np.ndarray) -> None:
    """Same dtype (byte order included), shape and bytes."""
    assert actual is not None
    assert actual.dtype == expected.dtype
    assert actual.dtype.str == expected.dtype.str
    assert actual.shape == expected.shape
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


def assert_raise_closed(store: Store, operations: dict[str, Callable[[], object]]) -> None:
    """Assert that each of ``operations`` (name -> call) on the closed ``store`` raises
    :class:`~tiercache.errors.CacheClosedError`; the failure names the operation and
    what it did instead. O(operations)."""
    for name, call in operations.items():
        try:
            result = call()
        except CacheClosedError:
            continue
        except Exception as exc:  # reported, with what was expected
            pytest.fail(f"{type(store).__name__}.{name} after close raised "
                        f"{type(exc).__name__} ({exc}), not CacheClosedError")
        pytest.fail(f"{type(store).__name__}.{name} after close returned {result!r} "
                    "instead of raising CacheClosedError")


def files_under(root: Path) -> list[Path]:
    """Every file (any non-directory entry) under ``root``."""
    return [Path(d) / f for d, _dirs, names in os.walk(root) for f in names]


class StoreContract:
    """The behaviour every store shares. Subclasses provide ``make_store``/``store_dir``."""

    @pytest.fixture
    def store(self, make_store: MakeStore) -> Iterator[Store]:
        store = make_store()
        yield store
        store.close()

    # -- roundtrips -----------------------------------------------------------

    @pytest.mark.parametrize("name", list(ARRAYS))
    def test_roundtrip(self, store: Store, name: str) -> None:
        array = ARRAYS[name]
        store.put(name, array)
        assert_same(store.get(name), array)

    @pytest.mark.parametrize("name", list(ARRAYS))
    def test_get_into_out_fills_and_returns_out(self, store: Store, name: str) -> None:
        array = ARRAYS[name]
        store.put(name, array)
        out = np.full(array.shape, 1, dtype=array.dtype)
        result = store.get(name, out=out)
        assert result is out
        assert_same(out, array)

    def test_get_result_is_private_and_aligned(self, store: Store) -> None:
        array = ARRAYS["file-sized"]
        store.put("k", array)
        first = store.get("k")
        assert first is not None
        if store.persistent:
            assert first.flags.writeable and first.flags.c_contiguous
            assert first.ctypes.data % 4096 == 0
            first[:] = 0
        assert_same(store.get("k"), array)

    def test_put_copies_the_array(self, store: Store) -> None:
        array = np.arange(100, dtype=np.float64)
        store.put("k", array)
        array[:] = -1
        assert_same(store.get("k"), np.arange(100, dtype=np.float64))

    @pytest.mark.parametrize("bad", ["shape", "dtype", "byteorder"])
    def test_wrong_out_raises_value_error(self, store: Store, bad: str) -> None:
        array = np.arange(12, dtype="<f4").reshape(3, 4)
        store.put("k", array)
        out = {"shape": np.empty((4, 3), "<f4"), "dtype": np.empty((3, 4), "<f8"),
               "byteorder": np.empty((3, 4), ">f4")}[bad]
        with pytest.raises(ValueError):
            store.get("k", out=out)
        assert_same(store.get("k"), array)

    # -- presence ---------------------------------------------------------------

    def test_missing(self, store: Store) -> None:
        assert store.get("nope") is None
        assert store.get("nope", out=np.empty(3)) is None
        assert store.info("nope") is None
        assert "nope" not in store
        assert store.delete("nope") is False
        assert list(store.keys()) == []

    def test_delete(self, store: Store) -> None:
        store.put("a", ARRAYS["int64"])
        store.put("b", ARRAYS["bool"])
        assert store.delete("a") is True
        assert store.get("a") is None
        assert "a" not in store
        assert store.info("a") is None
        assert list(store.keys()) == ["b"]
        assert store.delete("a") is False

    def test_overwrite(self, store: Store) -> None:
        store.put("k", ARRAYS["file-sized"])
        store.put("k", ARRAYS["float16"])
        assert_same(store.get("k"), ARRAYS["float16"])
        assert list(store.keys()) == ["k"]
        info = store.info("k")
        assert info is not None
        assert info.shape == ARRAYS["float16"].shape
        assert info.stored_nbytes == store.stored_size(ARRAYS["float16"])

    def test_sizes_info_keys_agree(self, store: Store) -> None:
        for name, array in ARRAYS.items():
            stored = store.put(name, array)
            assert stored == store.stored_size(array)
            assert stored >= array.nbytes
            info = store.info(name)
            assert info is not None
            assert info.dtype == array.dtype
            assert info.dtype.str == array.dtype.str
            assert info.shape == array.shape
            assert info.stored_nbytes == stored
            assert name in store
        assert sorted(store.keys()) == sorted(ARRAYS)

    def test_keys_is_a_snapshot(self, store: Store) -> None:
        for i in range(5):
            store.put(f"k{i}", np.array(i))
        for key in store.keys():
            store.delete(key)
            store.put(key + "-new", np.array(0))
        assert sorted(store.keys()) == [f"k{i}-new" for i in range(5)]

    def test_contains_non_str(self, store: Store) -> None:
        store.put("1", np.array(1))
        assert 1 not in store
        assert None not in store

    # -- keys and the file system ---------------------------------------------

    def test_nasty_keys_roundtrip_and_stay_inside(self, make_store: MakeStore,
                                                  store_dir: Path | None,
                                                  tmp_path: Path) -> None:
        store = make_store()
        expected = {}
        for i, key in enumerate(NASTY_KEYS):
            array = np.full(10 if i % 2 else 20_000, i, dtype=np.int32)  # inline and file
            expected[key] = array
            assert store.put(key, array) == store.stored_size(array)
        for key, array in expected.items():
            assert key in store
            assert_same(store.get(key), array)
            info = store.info(key)
            assert info is not None and info.shape == array.shape
            assert info.stored_nbytes == store.stored_size(array)
        assert sorted(store.keys()) == sorted(NASTY_KEYS)
        assert store.delete("../../etc/passwd")
        assert "../../etc/passwd" not in store
        store.close()
        written = files_under(tmp_path)
        if store_dir is None:
            assert written == []
        else:
            outside = [p for p in written if not p.resolve().is_relative_to(store_dir.resolve())]
            assert outside == []
            assert written  # the store did write its files there

    # -- format and lifecycle ---------------------------------------------------

    @pytest.mark.parametrize("bad", [
        np.array([object(), 1], dtype=object),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros(3, dtype="V8"),
        np.array(["text"]),
        np.array([b"bytes"]),
        np.zeros(2, dtype="datetime64[s]"),
        [1.0, 2.0],
    ], ids=["object", "structured", "void", "unicode", "bytes", "datetime", "list"])
    def test_unstorable_raises_shard_format_error(self, store: Store, bad: object) -> None:
        with pytest.raises(ShardFormatError):
            store.put("k", bad)  # type: ignore[arg-type]
        assert "k" not in store

    def test_close_is_idempotent(self, make_store: MakeStore) -> None:
        store = make_store()
        store.put("k", np.array(1))
        store.close()
        store.close()

    def test_every_operation_after_close_raises_cache_closed(self,
                                                             make_store: MakeStore) -> None:
        """A closed store never answers as if empty: a miss would send the engine to a
        slower tier or the origin for a shard the store holds."""
        store = make_store()
        store.put("k", np.arange(4, dtype=np.float32))
        store.close()
        assert_raise_closed(store, {
            "get": lambda: store.get("k"),
            "get of a missing key": lambda: store.get("nope"),
            "get into out": lambda: store.get("k", np.empty(4, np.float32)),
            "check": lambda: store.check("k"),
            "put": lambda: store.put("j", np.arange(2)),
            "delete": lambda: store.delete("k"),
            "info": lambda: store.info("k"),
            "keys": lambda: list(store.keys()),
            "contains": lambda: "k" in store,
        })
        store.close()  # still idempotent

    def test_context_manager_closes(self, make_store: MakeStore) -> None:
        with make_store() as store:
            store.put("k", np.array(1))
        if store.persistent:
            with make_store() as again:
                assert_same(again.get("k"), np.array(1))

    def test_reopen_sees_same_contents(self, make_store: MakeStore) -> None:
        store = make_store()
        if not store.persistent:  # volatile: a new instance starts empty
            store.put("k", np.array(1))
            store.close()
            fresh = make_store()
            assert list(fresh.keys()) == [] and fresh.get("k") is None
            return
        for name, array in ARRAYS.items():
            store.put(name, array)
        store.put("gone", np.array(1))
        store.delete("gone")
        store.close()
        reopened = make_store()
        try:
            assert sorted(reopened.keys()) == sorted(ARRAYS)
            for name, array in ARRAYS.items():
                assert_same(reopened.get(name), array)
                info = reopened.info(name)
                assert info is not None and info.stored_nbytes == reopened.stored_size(array)
        finally:
            reopened.close()


class ViewStoreContract:
    """Zero-copy views, for stores that declare ``zero_copy``: subclass it beside
    :class:`StoreContract` (same ``make_store`` fixture)."""

    @pytest.fixture
    def view_store(self, make_store: MakeStore) -> Iterator[Store]:
        store = make_store()
        assert store.zero_copy, f"{type(store).__name__} does not declare zero_copy"
        yield store
        store.close()

    def test_view_roundtrip_read_only(self, view_store: Store) -> None:
        for name, array in ARRAYS.items():
            view_store.put(name, array)
        for name, array in ARRAYS.items():
            view = view_store.get_view(name)
            assert_same(view, array)
            assert view is not None and not view.flags.writeable, f"view of {name!r} is writable"

    def test_view_of_missing_is_none(self, view_store: Store) -> None:
        assert view_store.get_view("nope") is None
        assert view_store.advise("nope") == 0
        view_store.put("k", ARRAYS["file-sized"])
        view_store.delete("k")
        assert view_store.get_view("k") is None

    def test_views_after_close_raise_cache_closed(self, make_store: MakeStore) -> None:
        store = make_store()
        store.put("k", ARRAYS["file-sized"])
        assert store.get_view("k") is not None  # a cached view: close must drop it too
        store.close()
        assert_raise_closed(store, {"get_view": lambda: store.get_view("k"),
                                    "get_view of a missing key": lambda: store.get_view("no"),
                                    "advise": lambda: store.advise("k")})

    def test_view_outlives_overwrite_and_delete(self, view_store: Store) -> None:
        array = ARRAYS["file-sized"]
        view_store.put("k", array)
        assert view_store.advise("k") >= 0
        view = view_store.get_view("k")
        view_store.put("k", ARRAYS["int64"])
        assert_same(view_store.get_view("k"), ARRAYS["int64"])
        view_store.delete("k")
        assert_same(view, array)
