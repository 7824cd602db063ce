"""The backend registry: one spec per backend, and a user's own backend without editing
tiercache -- by ``"module:Class"`` in the TOML, by :func:`register_backend`, or by the
entry-point group ``tiercache.backends``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest

import tiercache
from tiercache.config import load_config
from tiercache.errors import ConfigError
from tiercache.stores import open_store, registry
from tiercache.stores.base import ShardInfo, Store, VerifyMode
from tiercache.stores.registry import (
    BackendSpec,
    backend_names,
    backend_spec,
    register_backend,
    store_kind,
    unregister_backend,
)

HEADER_BYTES = 128


class ToyStore(Store):
    """A disk backend outside tiercache: one ``.npy`` file per shard in its folder."""

    backend = "toy"
    persistent = True

    def __init__(self, path: Path, *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.verify = verify

    def _file(self, key: str) -> Path:
        return self.path / f"{key.encode().hex()}.npy"

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        if not self._file(key).exists():
            return None
        array: np.ndarray = np.load(self._file(key))
        if out is None:
            return array
        np.copyto(out, array)
        return out

    def put(self, key: str, array: np.ndarray) -> int:
        np.save(self._file(key), np.ascontiguousarray(array))
        return self.stored_size(array)

    def delete(self, key: str) -> bool:
        try:
            self._file(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def info(self, key: str) -> ShardInfo | None:
        if not self._file(key).exists():
            return None
        array = np.load(self._file(key), mmap_mode="r")
        return ShardInfo(array.dtype, array.shape, array.nbytes + HEADER_BYTES)

    def keys(self) -> Iterator[str]:
        return iter([bytes.fromhex(p.stem).decode() for p in sorted(self.path.glob("*.npy"))])

    def stored_size(self, array: np.ndarray) -> int:
        return int(array.nbytes) + HEADER_BYTES


class ToyServerStore(Store):
    """A remote backend outside tiercache: a "server" (a dict per bucket, shared by every
    store of this process) located by the option ``bucket``."""

    backend = "toyserver"
    persistent = True
    shared = True
    servers: ClassVar[dict[str, dict[str, np.ndarray]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, verify: VerifyMode = "always", capacity_bytes: int | None = None,
                 bucket: str) -> None:
        with self._lock:
            self.data = self.servers.setdefault(bucket, {})

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        array = self.data.get(key)
        if array is None or out is None:
            return None if array is None else array.copy()
        np.copyto(out, array)
        return out

    def put(self, key: str, array: np.ndarray) -> int:
        self.data[key] = np.array(array, copy=True)
        return self.stored_size(array)

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def info(self, key: str) -> ShardInfo | None:
        array = self.data.get(key)
        return None if array is None else ShardInfo(array.dtype, array.shape,
                                                    self.stored_size(array))

    def keys(self) -> Iterator[str]:
        return iter(list(self.data))

    def stored_size(self, array: np.ndarray) -> int:
        return int(array.nbytes) + HEADER_BYTES


def parse_bucket(table: Mapping[str, Any], fail: Callable[[str, str], Exception]
                 ) -> dict[str, Any]:
    bucket = table.get("bucket")
    if not isinstance(bucket, str) or not bucket.isidentifier():
        raise fail("bucket", f"must be a bucket name, got {bucket!r}")
    return {"bucket": bucket}


@pytest.fixture
def registered() -> Iterator[None]:
    """Register the toy backends for one test, and forget them after."""
    register_backend(BackendSpec("toy", f"{__name__}:ToyStore", "disk"))
    register_backend(BackendSpec("toyserver", f"{__name__}:ToyServerStore", "remote",
                                 option_keys=frozenset({"bucket"}), parse_options=parse_bucket))
    try:
        yield
    finally:
        unregister_backend("toy")
        unregister_backend("toyserver")
        ToyServerStore.servers.clear()


def _round_trip(config: Any) -> None:
    """put/get/delete through a cache, then a reopen finds what was left."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    with tiercache.open(config) as cache:
        cache.put("w", w, tier="ssd")
        cache.put("gone", np.ones(3, np.int16), tier="ssd")
        np.testing.assert_array_equal(cache.get("w"), w)
        assert cache.delete("gone")
        assert "gone" not in cache
    with tiercache.open(config) as cache:  # persistent: a reopen indexes what is there
        assert "gone" not in cache
        np.testing.assert_array_equal(cache.get("w"), w)


def test_a_backend_class_named_in_the_toml(tmp_path: Path) -> None:
    toml = tmp_path / "tiers.toml"
    toml.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "1MiB"\n\n'
                    f'[[tiers]]\nname = "ssd"\nbackend = "{__name__}:ToyStore"\n'
                    'path = "ssd"\ncapacity = "1MiB"\n')
    cfg = load_config(toml)
    assert cfg.tiers[1].backend == f"{__name__}:ToyStore"
    assert cfg.tiers[1].path == tmp_path / "ssd"
    _round_trip(toml)
    assert sorted(p.name for p in (tmp_path / "ssd").iterdir()) == [f"{b'w'.hex()}.npy"]


def test_a_registered_backend(tmp_path: Path, registered: None) -> None:
    assert "toy" in backend_names() and "toyserver" in backend_names()
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"},
                     {"name": "ssd", "backend": "toy", "path": str(tmp_path / "ssd"),
                      "capacity": "1MiB"}]}
    _round_trip(cfg)
    assert isinstance(open_store("toy", tmp_path / "other"), ToyStore)
    del cfg["tiers"][1]["path"]  # a disk kind needs its folder
    with pytest.raises(ConfigError, match="required for a toy tier") as err:
        load_config(cfg)
    assert err.value.key == "tiers[1] (ssd).path"


def test_a_registered_remote_backend_validates_its_options(registered: None) -> None:
    tier = {"name": "ssd", "backend": "toyserver", "capacity": "1MiB", "bucket": "models"}
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}, tier]}
    assert dict(load_config(cfg).tiers[1].options) == {"bucket": "models"}
    _round_trip(cfg)
    assert list(ToyServerStore.servers["models"]) == ["w"]
    with pytest.raises(ConfigError, match="must be a bucket name") as err:
        load_config({"tiers": [{**tier, "bucket": "no such"}]})
    assert err.value.key == "tiers[0] (ssd).bucket"
    with pytest.raises(ConfigError, match="only a toyserver tier takes this key") as err:
        load_config({"tiers": [{"name": "r", "backend": "memory", "capacity": "1MiB",
                                "bucket": "models"}]})
    assert err.value.key == "tiers[0] (r).bucket"
    with pytest.raises(ConfigError, match="percentage is only allowed for memory") as err:
        load_config({"tiers": [{**tier, "capacity": "10%"}]})


def test_an_entry_point_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class EntryPoint:
        name = "toyplugin"

        def load(self) -> type[Store]:
            return ToyStore

    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint()] if group == "tiercache.backends" else [])
    try:
        assert "toyplugin" in backend_names()
        spec = backend_spec("toyplugin")
        assert (spec.kind, spec.zero_copy) == ("disk", False)
        cfg = load_config({"tiers": [{"name": "ssd", "backend": "toyplugin",
                                      "path": str(tmp_path / "ssd"), "capacity": "1MiB"}]})
        assert cfg.tiers[0].backend == "toyplugin"
    finally:
        unregister_backend("toyplugin")


@pytest.mark.parametrize(("backend", "message"), [
    (f"{__name__}:NoSuchStore", "has no attribute 'NoSuchStore'"),
    ("no_such_module_here:Store", "no module named 'no_such_module_here'"),
    (f"{__name__}:parse_bucket", "not a subclass of tiercache.stores.base.Store"),
])
def test_a_bad_class_backend_is_a_config_error(tmp_path: Path, backend: str,
                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config({"tiers": [{"name": "ssd", "backend": backend,
                                "path": str(tmp_path / "ssd"), "capacity": "1MiB"}]})
    assert err.value.key == "tiers[0] (ssd).backend"


def test_the_built_in_specs_match_their_classes() -> None:
    """Config reads the kind and zero-copy flag from the spec (no driver import); the
    spec must say what the class declares."""
    for name in ("memory", "lmdb", "diskcache", "packed", "redis"):
        spec = backend_spec(name)
        cls = spec.load()
        assert cls.backend == name
        assert (spec.kind, spec.zero_copy) == (store_kind(cls), cls.zero_copy), name
    assert [backend_spec(n).kind for n in ("memory", "lmdb", "redis")] == [
        "memory", "disk", "remote"]
    assert sorted(n for n in ("memory", "lmdb", "diskcache", "packed", "redis")
                  if backend_spec(n).zero_copy) == ["diskcache", "packed"]


def test_register_backend_refuses_what_is_not_a_backend() -> None:
    with pytest.raises(TypeError, match="not a subclass"):
        register_backend(cast(Any, dict))  # deliberately not a Store subclass
    with pytest.raises(ValueError, match="contain no ':'"):
        register_backend(BackendSpec("a:b", f"{__name__}:ToyStore", "disk"))
    with pytest.raises(LookupError, match="unknown store backend 'nope'"):
        backend_spec("nope")
