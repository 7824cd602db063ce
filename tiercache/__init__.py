"""tiercache: serve model weight shards from a hierarchy of storage tiers.

>>> import tiercache
>>> with tiercache.open("tiers.toml") as cache:          # doctest: +SKIP
...     cache.put("blk.0.attn_q.weight", array)
...     w = cache.get("blk.0.attn_q.weight")

See docs/quickstart.md.
"""

from __future__ import annotations

from .config import CacheConfig, OriginConfig, TierConfig, load_config
from .engine import TieredCache, open
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

__version__ = "0.1.0"

__all__ = [
    "CacheConfig",
    "ConfigError",
    "CorruptShardError",
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
    "open",
    "register_policy",
]
