"""Lookup: a get walks the tiers top-down, then shared tiers, then the origin.

Probing a tier that lacks a key touches only an in-memory index, never the
medium, and does not disturb its policy. A RAM hit returns the stored array
(read-only, no copy); a disk read runs outside the lock and a per-key version
makes a read that raced a put or delete start over, so a stale value is never
returned or promoted. A hit counts toward the tier's promotion rule.

Thread-safety: safe from any thread (the prefetcher calls get while the loop does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import (
    CacheClosedError,
    CorruptShardError,
    ShardNotFoundError,
    StoreError,
)
from ..serving.prefetch import Prefetching
from .state import _MISSING
from .tier import Tier

_MAX_RETRIES = 8
#: Longest a get waits for a prefetch of the same shard before reading it itself.
PREFETCH_WAIT_TIMEOUT_S = 30.0

log = logging.getLogger("tiercache")

class Lookup(Prefetching):
    """The read path of a cache."""

    def get(self, key: str, default: Any = _MISSING, *, out: np.ndarray | None = None) -> Any:
        """Return the shard ``key`` (dtype and shape as put).

        Served from the highest tier that holds it, else from the origin. With
        ``out`` the bytes are copied into that preallocated, C-contiguous array
        (same dtype and shape) and ``out`` is returned. Without it, the result
        may be read-only (a RAM-tier hit returns the cached array itself, no
        copy). Raises :class:`~tiercache.errors.ShardNotFoundError` (a
        ``KeyError``) when no tier and no origin has it, unless ``default`` is
        given. With ``record_trace`` configured, a get that returns a shard
        appends ``key,size`` (the shard's ``nbytes``) to the trace.
        """
        position = self._schedule_index.get(key)
        if position is not None:
            self._move_cursor(position)
        value = self._resident_hit(key, out, scheduled=position is not None)
        if value is None:
            value = (self._get(key, default, out) if position is None
                     else self._get_scheduled(key, default, out))
        self._record(key, value, default)
        return value

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        """``[self.get(key) for key in keys]``: the same shards, and the same hits,
        misses, promotions, policy updates, cursor moves and trace lines, in order
        -- at a fraction of the cost when the keys are resident (a model loop's
        layer): the run of keys served from a memory top tier or a checked
        zero-copy view takes the lock once, and a running prefetcher is told once,
        where the run ends. A key that needs a read (a lower tier, the origin, a
        shard being prefetched) is looked up as by :meth:`get`, outside the lock.
        Raises as :meth:`get` does at the first key it cannot serve (the keys
        before it were read). O(len(keys)) plus what the reads cost.

        Thread-safety: as :meth:`get`.
        """
        results: list[Any] = []
        count = len(keys)
        done = 0
        while done < count:
            moved = -1
            with self._lock:  # the run of resident keys: one hold of the lock
                while done < count:
                    key = keys[done]
                    holder = self._resident_holder(key, None)
                    if holder is None:
                        break
                    position = self._schedule_index.get(key)
                    if position is not None:
                        moved = self._advance_cursor(position)
                    value = self._serve_resident(key, *holder, None, time.perf_counter(),
                                                 scheduled=position is not None)
                    if value is None:  # the view could not be read (rare: a failing
                        # medium): the full lookup, still holding the lock -- nothing is
                        # in flight for this key (checked under it), so nothing to wait on
                        value = (self._get(key, _MISSING, None) if position is None
                                 else self._get_scheduled(key, _MISSING, None))
                    self._record(key, value, _MISSING)
                    results.append(value)
                    done += 1
            prefetcher = self._prefetcher
            if moved >= 0 and prefetcher is not None:
                prefetcher.notify(moved)
            if done < count:  # a key to read: as get() does it, outside the lock
                results.append(self.get(keys[done]))
                done += 1
        return results

    def _record(self, key: str, value: Any, default: Any) -> None:
        recorder = self._recorder
        if recorder is not None and isinstance(value, np.ndarray) and value is not default:
            recorder.record(key, value.nbytes)

    def _resident_hit(self, key: str, out: np.ndarray | None, *,
                      scheduled: bool) -> np.ndarray | None:
        """The hot path of a model loop: ``key`` held by a memory top tier, or -- read
        without ``out`` -- by a ``zero_copy`` tier whose store already holds a
        checked view of it. One short hold of the lock; ``None``, with nothing
        counted, whenever anything else is the case (see :meth:`_resident_holder`)
        or the view cannot be read: the full lookup then decides, raises or
        repairs. O(tiers) plus a due promotion."""
        started = time.perf_counter()
        with self._lock:
            holder = self._resident_holder(key, out)
            return None if holder is None else self._serve_resident(key, *holder, out, started,
                                                                    scheduled=scheduled)

    def _resident_holder(self, key: str, out: np.ndarray | None) -> tuple[int, Tier] | None:
        """The tier that can serve ``key`` without a read: a memory top tier holding
        it, or (no ``out``) a private ``zero_copy`` tier whose store holds a checked
        view (:meth:`Store.viewed`); ``None`` when closed, staged, being prefetched,
        or anything else. No side effects. O(tiers). Lock held."""
        if self._closed or key in self._staged:
            return None
        tiers = self._tiers
        top = tiers[0]
        if top.is_memory and key in top:
            return 0, top
        if out is not None or key in self._inflight:
            return None
        for index, tier in enumerate(tiers):
            if key in tier:
                if tier.zero_copy and not tier.shared and tier.viewed(key):
                    return index, tier
                return None
        return None

    def _serve_resident(self, key: str, index: int, tier: Tier, out: np.ndarray | None,
                        started: float, *, scheduled: bool) -> np.ndarray | None:
        """Serve ``key`` from the holder :meth:`_resident_holder` found, accounted exactly
        as the full lookup would (the tiers above miss, the holder's policy and stats
        see the hit, a due promotion runs; a key of the schedule served from below the
        top tier is a stall); ``None``, nothing counted, if the store does not give
        it (the full lookup repairs or reports). Lock held."""
        if index == 0 and tier.is_memory:
            array = tier.memory_hit(key, started)
            if array is None or out is None:
                return array
            return self._copy_out(key, array, out)
        try:
            view = tier.read(key)
        except StoreError:  # the full lookup reports, drops or degrades
            return None
        if view is None:
            return None
        for above in self._tiers[:index]:
            above.count("misses")
        if tier.record_hit(key, view.nbytes, time.perf_counter() - started) and index > 0:
            self._promote(index, key, view, private=False)
        if scheduled and index > 0:
            stats = self.loop_stats
            stats.stalls += 1
            stats.stall_s += time.perf_counter() - started
        return view

    def _get_scheduled(self, key: str, default: Any, out: np.ndarray | None) -> Any:
        """A get by the loop of a key in the declared schedule (the cursor already
        moved): account stall time (time spent on a shard not in the top tier)."""
        stats = self.loop_stats
        if key in self._tiers[0] or key in self._staged:
            return self._get(key, default, out)
        started = time.perf_counter()
        try:
            return self._get(key, default, out)
        finally:
            stats.stalls += 1
            stats.stall_s += time.perf_counter() - started

    def _get(self, key: str, default: Any, out: np.ndarray | None) -> Any:
        """The lookup behind :meth:`get` (which adds trace recording)."""
        started = time.perf_counter()
        self._check_open()
        for _ in range(_MAX_RETRIES):
            with self._lock:
                found = self._locate(key)
                pending = self._inflight.get(key) if found is None or found[0] > 0 else None
                if found is None and pending is None:
                    break
                if pending is None and found is not None:
                    index, tier = found
                    for above in self._tiers[:index]:
                        above.count("misses")
                    version = self._version(key)
                    staged = self._take_staged(key, index, version) if self._staged else None
                    if tier.is_memory:
                        array = tier.read(key)
                        if array is None:  # index and store disagree: repair and retry
                            tier.remove(key)
                            continue
                        result = array if out is None else self._copy_out(key, array, out)
                        if tier.record_hit(key, array.nbytes, time.perf_counter() - started) \
                                and index > 0:
                            self._promote(index, key, array, private=False)
                        return result
            if pending is not None:  # the prefetcher is reading it: wait, don't read twice
                waited = time.perf_counter()
                pending.wait(PREFETCH_WAIT_TIMEOUT_S)
                self.loop_stats.prefetch_wait_s += time.perf_counter() - waited
                continue
            # disk tier: read outside the lock (unless the prefetcher staged a copy)
            try:
                if staged is not None:
                    array = staged if out is None else self._copy_out(key, staged, out)
                else:
                    array = tier.read(key, out)
            except CorruptShardError as exc:
                self._drop_corrupt(tier, key, exc, version)
                continue
            except StoreError as exc:
                if self._closed:  # the cache was closed under this read
                    raise CacheClosedError(f"the cache was closed while {key!r} was read") \
                        from exc
                with self._lock:
                    tier.count("errors")
                    tier.note_failure(exc, "get")  # logs when the tier becomes degraded
                log.debug("tier %s failed to read %r: %s", tier.name, key, exc)
                array = None
                if self._version(key) == version:
                    # skip this tier for this read: serve from below or the origin
                    return self._get_below(key, index, default, out, started)
                continue
            if array is None:  # moved meanwhile, or the medium lost it (Redis evicts)
                self._forget_lost(tier, key, version)
                continue
            with self._lock:
                if self._version(key) != version or key not in tier:
                    continue
                due = tier.record_hit(key, array.nbytes, time.perf_counter() - started)
                if due and index > 0:
                    private = out is None and (staged is not None or not tier.zero_copy)
                    if self._promote(index, key, array, private=private) and private:
                        array = self._kept(key, array)
            return array
        else:  # every try lost a race with a writer (puts in a tight loop): read locked
            locked = self._get_locked(key, out, started)
            if locked is not None:
                return locked
        shared = self._get_shared(key, out, started)
        if shared is not None:
            return shared
        return self._get_from_origin(key, default, out, started)

    def _get_locked(self, key: str, out: np.ndarray | None, started: float) -> Any:
        """``key`` read while holding the lock (no writer can move it meanwhile), for a
        lookup whose every unlocked read saw the key change: without this a reader
        racing a busy writer would report a key it holds as missing. Waits first for
        a prefetcher's read in flight (it needs the lock to finish). ``None`` when no
        tier holds it or the read fails (the caller goes on to the origin). O(read)
        under the lock; only after :data:`_MAX_RETRIES` lost races."""
        pending = self._inflight.get(key)
        if pending is not None:
            pending.wait(PREFETCH_WAIT_TIMEOUT_S)
        with self._lock:
            found = self._locate(key)
            if found is None:
                return None
            index, tier = found
            try:
                array = tier.read(key, out)
            except StoreError:  # (CorruptShardError too) the usual fallbacks decide
                return None
            if array is None:
                return None
            for above in self._tiers[:index]:
                above.count("misses")
            tier.record_hit(key, array.nbytes, time.perf_counter() - started)
            return array

    def _get_shared(self, key: str, out: np.ndarray | None, started: float) -> Any:
        """``key`` from a shared tier (Redis) whose index lacks it -- another process may
        have put it there -- or None. A shard found is indexed if it fits without
        evicting anything. O(shared tiers) reads; nothing to do without shared tiers."""
        for index, tier in enumerate(self._tiers):
            if not tier.shared or key in tier:
                continue
            with self._lock:
                version = self._version(key)
            try:
                array = tier.read(key, out)
            except StoreError as exc:  # a corrupt copy is overwritten by the next admission
                with self._lock:
                    tier.count("errors")
                log.warning("tier %s failed to read %r: %s", tier.name, key, exc)
                continue
            if array is None:
                continue
            with self._lock:
                for above in self._tiers[:index]:
                    above.count("misses")
                latency = time.perf_counter() - started
                if self._version(key) == version and self._locate(key) is None and \
                        tier.index_existing(key, tier.stored_size(array)):
                    if tier.record_hit(key, array.nbytes, latency) and index > 0 and \
                            self._promote(index, key, array, private=out is None) and out is None:
                        array = self._kept(key, array)
                else:
                    tier.count("hits")
                    tier.count("bytes_read", array.nbytes)
                    tier.stats.latency.record(latency)
            return array
        return None

    def _get_below(self, key: str, failed_index: int, default: Any, out: np.ndarray | None,
                   started: float) -> Any:
        for tier in self._tiers[failed_index + 1:]:
            if key in tier:
                try:
                    array = tier.read(key, out)
                except CorruptShardError as exc:
                    with self._lock:
                        version = self._version(key)
                    self._drop_corrupt(tier, key, exc, version)
                    continue
                except StoreError:
                    continue
                if array is not None:
                    with self._lock:
                        tier.record_hit(key, array.nbytes, time.perf_counter() - started)
                    return array
        return self._get_from_origin(key, default, out, started, admit=False)

    def _get_from_origin(self, key: str, default: Any, out: np.ndarray | None, started: float,
                         *, admit: bool = True) -> Any:
        with self._lock:
            for tier in self._tiers:
                tier.count("misses")
            version = self._version(key)
        origin = self.origin
        array = origin.get(key) if origin is not None else None
        if array is None:
            if default is _MISSING:
                where = " or the origin" if origin is not None else ""
                raise ShardNotFoundError(f"shard {key!r} is in no tier{where}")
            return default
        stats = self.origin_stats
        with self._lock:
            stats.hits += 1
            stats.bytes_read += array.nbytes
            stats.latency.record(time.perf_counter() - started)
            if admit and not self.read_only and self._version(key) == version \
                    and self._locate(key) is None \
                    and self._admit_from(0, key, array, adopt=origin is not None
                                         and origin.fresh_arrays) and out is None:
                array = self._kept(key, array)
        if out is not None:
            return self._copy_out(key, array, out)
        if self.origin is not None and self.origin.fresh_arrays:
            array.flags.writeable = False
        return array
