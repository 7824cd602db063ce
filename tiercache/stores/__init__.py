"""Storage media for shards, opened by backend name through :mod:`.registry`.

Each driver (lmdb, diskcache, redis) is imported only inside its own module, and that
module is imported only when its backend is first opened (or when
:data:`STORE_BACKENDS` is first read), so ``import tiercache`` pays for no
driver. What a backend is and can do lives in one place,
:mod:`tiercache.stores.registry`; :func:`open_store` and :func:`available_backends`
are its functions.

Thread-safety: the registry is guarded by a lock; every store documents its own
thread-safety.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ShardInfo, Store, VerifyMode
from .registry import (
    BackendSpec,
    available_backends,
    backend_spec,
    open_store,
    register_backend,
)

__all__ = ["STORE_BACKENDS", "BackendSpec", "ShardInfo", "Store", "VerifyMode",
           "available_backends", "backend_spec", "open_store", "register_backend"]

if TYPE_CHECKING:
    #: Backend name (the TOML ``backend`` key) -> store class. Reading it imports every driver.
    STORE_BACKENDS: dict[str, type[Store]]


def __getattr__(name: str) -> object:
    if name == "STORE_BACKENDS":
        return {backend: backend_spec(backend).load() for backend in available_backends()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
