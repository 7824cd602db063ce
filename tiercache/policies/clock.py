"""CLOCK (second chance): FIFO that gives referenced keys another round.

Paper
-----
F. J. Corbató, "A Paging Experiment with the Multics System", MIT Project MAC
report MAC-M-384, 1968; published in *In Honor of Philip M. Morse*, MIT Press,
1969, pp. 217-228.

Behaviour
---------
Keys sit in a circular queue; a *hand* points at the oldest. Each key carries a
small reference counter (``n_bit_counter`` bits; 1 bit is the classic
reference bit). A hit increments it (saturating at ``2**n_bit_counter - 1``);
an admitted key starts at ``init_freq``. To evict, the hand looks at the key
under it: a counter of 0 means "evict this one"; otherwise the counter is
decremented and the hand moves on (the key goes to the young end of the
queue). Equivalently, the victim is the first key, in hand order, whose counter
is the smallest of all -- which is what :meth:`CLOCKPolicy.victim` computes
without moving anything; :meth:`CLOCKPolicy.on_evict` then performs the sweep
(decrement and rotate each key it passes) and drops the victim.

The queue is an :class:`collections.OrderedDict`, front = under the hand; moving
a key to the young end is ``move_to_end``.

Exactness: the defaults (``n_bit_counter=1``, ``init_freq=0``) are
libCacheSim's ``Clock`` defaults (``Clock(cache_size, init_freq=0,
n_bit_counter=1)``), and in count mode the hit/miss sequence equals
libCacheSim's on every request, for every capacity; ``n_bit_counter=2`` and
``init_freq=1`` match libCacheSim given the same parameters
(``tests/policies/test_policies_more.py``).

Complexity: ``on_hit``, ``on_insert``, ``on_remove`` O(1). ``victim`` scans
from the hand to the first key with the smallest counter: O(keys passed),
O(n) in the worst case (every key referenced), and the answer is memoised
until the next change, so asking twice costs nothing. ``on_evict`` sweeps the
same keys, at most ``2**n_bit_counter - 1`` rounds: amortised O(1) per
reference counted, like the hardware clock. Memory O(resident keys).
Not thread-safe; the owner serialises calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import Key, Policy


class CLOCKPolicy(Policy):
    """CLOCK / second chance with an ``n_bit_counter``-bit reference counter.

    Parameters
    ----------
    capacity:
        The capacity of the cache (unused: CLOCK needs no size information).
    n_bit_counter:
        Bits of the per-key counter (1 to 8); a hit saturates at
        ``2**n_bit_counter - 1``. libCacheSim's default is 1.
    init_freq:
        The counter of a newly admitted key (0 to ``2**n_bit_counter - 1``).
        libCacheSim's default is 0: a new key is evicted at the first sweep
        unless it is hit.
    """

    name = "clock"

    def __init__(self, capacity: int, *, n_bit_counter: int = 1, init_freq: int = 0,
                 **options: Any) -> None:
        super().__init__(capacity, **options)
        if isinstance(n_bit_counter, bool) or not isinstance(n_bit_counter, int) \
                or not 1 <= n_bit_counter <= 8:
            raise ValueError(f"clock: n_bit_counter must be an integer from 1 to 8, "
                             f"got {n_bit_counter!r}")
        self.max_freq = (1 << n_bit_counter) - 1
        if isinstance(init_freq, bool) or not isinstance(init_freq, int) \
                or not 0 <= init_freq <= self.max_freq:
            raise ValueError(f"clock: init_freq must be an integer from 0 to {self.max_freq} "
                             f"(n_bit_counter={n_bit_counter}), got {init_freq!r}")
        self.n_bit_counter = n_bit_counter
        self.init_freq = init_freq
        self._queue: OrderedDict[Key, int] = OrderedDict()  # key -> counter; front = hand
        self._victim_memo: Key | None = None
        self._memo_valid = False

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._queue

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._queue)

    def counter(self, key: Key) -> int:
        """The reference counter of resident ``key``. O(1)."""
        return self._queue[key]

    # --- hooks -------------------------------------------------------------------
    def on_insert(self, key: Key, size: int) -> None:
        """Put ``key`` at the young end with counter ``init_freq``. O(1)."""
        self._queue[key] = self.init_freq
        self._queue.move_to_end(key)
        self._memo_valid = False

    def on_hit(self, key: Key) -> None:
        """Increment ``key``'s counter, saturating. O(1)."""
        freq = self._queue[key]
        if freq < self.max_freq:
            self._queue[key] = freq + 1
            self._memo_valid = False

    def on_remove(self, key: Key) -> None:
        """Forget ``key``; the hand stays where it is. O(1)."""
        del self._queue[key]
        self._memo_valid = False

    def on_evict(self, key: Key) -> None:
        """Sweep the hand to ``key`` (decrementing and rotating what it passes), drop it.

        O(keys passed); a ``key`` that is not the current victim is simply removed.
        """
        if key != self.victim():
            self.on_remove(key)
            return
        queue = self._queue
        while True:
            front = next(iter(queue))
            freq = queue[front]
            if freq == 0:
                break
            queue[front] = freq - 1
            queue.move_to_end(front)
        assert front == key, "CLOCK sweep disagrees with victim()"
        del queue[front]
        self._memo_valid = False

    def victim(self, incoming: Key | None = None) -> Key:
        """The first key in hand order with the smallest counter; no side effect.

        O(keys up to the first zero counter), memoised until the next change.
        """
        if self._memo_valid:
            return self._victim_memo
        if not self._queue:
            raise LookupError("CLOCK policy is empty: nothing to evict")
        best: Key | None = None
        best_freq = self.max_freq + 1
        for key, freq in self._queue.items():
            if freq < best_freq:
                best, best_freq = key, freq
                if freq == 0:
                    break
        self._victim_memo, self._memo_valid = best, True
        return best

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        for key, freq in self._queue.items():
            assert 0 <= freq <= self.max_freq, f"{key!r} has counter {freq}"
        if self._memo_valid:
            memo = self._victim_memo
            self._memo_valid = False
            try:
                assert self.victim() == memo, "stale memoised CLOCK victim"
            finally:
                self._victim_memo, self._memo_valid = memo, True
