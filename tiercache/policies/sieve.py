"""SIEVE: a FIFO queue, one visited bit per key and a hand that sifts from old to new.

Paper
-----
Y. Zhang, J. Yang, Y. Yue, Y. Vigfusson and K. V. Rashmi, "SIEVE is Simpler
than LRU: an Efficient Turn-Key Eviction Algorithm for Web Caches", USENIX NSDI
2024, pp. 1229-1246.

Behaviour
---------
New keys enter at the head (newest end) with the visited bit clear; a hit sets
the bit and moves nothing. The hand starts at the tail (oldest end). To evict,
the hand walks towards the head: a visited key has its bit cleared and is
passed over *in place* (unlike CLOCK, survivors are not moved to the head);
the first key whose bit is clear is evicted and the hand stays at its newer
neighbour. When the hand runs off the head it wraps to the tail.
:meth:`SIEVEPolicy.victim` computes that key without touching any bit;
:meth:`SIEVEPolicy.on_evict` performs the walk. A key removed for another
reason (``on_remove``) that is under the hand moves the hand to its newer
neighbour, as libCacheSim does.

The queue is a doubly-linked list kept in two dicts (``newer``/``older``
neighbour of each key), so unlinking a key in the middle is O(1).

Exactness: in count mode the hit/miss sequence equals libCacheSim's ``Sieve``
on every request, for every capacity (``tests/policies/test_policies_more.py``).

Complexity: ``on_hit``, ``on_insert``, ``on_remove`` O(1). ``victim`` and
``on_evict`` walk from the hand to the first unvisited key: O(n) in the worst
case, amortised O(1) per hit (each hit sets one bit, each step clears one);
``victim`` is memoised until the next change. Memory O(resident keys).
Not thread-safe; the owner serialises calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from .base import Key, Policy


class SIEVEPolicy(Policy):
    """SIEVE (Zhang et al., NSDI 2024).

    Parameters
    ----------
    capacity:
        The capacity of the cache (unused: SIEVE needs no size information).
    **options:
        None are accepted; an unknown option raises :class:`TypeError`.
    """

    name = "sieve"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self._visited: dict[Key, bool] = {}
        self._newer: dict[Key, Key | None] = {}  # towards the head
        self._older: dict[Key, Key | None] = {}  # towards the tail
        self._head: Key | None = None  # newest
        self._tail: Key | None = None  # oldest
        self._hand: Key | None = None  # None: start at the tail
        self._victim_memo: Key | None = None
        self._memo_valid = False

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._visited

    def __len__(self) -> int:
        return len(self._visited)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._visited)

    def queue(self) -> list[Key]:
        """Resident keys from the tail (oldest) to the head (newest). O(n); for tests."""
        out: list[Key] = []
        key = self._tail
        while key is not None:
            out.append(key)
            key = self._newer[key]
        return out

    @property
    def hand(self) -> Key | None:
        """The key under the hand (``None``: the next sweep starts at the tail)."""
        return self._hand

    # --- list surgery ---------------------------------------------------------------
    def _unlink(self, key: Key) -> None:
        newer = self._newer.pop(key)
        older = self._older.pop(key)
        if newer is None:
            self._head = older
        else:
            self._older[newer] = older
        if older is None:
            self._tail = newer
        else:
            self._newer[older] = newer
        del self._visited[key]

    # --- hooks -------------------------------------------------------------------
    def on_insert(self, key: Key, size: int) -> None:
        """Link ``key`` at the head with its visited bit clear. O(1)."""
        if key in self._visited:  # re-insert of a resident key: start afresh
            self.on_remove(key)
        self._visited[key] = False
        self._older[key] = self._head
        self._newer[key] = None
        if self._head is None:
            self._tail = key
        else:
            self._newer[self._head] = key
        self._head = key
        self._memo_valid = False

    def on_hit(self, key: Key) -> None:
        """Set ``key``'s visited bit. O(1)."""
        if not self._visited[key]:
            self._visited[key] = True
            self._memo_valid = False

    def on_remove(self, key: Key) -> None:
        """Unlink ``key``; a hand on it moves to its newer neighbour. O(1)."""
        if self._hand == key:
            self._hand = self._newer[key]
        self._unlink(key)
        self._memo_valid = False

    def on_evict(self, key: Key) -> None:
        """Walk the hand to ``key`` clearing visited bits, drop ``key``. O(keys passed)."""
        if key != self.victim():
            self.on_remove(key)
            return
        visited = self._visited
        current = self._tail if self._hand is None else self._hand
        while current != key or visited[current]:
            visited[current] = False
            nxt = self._newer[current]
            current = self._tail if nxt is None else nxt
        self._hand = self._newer[key]
        self._unlink(key)
        self._memo_valid = False

    def victim(self, incoming: Key | None = None) -> Key:
        """The first unvisited key from the hand towards the head (wrapping); pure.

        If every key is visited the hand goes once round, clearing every bit,
        and evicts the key it started on. O(keys passed), memoised.
        """
        if self._memo_valid:
            return self._victim_memo
        if not self._visited:
            raise LookupError("SIEVE policy is empty: nothing to evict")
        start = self._tail if self._hand is None else self._hand
        current = start
        visited, newer, tail = self._visited, self._newer, self._tail
        for _ in range(len(visited)):
            if not visited[current]:
                break
            nxt = newer[current]
            current = tail if nxt is None else nxt
        else:
            current = start
        self._victim_memo, self._memo_valid = current, True
        return current

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        order = self.queue()
        assert len(order) == len(set(order)) == len(self._visited), "SIEVE list is broken"
        assert set(order) == set(self._visited) == set(self._newer) == set(self._older)
        if order:
            assert self._head == order[-1] and self._tail == order[0]
            for older, newer in pairwise(order):
                assert self._older[newer] == older
        else:
            assert self._head is None and self._tail is None
        assert self._hand is None or self._hand in self._visited, "hand on a non-resident key"
        if self._memo_valid:
            memo = self._victim_memo
            self._memo_valid = False
            try:
                assert self.victim() == memo, "stale memoised SIEVE victim"
            finally:
                self._victim_memo, self._memo_valid = memo, True
