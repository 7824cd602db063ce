"""Prefetch along a declared schedule: bring the next shards up while the loop computes.

An inference loop reads its weights in a known order, one forward pass after
another. It declares that order once with
:meth:`TieredCache.declare_schedule`; every ``get`` of a scheduled key then
moves the cache's *cursor*, and a :class:`Prefetcher` thread brings the next
``depth`` shards after the cursor into the top tier (bounded by
``max_bytes``, by default half the top tier), so that by the time the loop
asks for them they are RAM hits. A ``get`` for a shard the prefetcher is
still reading waits for that read instead of issuing its own; that wait, and
any read the loop has to do itself, is *stall time*, reported in
``cache.stats()["loop"]``.

Shards on a ``zero_copy`` tier are not copied up: the prefetcher asks their
store to start reading them into the page cache (:meth:`TieredCache.advise`),
and does so on the loop's own thread, since that is an asynchronous system
call; the background thread wakes only for shards that must be copied. When
the page cache is seen losing such shards between passes (a loop larger than
memory), the prefetcher keeps a fixed part of them in the page cache
(``drop_behind``; which part and how much: :mod:`tiercache.serving.keep`) and
*streams* the others: its thread reads them in the loop's order, up to
``max_bytes`` (at most :data:`STREAM_AHEAD_MAX_BYTES`) ahead of the cursor, into
memory that is recycled once the loop is done with a shard
(:meth:`TieredCache.prefetch` with ``once``;
:meth:`Store.read_once` leaves nothing in the page cache), so the disk works
while the loop computes and the kernel never has to choose between the pages
the loop keeps and the ones it is about to read. Shards larger than a quarter of
that are not streamed: their pages are let go right after use instead.

Thread-safety: one background thread per prefetcher; :meth:`notify` is called
from the loop's thread (through the cache). The cache's own lock protects its
state; the prefetcher only calls :meth:`TieredCache.advise` and
:meth:`TieredCache.prefetch`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from ..spare_memory import page_cache_room_bytes
from .keep import Candidate, KeepSet


class _Sized(Protocol):
    @property
    def capacity_bytes(self) -> int: ...


class PrefetchTarget(Protocol):
    """What a :class:`Prefetcher` needs of its cache (a :class:`tiercache.TieredCache`)."""

    @property
    def schedule(self) -> tuple[str, ...]: ...

    @property
    def tiers(self) -> Sequence[_Sized]: ...

    def advise(self, key: str, *, watch: bool = False) -> int | None: ...

    def prefetch(self, key: str, *, once: bool = False) -> int: ...

    def pending(self, key: str) -> bool: ...

    def release(self, key: str) -> int: ...

    def page_evictions(self) -> int: ...

    def keep_candidates(self) -> list[Candidate]: ...

log = logging.getLogger("tiercache")

#: While the page cache holds the loop, one pass in this many checks it still does.
WATCH_EVERY = 8
#: Streamed copies staged or in flight ahead of the loop at most (and ``max_bytes``
#: if less): 25 ms of reading at 2.5 GB/s keeps the disk busy, and a large top tier's
#: ``max_bytes`` (half of it) must not become that much memory of copies.
STREAM_AHEAD_MAX_BYTES = 64 << 20


class Prefetcher:
    """Background thread that prefetches the shards after the cache's cursor.

    Parameters
    ----------
    cache:
        The cache whose declared schedule is followed.
    depth:
        How many scheduled shards ahead of the cursor to keep in the top tier.
    max_bytes:
        Upper bound on the bytes of shards fetched ahead of the cursor; default
        half the top tier's capacity (so prefetching never evicts the shards the
        loop is using right now).
    workers:
        Reads in flight at once (threads that copy shards up). One read at a
        time leaves a fast disk idle between shards; two keep it busy.
    drop_behind:
        When the page cache loses zero-copy shards between passes, keep a fixed
        part (:attr:`keep`) and release the others after use. Off by default (the
        page cache left to the kernel); :func:`tiercache.load_model` turns it on:
        on the C kernel it was measured faster (a 2 GB Q4_0 model at RAM 25 %: 0.78x
        the time); on TensorFlow's float32 step only with ``stream`` (without, 1.27x;
        docs/performance.md).
    stream:
        With ``drop_behind``, read the released shards ahead into recycled memory
        (see the module docstring) instead of mapping them and letting their pages
        go after use. Off by default; :func:`tiercache.load_model` turns it on for
        TensorFlow's float32 step, where it was measured faster (SmolLM2's float32
        layout at RAM 25 %, docs/performance.md) -- on the C kernel's quantized
        shards it read twice the bytes (the copies in flight take room the kept
        shards had).
    """

    def __init__(self, cache: PrefetchTarget, *, depth: int = 8,
                 max_bytes: int | None = None, workers: int = 2,
                 drop_behind: bool = False, stream: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.cache = cache
        self.depth = depth
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="tiercache-prefetch-read")
        self.max_bytes = (max_bytes if max_bytes is not None
                          else cache.tiers[0].capacity_bytes // 2)
        self._cond = threading.Condition()
        self._cursor = -1
        self._seen = -1
        self._fetched: set[int] = set()  # schedule positions of the window already fetched
        self._inline: set[int] = set()  # positions advised on the loop's thread (zero-copy)
        self._deferred: set[int] = set()  # positions left to the thread (copied up)
        self._notified: tuple[int, int] | None = None  # (cursor, period) of the last notify
        self.drop_behind = drop_behind
        self.stream = stream
        #: Bytes of streamed copies ahead of the loop at most.
        self.stream_bytes = min(self.max_bytes, STREAM_AHEAD_MAX_BYTES)
        #: The shards the page cache keeps between passes (:mod:`tiercache.serving.keep`).
        self.keep = KeepSet(lost_fraction=0.25 if stream else None)
        #: The shards streamed (released by the keep set, at most a quarter of
        #: ``stream_bytes``) -> their bytes; replaced whole at each pass, read by the thread.
        self.streamed: dict[str, int] = {}
        self._behind: list[int] = []  # positions the loop read at the last notify
        self._watching = drop_behind  # this pass checks the page cache kept its shards
        self._stopped = False
        #: Times :meth:`notify` woke the thread, and passes the thread made over the window.
        self.wakeups = 0
        self.passes = 0
        self._thread = threading.Thread(target=self._run, name="tiercache-prefetch",
                                        daemon=True)

    def start(self) -> Prefetcher:
        self._thread.start()
        return self

    def notify(self, cursor: int) -> None:
        """The loop reached schedule position ``cursor``.

        Shards of the window that live on a zero-copy tier are advised right here,
        on the loop's thread (:meth:`TieredCache.advise`: an asynchronous read-ahead
        request, a system call or two); the thread is woken only for shards that
        must be copied up. Waking a Python thread for every ``get`` would make the
        two threads trade the GIL hundreds of times per forward pass. O(steps) for a
        move forward of at most ``depth`` steps, O(depth) after a jump.
        """
        schedule = self.cache.schedule
        period = len(schedule)
        if period:
            inline, deferred = self._inline, self._deferred
            span = min(self.depth, period)
            last = self._notified
            steps = (cursor - last[0]) % period if last is not None and last[1] == period \
                else 0
            if self.drop_behind and (last is None or cursor < last[0]):
                self._new_pass()
            forward = 0 < steps <= span
            # the positions the loop read since the last notify (a jump: its own)
            passed = [(cursor - back) % period for back in range(steps)] if forward \
                else [cursor]
            if forward:
                # the common case, a few steps forward (one per get; a layer per
                # get_many): the positions passed leave the window, as many enter it --
                # O(steps)
                inline.difference_update(passed)
                deferred.difference_update(passed)
                entering: Iterable[int] = [(cursor + span - back) % period
                                           for back in range(steps - 1, -1, -1)]
            else:  # a jump (first call, a skipped or repeated key): rebuild the window
                window = {(cursor + step) % period for step in range(1, span + 1)}
                inline &= window
                deferred &= window
                entering = sorted(window, key=lambda p: (p - cursor) % period)
            self._notified = (cursor, period)
            if self.keep.active:
                self._release_behind(schedule, cursor, span, passed)
            self._behind = passed
            streamed = self.streamed
            for position in entering:
                if position in inline or position in deferred:
                    continue
                key = schedule[position]
                if key in streamed or self.cache.advise(key, watch=self._watching) is None:
                    deferred.add(position)  # a copy, or streamed: the thread's job
                else:
                    inline.add(position)  # a RAM hit, or advised: nothing left to do
            # wake the thread only for a copy it has not started: a RAM hit, or a
            # shard already on its way up, costs no wake-up and no GIL hand-off --
            # unless the loop just took streamed shards (room to read more ahead)
            wake = (bool(deferred) and not deferred <= self._fetched) or (
                bool(streamed) and any(schedule[p] in streamed for p in passed))
        else:
            wake = True
        if wake:
            with self._cond:
                self._cursor = cursor
                self.wakeups += 1
                self._cond.notify()

    def _new_pass(self) -> None:
        """The loop starts a pass: let the keep set see the page cache's evictions, and
        choose whether this pass watches for them (a ``mincore`` per shard read
        before): every pass while the set is active or after a pass that lost a
        quarter of the loop, else the first passes (those that set the baseline, and
        two more) and one in :data:`WATCH_EVERY`."""
        cache = self.cache
        keep = self.keep
        seen: list[Candidate] = []

        def candidates() -> list[Candidate]:
            seen[:] = cache.keep_candidates()
            return seen

        keep.new_pass(cache.page_evictions(), candidates, page_cache_room_bytes, self.depth)
        if not (self.stream and keep.active):
            self.streamed = {}
        elif seen:  # (an active set always asks) streamed: what it releases, if small
            limit = self.stream_bytes // 4
            self.streamed = {c.key: c.nbytes for c in seen
                             if keep.releases(c.key) and c.nbytes <= limit}
        self._watching = (keep.active or keep.losing or keep.passes <= keep.settle_passes + 2
                          or keep.passes % WATCH_EVERY == 0)

    def _release_behind(self, schedule: Sequence[str], cursor: int, span: int,
                        passed: list[int]) -> None:
        """Release the shards the loop read at the previous notify (done with them now:
        a loop reads a group, computes, then reads the next) that the keep set does
        not keep and the loop does not read again now or within the window.
        O(steps + depth)."""
        period = len(schedule)
        near = {schedule[p] for p in passed}
        near.update(schedule[(cursor + step) % period] for step in range(1, span + 1))
        for position in self._behind:
            key = schedule[position]
            if key not in near and self.keep.releases(key):
                self.cache.release(key)

    @property
    def running(self) -> bool:
        """Whether the prefetch thread is alive (False once :meth:`stop` returned). O(1)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and wait for its current read to finish. Idempotent."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and self._cursor == self._seen:
                    self._cond.wait()
                if self._stopped:
                    return
                cursor = self._seen = self._cursor
                self.passes += 1
            try:
                self._fetch_ahead(cursor)
                if self.streamed:
                    self._stream_ahead(cursor)
            except Exception:  # never let the thread die silently
                log.exception("prefetcher failed; the loop will read shards itself")

    def _moved(self, cursor: int) -> bool:
        """Whether the loop left ``cursor`` (or the prefetcher is stopping). O(1)."""
        with self._cond:
            return self._stopped or self._cursor != cursor

    def _stream_ahead(self, cursor: int) -> None:
        """Read the streamed shards after ``cursor`` in the loop's order, one at a time
        on this thread (one sequential reader keeps the kernel's read-ahead going),
        while those staged or being read ahead of the cursor stay within
        :attr:`stream_bytes`; stop when the loop moves (the next wake-up goes on from its new
        position). O(positions looked at) plus the reads."""
        cache = self.cache
        schedule = cache.schedule
        streamed = self.streamed
        period = len(schedule)
        ahead = 0
        for step in range(1, period):
            if self._moved(cursor):
                return
            key = schedule[(cursor + step) % period]
            size = streamed.get(key)
            if size is None:
                continue
            if cache.pending(key):
                ahead += size
            elif ahead + size > self.stream_bytes:
                return
            elif cache.prefetch(key, once=True):  # (0: in the top tier now, or gone)
                ahead += size

    def _fetch_ahead(self, cursor: int) -> None:
        schedule = self.cache.schedule
        if not schedule:
            return
        period = len(schedule)
        window = [(cursor + step) % period for step in range(1, min(self.depth, period) + 1)]
        # only positions entering the window are fetched: those fetched for the previous
        # cursor position are still on their way up (or already there)
        self._fetched &= set(window)
        budget = self.max_bytes
        running: deque[Future[int]] = deque()  # reads in flight, oldest first
        streamed = self.streamed
        for position in window:
            if position in self._fetched or position in self._inline \
                    or schedule[position] in streamed:  # (streamed: _stream_ahead's)
                continue
            if self._moved(cursor):
                return  # the loop moved on: start again from its new position
            running.append(self._pool.submit(self.cache.prefetch, schedule[position]))
            self._fetched.add(position)
            while len(running) >= self.workers:
                budget -= running.popleft().result()
            if budget <= 0:
                return
        for future in running:
            future.result()
