"""LRU: evict the least recently used key.

Every operation is O(1) (an :class:`collections.OrderedDict` in recency order,
least recent first). Not thread-safe; see :mod:`tiercache.policies.base`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

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
