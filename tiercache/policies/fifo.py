"""FIFO: evict the key that was admitted first; hits change nothing.

Paper
-----
L. A. Belady, "A study of replacement algorithms for a virtual-storage
computer", *IBM Systems Journal* 5(2), pp. 78-101, 1966 -- the study that
measured FIFO (with RANDOM and the offline optimum MIN) as a baseline.

Behaviour
---------
One :class:`collections.OrderedDict` in admission order, oldest first.
:meth:`FIFOPolicy.on_hit` is a no-op, which is the whole point of FIFO: a hit
costs nothing and never reorders. A key re-inserted while resident (a shard
re-written) moves to the young end.

Exactness: in count mode (every size 1) the hit/miss sequence equals
libCacheSim's ``FIFO`` on every request, for every capacity
(``tests/policies/test_policies_more.py``).

Complexity: every hook and :meth:`~FIFOPolicy.victim` is O(1); memory
O(resident keys). Not thread-safe; the owner serialises calls (see
:mod:`tiercache.policies.base`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import Key, Policy


class FIFOPolicy(Policy):
    """First In, First Out.

    Parameters
    ----------
    capacity:
        The capacity of the cache (unused: FIFO needs no size information).
    **options:
        None are accepted; an unknown option raises :class:`TypeError`.
    """

    name = "fifo"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self._queue: OrderedDict[Key, int] = OrderedDict()  # key -> size, oldest first

    def __contains__(self, key: object) -> bool:
        return key in self._queue

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._queue)

    def on_insert(self, key: Key, size: int) -> None:
        """Append ``key`` at the young end. O(1)."""
        self._queue[key] = size
        self._queue.move_to_end(key)

    def on_hit(self, key: Key) -> None:
        """Nothing: FIFO ignores hits. O(1)."""

    def on_remove(self, key: Key) -> None:
        """Forget ``key``. O(1)."""
        del self._queue[key]

    def victim(self, incoming: Key | None = None) -> Key:
        """The oldest admitted key. O(1); no side effect."""
        try:
            return next(iter(self._queue))
        except StopIteration:
            raise LookupError("FIFO policy is empty: nothing to evict") from None

    def check_invariants(self) -> None:
        for key, size in self._queue.items():
            assert isinstance(size, int) and size >= 0, f"{key!r} has size {size!r}"
