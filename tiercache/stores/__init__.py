"""Storage media for shards, and the registry that opens them by backend name.

Each driver (lmdb, diskcache, redis) is imported only inside its own module, and that
module is imported only when its backend is first opened (or when
:data:`STORE_BACKENDS` is first read), so ``import tiercache`` pays for no
driver.

Thread-safety: the registry is filled once under a lock; every store documents
its own thread-safety.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from .base import ShardInfo, Store, VerifyMode
from .memory import MemoryStore

__all__ = ["STORE_BACKENDS", "ShardInfo", "Store", "VerifyMode", "available_backends",
           "open_store"]

# backend name -> "module:Class", relative to this package
_LOCATIONS: dict[str, str] = {
    "memory": ".memory:MemoryStore",
    "lmdb": ".lmdb_store:LmdbStore",
    "diskcache": ".diskcache_store:DiskcacheStore",
    "packed": ".packed_store:PackedStore",
    "redis": ".redis:RedisStore",
}
_loaded: dict[str, type[Store]] = {"memory": MemoryStore}
_load_lock = threading.Lock()

if TYPE_CHECKING:
    #: Backend name (the TOML ``backend`` key) -> store class. Reading it imports every driver.
    STORE_BACKENDS: dict[str, type[Store]]


class _DiskStoreClass(Protocol):
    """Constructor shared by the persistent stores."""

    def __call__(self, path: Path, *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> Store: ...


class _SharedStoreClass(Protocol):
    """Constructor of the shared (server) stores: located by options, not a path."""

    def __call__(self, *, verify: VerifyMode = "always", capacity_bytes: int | None = None,
                 **options: Any) -> Store: ...


def _load(name: str) -> type[Store]:
    """The store class of backend ``name``, importing its module once. O(1) after the first."""
    with _load_lock:
        cls = _loaded.get(name)
        if cls is None:
            module_name, _, class_name = _LOCATIONS[name].partition(":")
            cls = cast(type[Store], getattr(importlib.import_module(module_name, __name__),
                                            class_name))
            _loaded[name] = cls
        return cls


def __getattr__(name: str) -> object:
    if name == "STORE_BACKENDS":
        return {backend: _load(backend) for backend in _LOCATIONS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_backends() -> list[str]:
    """Sorted names of the backends whose driver imports here. O(backends)."""
    names = []
    for name in _LOCATIONS:
        try:
            _load(name)
        except ImportError:
            continue
        names.append(name)
    return sorted(names)


def open_store(backend: str, path: Path | None, *, verify: VerifyMode = "always",
               capacity_bytes: int | None = None,
               options: Mapping[str, Any] | None = None,
               exclusive: bool | None = None) -> Store:
    """Open the store for ``backend``.

    Parameters
    ----------
    backend:
        ``"memory"``, ``"lmdb"``, ``"diskcache"`` or ``"redis"``.
    path:
        Directory the store owns (created if missing); required by persistent
        backends, ignored by ``memory``.
    verify:
        Payload checksum checking on reads (``"always"`` or ``"never"``).
    capacity_bytes:
        Sizing hint; lmdb sizes its initial map from it.
    exclusive:
        For a disk store: hold the tier folder's lock (one process owns a tier
        folder; a second one is refused). ``None`` (default): lock when
        ``capacity_bytes`` is given, as every tier of a cache does; ``False``: a
        reader beside the owner (``tiercache stats`` / ``verify``).
    options:
        Keyword arguments for a shared store's constructor (``redis``: ``url`` or
        ``cluster_nodes``, ``namespace``, ``timeout_s``, ``chunk_bytes``); such a
        store takes no path.

    Raises :class:`LookupError` naming the known backends for an unknown name,
    :class:`ValueError` when a persistent backend gets no path, and
    :class:`~tiercache.errors.StoreError` when the medium cannot be opened.
    """
    if backend not in _LOCATIONS:
        known = ", ".join(sorted(_LOCATIONS))
        raise LookupError(f"unknown store backend {backend!r} (known: {known})")
    cls = _load(backend)
    if not cls.persistent:
        return cls()
    if cls.shared:
        return cast(_SharedStoreClass, cls)(verify=verify, capacity_bytes=capacity_bytes,
                                            **dict(options or {}))
    if path is None:
        raise ValueError(f"the {backend} backend needs a path (a directory it owns)")
    factory = cast(_DiskStoreClass, cls)
    return factory(Path(path), verify=verify, capacity_bytes=capacity_bytes, exclusive=exclusive)
