"""The tiercache error tree.

Every error tiercache raises on purpose derives from :class:`TierCacheError`, so
``except tiercache.TierCacheError`` catches them all. :class:`ConfigError` is
also a :class:`ValueError` and :class:`ShardNotFoundError` also a
:class:`KeyError`, so code written against the standard exceptions keeps
working.
"""

from __future__ import annotations

import os


class TierCacheError(Exception):
    """Root of every error raised by tiercache."""


class ConfigError(TierCacheError, ValueError):
    """A configuration value is invalid.

    Parameters
    ----------
    reason:
        What is wrong and, where possible, what to do about it.
    file:
        The configuration file (or ``"<dict>"`` for an in-memory config).
    key:
        Dotted path of the offending key, e.g. ``"tiers[1].capacity"``.
    """

    def __init__(self, reason: str, *, file: str | os.PathLike[str] | None = None,
                 key: str | None = None) -> None:
        self.reason = reason
        self.file = os.fspath(file) if file is not None else None
        self.key = key
        where = ":".join(p for p in (self.file, key) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class ShardNotFoundError(TierCacheError, KeyError):
    """A shard is in no tier and no origin provides it."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "shard not found"


class StoreError(TierCacheError):
    """A storage backend failed to read, write or delete (I/O, full disk, ...)."""


class CorruptShardError(StoreError):
    """A stored shard failed its integrity check (bad magic, header or checksum)."""


class MediumDamagedError(StoreError):
    """A tier's medium as a whole cannot be used: its index or data file is damaged
    (a truncated lmdb map, an unreadable SQLite index, an undecodable key). The
    message names the file and what is wrong. The engine opens such a tier
    *degraded* (served from the other tiers and the origin) instead of failing,
    and ``tiercache verify --repair`` empties and reopens it."""


class CacheClosedError(TierCacheError):
    """An operation was attempted on a cache (or store) that is closed, or that was
    closed while the operation ran."""


class ShardFormatError(TierCacheError, ValueError):
    """An array cannot be stored as a shard (object dtype, too many dimensions, ...)."""


class PolicyError(TierCacheError):
    """A policy could not be found, loaded, or violated its contract."""


class TraceError(TierCacheError, ValueError):
    """A trace file cannot be read: missing, truncated, corrupt or malformed.

    The message names the file and, for text formats, the 1-based line, e.g.
    ``oltp.csv:17: size 'x' is not a whole number``.
    """

    def __init__(self, reason: str, *, file: str | os.PathLike[str] | None = None,
                 line: int | None = None) -> None:
        self.reason = reason
        self.file = os.fspath(file) if file is not None else None
        self.line = line
        where = ":".join(str(p) for p in (self.file, line) if p is not None)
        super().__init__(f"{where}: {reason}" if where else reason)


class ModelFormatError(TierCacheError, ValueError):
    """A model file cannot be imported: missing, truncated, malformed or unsupported.

    The message names the file and says what is wrong, e.g.
    ``model.gguf: truncated: tensor 'blk.3.ffn_up.weight' ends at byte 912 of 640``.
    Raised by the importers, the manifest reader and the runtimes
    (:mod:`tiercache.models`).
    """

    def __init__(self, reason: str, *, file: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.file = os.fspath(file) if file is not None else None
        super().__init__(f"{self.file}: {reason}" if self.file else reason)


class SimulationError(TierCacheError, ValueError):
    """A simulation was asked for something it cannot do (a byte capacity for a trace
    without sizes, a capacity of zero objects, a policy that cannot replay...)."""
