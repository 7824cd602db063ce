"""OPT (Belady's MIN): evict the resident key whose next request is furthest away.

Papers
------
L. A. Belady, "A study of replacement algorithms for a virtual-storage
computer", *IBM Systems Journal* 5(2), pp. 78-101, 1966 (the MIN algorithm);
R. L. Mattson, J. Gecsei, D. R. Slutz and I. L. Traiger, "Evaluation
techniques for storage hierarchies", *IBM Systems Journal* 9(2), pp. 78-117,
1970 (its optimality for demand paging).

OPT needs to know the future. :class:`OPTPolicy` gets it in one of two forms:

``future=keys`` -- a trace being replayed
    The full key sequence the caller will request, in order (the simulator
    passes the trace it replays). Next-use indices are computed once with
    numpy: a stable argsort groups each key's positions, O(n log n) in C
    (about 1.3 s for 5 million requests). In count mode
    this is Belady's MIN and gives the maximum number of hits any demand-paging
    policy can get on that trace (``tests/policies/test_policies_more.py`` checks it
    against libCacheSim's ``Belady``, a brute-force optimum and every other
    registered policy).

``schedule=keys`` -- a known cyclic order
    A decoder reads its layers ``0 .. L-1`` once per token, over and over. The
    schedule is one period; the next use of a key is computed modulo the cycle
    from the position of its last access ("Belady over the known order"). On a
    loop of L keys longer than the cache (C < L), LRU, LFU and ARC never hit,
    while OPT hits the optimal number of times, about (C - 1) / (L - 1) of
    the reads after the first pass, the same as with the unrolled future. From a
    tier's config::

        policy = "opt"
        policy_options = { schedule = ["embed", "layer.0", "layer.1", "lm_head"] }

    An engine that learns the order later calls :meth:`OPTPolicy.set_schedule`.
    A key may occur several times per period (tied embeddings).

Neither -- no knowledge
    Every next use is "never"; the tie-break (oldest last access first) makes
    the policy LRU. This is what the generic contract suite exercises.

How the position advances
-------------------------
The policy keeps ``time``, the position of the last request it has seen.
**Each request is exactly one** :meth:`~OPTPolicy.on_hit` (a hit) **or one**
:meth:`~OPTPolicy.on_miss` (a miss, admitted or not); ``on_insert``,
``on_evict``, ``on_remove`` and ``victim`` never advance it. (Advancing on
``on_miss`` rather than ``on_insert`` means the victims of request *i* are
chosen knowing that request *i* happened, and an admission abandoned after
``on_miss`` still counts as the request it was.) An ``on_insert`` without an
``on_miss`` -- a tier re-indexing a persistent store after a restart -- is not a
request: the key just gets its next use after ``time``.

The advance is *self-synchronising*: a request for key ``k`` moves ``time``
to the first position of ``k`` after ``time`` (``future``: the next occurrence
in the trace; ``schedule``: the next occurrence modulo the cycle). When the
caller requests exactly the given sequence, that is ``time + 1`` every time.
Requests the policy never hears of -- refused as too large, served by another
tier -- are skipped over, and resident keys whose next use was skipped get
their following one (O(skipped positions)). A key that does not occur in the
future (``future``: not at or after ``time``; ``schedule``: not in it) does
not move ``time`` and counts as never used again; ``extra_stats()`` reports
such requests as ``unknown_requests`` and the skipped positions as
``skipped_requests``. With a ``schedule``, a request for the key *at* the
current position (a repeated read) does not advance, unless the schedule lists
the key again right after. The engine may also say where its loop is with the
optional hook :meth:`~OPTPolicy.on_cursor` (schedule mode only), which lets a
tier that does not see every request keep exact time.

Victim, ties, complexity
------------------------
The victim is the resident key with the largest next use; keys never used
again come first, and ties (only possible among those) go to the oldest last
access (a deterministic, LRU-like tie-break). A max-heap of ``(next use, last
access)`` with lazy invalidation (stale entries are skipped and dropped; the
heap is rebuilt when it holds more than twice the resident keys). Complexity:
every hook is O(log n) amortised plus O(skipped positions), ``victim`` O(1).
Building the ``future`` index is O(n log n) (a numpy argsort) and O(n) memory;
a ``schedule`` costs O(L). Not thread-safe; the owner serialises calls.

Byte mode: the rule ignores sizes. With every size equal it is still optimal;
with varied sizes furthest-next-use is a heuristic, since optimal caching with
variable sizes is NP-hard (D. S. Berger, N. Beckmann and M. Harchol-Balter,
"Practical Bounds on Optimal Caching with Variable Object Sizes", SIGMETRICS
2018).
"""

from __future__ import annotations

import heapq
import sys
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from .base import Key, Policy

#: The next use of a key that is never requested again.
NEVER: Final[int] = sys.maxsize


class _Oracle(Protocol):
    time: int

    def access(self, key: Key) -> tuple[int, int] | None: ...
    def next_use(self, key: Key) -> int: ...
    def key_at(self, position: int) -> Key: ...


class _FutureOracle:
    """Next uses in a finite trace. ``time`` is the index of the last request seen."""

    def __init__(self, future: Sequence[Key] | npt.NDArray[Any]) -> None:
        n = len(future)
        keys: list[Key]
        if isinstance(future, np.ndarray):
            if future.ndim != 1:
                raise ValueError(f"opt: future must be one-dimensional, got shape {future.shape}")
            uniq, inverse = np.unique(future, return_inverse=True)
            keys = uniq.tolist()
            ids = np.asarray(inverse, dtype=np.int64).reshape(-1)
        else:
            index: dict[Key, int] = {}
            ids = np.fromiter((index.setdefault(k, len(index)) for k in future),
                              dtype=np.int64, count=n)
            keys = list(index)
        self._keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self._ids = ids
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        boundaries = np.flatnonzero(np.diff(sorted_ids)) + 1
        self._starts = np.concatenate(([0], boundaries)).astype(np.int64)
        self._ends = np.concatenate((boundaries, [n])).astype(np.int64)
        self._order = order.astype(np.int64)
        nxt = np.full(n, NEVER, dtype=np.int64)
        if n > 1:
            same = sorted_ids[1:] == sorted_ids[:-1]
            nxt[order[:-1][same]] = order[1:][same]
        self._next = nxt
        self.n = n
        self.time = -1

    def _occurrences(self, group: int) -> npt.NDArray[np.int64]:
        return self._order[self._starts[group]:self._ends[group]]

    def access(self, key: Key) -> tuple[int, int] | None:
        group = self._index.get(key)
        if group is None:
            return None
        t = self.time + 1
        if t < self.n and self._ids[t] == group:
            self.time = t
            return t, t
        occ = self._occurrences(group)
        j = int(np.searchsorted(occ, t))
        if j == len(occ):
            return None
        self.time = int(occ[j])
        return t, self.time

    def next_use(self, key: Key) -> int:
        group = self._index.get(key)
        if group is None:
            return NEVER
        t = self.time
        if t >= 0 and self._ids[t] == group:
            return int(self._next[t])
        occ = self._occurrences(group)
        j = int(np.searchsorted(occ, t + 1))
        return int(occ[j]) if j < len(occ) else NEVER

    def key_at(self, position: int) -> Key:
        return self._keys[int(self._ids[position])]


class _ScheduleOracle:
    """Next uses in an endless repetition of one period. ``time`` is absolute
    (it keeps counting across periods); -1 before the first request."""

    def __init__(self, schedule: Sequence[Key]) -> None:
        self._schedule = list(schedule)
        self.period = len(self._schedule)
        #: Each key's positions in the period, ascending.
        self.occurrences: dict[Key, list[int]] = {}
        for i, key in enumerate(self._schedule):
            self.occurrences.setdefault(key, []).append(i)
        self.time = -1

    def first_after(self, occ: list[int], t: int) -> int:
        """The first absolute position after ``t`` whose phase is in ``occ`` (a key's
        :attr:`occurrences`). O(log len(occ)), pure."""
        u = t + 1
        phase = u % self.period
        j = bisect_left(occ, phase)
        return u + occ[j] - phase if j < len(occ) else u + self.period - phase + occ[0]

    def next_use_after(self, key: Key, position: int) -> int:
        """The first position after ``position`` (absolute) that requests ``key``;
        :data:`NEVER` for a key not in the schedule. O(log occurrences), pure."""
        occ = self.occurrences.get(key)
        return NEVER if occ is None else self.first_after(occ, position)

    def access(self, key: Key) -> tuple[int, int] | None:
        occ = self.occurrences.get(key)
        if occ is None:
            return None
        t = self.time
        nxt = self.first_after(occ, t)
        if t >= 0 and nxt != t + 1 and self._schedule[t % self.period] == key:
            return t + 1, t + 1  # a repeated read of the key just scheduled
        self.time = nxt
        return t + 1, nxt

    def seek(self, position: int) -> tuple[int, int]:
        """Make ``position`` (a phase in ``[0, L)``) the next request's phase."""
        if isinstance(position, bool) or not isinstance(position, int) \
                or not 0 <= position < self.period:
            raise ValueError(f"opt: cursor position {position!r} is outside the schedule "
                             f"(0 to {self.period - 1})")
        t = self.time
        if t >= 0 and t % self.period == position:
            return t + 1, t + 1  # the key at the cursor was just requested: a repeat
        u = t + 1
        target = u + (position - u) % self.period
        self.time = target - 1
        return u, target

    def next_use(self, key: Key) -> int:
        occ = self.occurrences.get(key)  # next_use_after, inlined: called on every request
        return NEVER if occ is None else self.first_after(occ, self.time)

    def key_at(self, position: int) -> Key:
        return self._schedule[position % self.period]


def _as_key_list(what: str, keys: object, *, check_hashable: bool = True) -> list[Key]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise ValueError(f"opt: {what} must be a list of keys, got {type(keys).__name__} "
                         f"{keys!r:.60}")
    out = list(keys)
    if check_hashable:
        for key in out:
            try:
                hash(key)
            except TypeError:
                raise ValueError(f"opt: {what} holds an unhashable key {key!r:.60}") from None
    return out


class OPTPolicy(Policy):
    """Belady's MIN over a known future (``future=``) or a known cycle (``schedule=``).

    Parameters
    ----------
    capacity:
        Capacity of the cache (unused: OPT decides by next use only).
    future:
        The full sequence of keys the caller will request (a list, or a 1-D
        numpy array of ints). Mutually exclusive with ``schedule``.
    schedule:
        One period of a cyclic request order (non-empty list of keys), e.g. a
        model's layer keys in execution order. Mutually exclusive with ``future``.

    Raises
    ------
    ValueError
        If both are given, if ``schedule`` is empty, or either is not a
        sequence of hashable keys.
    TypeError
        For an unknown option.
    """

    name = "opt"
    uses_schedule = True
    needs_future = True

    def __init__(self, capacity: int, *, future: Sequence[Key] | npt.NDArray[Any] | None = None,
                 schedule: Sequence[Key] | None = None, **options: Any) -> None:
        super().__init__(capacity, **options)
        if future is not None and schedule is not None:
            raise ValueError("opt: give `future` (a trace) or `schedule` (a cycle), not both")
        self._oracle: _Oracle | None = None
        self._next: dict[Key, int] = {}  # resident key -> next use
        self._stamp: dict[Key, int] = {}  # resident key -> its last access, a unique stamp
        self._size: dict[Key, int] = {}  # resident key -> size (for the admission test)
        self._heap: list[tuple[int, int, Key]] = []  # (-next use, stamp, key), lazily cleaned
        self._clock = 0
        self._cursor_driven = False  # set by the first on_cursor (see there)
        self._skipped = 0
        self._unknown = 0
        if future is not None:
            self.set_future(future)
        elif schedule is not None:
            self.set_schedule(schedule)

    # --- knowledge -----------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``"future"``, ``"schedule"`` or ``"none"``."""
        if isinstance(self._oracle, _FutureOracle):
            return "future"
        return "schedule" if isinstance(self._oracle, _ScheduleOracle) else "none"

    @property
    def time(self) -> int:
        """Position of the last request seen (-1 before the first); see the module doc."""
        return -1 if self._oracle is None else self._oracle.time

    def set_future(self, future: Sequence[Key] | npt.NDArray[Any] | None) -> None:
        """Replay ``future`` from its start (``None``: forget all knowledge).

        Resident keys are re-ranked by their first use in ``future``.
        O(n log n) for the index, O(resident keys) for the re-ranking.

        Raises
        ------
        ValueError
            If ``future`` is not a sequence of hashable keys (or a 1-D array).
        """
        if future is None:
            self._oracle = None
        else:
            if not isinstance(future, np.ndarray):
                future = _as_key_list("future", future, check_hashable=False)
            try:
                self._oracle = _FutureOracle(future)
            except TypeError as exc:  # an unhashable key
                raise ValueError(f"opt: future holds an unhashable key ({exc})") from None
        self._rebuild()

    def set_schedule(self, schedule: Sequence[Key] | None) -> None:
        """Use ``schedule`` (one period of a cyclic order) from now on; ``None``
        forgets all knowledge.

        The position restarts before the period's first key; resident keys are
        re-ranked by their first occurrence in it, keys not in it are "never used
        again". O(L + resident keys).

        Raises
        ------
        ValueError
            If ``schedule`` is empty or not a sequence of hashable keys.
        """
        self._cursor_driven = False
        if schedule is None:
            self._oracle = None
        else:
            keys = _as_key_list("schedule", schedule)
            if not keys:
                raise ValueError("opt: schedule is empty; give the keys of one period "
                                 "in request order, or None for no knowledge")
            self._oracle = _ScheduleOracle(keys)
        self._rebuild()

    def next_use(self, key: Key) -> int:
        """The position of the next request for ``key`` after :attr:`time`
        (:data:`NEVER` if none is known). O(log n)."""
        return NEVER if self._oracle is None else self._oracle.next_use(key)

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._next

    def __len__(self) -> int:
        return len(self._next)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._next)

    # --- heap maintenance ----------------------------------------------------------------
    def _set(self, key: Key, next_use: int, stamp: int) -> None:
        self._next[key] = next_use
        self._stamp[key] = stamp
        heapq.heappush(self._heap, (-next_use, stamp, key))

    def _valid(self, entry: tuple[int, int, Key]) -> bool:
        neg_next, stamp, key = entry
        return self._stamp.get(key) == stamp and self._next[key] == -neg_next

    def _clean(self) -> None:
        heap = self._heap
        if len(heap) > 2 * len(self._next) + 64:
            self._heap = [(-n, self._stamp[k], k) for k, n in self._next.items()]
            heapq.heapify(self._heap)
            return
        while heap and not self._valid(heap[0]):
            heapq.heappop(heap)

    def _rebuild(self) -> None:
        self._next = {key: self.next_use(key) for key in self._next}
        self._heap = [(-n, self._stamp[k], k) for k, n in self._next.items()]
        heapq.heapify(self._heap)

    def _advance(self, key: Key) -> None:
        oracle = self._oracle
        if oracle is None or self._cursor_driven:
            return  # (on_hit lands time on the cursor's own request itself)
        span = oracle.access(key)
        if span is None:
            self._unknown += 1
            return
        self._skip(oracle, *span)

    def _skip(self, oracle: _Oracle, start: int, stop: int) -> None:
        """Positions ``start .. stop-1`` passed unseen: re-rank the keys they held."""
        if stop > start:
            self._skipped += stop - start
            nxt, stamp = self._next, self._stamp
            for position in range(start, stop):
                other = oracle.key_at(position)
                if nxt.get(other) == position:
                    self._set(other, oracle.next_use(other), stamp[other])

    # --- hooks -------------------------------------------------------------------
    def on_hit(self, key: Key) -> None:
        """One request (a hit): advance, re-rank ``key``. O(log n) amortised."""
        oracle = self._oracle
        if self._cursor_driven and type(oracle) is _ScheduleOracle:
            # a loop's get (every hit of a model loop): the key at the cursor is the
            # loop's own request -- time lands on it and the key is ranked by its use
            # after this one at once, not re-ranked by the next cursor move. A hit on
            # any other key (off the schedule, a repeated read) leaves time alone, and
            # so does a miss: an admission may be a prefetch of the next key, which
            # must keep its rank (needed now) until the loop has read it.
            t = oracle.time
            if oracle.key_at(t + 1) == key:
                t = oracle.time = t + 1
            occ = oracle.occurrences.get(key)
            nxt = NEVER if occ is None else oracle.first_after(occ, t)
            self._clock = stamp = self._clock + 1
            self._next[key] = nxt
            self._stamp[key] = stamp
            heapq.heappush(self._heap, (-nxt, stamp, key))
        else:
            self._advance(key)
            self._clock += 1
            self._set(key, self.next_use(key), self._clock)
        self._clean()

    def on_miss(self, key: Key, size: int) -> None:
        """One request (a miss): advance the position. O(log n) amortised."""
        self._advance(key)
        self._clean()

    def on_insert(self, key: Key, size: int) -> None:
        """Rank ``key`` by its next use after :attr:`time`. O(log n) amortised."""
        self._clock += 1
        self._size[key] = size
        self._set(key, self.next_use(key), self._clock)
        self._clean()

    def on_remove(self, key: Key) -> None:
        """Forget ``key``. O(log n) amortised."""
        del self._next[key]
        del self._stamp[key]
        self._size.pop(key, None)
        self._clean()

    def admits(self, key: Key, size: int, free: int) -> bool:
        """Belady with bypass: an optional move (promotion, prefetch) of ``key`` is
        admitted only if the residents it would evict -- furthest next use first,
        until ``size`` fits -- are all needed later than ``key``. Without knowledge
        of the future, admit. O(1) amortised when the furthest resident is needed
        before ``key``, else O(n log n) in resident keys."""
        if self._oracle is None or size <= free:
            return True
        incoming = self.next_use(key)
        oracle = self._oracle
        if isinstance(oracle, _ScheduleOracle) and incoming == oracle.time + 1:
            # `key` is the request being served right now: what matters is its use
            # after this one
            incoming = oracle.next_use_after(key, incoming)
        self._clean()
        if self._heap and -self._heap[0][0] <= incoming:
            # the resident needed furthest away is needed before `key` (the usual
            # answer for a shard just used in a loop): refused without sorting
            return False
        need = size - free
        for resident, nxt in sorted(self._next.items(), key=lambda item: -item[1]):
            if nxt <= incoming:
                return False  # it would push out a shard needed before `key`
            need -= self._size.get(resident, 1)
            if need <= 0:
                return True
        return False

    def on_cursor(self, position: int) -> None:
        """The engine's loop is about to request schedule position ``position``.

        An optional hook (:meth:`tiercache.TieredCache.get` calls it on every
        tier for a key of the declared schedule, before the lookup): with a
        ``schedule``, it moves :attr:`time` to just before the next request at
        that phase, re-ranking keys whose turn was skipped, so the request's own
        ``on_hit``/``on_miss`` then lands exactly on it. Calling it again for the
        position just requested is a no-op (a repeated read). Without a
        schedule it does nothing. Once called, only the cursor moves time:
        ``on_hit`` advances it only onto the cursor's own request (the key at the
        next position, then ranked by its use after this one at once) and
        ``on_miss`` not at all, so shards admitted ahead of the loop by a
        prefetcher are ranked by their distance from the loop, not mistaken for the
        loop's own requests (until the next ``set_schedule``).
        O(skipped positions) + O(log n) amortised.

        Raises
        ------
        ValueError
            If ``position`` is not in ``[0, len(schedule))``.
        """
        oracle = self._oracle
        if isinstance(oracle, _ScheduleOracle):
            # From now on only the cursor moves time: admissions that are not the
            # loop's own requests (a prefetcher bringing shards up ahead of the
            # loop) must not make the policy believe the loop has moved on.
            self._cursor_driven = True
            period = oracle.period
            if type(position) is int and 0 <= position < period and period > 2:
                t = oracle.time
                step = (position - t - 1) % period
                if step == 0:
                    return  # the next request (a loop's usual step): nothing to do
                if step == 1 and self._next.get(oracle.key_at(t + 1)) != t + 1:
                    # one request passed that this tier did not see (another tier served
                    # it) and no resident waits on it: only time moves (seek + _skip)
                    oracle.time = t + 1
                    self._skipped += 1
                    return
            self._skip(oracle, *oracle.seek(position))
            self._clean()

    def victim(self, incoming: Key | None = None) -> Key:
        """The resident key used furthest in the future; O(1), pure."""
        if not self._next:
            raise LookupError("OPT policy is empty: nothing to evict")
        return self._heap[0][2]

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        assert set(self._next) == set(self._stamp), "next-use and stamp tables disagree"
        assert len(set(self._stamp.values())) == len(self._stamp), "two keys share a stamp"
        for key, nxt in self._next.items():
            want = self.next_use(key)
            assert nxt == want, f"{key!r}: next use {nxt}, should be {want} at time {self.time}"
            assert nxt > self.time, f"{key!r}: next use {nxt} is not after time {self.time}"
        live = {entry[2] for entry in self._heap if self._valid(entry)}
        assert live == set(self._next), "a resident key has no live heap entry"
        if self._next:
            assert self._valid(self._heap[0]), "stale heap top"
            best = min(self._next, key=lambda k: (-self._next[k], self._stamp[k]))
            assert self._heap[0][2] == best, f"heap top {self._heap[0][2]!r}, best {best!r}"
        assert len(self._heap) <= 2 * len(self._next) + 64 + 1, "heap is not compacted"

    def extra_stats(self) -> dict[str, float]:
        return {"time": self.time, "skipped_requests": self._skipped,
                "unknown_requests": self._unknown}
