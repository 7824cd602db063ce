"""The validated configuration: frozen dataclasses, nothing that reads a file.

:func:`tiercache.config.load_config` builds these from a TOML file or a table;
building one by hand skips that validation. Immutable, so thread-safe to share.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..stores.base import VerifyMode

__all__ = ["DEFAULT_PROMOTE_AFTER", "ORIGIN_KINDS", "CacheConfig", "Mode", "OriginConfig",
           "TierConfig"]

Mode = Literal["exclusive", "inclusive"]
ORIGIN_KINDS = ("npy", "safetensors")
DEFAULT_PROMOTE_AFTER = 2


@dataclass(frozen=True)
class TierConfig:
    """One tier, validated. ``promote_after`` is None for "never"."""

    name: str
    backend: str
    capacity_bytes: int
    policy: str = "lru"
    path: Path | None = None
    promote_after: int | None = DEFAULT_PROMOTE_AFTER
    verify: VerifyMode = "always"
    #: Serve reads as verified views of the medium; the loader defaults it to whether
    #: the backend can (``diskcache``, ``packed``), and a store that cannot ignores it.
    zero_copy: bool = True
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    #: Keyword arguments for a remote store, parsed by its backend's
    #: :class:`~tiercache.stores.registry.BackendSpec` (redis: ``url`` or ``cluster_nodes``,
    #: ``namespace``, ``timeout_s``, ``chunk_bytes``); empty for the other backends.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The most bytes KV blocks may take in the tier (``kv_capacity``: a size or a
    #: percentage of ``capacity``); ``None``: no bound of their own.
    kv_capacity_bytes: int | None = None


@dataclass(frozen=True)
class OriginConfig:
    """The read-only source of truth consulted when a shard is in no tier."""

    kind: str
    path: Path


@dataclass(frozen=True)
class CacheConfig:
    """A whole cache: tiers fastest first, mode, optional origin."""

    tiers: tuple[TierConfig, ...]
    mode: Mode = "exclusive"
    origin: OriginConfig | None = None
    flush_on_close: bool = True
    #: The TOML file the config was read from (``"<dict>"`` for a mapping): error
    #: messages and warnings name it.
    config_path: str = "<dict>"
    #: CSV file the cache appends every get's ``key,size`` to (see tiercache.core.recording).
    record_trace: Path | None = None

    @property
    def source(self) -> str:
        """Deprecated name of :attr:`config_path` (raises a :class:`DeprecationWarning`)."""
        warnings.warn("CacheConfig.source is deprecated: use CacheConfig.config_path",
                      DeprecationWarning, stacklevel=2)
        return self.config_path
