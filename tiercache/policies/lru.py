"""LRU: evict the least recently used key.

Every operation is O(1) (an :class:`collections.OrderedDict` in recency order,
least recent first). Not thread-safe; see :mod:`tiercache.policies.base`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import Key, Policy


class LRUPolicy(Policy):
    """Least Recently Used."""

    name = "lru"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self._order: OrderedDict[Key, int] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._order)

    def entries(self) -> list[tuple[Key, int]]:
        """Snapshot of ``(key, size)`` from least to most recently used, for tests and
        debugging. O(entries)."""
        return list(self._order.items())

    def on_insert(self, key: Key, size: int) -> None:
        self._order[key] = size
        self._order.move_to_end(key)

    def on_hit(self, key: Key) -> None:
        self._order.move_to_end(key)

    def on_remove(self, key: Key) -> None:
        del self._order[key]

    def victim(self, incoming: Key | None = None) -> Key:
        try:
            return next(iter(self._order))
        except StopIteration:
            raise LookupError("LRU policy is empty: nothing to evict") from None

    def replay_count(self, keys: Sequence[Key]) -> npt.NDArray[np.bool_]:
        """Count-mode replay (see :meth:`Policy.replay_count`), inlined on ``self._order``.

        The loop does what the hooks do, on the same OrderedDict: a hit is
        ``move_to_end``; a miss into a full cache pops the LRU end (``victim`` +
        ``on_evict``) and appends the key with size 1 (``on_insert``). So the
        hit sequence and the final state equal the generic, hook-calling
        replay's (``tests/sim/test_sim_replay.py`` checks both on random traces).
        A subclass that overrides a hook gets the generic replay.

        Complexity: O(len(keys)), ~0.1 µs per request. Not thread-safe.
        """
        order = self._order
        if (not self._hooks_are(LRUPolicy) or not isinstance(self.capacity, int)
                or len(order) > self.capacity or any(size != 1 for size in order.values())):
            return super().replay_count(keys)
        capacity = self.capacity
        hits = bytearray(len(keys))
        if capacity < 1:
            return np.frombuffer(hits, dtype=np.bool_)
        move_to_end = order.move_to_end
        popitem = order.popitem
        used = len(order)
        for i, key in enumerate(keys):
            if key in order:
                move_to_end(key)
                hits[i] = 1
            else:
                if used >= capacity:
                    popitem(last=False)
                else:
                    used += 1
                order[key] = 1
        return np.frombuffer(hits, dtype=np.bool_)
