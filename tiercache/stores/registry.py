"""The one registry of storage backends: what each one is, can do and takes.

A backend is a :class:`BackendSpec`: its TOML name, the store class (as a lazy
``"package.module:Class"`` target, so ``import tiercache`` imports no driver), its
*kind* -- ``"memory"`` (in this process, no path), ``"disk"`` (a folder it owns) or
``"remote"`` (a server shared by many processes, located by options such as a URL)
-- whether it serves zero-copy views, and the extra TOML keys it takes with the
function that validates them. :mod:`tiercache.config` and :func:`open_store` ask
this module; nothing else lists backends.

Adding a backend to tiercache is one store module plus one line in
:data:`_BUILTIN`. A user's own backend needs no edit to tiercache: name it
``backend = "package.module:Class"`` in the TOML (the class declares its kind with
the :class:`~tiercache.stores.base.Store` flags ``persistent`` and ``shared``, and
its views with ``zero_copy``), publish it under the entry-point group
``tiercache.backends`` (a :class:`Store` subclass or a :class:`BackendSpec`), or
call :func:`register_backend`.

Trust model: ``"module:Class"`` names and entry points import and run Python code
from the environment; only put them in trusted config files.

Thread-safety: every function may be called from any thread; the registry is
guarded by one lock, and a class is imported at most once per target.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, Protocol

from ..loading import import_target
from . import memory as memory_options
from .base import Store, VerifyMode
from .redis import options as redis_options

__all__ = ["ENTRY_POINT_GROUP", "BackendSpec", "DiskStoreClass", "MemoryStoreClass",
           "OptionParser", "RemoteStoreClass", "StoreKind", "available_backends",
           "backend_names", "backend_spec", "backend_specs", "open_store", "register_backend",
           "store_kind", "unregister_backend"]

StoreKind = Literal["memory", "disk", "remote"]
#: ``parse_options(table, fail)``: validate the backend's keys of one ``[[tiers]]`` table
#: into keyword arguments for its store; ``fail(key, reason)`` builds the error to raise.
OptionParser = Callable[[Mapping[str, Any], Callable[[str, str], Exception]], dict[str, Any]]
ENTRY_POINT_GROUP = "tiercache.backends"


class MemoryStoreClass(Protocol):
    """Constructor of a ``"memory"`` store: nothing to locate, nothing to verify; takes
    the options its spec parsed (the built-in one: ``representation``, ``decoder``)."""

    def __call__(self, **options: Any) -> Store: ...


class DiskStoreClass(Protocol):
    """Constructor of a ``"disk"`` store: the folder it owns, and how to open it."""

    def __call__(self, path: Path, *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> Store: ...


class RemoteStoreClass(Protocol):
    """Constructor of a ``"remote"`` store: located by the options its spec parsed."""

    def __call__(self, *, verify: VerifyMode = "always", capacity_bytes: int | None = None,
                 **options: Any) -> Store: ...


def _no_options(table: Mapping[str, Any], fail: Callable[[str, str], Exception]
                ) -> dict[str, Any]:
    """The parser of a backend that takes no extra keys. O(1)."""
    return {}


def store_kind(cls: type[Store]) -> StoreKind:
    """The kind a store class declares by its flags: ``shared`` -> ``"remote"``,
    else ``persistent`` -> ``"disk"``, else ``"memory"``. O(1)."""
    if cls.shared:
        return "remote"
    return "disk" if cls.persistent else "memory"


@dataclass(frozen=True)
class BackendSpec:
    """One backend: name, lazily imported class, kind, capabilities and options.

    Attributes
    ----------
    name:
        The TOML ``backend`` value.
    target:
        ``"package.module:Class"`` of the store class, imported on first use.
    kind:
        ``"memory"``, ``"disk"`` or ``"remote"``: how the store is located and opened
        (see the constructor protocols of this module).
    option_keys:
        The TOML keys a tier of this backend takes besides the common ones.
    parse_options:
        Validates those keys into the store's keyword arguments (remote stores).
    zero_copy:
        Whether the store serves zero-copy views (``get_view``), so a tier may set
        ``zero_copy = true``. Equal to the class's ``zero_copy`` flag.
    """

    name: str
    target: str
    kind: StoreKind
    option_keys: frozenset[str] = frozenset()
    parse_options: OptionParser = _no_options
    zero_copy: bool = False

    @classmethod
    def from_class(cls, store_cls: type[Store], *, name: str | None = None,
                   target: str | None = None) -> BackendSpec:
        """The spec of a store class, its kind and capabilities read from its flags
        (takes no options). ``name`` defaults to ``store_cls.backend``. O(1)."""
        if not (isinstance(store_cls, type) and issubclass(store_cls, Store)):
            raise TypeError(f"{store_cls!r} is not a subclass of tiercache.stores.base.Store")
        target = target or f"{store_cls.__module__}:{store_cls.__qualname__}"
        spec = cls(name=name or store_cls.backend or target, target=target,
                   kind=store_kind(store_cls), zero_copy=store_cls.zero_copy)
        with _lock:
            _classes[spec.target] = store_cls
        return spec

    def load(self) -> type[Store]:
        """The store class, imported on first use (raises :class:`ImportError` naming
        the backend when its module or driver is missing). O(1) after the first."""
        with _lock:
            known = _classes.get(self.target)
        if known is not None:
            return known
        obj = import_target(self.target, f"backend {self.name!r}")
        if not (isinstance(obj, type) and issubclass(obj, Store)):
            raise TypeError(f"backend {self.name!r}: {self.target} is {obj!r}, not a "
                            "subclass of tiercache.stores.base.Store")
        with _lock:
            _classes[self.target] = obj
        return obj

    def memory_class(self) -> MemoryStoreClass:
        """The class, typed as the constructor of a memory store. O(1) after the first."""
        factory: Any = self.load()  # a memory store takes the options its spec parsed
        checked: MemoryStoreClass = factory
        return checked

    def disk_class(self) -> DiskStoreClass:
        """The class, typed as the constructor of a disk store. O(1) after the first."""
        factory: Any = self.load()  # every disk store takes (path, *, verify, ...)
        checked: DiskStoreClass = factory
        return checked

    def remote_class(self) -> RemoteStoreClass:
        """The class, typed as the constructor of a remote store. O(1) after the first."""
        factory: Any = self.load()  # every remote store takes (*, verify, ..., **options)
        checked: RemoteStoreClass = factory
        return checked


#: The backends shipped with tiercache: adding one is one line here.
_BUILTIN: tuple[BackendSpec, ...] = (
    BackendSpec("memory", "tiercache.stores.memory:MemoryStore", "memory",
                option_keys=memory_options.OPTION_KEYS,
                parse_options=memory_options.parse_options),
    BackendSpec("lmdb", "tiercache.stores.lmdb_store:LmdbStore", "disk"),
    BackendSpec("diskcache", "tiercache.stores.diskcache_store:DiskcacheStore", "disk",
                zero_copy=True),
    BackendSpec("packed", "tiercache.stores.packed:PackedStore", "disk", zero_copy=True),
    BackendSpec("redis", "tiercache.stores.redis:RedisStore", "remote",
                option_keys=redis_options.OPTION_KEYS, parse_options=redis_options.parse_options),
)

_lock = threading.Lock()
_specs: dict[str, BackendSpec] = {spec.name: spec for spec in _BUILTIN}
#: target -> imported class.
_classes: dict[str, type[Store]] = {}
#: ``"module:Class"`` names already resolved.
_by_target: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec | type[Store]) -> BackendSpec:
    """Register a backend (a spec, or a store class whose flags give its spec) under its
    name, replacing any of that name; return the spec. O(1). Thread-safe."""
    if not isinstance(spec, BackendSpec):
        spec = BackendSpec.from_class(spec)
    if not spec.name or ":" in spec.name:
        raise ValueError(f"backend name {spec.name!r} must be non-empty and contain no ':' "
                         "(that form names a class)")
    if spec.kind not in ("memory", "disk", "remote"):
        raise ValueError(f"backend {spec.name!r}: kind must be 'memory', 'disk' or 'remote', "
                         f"got {spec.kind!r}")
    with _lock:
        _specs[spec.name] = spec
    return spec


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_specs() -> list[BackendSpec]:
    """The registered specs (built-in and :func:`register_backend`), sorted by name,
    without importing any store or reading entry points. O(backends)."""
    with _lock:
        return sorted(_specs.values(), key=lambda spec: spec.name)


def unregister_backend(name: str) -> None:
    """Forget the backend registered as ``name`` (a no-op if none is). O(1)."""
    with _lock:
        _specs.pop(name, None)


def backend_names() -> list[str]:
    """Sorted names :func:`backend_spec` knows (registered or published as entry points;
    ``"module:Class"`` besides), without importing any store. O(backends)."""
    return sorted({spec.name for spec in backend_specs()} | set(_entry_points()))


def backend_spec(name: str) -> BackendSpec:
    """The spec of backend ``name``: a registered name, an entry point of
    ``tiercache.backends``, or ``"package.module:Class"`` (imported here).

    Raises :class:`LookupError` naming the known backends for an unknown name,
    :class:`ImportError` when a class cannot be imported and :class:`TypeError` when
    it is not a :class:`~tiercache.stores.base.Store`. O(1) for a known name.
    """
    with _lock:
        spec = _specs.get(name) or _by_target.get(name)
    if spec is not None:
        return spec
    if ":" in name:
        spec = BackendSpec.from_class(_store_class(import_target(name, f"backend {name!r}"),
                                                   name), name=name, target=name)
        with _lock:
            _by_target[name] = spec
        return spec
    eps = _entry_points()
    if name not in eps:
        raise LookupError(f"unknown store backend {name!r} (known: "
                          f"{', '.join(backend_names())})")
    try:
        obj = eps[name].load()
    except Exception as exc:  # the package's module is missing or raised
        raise ImportError(f"backend {name!r}: its entry point ({ENTRY_POINT_GROUP}) cannot be "
                          f"loaded: {type(exc).__name__}: {exc}") from None
    spec = (dataclasses.replace(obj, name=name) if isinstance(obj, BackendSpec)
            else BackendSpec.from_class(_store_class(obj, name), name=name))
    return register_backend(spec)


def _store_class(obj: object, name: str) -> type[Store]:
    if not (isinstance(obj, type) and issubclass(obj, Store)):
        raise TypeError(f"backend {name!r} is {obj!r}, not a subclass of "
                        "tiercache.stores.base.Store")
    return obj


def available_backends() -> list[str]:
    """Sorted names of the backends whose store imports here (a missing driver, such
    as redis without its extra, leaves its backend out). Imports every store.
    O(backends)."""
    names = []
    for name in backend_names():
        try:
            backend_spec(name).load()
        except (ImportError, TypeError, LookupError):
            continue
        names.append(name)
    return names


def open_store(backend: str, path: Path | None, *, verify: VerifyMode = "always",
               capacity_bytes: int | None = None,
               options: Mapping[str, Any] | None = None,
               exclusive: bool | None = None) -> Store:
    """Open the store for ``backend`` (a registered name or ``"module:Class"``).

    Parameters
    ----------
    backend:
        ``"memory"``, ``"lmdb"``, ``"diskcache"``, ``"packed"``, ``"redis"``, a
        registered name, or ``"package.module:Class"``.
    path:
        Directory the store owns (created if missing); required by disk backends,
        ignored by memory and remote ones.
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
        Keyword arguments for a remote store's constructor (``redis``: ``url`` or
        ``cluster_nodes``, ``namespace``, ``timeout_s``, ``chunk_bytes``; such a
        store takes no path) or a memory store's (``representation``, ``decoder``).

    Raises :class:`LookupError` naming the known backends for an unknown name,
    :class:`ValueError` when a disk backend gets no path, and
    :class:`~tiercache.errors.StoreError` when the medium cannot be opened.
    Thread-safe; O(1) plus opening the medium.
    """
    spec = backend_spec(backend)
    if spec.kind == "memory":
        return spec.memory_class()(**dict(options or {}))
    if spec.kind == "remote":
        return spec.remote_class()(verify=verify, capacity_bytes=capacity_bytes,
                                   **dict(options or {}))
    if path is None:
        raise ValueError(f"the {backend} backend needs a path (a directory it owns)")
    return spec.disk_class()(Path(path), verify=verify, capacity_bytes=capacity_bytes,
                             exclusive=exclusive)
