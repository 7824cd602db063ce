"""Security: no pickle in the data path, and no key -- however crafted -- reads or writes
outside its tier's folder (lmdb, diskcache, packed, the .npy origin, the whole cache).

The trust model these tests back is written down in docs/reliability.md.
"""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiercache
from tiercache.errors import CorruptShardError, StoreError
from tiercache.origins import NpyDirOrigin, npy_filename
from tiercache.stores.base import Store
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.packed import PackedStore

PACKAGE_DIRS = [Path(tiercache.__file__).parent]  # policies included (tiercache/policies/)

#: Modules that execute data as code when loading it.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                  "joblib", "jsonpickle"}


def _sources() -> list[Path]:
    files = [p for d in PACKAGE_DIRS if d.is_dir() for p in d.rglob("*.py")]
    assert len(files) > 20
    return files


def test_no_module_of_the_package_imports_a_pickle_like_loader() -> None:
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("__import__", "eval", "exec"):
                names = [f"{node.func.id}()"]
            bad = [n for n in names if n in UNSAFE_MODULES or n.endswith("()")]
            if bad:
                offenders.append(f"{path}:{getattr(node, 'lineno', '?')}: {bad}")
    assert offenders == []


def test_every_numpy_load_refuses_pickles() -> None:
    """np.load(..., allow_pickle=True) would run code from an .npy/.npz file."""
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "load" and ast.unparse(node.func.value) in ("np", "numpy"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if kw.get("allow_pickle") != "False":
                    offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_diskcache_is_only_opened_with_the_raw_shard_serialiser() -> None:
    """A stock diskcache.Cache pickles values: every Cache(...) must pass disk=_ShardDisk."""
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("diskcache.Cache",
                                                                         "Cache", "FanoutCache"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("disk") == "_ShardDisk", f"{path}:{node.lineno}"


class _Payload:
    """Unpickling this creates a marker file: proof that someone ran pickle.loads."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[Path, str]]:
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.mark.parametrize("size", [100, 100_000])  # inline in sqlite, and a value file
def test_a_pickled_row_planted_in_a_diskcache_tier_is_never_unpickled(tmp_path: Path,
                                                                      size: int) -> None:
    folder, marker = tmp_path / "hdd", tmp_path / "marker"
    with DiskcacheStore(folder) as store:
        store.put("good", np.arange(10, dtype=np.float32))
    evil = diskcache.Cache(str(folder))  # stock diskcache: pickles the value
    payload = [_Payload(str(marker)), b"x" * size]
    for key in (b"good", "good"):  # under the same bytes key and as a (pickled) str key
        evil.set(key, payload)
    evil.close()
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control"))))  # the payload does work
    assert (tmp_path / "control").exists()
    with DiskcacheStore(folder) as store:
        with pytest.raises(CorruptShardError, match="pickle"):
            store.get("good")
        with pytest.raises((CorruptShardError, StoreError)):
            list(store.keys())  # a pickled key is refused too
    cfg = {"tiers": [{"name": "hdd", "backend": "diskcache", "path": str(folder),
                      "capacity": "4MiB"}]}
    try:
        with tiercache.open(cfg) as cache:
            assert cache.get("good", None) is None  # dropped as corrupt, never loaded
    except StoreError:
        pass  # refusing to index a tier with pickled keys is fine too
    assert not marker.exists()


# -- keys never escape their folder ---------------------------------------------------------

KEYS = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from("./\\~:*?<>|\x00 \n%$ébc"), max_size=60),
    st.sampled_from(["..", ".", "", "../../etc/passwd", "/etc/passwd", "a/../../b", "~",
                     "$HOME", "%2e%2e%2f", "..\\..\\x", "con", "nul", "a" * 5000,
                     "\udcff\ud800", "x\x00y"]),
)
SECURITY = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Path]:
    """<sandbox>/tier is the store's folder; everything else in <sandbox> is bait."""
    root = Path(tempfile.mkdtemp(prefix="tiercache-sec-"))
    (root / "bait").mkdir()
    (root / "bait" / "passwd.npy").write_bytes(b"do not touch")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stores(sandbox: Path) -> Iterator[dict[str, Store]]:
    opened: dict[str, Store] = {"lmdb": LmdbStore(sandbox / "lmdb"),
                                "diskcache": DiskcacheStore(sandbox / "dc"),
                                "packed": PackedStore(sandbox / "packed")}
    yield opened
    for store in opened.values():
        store.close()


@SECURITY
@given(key=KEYS)
def test_stores_keep_any_key_inside_their_folder(sandbox: Path, stores: dict[str, Store],
                                                 key: str) -> None:
    outside_before = {p for p in _tree(sandbox) if not p.startswith(("lmdb", "dc", "packed"))}
    array = np.frombuffer(key.encode("utf-8", "surrogatepass")[:64].ljust(4, b"\x00"),
                          np.uint8).copy()
    for store in stores.values():
        store.put(key, array)
        np.testing.assert_array_equal(store.get(key), array)
        assert key in list(store.keys())
    outside_after = {p for p in _tree(sandbox) if not p.startswith(("lmdb", "dc", "packed"))}
    assert outside_after == outside_before
    assert (sandbox / "bait" / "passwd.npy").read_bytes() == b"do not touch"
    for store in stores.values():
        assert store.delete(key)


@SECURITY
@given(key=KEYS)
def test_npy_origin_maps_any_key_to_one_file_inside_its_folder(sandbox: Path, key: str) -> None:
    folder = sandbox / "origin"
    folder.mkdir(exist_ok=True)
    name = npy_filename(key)
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
    assert (folder / name).parent == folder  # one component: never "..", never absolute
    origin = NpyDirOrigin(folder)
    try:
        got = origin.get(key)  # never reads the bait (e.g. "../bait/passwd")
    except StoreError:
        got = None  # e.g. a name too long for the file system: a clear error
    assert got is None
    array = np.arange(3, dtype=np.int16)
    try:
        NpyDirOrigin.write(folder, {key: array})
    except OSError:  # ENAMETOOLONG: refused, nothing written
        assert os.listdir(folder) == []
        return
    np.testing.assert_array_equal(origin.get(key), array)
    assert key in list(origin.keys())
    (folder / name).unlink()
    assert _tree(folder) == set()


def test_the_cache_keeps_traversal_keys_inside_its_tiers(tmp_path: Path) -> None:
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "4KiB"},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "t" / "ssd"),
         "capacity": "64KiB"},
        {"name": "hdd", "backend": "diskcache", "path": str(tmp_path / "t" / "hdd"),
         "capacity": "1MiB"}]}
    keys = ["../../escape", "/abs/escape", "..", "ssd/../../escape", "x\x00y", "a" * 3000]
    with tiercache.open(cfg) as cache:
        for i, key in enumerate(keys):
            cache.put(key, np.full(2000, i, np.float32))
        for i, key in enumerate(keys):
            np.testing.assert_array_equal(cache.get(key), np.full(2000, i, np.float32))
    assert {p.name for p in tmp_path.iterdir()} == {"t"}
    assert {p.name for p in (tmp_path / "t").iterdir()} == {"ssd", "hdd"}
    assert not any(".." in str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert sorted(os.listdir(tmp_path / "t" / "ssd")) == [".tiercache.lock", "data.mdb",
                                                          "lock.mdb"]
