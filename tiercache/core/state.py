"""The state a TieredCache's parts share, and the small helpers all of them use.

:class:`CacheState` declares every attribute :class:`~tiercache.core.cache.TieredCache`
sets up, so each part of the cache (lookup, movement, maintenance, schedule,
prefetch) can be a small class of its own: ``TieredCache`` combines them. The
helpers here read the tier indices (``_locate``, ``where``, ``keys``), the
per-key write versions, and report corrupt or lost copies.

Thread-safety: every method expects the cache's re-entrant lock held unless its
docstring says it takes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..config import TierConfig
from ..errors import (
    CacheClosedError,
    StoreError,
    TierCacheError,
)
from ..origins import Origin
from ..policies import Policy
from ..serving.prefetcher import Prefetcher
from .recording import TraceRecorder
from .stats import LoopStats, TierStats
from .tier import Tier

_MISSING: Any = object()

log = logging.getLogger("tiercache")

class CacheState:
    """Attributes and helpers shared by the parts of a TieredCache."""

    # Declared here, set by TieredCache.__init__ (tiercache.core.cache).
    _tiers: list[Tier]
    mode: str
    inclusive: bool
    origin: Origin | None
    origin_stats: TierStats
    flush_on_close: bool
    _lock: threading.RLock
    read_only: bool
    _tier_configs: tuple[TierConfig, ...] | None
    _versions: dict[str, int]
    _version_counter: int
    _version_floor: int
    _scratch: dict[int, np.ndarray]
    _closed: bool
    schedule: tuple[str, ...]
    _schedule_index: dict[str, int | tuple[int, ...]]
    _schedule_policies: tuple[Policy, ...]
    _cursor: int
    _inflight: dict[str, threading.Event]
    _prefetcher: Prefetcher | None
    _staged: dict[str, tuple[int, int, np.ndarray]]
    _staged_bytes: int
    _staging_max_bytes: int
    loop_stats: LoopStats
    _recorder: TraceRecorder | None
    _reported_corrupt: set[tuple[str, str]]
    duplicates_dropped: int

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return tuple(self._tiers)

    def _schedule_aware(self) -> tuple[Policy, ...]:
        """The tiers' policies that use a declared schedule (the cursor moves them). O(tiers)."""
        return tuple(t.policy for t in self._tiers if t.policy.uses_schedule)

    def tier(self, name: str) -> Tier:
        for t in self._tiers:
            if t.name == name:
                return t
        raise KeyError(f"no tier named {name!r} (tiers: {', '.join(t.name for t in self._tiers)})")

    def __contains__(self, key: object) -> bool:
        """Whether a tier holds ``key`` (the origin is not consulted). O(tiers)."""
        if not isinstance(key, str):
            return False
        with self._lock:
            return self._locate(key) is not None

    def keys(self) -> list[str]:
        """Every key held by some tier (not the origin's)."""
        with self._lock:
            seen: dict[str, None] = {}
            for tier in self._tiers:
                seen.update(dict.fromkeys(tier.keys()))
            return list(seen)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def where(self, key: str) -> list[str]:
        """Names of the tiers holding ``key``, fastest first (for tests and debugging)."""
        with self._lock:
            return [t.name for t in self._tiers if key in t]

    def _locate(self, key: str) -> tuple[int, Tier] | None:
        for i, tier in enumerate(self._tiers):
            if key in tier:
                return i, tier
        return None

    def _version(self, key: str) -> int:
        """The write version of ``key``: compare before and after an unlocked read. O(1)."""
        return self._versions.get(key, self._version_floor)

    def _drop_corrupt(self, tier: Tier, key: str, exc: Exception, version: int) -> None:
        with self._lock:
            tier.count("corrupt")
            if self._version(key) == version and key in tier:
                tier.remove(key)
        self._report_corrupt(tier, key, exc)

    def _report_corrupt(self, tier: Tier, key: str, exc: Exception,
                        what: str = "dropped corrupt copy of %r (%s); reading from the next "
                                    "tier") -> None:
        """Log a corrupt copy once per (tier, key), however often it is read. O(1)."""
        seen = self._reported_corrupt
        if (tier.name, key) in seen:
            return
        if len(seen) >= 65536:  # bounded: forget old reports rather than grow forever
            seen.clear()
        seen.add((tier.name, key))
        log.warning("tier %s: " + what, tier.name, key, exc)

    def _forget_lost(self, tier: Tier, key: str, version: int) -> None:
        """A read of ``key`` from ``tier`` found nothing. If the index still lists it and the
        medium confirms it is gone (Redis evicted it), forget the entry, so the tier's
        accounting stays honest and the next lookup goes below. Counted in ``lost``."""
        with self._lock:
            if self._version(key) != version or key not in tier:
                return  # replaced or moved meanwhile
            if not tier.check_medium():
                return  # the folder was removed: every entry is forgotten, tier degraded
            try:
                if tier.medium_has(key):
                    return  # moved away and back meanwhile: the copy is there
            except StoreError:
                return  # cannot tell now; the next read tries again
            tier.forget(key, lost=True)
        log.info("tier %s: %r was gone from the medium; dropped from its index", tier.name, key)

    @staticmethod
    def _copy_out(key: str, array: np.ndarray, out: np.ndarray) -> np.ndarray:
        if out.dtype != array.dtype or out.shape != array.shape:
            raise ValueError(f"out has dtype {out.dtype} and shape {out.shape}, but shard "
                             f"{key!r} is {array.dtype} {array.shape}")
        np.copyto(out, array)
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError("the cache is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise TierCacheError("the cache was opened read-only (tiercache stats/verify); "
                                 "open it with tiercache.open() to write")
