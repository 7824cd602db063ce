"""A tier: one store, one policy, a byte capacity and its statistics.

The tier is the only caller of its policy's hooks and the only place bytes
enter or leave its store, so the policy's view and the store's contents never
drift apart. It knows nothing about other tiers: when it must make room it
hands each victim to a ``demote`` callback supplied by the engine, and forgets
the victim only after the callback returned (the bytes are safe below, or the
engine chose to drop them).

Faults: a write (put, delete) that fails with :class:`~tiercache.errors.StoreError`
or :class:`OSError` never escapes the tier. The tier becomes *degraded* (a
reason is kept for ``stats()``), skips admissions until a retry time that backs
off from :data:`RETRY_BACKOFF_S` to :data:`RETRY_BACKOFF_MAX_S`, and recovers
on the first write that succeeds after it. A delete that failed leaves a stale
entry on the medium: the index forgets it at once (it is never served) and the
delete is retried on recovery (:attr:`Tier.pending_deletes`). A medium that is
gone (folder removed, file replaced: :meth:`Store.check_health`) is dropped
from the index and reopened, empty, at the next retry.

Thread-safety: not thread-safe; the engine serialises every call that changes
state. :meth:`read` touches only the store and may run outside the engine lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .codec import observe_write_sequence
from .errors import CorruptShardError, StoreError
from .policies import Policy
from .stats import TierStats
from .stores.base import Store

log = logging.getLogger("tiercache")

#: First pause before a degraded tier is written to again; doubles per failed retry.
RETRY_BACKOFF_S = 1.0
#: Longest pause between two retries of a degraded tier.
RETRY_BACKOFF_MAX_S = 5.0

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
        #: Bytes held when opened over capacity; 0 once a write brought it back under.
        self._opened_over_bytes = 0
        self._sizes: dict[str, int] = {}
        self._hits_here: dict[str, int] = {}
        self.is_memory = not store.persistent and store.backend == "memory"
        #: Serve plain reads as zero-copy views of the medium (``zero_copy = true``).
        self.zero_copy = False
        #: Why the tier is degraded (its medium failed), or ``None`` while healthy.
        self.degraded_reason: str | None = None
        #: Seconds before the first retry of a degraded tier (doubles per failure).
        self.retry_backoff_s = RETRY_BACKOFF_S
        #: Cap on the pause between retries.
        self.retry_backoff_max_s = RETRY_BACKOFF_MAX_S
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._needs_reopen = False
        #: Keys whose stale entry the medium refused to delete; retried on recovery.
        self.pending_deletes: set[str] = set()
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
        except StoreError as exc:
            if not shared:
                raise
            self.stats.errors += 1
            log.warning("tier %s: cannot list its shared store (%s); starting with %d shards "
                        "indexed", self.name, exc, len(self._sizes))
            self.note_failure(exc, "open")  # degraded with the real reason, retried later
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
        return True

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

    def willneed(self, key: str) -> int:
        """Ask the store to start reading ``key`` ahead of use (see
        :meth:`Store.willneed`); the bytes advised. May raise StoreError."""
        try:
            return self.store.willneed(key)
        except OSError as exc:
            raise StoreError(f"tier {self.name}: read-ahead of {key!r} failed ({exc})") from exc

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

    # --- faults -----------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        """Whether the medium failed recently (see :attr:`degraded_reason`)."""
        return self.degraded_reason is not None

    def note_failure(self, exc: BaseException, op: str) -> None:
        """Record that ``op`` failed on the medium: degrade the tier and schedule the
        next retry (exponential backoff). If the medium is gone altogether
        (:meth:`Store.check_health`), forget every entry and reopen it at the
        retry. Logs once per transition into the degraded state. O(1), or
        O(entries) when the medium is lost. Engine lock held.
        """
        reason = f"{op}: {exc}"
        if self.degraded_reason is None:
            log.warning("tier %s degraded, serving from the other tiers: %s", self.name, reason)
        self.degraded_reason = reason
        self._backoff_s = min(max(2 * self._backoff_s, self.retry_backoff_s),
                              self.retry_backoff_max_s)
        self._retry_at = time.monotonic() + self._backoff_s
        if not self._needs_reopen:
            self.check_medium()

    def note_success(self) -> None:
        """A write went through: leave the degraded state and retry pending deletes."""
        if self.degraded_reason is not None:
            log.warning("tier %s recovered (was: %s)", self.name, self.degraded_reason)
            self.degraded_reason = None
            self._backoff_s = 0.0
            self.stats.recoveries += 1
        self.retry_pending_deletes()

    def retry_pending_deletes(self) -> None:
        """Delete the stale entries a failing medium refused to delete before (those
        re-admitted since were replaced by that put). Stops at the first failure.
        O(pending). Engine lock held."""
        for key in list(self.pending_deletes):
            if key in self._sizes:  # re-admitted since: that put replaced the stale entry
                self.pending_deletes.discard(key)
                continue
            try:
                self.store.delete(key)
            except (StoreError, OSError) as exc:
                self.stats.errors += 1
                self.note_failure(exc, "delete")
                return
            self.pending_deletes.discard(key)

    def check_medium(self) -> bool:
        """Whether the medium is still the one opened (:meth:`Store.check_health`, one
        ``stat``). If not, forget every entry (they are gone, or will be at close)
        and reopen the medium at the next retry. Engine lock held."""
        reason = self.store.check_health() if self.store.persistent else None
        if reason is None:
            return True
        lost = len(self._sizes)
        for key in list(self._sizes):
            self.policy.on_remove(key)
        self._sizes.clear()
        self._hits_here.clear()
        self.used_bytes = 0
        self.pending_deletes.clear()
        self.stats.lost += lost
        self._needs_reopen = True
        if self.degraded_reason is None:
            log.warning("tier %s degraded, serving from the other tiers: %s", self.name, reason)
            self._backoff_s = self.retry_backoff_s
            self._retry_at = time.monotonic() + self._backoff_s
        self.degraded_reason = f"medium lost: {reason} ({lost} entries forgotten)"
        return False

    def writable(self, *, force: bool = False) -> bool:
        """Whether a write may be tried now: healthy, or degraded and due for a retry
        (a lost medium is reopened first, and what it holds indexed). ``force``
        ignores the retry time: the engine's last resort before failing a put.
        Engine lock held."""
        if self.degraded_reason is None:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        if self._needs_reopen:
            try:
                self.store.reopen()
                self._needs_reopen = False
                self.load_existing()
            except (StoreError, OSError) as exc:
                self._needs_reopen = True
                self.stats.errors += 1
                self.note_failure(exc, "reopen")
                return False
        return True

    def mark_damaged(self, reason: str) -> None:
        """The medium could not be opened (damaged): degraded until repaired, every
        write skipped; a retry reopens nothing (:class:`DamagedStore`). O(1)."""
        self.degraded_reason = f"medium damaged: {reason}"
        self._backoff_s = self.retry_backoff_max_s
        self._retry_at = time.monotonic() + self._backoff_s

    @property
    def damaged(self) -> bool:
        """Whether the medium could not be opened at all (see :meth:`mark_damaged`)."""
        return self.degraded_reason is not None and \
            self.degraded_reason.startswith("medium damaged: ")

    def forget_index(self, key: str) -> None:
        """Drop ``key`` from the index and the policy without touching the medium (a
        read-only cache resolving a duplicate, a shared store's copy). O(1)."""
        if key in self._sizes:
            self._forget_index(key, evicted=False)

    def forget_lost(self, key: str) -> None:
        """``key`` is indexed but the medium no longer has it: forget it, and check
        whether the whole medium went away. Engine lock held."""
        if key in self._sizes:
            self._forget_index(key, evicted=False)
            self.stats.lost += 1
        self.check_medium()

    def delete_unindexed(self, key: str) -> None:
        """Delete an entry the index does not list (a damaged one left by
        :meth:`load_existing`); failures are remembered like any delete. Engine lock held."""
        if key in self._sizes:
            raise ValueError(f"{key!r} is indexed in tier {self.name}; use remove()")
        self._delete_from_store(key)
        if key in self.unindexed_corrupt:
            self.unindexed_corrupt.remove(key)

    def _delete_from_store(self, key: str) -> None:
        """Delete ``key`` from the medium; on failure remember it for a retry."""
        try:
            self.store.delete(key)
        except (StoreError, OSError) as exc:
            self.stats.errors += 1
            if not self.store.shared:
                self.pending_deletes.add(key)
            self.note_failure(exc, "delete")
        else:
            self.pending_deletes.discard(key)

    # --- writes ---------------------------------------------------------------------
    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.capacity_bytes

    def wants(self, key: str, nbytes: int) -> bool:
        """Whether an optional move of ``key`` into this tier (promotion, prefetch) is
        worth it: it fits and the policy's admission test agrees. Counts refusals."""
        if nbytes > self.capacity_bytes:
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
        if size > self.capacity_bytes:
            self.stats.skipped_too_large += 1
            return False
        if not self.writable(force=force) or not self.check_medium():
            self.stats.skipped_degraded += 1
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
            if self._needs_reopen:  # the medium was lost meanwhile
                return False
            self._forget(victim, evicted=True)  # type: ignore[arg-type]
        try:
            stored = self.store.adopt(key, array) if adopt else self.store.put(key, array)
        except (StoreError, OSError) as exc:
            # it may have landed or not: a private store deletes the key on recovery
            self.stats.errors += 1
            if not self.store.shared:
                self.pending_deletes.add(key)
            self.note_failure(exc, "put")
            return False
        self.pending_deletes.discard(key)
        if self.degraded_reason is not None or self.pending_deletes:
            self.note_success()
        policy.on_insert(key, stored)
        self._sizes[key] = stored
        self.used_bytes += stored
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

    def check_invariants(self) -> None:
        """Raise AssertionError if capacity, index and policy disagree (for tests)."""
        assert self.used_bytes <= max(self.capacity_bytes, self._opened_over_bytes), (
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
            "over_capacity_bytes": self.over_capacity_bytes,
            "degraded": self.degraded_reason is not None,
            "degraded_reason": self.degraded_reason,
            "pending_deletes": len(self.pending_deletes),
        }
        out.update(self.stats.as_dict())
        extra = self.policy.extra_stats()
        if extra:
            out["policy_stats"] = extra
        return out
