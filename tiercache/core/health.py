"""The health of a tier's medium: degraded state, back-off, reopen, pending deletes.

A write (put, delete) that fails with :class:`~tiercache.errors.StoreError` or
:class:`OSError` never escapes the tier. The tier becomes *degraded* (a reason
is kept for ``stats()``), skips admissions until a retry time that backs off
from :data:`RETRY_BACKOFF_S` to :data:`RETRY_BACKOFF_MAX_S`, and recovers on the
first write that succeeds after it. A delete that failed leaves a stale entry on
the medium: the index forgets it at once (it is never served) and the delete is
retried on recovery (:attr:`TierHealth.pending_deletes`). A medium that is gone
(folder removed, file replaced: :meth:`Store.check_health`) is dropped from the
index and reopened, empty, at the next retry; one too damaged to open stays
degraded until ``verify --repair`` (:meth:`TierHealth.mark_damaged`).

Thread-safety: not thread-safe; the engine serialises every call.
"""

from __future__ import annotations

import logging
import time

from ..errors import StoreError
from ..stores.base import Store
from .stats import TierStats

log = logging.getLogger("tiercache")

#: First pause before a degraded tier is written to again; doubles per failed retry.
RETRY_BACKOFF_S = 1.0
#: Longest pause between two retries of a degraded tier.
RETRY_BACKOFF_MAX_S = 5.0


class TierHealth:
    """Degraded state and recovery of one tier (the base of :class:`~tiercache.core.tier.Tier`).

    Subclasses provide :meth:`load_existing`, :meth:`_indexed` and
    :meth:`_forget_everything` (the index the health logic must reset)."""

    name: str
    store: Store
    stats: TierStats

    def _init_health(self) -> None:
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
        #: Keys this process no longer serves whose entry here is kept on purpose: the
        #: newest durable copy of the key while an older one waits in some tier's
        #: :attr:`pending_deletes` (deleted first, a restart would bring the older one
        #: back). The engine, which sees every tier, deletes them (:meth:`delete_held`).
        self.held_deletes: set[str] = set()

    def load_existing(self, *, drop_corrupt: bool = True) -> int:
        raise NotImplementedError

    def _indexed(self, key: str) -> bool:
        raise NotImplementedError

    def _forget_everything(self) -> int:
        """Forget every entry of the index (the medium is gone); return how many."""
        raise NotImplementedError

    def _forget_index(self, key: str, *, evicted: bool) -> None:
        """Drop ``key`` from the index and the policy (not from the medium)."""
        raise NotImplementedError

    def hold(self, key: str) -> None:
        """Stop serving ``key`` but keep its entry on the medium, in :attr:`held_deletes`:
        the newest durable copy, while an older one of the key waits for its delete
        elsewhere. O(1). Engine lock held."""
        self._forget_index(key, evicted=False)
        self.held_deletes.add(key)

    def delete_held(self, key: str) -> None:
        """Delete the held entry of ``key`` (no older copy waits any more); a failure
        makes it a pending delete. O(1) plus the store delete. Engine lock held."""
        if key in self.held_deletes:
            self.held_deletes.discard(key)
            if not self._indexed(key):  # (re-admitted since: that put replaced it)
                self._delete_from_store(key)

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
            if self._indexed(key) or key in self.held_deletes:
                # re-admitted since: that put replaced the stale entry (held: the engine
                # deletes it, after any older copy)
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
        lost = self._forget_everything()
        self.pending_deletes.clear()
        self.held_deletes.clear()
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

