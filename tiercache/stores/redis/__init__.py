"""The redis backend: shards in a Redis server or Redis Cluster shared by many processes.

Modules: :mod:`.store` (:class:`RedisStore`, the redis-py client and the
read/write protocol), :mod:`.resp` (the raw RESP2 reader of the fast read
path), :mod:`.layout` (key names, the head prefix, chunking), :mod:`.health`
(error mapping and the fail-fast back-off) and :mod:`.options` (the tier
options, their limits and validation). Importing
this package, or :mod:`.options`, does not import redis-py: the store loads on
first use of :class:`RedisStore`, so a configuration can be validated without
the ``redis`` extra.

Thread-safety: see each module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layout import PREFIX_BYTES, key_digest
    from .resp import pack_command
    from .store import RedisStore

__all__ = ["PREFIX_BYTES", "RedisStore", "key_digest", "pack_command"]

# exported name -> module (relative to this package) that defines it
_EXPORTS = {"RedisStore": ".store", "PREFIX_BYTES": ".layout", "key_digest": ".layout",
            "pack_command": ".resp"}


def __getattr__(name: str) -> object:
    """Load an exported name on first use (O(1) after the module's import)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
