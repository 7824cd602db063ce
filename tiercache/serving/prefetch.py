"""The cache side of prefetching: read ahead, bring up, stage, wait for in-flight reads.

:class:`~tiercache.serving.prefetcher.Prefetcher` (a background thread) calls
:meth:`Prefetching.advise` and :meth:`Prefetching.prefetch` for the shards after
the cursor. A shard the top tier does not admit is *staged* (held within the
prefetcher's byte budget) until the loop's get takes it; a get for a shard
being prefetched waits for that read instead of issuing its own.

Thread-safety: reads run outside the cache lock; index, staging and in-flight
state change under it.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..errors import (
    CorruptShardError,
    StoreError,
)
from .keep import Candidate
from .prefetcher import Prefetcher
from .schedule import Scheduling

log = logging.getLogger("tiercache")

class Prefetching(Scheduling):
    """Read-ahead, prefetch into the top tier, staging of prefetched copies."""

    @property
    def prefetcher(self) -> Prefetcher | None:
        """The running prefetcher, or ``None``."""
        return self._prefetcher

    def staged(self) -> dict[str, int]:
        """Prefetched copies waiting for the loop's get: key -> bytes (a snapshot). O(n)."""
        with self._lock:
            return {key: entry[2].nbytes for key, entry in self._staged.items()}

    @property
    def staging_max_bytes(self) -> int:
        """The staging budget (the prefetcher's ``max_bytes``; 0 without a prefetcher)."""
        return self._staging_max_bytes

    def start_prefetcher(self, *, depth: int = 8, max_bytes: int | None = None,
                         workers: int = 2, drop_behind: bool = False,
                         stream: bool = False) -> Prefetcher:
        """Start (or restart) the background prefetcher along the declared schedule
        (see :class:`~tiercache.serving.prefetcher.Prefetcher` for the parameters)."""
        self.stop_prefetcher()
        prefetcher = Prefetcher(self, depth=depth, max_bytes=max_bytes, workers=workers,
                                drop_behind=drop_behind, stream=stream)
        with self._lock:
            self._staging_max_bytes = prefetcher.max_bytes
        self._prefetcher = prefetcher.start()
        return prefetcher

    def stop_prefetcher(self) -> None:
        """Stop the background prefetcher, if any. Idempotent."""
        prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            prefetcher.stop()
        with self._lock:
            self._staged.clear()
            self._staged_bytes = 0
            self._staging_max_bytes = 0

    def advise(self, key: str, *, watch: bool = False) -> int | None:
        """Start reading ``key`` ahead of use if that needs no copy: when its fastest
        copy is on a ``zero_copy`` tier, ask that store to read it into the page cache
        asynchronously (:meth:`Store.advise`) and return the bytes advised. Returns 0
        when there is nothing to do (already in a memory top tier, or nowhere), and
        ``None`` when bringing it up means a copy or reading it whole to verify its
        checksum first (:meth:`prefetch`'s job, on the prefetcher's threads). Cheap
        enough for the loop's thread: one lock, one index lookup, a system call or
        two; a shard a memory top tier holds costs one dict lookup and no lock (a
        stale answer, under a concurrent move, only costs a read-ahead). A shard
        this process has mapped and read ahead before needs no system call, unless
        ``watch``: then its store checks it is still in the page cache (and counts
        it in :meth:`Store.page_evictions` when not; the prefetcher watches some
        passes, :mod:`tiercache.serving.keep`)."""
        top = self._tiers[0]
        if top.is_memory and key in top:
            return 0
        with self._lock:
            if self._closed:
                return 0
            found = self._locate(key)
            if found is None:
                return None if self.origin is not None else 0
            index, tier = found
            if not tier.zero_copy:
                return None if index > 0 else 0
            if tier.needs_check(key):
                return None
            if not watch and tier.viewed(key):  # mapped, verified and read ahead once:
                viewed = tier.size_of(key)  # no system call left to make
                self.loop_stats.prefetched += 1
                self.loop_stats.prefetched_bytes += viewed
                return viewed
        try:
            advised = tier.advise(key)
        except StoreError as exc:
            log.debug("read-ahead of %r on tier %s failed: %s", key, tier.name, exc)
            return 0
        if advised:
            with self._lock:
                self.loop_stats.prefetched += 1
                self.loop_stats.prefetched_bytes += advised
        return advised

    def release(self, key: str) -> int:
        """Let go of the page-cache copy of ``key`` after use when a private zero-copy
        tier serves it (:meth:`Store.release`; the prefetcher does this for the shards
        outside its keep set: :mod:`tiercache.serving.keep`). Views handed out stay
        valid. Returns the bytes released (0: nothing to let go). O(tiers) plus the
        system calls, made outside the lock."""
        with self._lock:
            found = None if self._closed else self._locate(key)
            if found is None or found[1].is_memory or not found[1].zero_copy \
                    or found[1].shared:
                return 0
            tier = found[1]
        released = tier.release(key)
        if released:
            with self._lock:
                self.loop_stats.released += 1
                self.loop_stats.released_bytes += released
        return released

    def page_evictions(self) -> int:
        """Bytes of shards read before that the page cache was found to have lost, over
        every tier (:meth:`Store.page_evictions`), cumulative. O(tiers)."""
        return sum(tier.page_evictions() for tier in self._tiers)

    def keep_candidates(self) -> list[Candidate]:
        """The shards of the declared schedule whose fastest copy is on a private
        zero-copy tier (what the page cache may keep), in reading order, with their
        reads per pass. O(schedule). Takes the lock."""
        out: list[Candidate] = []
        with self._lock:
            for key, where in self._schedule_index.items():
                found = self._locate(key)
                if found is None:
                    continue
                tier = found[1]
                if tier.zero_copy and not tier.is_memory and not tier.shared:
                    uses, first = (1, where) if isinstance(where, int) else (len(where), where[0])
                    out.append(Candidate(key, tier.size_of(key), uses, first))
        return out

    def pending(self, key: str) -> bool:
        """Whether a prefetched copy of ``key`` waits for the loop's get or is being read
        now. A hint (no lock: the answer may be stale by the time it is used). O(1)."""
        return key in self._staged or key in self._inflight

    def prefetch(self, key: str, *, once: bool = False) -> int:
        """Bring ``key`` into the top tier ahead of use, from a lower tier or the origin.

        Returns the bytes brought up (0 if it was already there, is being fetched,
        or exists nowhere). Reads run outside the cache lock; a concurrent ``get``
        of the same key waits for this read instead of issuing its own.
        Ignores promotion rules: prefetching is an explicit request. ``once``: a
        shard on a private ``zero_copy`` tier below the top is not read ahead into
        the page cache but read into memory for its next get
        (:meth:`Store.read_once`: nothing stays in the page cache) and staged --
        how the prefetcher streams the shards its keep set releases.
        """
        top = self._tiers[0]
        with self._lock:
            if self._closed or self.read_only or key in top or key in self._inflight \
                    or key in self._staged:
                return 0
            found = self._locate(key)
            if found is None and self.origin is None:
                return 0
            version = self._version(key)
            event = self._inflight[key] = threading.Event()
        try:
            if found is None:
                array = self.origin.get(key) if self.origin is not None else None
                private = self.origin is not None and self.origin.fresh_arrays
            elif found[1].zero_copy and not (once and found[0] > 0 and not found[1].shared):
                # a view-serving tier: start the page cache filling and, here on the
                # prefetcher's thread, verify a shard not verified yet (its first view
                # reads it whole) instead of copying the shard into RAM
                advised = found[1].advise(key)
                if not advised:
                    return 0
                if found[1].needs_check(key):
                    found[1].read(key)
                with self._lock:
                    self.loop_stats.prefetched += 1
                    self.loop_stats.prefetched_bytes += advised
                return advised
            elif found[1].zero_copy:  # streamed: read for its next get only
                array = found[1].read_once(key)
                private = True
            else:
                array = found[1].read(key)
                private = not found[1].is_memory
            if array is None:
                return 0
            with self._lock:
                if self._version(key) != version or key in top:
                    return 0
                if found is None:
                    if self._locate(key) is not None:
                        return 0
                    self.origin_stats.bytes_read += array.nbytes
                    if not self._admit_from(0, key, array, adopt=private):
                        return 0
                else:
                    index, tier = found
                    if key not in tier:
                        return 0
                    tier.count("bytes_read", array.nbytes)
                    if private and self._staging_max_bytes:
                        # the prefetcher's copy waits for the loop's get, which then
                        # applies the top tier's promotion rule and policy (OPT keeps
                        # what is worth keeping; a streamed shard just passes through)
                        if not self._stage(index, key, version, array):
                            return 0
                    elif not self._promote(index, key, array, private=private, to_top=True):
                        return 0
                self.loop_stats.prefetched += 1
                self.loop_stats.prefetched_bytes += array.nbytes
                return int(array.nbytes)
        except CorruptShardError as exc:
            if found is not None:
                self._drop_corrupt(found[1], key, exc, version)
            return 0
        except StoreError as exc:
            log.warning("prefetch of %r failed: %s", key, exc)
            return 0
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            event.set()

    def _stage(self, index: int, key: str, version: int, array: np.ndarray) -> bool:
        """Hold a prefetched copy the top tier refused until the loop reads it, within
        the prefetcher's byte budget. When full, the copy needed furthest ahead goes
        first -- a staged copy the cursor already passed, or the new one itself (then
        it is refused): dropping the oldest would drop the one needed next. Lock held.
        O(staged) when full, O(1) otherwise."""
        if array.nbytes > self._staging_max_bytes:
            return False
        old = self._staged.pop(key, None)
        if old is not None:
            self._staged_bytes -= old[2].nbytes
        far = len(self.schedule) + 1  # unscheduled: needed after everything scheduled
        mine = self._next_use(key) or far
        while self._staged and self._staged_bytes + array.nbytes > self._staging_max_bytes:
            victim = max(self._staged, key=lambda k: self._next_use(k) or far)
            if (self._next_use(victim) or far) <= mine:
                return False  # everything staged is needed before this one
            self._staged_bytes -= self._staged.pop(victim)[2].nbytes
        self._staged[key] = (index, version, array)
        self._staged_bytes += array.nbytes
        return True

    def _take_staged(self, key: str, index: int, version: int) -> np.ndarray | None:
        """The staged copy of ``key`` if it is still current (read from tier ``index`` at
        ``version``), removing it from staging. Lock held. O(1)."""
        staged = self._staged.pop(key, None)
        if staged is None:
            return None
        self._staged_bytes -= staged[2].nbytes
        if staged[0] != index or staged[1] != version:
            return None
        self.loop_stats.staged_hits += 1
        return staged[2]
