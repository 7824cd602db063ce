"""A tier: one store, one policy, a byte capacity and its statistics.

The tier is the only caller of its policy's hooks and the only place bytes
enter or leave its store, so the policy's view and the store's contents never
drift apart. It knows nothing about other tiers: when it must make room it
hands each victim to a ``demote`` callback supplied by the engine, and forgets
the victim only after the callback returned (the bytes are safe below, or the
engine chose to drop them).

Faults (degraded state, back-off, reopen, pending deletes) are handled by the
base class :class:`~tiercache.core.health.TierHealth`.

Thread-safety: not thread-safe; the engine serialises every call that changes
state. :meth:`read` touches only the store and may run outside the engine lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..codec import observe_write_sequence
from ..errors import CorruptShardError, StoreError
from ..policies import Policy
from ..stores.base import Store
from .health import TierHealth
from .kv_share import KVShare
from .medium import TierMedium
from .stats import TierStats

log = logging.getLogger("tiercache")

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


class Tier(TierMedium, TierHealth):
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
    kv_capacity_bytes:
        The most bytes KV blocks may take here (``None``: the policy alone decides);
        see :class:`~tiercache.core.kv_share.KVShare`.
    """

    def __init__(self, name: str, store: Store, policy: Policy, capacity_bytes: int,
                 promotion: PromotionRule, kv_capacity_bytes: int | None = None) -> None:
        self.name = name
        self.store = store
        self.policy = policy
        self.capacity_bytes = capacity_bytes
        self.promotion = promotion
        self.stats = TierStats()
        self.used_bytes = 0
        #: Bytes held when opened over capacity; 0 once a write brought it back under.
        self._opened_over_bytes = 0
        self._sizes: dict[str, int] = {}
        self._hits_here: dict[str, int] = {}
        #: The KV blocks held and their bound (``kv_capacity``).
        self.kv = KVShare(kv_capacity_bytes)
        self.is_memory = not store.persistent  # a volatile, in-process medium
        #: Serve plain reads as zero-copy views of the medium (``zero_copy = true``).
        self.zero_copy = False
        self._init_health()
        #: Keys :meth:`load_existing` found damaged and left in place (``drop_corrupt=False``).
        self.unindexed_corrupt: list[str] = []
        #: Keys :meth:`load_existing` found damaged (dropped or left), for ``verify``.
        self.damaged_at_open: list[str] = []

    # --- index ---------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def keys(self) -> list[str]:
        return list(self._sizes)

    def _indexed(self, key: str) -> bool:
        return key in self._sizes

    def _forget_everything(self) -> int:
        lost = len(self._sizes)
        for key in list(self._sizes):
            self.policy.on_remove(key)
        self._sizes.clear()
        self._hits_here.clear()
        self.kv.clear()
        self.used_bytes = 0
        return lost

    def size_of(self, key: str) -> int:
        return self._sizes[key]

    def load_existing(self, *, drop_corrupt: bool = True) -> int:
        """Index what a persistent store already holds (after a restart). O(n).

        Nothing is deleted for lack of room: a tier whose capacity was lowered below
        what it holds opens *over capacity* (:attr:`over_capacity_bytes`, reported
        by ``stats()`` and ``verify``) and gives the excess back by demotion, to the
        tier below, the next time a write needs room there. Returns the number of
        shards indexed.

        An entry whose header is damaged is counted in ``corrupt`` and listed in
        :attr:`damaged_at_open`; it is deleted (with ``drop_corrupt=False``: left in
        place, not indexed, and listed in :attr:`unindexed_corrupt` for ``verify`` to
        report and repair). One that cannot be read is left unindexed and counted
        in ``errors``. A private store whose keys cannot be listed raises StoreError
        (:class:`~tiercache.errors.MediumDamagedError` when the medium is damaged).

        A shared store (Redis) belongs to other processes too: shards beyond
        capacity and damaged ones are left alone (not indexed), and a server that
        cannot be reached leaves the index empty (counted in ``errors``) instead
        of failing the cache; the engine finds such shards on demand.
        """
        shared = self.store.shared
        try:
            for key in self.store.keys():
                if key in self._sizes:
                    continue
                try:
                    info = self.store.info(key)
                except CorruptShardError as exc:
                    if shared:
                        continue
                    self._found_corrupt_on_load(key, exc, drop_corrupt)
                    continue
                except (StoreError, OSError) as exc:
                    if isinstance(exc, StoreError) and shared:
                        raise
                    self.stats.errors += 1
                    log.warning("tier %s: cannot index %r on open (%s)", self.name, key, exc)
                    continue
                if info is None:
                    continue
                if info.sequence:
                    observe_write_sequence(info.sequence)
                if shared:
                    self.index_existing(key, info.stored_nbytes)
                    continue
                self.policy.on_insert(key, info.stored_nbytes)
                self._sizes[key] = info.stored_nbytes
                self.used_bytes += info.stored_nbytes
                self.kv.add(key, info.stored_nbytes)
        except StoreError as exc:
            if not shared:
                raise
            self.stats.errors += 1
            log.warning("tier %s: cannot list its shared store (%s); starting with %d shards "
                        "indexed", self.name, exc, len(self._sizes))
            self.note_failure(exc, "open")  # degraded with the real reason, retried later
        self.kv.opened()
        if self.used_bytes > self.capacity_bytes:
            self._opened_over_bytes = self.used_bytes
            log.warning("tier %s holds %d bytes, more than its capacity of %d: nothing is "
                        "deleted; the excess moves down as writes need room", self.name,
                        self.used_bytes, self.capacity_bytes)
        return len(self._sizes)

    @property
    def over_capacity_bytes(self) -> int:
        """Bytes held beyond the capacity (a capacity lowered since the shards were
        written); 0 normally. O(1)."""
        return max(0, self.used_bytes - self.capacity_bytes)

    def _found_corrupt_on_load(self, key: str, exc: CorruptShardError, drop: bool) -> None:
        self.stats.corrupt += 1
        self.damaged_at_open.append(key)
        log.warning("tier %s: damaged entry %r found on open (%s)%s", self.name, key, exc,
                    "; dropped" if drop else "")
        if drop:
            self._delete_from_store(key)
        else:
            self.unindexed_corrupt.append(key)

    def index_existing(self, key: str, stored_nbytes: int) -> bool:
        """Index a shard the store already holds (from a restart, or put there by another
        process in a shared store) if it fits without evicting anything. Returns whether
        it was indexed. O(1) plus the policy's ``on_insert``.
        """
        if key in self._sizes or self.used_bytes + stored_nbytes > self.capacity_bytes:
            return False
        self.policy.on_insert(key, stored_nbytes)
        self._sizes[key] = stored_nbytes
        self.used_bytes += stored_nbytes
        self.kv.add(key, stored_nbytes)
        return True

    def close(self) -> None:
        """Close the medium. Idempotent."""
        self.store.close()

    def count(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to the statistic ``counter`` (a :class:`TierStats` field). O(1)."""
        setattr(self.stats, counter, getattr(self.stats, counter) + n)

    # --- reads ------------------------------------------------------------------------
    def read(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Read ``key``'s bytes from the store (no bookkeeping). May raise StoreError
        (an :class:`OSError` from the store is converted to one). On a ``zero_copy``
        tier a read without ``out`` returns a read-only view of the medium."""
        try:
            if self.zero_copy and out is None:
                return self.store.get_view(key)
            return self.store.get(key, out)
        except OSError as exc:
            raise StoreError(f"tier {self.name}: reading {key!r} failed ({exc})") from exc

    def advise(self, key: str) -> int:
        """Ask the store to start reading ``key`` ahead of use (see
        :meth:`Store.advise`); the bytes advised. May raise StoreError."""
        try:
            return self.store.advise(key)
        except OSError as exc:
            raise StoreError(f"tier {self.name}: read-ahead of {key!r} failed ({exc})") from exc

    def memory_hit(self, key: str, started: float) -> np.ndarray | None:
        """On the top tier, a memory one: the stored array of ``key`` with the hit
        accounted for the policy and the stats (latency since ``started``, a
        ``perf_counter`` value; no promotion count: nothing is above), or ``None`` if
        this tier does not hold it (nothing counted). O(1). Engine lock held."""
        array = self.store.get(key) if key in self._sizes else None
        if array is not None:
            self.policy.on_hit(key)
            self.kv.touch(key)
            stats = self.stats
            stats.hits += 1
            stats.bytes_read += array.nbytes
            stats.latency.record(time.perf_counter() - started)
        return array

    def record_hit(self, key: str, nbytes: int, latency_s: float) -> bool:
        """Account a hit on ``key``; return whether it is now due for promotion."""
        self.policy.on_hit(key)
        self.kv.touch(key)
        stats = self.stats
        stats.hits += 1
        stats.bytes_read += nbytes
        stats.latency.record(latency_s)
        hits = self._hits_here.get(key, 0) + 1
        self._hits_here[key] = hits
        return self.promotion.due(hits)

    def forget(self, key: str, *, lost: bool = False) -> None:
        """Drop ``key`` from the index and the policy without touching the medium: a
        read-only cache resolving a duplicate, a shared store's copy, or (``lost``)
        an entry the medium no longer has -- counted in ``lost``, and the whole
        medium is checked. O(1). Engine lock held."""
        if key in self._sizes:
            self._forget_index(key, evicted=False)
            if lost:
                self.stats.lost += 1
        if lost:
            self.check_medium()

    def remove_unindexed(self, key: str) -> None:
        """Delete an entry the index does not list (a damaged one left by
        :meth:`load_existing`); failures are remembered like any delete. Engine lock held."""
        if key in self._sizes:
            raise ValueError(f"{key!r} is indexed in tier {self.name}; use remove()")
        self._delete_from_store(key)
        if key in self.unindexed_corrupt:
            self.unindexed_corrupt.remove(key)

    # --- writes ---------------------------------------------------------------------
    def wants(self, key: str, nbytes: int) -> bool:
        """Whether an optional move of ``key`` into this tier (promotion, prefetch) is
        worth it: it fits and the policy's admission test agrees. Counts refusals."""
        if nbytes > self.capacity_bytes or self.kv.refuses(key, nbytes):
            return False
        if self.policy.admits(key, nbytes, self.capacity_bytes - self.used_bytes):
            return True
        self.stats.bypassed += 1
        return False

    def admit(self, key: str, array: np.ndarray, demote: DemoteFn, *, adopt: bool = False,
              force: bool = False) -> bool:
        """Make room (evicting through ``demote``) and store ``array`` under ``key``.

        Returns ``False``, leaving the tier unchanged apart from victims already
        moved down, when the shard exceeds the capacity or a victim could not be
        demoted. ``adopt`` lets a memory store keep ``array`` itself (no copy).
        Also ``False`` while the tier is degraded and not yet due for a retry
        (``force`` tries anyway), or when the put fails (the tier then degrades;
        never raises for I/O).
        O(victims) policy calls plus the I/O of the victims and the put.
        """
        size = self.store.stored_size(array)
        if size > self.capacity_bytes or self.kv.refuses(key, size):
            self.stats.skipped_too_large += 1
            return False
        if not self.writable(force=force) or not self.check_medium():
            self.stats.skipped_degraded += 1
            return False
        # a persistent private medium's copy being replaced is not deleted first: the put
        # overwrites it, and if the put does not happen it may be the newest durable copy
        # of the key -- held then (deleted by the engine after any older copy)
        replaced = key in self._sizes and self.store.persistent and not self.store.shared
        if replaced:
            self._forget_index(key, evicted=False)
        elif key in self._sizes:
            self.remove(key)
        policy = self.policy
        policy.on_miss(key, size)
        while self.kv.needs_room(key, size) or self.used_bytes + size > self.capacity_bytes:
            # the KV share full: its least recently used block first, else the policy's
            victim = self.kv.oldest() if self.kv.needs_room(key, size) else policy.victim(key)
            try:
                demote(victim)  # type: ignore[arg-type]
                moved = not self._needs_reopen  # (else the medium was lost meanwhile)
            except DemotionFailed:
                moved = False
            if not moved:
                if replaced:  # its bytes are still there: the newest copy, maybe
                    self.held_deletes.add(key)
                return False
            self._forget(victim, evicted=True)  # type: ignore[arg-type]
        try:
            stored = self.store.adopt(key, array) if adopt else self.store.put(key, array)
        except (StoreError, OSError) as exc:
            # it may have landed or not: a private store deletes the key on recovery
            self.stats.errors += 1
            if replaced or key in self.held_deletes:
                self.held_deletes.add(key)  # the newest copy, maybe: deleted in order
            elif not self.store.shared:
                self.pending_deletes.add(key)
            self.note_failure(exc, "put")
            return False
        self.pending_deletes.discard(key)
        self.held_deletes.discard(key)  # the put replaced it
        if self.degraded_reason is not None or self.pending_deletes:
            self.note_success()
        policy.on_insert(key, stored)
        self._sizes[key] = stored
        self.used_bytes += stored
        self.kv.add(key, stored)
        self.stats.bytes_written += stored
        self._opened_over_bytes = 0  # room was made for a write: back within capacity
        return True

    def remove(self, key: str) -> bool:
        """Delete ``key`` (not an eviction: no ghost is kept). O(1) plus the store delete."""
        if key not in self._sizes:
            return False
        self._forget(key, evicted=False)
        return True

    def _forget(self, key: str, *, evicted: bool) -> None:
        """Drop ``key`` from the index and the policy, then from the medium. Never
        raises for I/O: a failed delete is kept in :attr:`pending_deletes`."""
        if key not in self._sizes:
            return
        self._forget_index(key, evicted=evicted)
        self._delete_from_store(key)

    def _forget_index(self, key: str, *, evicted: bool) -> None:
        if evicted:
            self.policy.on_evict(key)
            self.stats.evictions += 1
        else:
            self.policy.on_remove(key)
        self.used_bytes -= self._sizes.pop(key)
        self._hits_here.pop(key, None)
        self.kv.discard(key)

    def check_invariants(self) -> None:
        """Raise AssertionError if capacity, index and policy disagree (for tests)."""
        assert self.used_bytes <= max(self.capacity_bytes, self._opened_over_bytes), (
            f"tier {self.name}: {self.used_bytes} bytes used > capacity {self.capacity_bytes}")
        assert self.used_bytes == sum(self._sizes.values())
        assert set(self.policy) == set(self._sizes), f"tier {self.name}: policy and index differ"
        self.kv.check(self._sizes, bool(self._opened_over_bytes))
        self.policy.check_invariants()

    def describe(self) -> dict[str, object]:
        """Stats plus configuration and residency, as a plain dict."""
        out: dict[str, object] = {
            "backend": self.store.backend,
            "policy": self.policy.name or type(self.policy).__name__,
            "capacity_bytes": self.capacity_bytes,
            "resident_bytes": self.used_bytes,
            "resident_count": len(self._sizes),
            **self.kv.describe(),
            "over_capacity_bytes": self.over_capacity_bytes,
            "degraded": self.degraded_reason is not None,
            "degraded_reason": self.degraded_reason,
            "pending_deletes": len(self.pending_deletes) + len(self.held_deletes),
        }
        out.update(self.stats.as_dict())
        extra = self.policy.extra_stats()
        if extra:
            out["policy_stats"] = extra
        return out
