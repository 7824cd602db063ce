"""A tier: one store, one policy, a byte capacity and its statistics.

The tier is the only caller of its policy's hooks and the only place bytes
enter or leave its store, so the policy's view and the store's contents never
drift apart. It knows nothing about other tiers: when it must make room it
hands each victim to a ``demote`` callback supplied by the engine, and forgets
the victim only after the callback returned (the bytes are safe below, or the
engine chose to drop them).

Thread-safety: not thread-safe; the engine serialises every call that changes
state. :meth:`read` touches only the store and may run outside the engine lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .policies import Policy
from .stats import TierStats
from .stores.base import Store

#: Demotion callback: move the victim's bytes below, or decide to drop them.
#: Raise :class:`DemotionFailed` to keep the victim (the admission is then abandoned).
DemoteFn = Callable[[str], None]


class DemotionFailed(Exception):
    """Internal: a victim could not be moved down, so it must stay where it is."""


@dataclass(frozen=True)
class PromotionRule:
    """When a hit in this tier moves the shard up one tier.

    ``after_hits`` is the number of hits here (counted since the shard arrived in
    this tier) that trigger promotion; ``None`` means never, 1 means always.
    """

    after_hits: int | None

    def due(self, hits: int) -> bool:
        return self.after_hits is not None and hits >= self.after_hits


class Tier:
    """One level of the hierarchy.

    Parameters
    ----------
    name:
        The tier's name from the config (``"ram"``, ``"ssd"``, ...).
    store, policy:
        The medium and the eviction policy; the tier takes ownership of both.
    capacity_bytes:
        Hard limit on the sum of :meth:`Store.stored_size` of resident shards.
    promotion:
        When hits here promote a shard to the tier above.
    """

    def __init__(self, name: str, store: Store, policy: Policy, capacity_bytes: int,
                 promotion: PromotionRule) -> None:
        self.name = name
        self.store = store
        self.policy = policy
        self.capacity_bytes = capacity_bytes
        self.promotion = promotion
        self.stats = TierStats()
        self.used_bytes = 0
        self._sizes: dict[str, int] = {}
        self._hits_here: dict[str, int] = {}
        self.is_memory = not store.persistent and store.backend == "memory"

    # --- index ---------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def keys(self) -> list[str]:
        return list(self._sizes)

    def size_of(self, key: str) -> int:
        return self._sizes[key]

    def load_existing(self) -> int:
        """Index what a persistent store already holds (after a restart). O(n).

        Shards beyond capacity (e.g. the capacity was lowered) are evicted for
        good, oldest-indexed first. Returns the number of shards indexed.
        """
        for key in self.store.keys():
            info = self.store.info(key)
            if info is None:
                continue
            size = info.stored_nbytes
            if self.used_bytes + size > self.capacity_bytes:
                self.store.delete(key)
                self.stats.dropped += 1
                continue
            self.policy.on_insert(key, size)
            self._sizes[key] = size
            self.used_bytes += size
        return len(self._sizes)

    # --- reads ------------------------------------------------------------------------
    def read(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Read ``key``'s bytes from the store (no bookkeeping). May raise StoreError."""
        return self.store.get(key, out)

    def record_hit(self, key: str, nbytes: int, latency_s: float) -> bool:
        """Account a hit on ``key``; return whether it is now due for promotion."""
        self.policy.on_hit(key)
        stats = self.stats
        stats.hits += 1
        stats.bytes_read += nbytes
        stats.latency.record(latency_s)
        hits = self._hits_here.get(key, 0) + 1
        self._hits_here[key] = hits
        return self.promotion.due(hits)

    # --- writes ---------------------------------------------------------------------
    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.capacity_bytes

    def admit(self, key: str, array: np.ndarray, demote: DemoteFn, *, adopt: bool = False) -> bool:
        """Make room (evicting through ``demote``) and store ``array`` under ``key``.

        Returns ``False``, leaving the tier unchanged apart from victims already
        moved down, when the shard exceeds the capacity or a victim could not be
        demoted. ``adopt`` lets a memory store keep ``array`` itself (no copy).
        O(victims) policy calls plus the I/O of the victims and the put.
        """
        size = self.store.stored_size(array)
        if size > self.capacity_bytes:
            self.stats.skipped_too_large += 1
            return False
        if key in self._sizes:
            self.remove(key)
        policy = self.policy
        policy.on_miss(key, size)
        while self.used_bytes + size > self.capacity_bytes:
            victim = policy.victim(key)
            try:
                demote(victim)  # type: ignore[arg-type]
            except DemotionFailed:
                return False
            self._forget(victim, evicted=True)  # type: ignore[arg-type]
        stored = self.store.adopt(key, array) if adopt else self.store.put(key, array)
        policy.on_insert(key, stored)
        self._sizes[key] = stored
        self.used_bytes += stored
        self.stats.bytes_written += stored
        return True

    def remove(self, key: str) -> bool:
        """Delete ``key`` (not an eviction: no ghost is kept). O(1) plus the store delete."""
        if key not in self._sizes:
            return False
        self._forget(key, evicted=False)
        return True

    def _forget(self, key: str, *, evicted: bool) -> None:
        self.store.delete(key)
        if evicted:
            self.policy.on_evict(key)
            self.stats.evictions += 1
        else:
            self.policy.on_remove(key)
        self.used_bytes -= self._sizes.pop(key)
        self._hits_here.pop(key, None)

    def check_invariants(self) -> None:
        """Raise AssertionError if capacity, index and policy disagree (for tests)."""
        assert self.used_bytes <= self.capacity_bytes, (
            f"tier {self.name}: {self.used_bytes} bytes used > capacity {self.capacity_bytes}")
        assert self.used_bytes == sum(self._sizes.values())
        assert set(self.policy) == set(self._sizes), f"tier {self.name}: policy and index differ"
        self.policy.check_invariants()

    def describe(self) -> dict[str, object]:
        """Stats plus configuration and residency, as a plain dict."""
        out: dict[str, object] = {
            "backend": self.store.backend,
            "policy": self.policy.name or type(self.policy).__name__,
            "capacity_bytes": self.capacity_bytes,
            "resident_bytes": self.used_bytes,
            "resident_count": len(self._sizes),
        }
        out.update(self.stats.as_dict())
        extra = self.policy.extra_stats()
        if extra:
            out["policy_stats"] = extra
        return out
