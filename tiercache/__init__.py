"""tiercache: serve model weight shards from a hierarchy of storage tiers.

>>> import tiercache
>>> with tiercache.open("tiers.toml") as cache:          # doctest: +SKIP
...     cache.put("blk.0.attn_q.weight", array)
...     w = cache.get("blk.0.attn_q.weight")

See docs/quickstart.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import CacheConfig, OriginConfig, TierConfig, load_config
from .core.cache import TieredCache, open
from .errors import (
    ConfigError,
    CorruptShardError,
    PolicyError,
    ShardFormatError,
    ShardNotFoundError,
    StoreError,
    TierCacheError,
)
from .origins import NpyDirOrigin, Origin, SafetensorsOrigin
from .policies import Policy, available_policies, get_policy_class, register_policy
from .stores.registry import register_backend

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models.api import Model, load_model


def __getattr__(name: str) -> Any:
    """``load_model`` and ``Model`` load :mod:`tiercache.models.api` on first use (lazily:
    ``import tiercache`` imports neither it nor TensorFlow)."""
    if name in ("load_model", "Model"):
        from .models import api

        return getattr(api, name)
    raise AttributeError(f"module 'tiercache' has no attribute {name!r}")


__all__ = [
    "CacheConfig",
    "ConfigError",
    "CorruptShardError",
    "Model",
    "NpyDirOrigin",
    "Origin",
    "OriginConfig",
    "Policy",
    "PolicyError",
    "SafetensorsOrigin",
    "ShardFormatError",
    "ShardNotFoundError",
    "StoreError",
    "TierCacheError",
    "TierConfig",
    "TieredCache",
    "__version__",
    "available_policies",
    "get_policy_class",
    "load_config",
    "load_model",
    "open",
    "register_backend",
    "register_policy",
]
