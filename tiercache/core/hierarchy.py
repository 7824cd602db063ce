"""Movement between tiers: admission, demotion, promotion.

Making room in a tier evicts the victims its policy picks; each is demoted to
the next tier below that can hold it -- or dropped without a write when a copy
of the same version already lives below (``clean_drops``). A persistent tier's
victims only go to persistent tiers. A promotion moves a shard up (inclusive:
copies it); out of a persistent tier into a memory tier the persistent copy
always stays, so a shard that reached disk is never held only in memory; while a
tier holds an older copy it could not delete, the newest durable copy is not
dropped out of the hierarchy (a restart would bring the older one back). With a
declared schedule a promotion is skipped when the target would evict a shard
the loop needs sooner (:meth:`Hierarchy._worth_promoting`).

Thread-safety: every method runs with the cache lock held.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..codec import empty_aligned
from ..errors import (
    CorruptShardError,
    StoreError,
)
from .state import CacheState
from .tier import DemotionFailed, Tier

log = logging.getLogger("tiercache")

class Hierarchy(CacheState):
    """Admission, demotion and promotion between the tiers of a cache."""

    def _admit_from(self, start: int, key: str, array: np.ndarray, *, adopt: bool) -> bool:
        """Admit into the first tier at or below ``start`` that accepts it. Lock held.

        If none does, degraded tiers waiting for their retry time are tried once
        more (a last resort: a put fails only if no tier can take it right now)."""
        return self._admit_where(start, key, array, adopt=adopt) is not None

    def _admit_where(self, start: int, key: str, array: np.ndarray, *,
                     adopt: bool) -> Tier | None:
        """:meth:`_admit_from`, returning the tier that took the shard (or None)."""
        for force in (False, True):
            for index in range(start, len(self._tiers)):
                tier = self._tiers[index]
                if force and not tier.degraded:
                    continue
                try:
                    if tier.admit(key, array, self._demoter(index),
                                  adopt=adopt and tier.is_memory, force=force):
                        return tier
                except StoreError as exc:  # e.g. Redis is down: try the tiers below
                    tier.count("errors")
                    log.warning("tier %s failed to take %r: %s", tier.name, key, exc)
        return None

    def _demoter(self, index: int) -> Any:
        def demote(victim: str) -> None:
            self._demote(index, victim)
        return demote

    def _demote(self, index: int, key: str) -> None:
        """Move ``key`` out of tier ``index`` to a lower tier, or drop it. Lock held.

        Raises :class:`DemotionFailed` when the bytes can go nowhere safe and
        are not dropped by design (then the victim stays).
        """
        source = self._tiers[index]
        below = self._tiers[index + 1:]
        if any(key in t for t in below):
            source.count("clean_drops")
            return  # a copy of this version already lives below: writing it again is waste
        if source.persistent:  # never leave a persisted shard only in memory
            below = [t for t in below if t.persistent]
        if not below:
            if source.persistent and self._stale_tiers(key) and self._older_copy_waits(key):
                # an older copy waits for its delete on another medium: dropping the
                # newest durable copy now would let a restart bring the older one back
                raise DemotionFailed(key)
            source.count("dropped")  # evicted out of the hierarchy
            return
        try:
            array = self._read_for_move(index, key)
        except CorruptShardError as exc:
            self._report_corrupt(source, key, exc)
            source.count("corrupt")
            return
        except (StoreError, OSError) as exc:  # unreadable now: keep it, degrade the tier
            source.count("errors")
            source.note_failure(exc, "read")
            raise DemotionFailed(key) from exc
        if array is None:
            return
        for force in (False, True):  # last resort: retry degraded tiers before giving up
            for target in below:
                offset = self._tiers.index(target)
                if force and not target.degraded:
                    continue
                try:
                    if target.admit(key, array, self._demoter(offset), adopt=False,
                                    force=force):
                        source.count("demotions_out")
                        target.count("demotions_in")
                        return
                except StoreError as exc:
                    target.count("errors")
                    log.warning("tier %s failed to take demoted %r: %s", target.name, key, exc)
        raise DemotionFailed(key)

    def _read_for_move(self, index: int, key: str) -> np.ndarray | None:
        """Read a shard that is about to move, into tier ``index``'s reused scratch buffer."""
        tier = self._tiers[index]
        if tier.is_memory:
            return tier.read(key)
        info = tier.info(key)
        if info is None:
            return None
        nbytes = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
        scratch = self._scratch.get(index)
        if scratch is None or scratch.nbytes < nbytes:
            scratch = self._scratch[index] = empty_aligned(max(nbytes, 1 << 20))
        out = scratch[:nbytes].view(info.dtype).reshape(info.shape)
        array = tier.read(key, out)
        tier.count("bytes_read", nbytes)
        return array

    def _kept(self, key: str, array: np.ndarray) -> np.ndarray:
        """What a get hands out after offering ``array`` to a memory tier to adopt: the
        array that tier keeps, which numpy cannot make writable again (``array`` itself
        can be), or ``array`` if no memory store holds ``key``. Lock held. O(tiers)."""
        for tier in self._tiers:
            if tier.holds_arrays and key in tier:
                kept = tier.read(key)
                if kept is not None:
                    return kept
        return array

    def _promote(self, index: int, key: str, array: np.ndarray, *, private: bool,
                 to_top: bool = False) -> bool:
        """Move ``key`` from tier ``index`` up to the nearest tier above that can hold it
        (with ``to_top``, the highest one that can); return whether it moved. Lock held.

        A promotion is optional movement, so it is skipped (counted in the target's
        ``bypassed``) when the target would have to evict a shard the declared schedule
        needs sooner than this one (:meth:`_worth_promoting`). Exclusive mode moves
        the shard, except out of a persistent tier into a volatile one: that copy
        stays (a shard that reached a persistent tier is never held only in memory),
        so evicting the memory copy later writes nothing.
        """
        if self.read_only:
            return False
        source = self._tiers[index]
        targets = range(0, index) if to_top else range(index - 1, -1, -1)
        for target_index in targets:
            target = self._tiers[target_index]
            size = target.stored_size(array)
            if not target.wants(key, size):
                continue
            if not self._worth_promoting(target, key, size):
                target.count("bypassed")
                return False
            keep_source = self.inclusive or (source.persistent
                                             and not target.persistent)
            # an older copy waits for its delete elsewhere: this durable copy is the one
            # that beats it after a restart, so it goes only once the new one is written
            remove_after = not keep_source and source.persistent and bool(
                self._stale_tiers(key))
            if not keep_source and not remove_after:
                source.remove(key)  # the bytes are in `array`; re-admitted below on failure
            adopt = private and target.is_memory
            try:
                moved = target.admit(key, array, self._demoter(target_index), adopt=adopt)
            except StoreError as exc:
                target.count("errors")
                log.warning("tier %s failed to take promoted %r: %s", target.name, key, exc)
                moved = False
            if moved and remove_after:
                source.remove(key)
            if moved:
                source.count("promotions_out")
                target.count("promotions_in")
            elif (not keep_source and not remove_after  # (else it stayed where it was)
                  and not self._admit_from(index, key, array, adopt=False)):
                log.warning("shard %r could not be kept after a failed promotion", key)
                source.count("dropped")
            return moved
        return False

    def _next_use(self, key: str) -> int | None:
        """Scheduled gets from the cursor until ``key`` is read again (the schedule's
        length for the key read at the cursor), or ``None`` when the schedule does
        not list it. O(occurrences of the key). Lock held."""
        where = self._schedule_index.get(key)
        if where is None:
            return None
        length = len(self.schedule)
        cursor = self._cursor
        positions = (where,) if isinstance(where, int) else where
        return min((p - cursor - 1) % length + 1 for p in positions)

    def _worth_promoting(self, target: Tier, key: str, size: int) -> bool:
        """Whether promoting ``key`` into ``target`` can pay: yes when it fits without
        evicting, or when no schedule is declared (the policy alone decides); with a
        schedule, no when the victim ``target``'s policy would evict first is needed
        again sooner than ``key`` -- the swap would cost a miss before it saves one
        (Belady's rule applied to the policy's own choice of victim, so a recency
        policy on a tier smaller than a loop keeps a fixed part of the loop instead of
        cycling every shard through). O(1) policy calls. Lock held."""
        if not self._schedule_index or target.used_bytes + size <= target.capacity_bytes:
            return True
        mine = self._next_use(key)
        if mine is None:
            return True
        try:
            victim = target.policy.victim(key)
        except Exception:  # an empty or refusing policy: let admit() decide
            return True
        if not isinstance(victim, str) or victim == key:
            return True
        theirs = self._next_use(victim)
        return theirs is None or mine < theirs

    def _stale_tiers(self, key: str) -> list[str]:
        """Persistent private tiers still holding, on the medium, a copy of ``key`` this
        process no longer serves -- older than any value written from now on: a delete
        that failed and waits for a retry, or a held copy (:meth:`_unserve`). O(tiers).
        Lock held."""
        return [t.name for t in self._tiers if t.persistent and not t.shared
                and (key in t.pending_deletes or key in t.held_deletes)]

    def _older_copy_waits(self, key: str) -> bool:
        """Retry the failed deletes of ``key``; then, if none is left, delete its held
        copies (:meth:`Tier.delete_held`). Returns whether a failed delete of ``key``
        still waits somewhere: then no newer durable copy may be deleted, or a restart
        would bring the older one back. O(tiers) plus the retries. Lock held."""
        for tier in self._tiers:
            if key in tier.pending_deletes:
                tier.retry_pending_deletes()
        if any(key in t.pending_deletes for t in self._tiers):
            return True
        for tier in self._tiers:
            if key in tier.held_deletes:
                tier.delete_held(key)  # a failure makes it pending: checked below
        return any(key in t.pending_deletes for t in self._tiers)

    def _unserve(self, key: str, *, keep_durable: bool, spare: Tier | None = None) -> bool:
        """Remove ``key`` from every tier but ``spare``; with ``keep_durable`` (an older
        copy waits for its delete), a persistent private tier's copy -- the newest
        durable one -- is only held (:meth:`Tier.hold`: not served, kept on the medium
        until the older copy is gone). Returns whether any tier indexed it. O(tiers)
        plus the store deletes. Lock held."""
        removed = False
        for tier in self._tiers:
            if tier is spare:
                continue
            if keep_durable and tier.persistent and not tier.shared and key in tier:
                tier.hold(key)
                removed = True
            else:
                removed = tier.remove(key) or removed
        return removed

    def _release_held(self) -> None:
        """Delete every held copy whose older copies are gone (at close). Lock held."""
        for key in {k for t in self._tiers for k in t.held_deletes}:
            self._older_copy_waits(key)

    @staticmethod
    def _refusal(tier: Tier, array: np.ndarray) -> str:
        """Why ``tier`` did not take ``array`` (for the error of a failed put). O(1)."""
        if tier.degraded_reason is not None:
            return f"tier {tier.name} is degraded ({tier.degraded_reason})"
        size = tier.stored_size(array)
        if size > tier.capacity_bytes:
            return (f"tier {tier.name} is too small ({size} bytes stored > capacity "
                    f"{tier.capacity_bytes})")
        return f"tier {tier.name} could not make room (a victim could not be moved down)"
