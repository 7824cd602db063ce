"""In-cache LFU: evict the key with the fewest hits; ties evict the least recently used.

A key's count starts at 1 when it is inserted, grows by 1 per hit, and is
forgotten when the key leaves. Keys are kept in frequency buckets, each an
:class:`collections.OrderedDict` in recency order, so insert, hit and remove are
O(1); ``victim`` is O(1) amortised (the smallest non-empty bucket is cached and
recomputed in O(distinct counts) only after that bucket empties).

The tie-break is deterministic (least recently used first), unlike
cachetools' LFU, so experiments are reproducible.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import Key, Policy


class LFUPolicy(Policy):
    """Least Frequently Used, counting hits while resident."""

    name = "lfu"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self._count: dict[Key, int] = {}
        self._buckets: dict[int, OrderedDict[Key, None]] = {}
        self._min_count = 0  # 0 means "unknown, recompute"

    def __contains__(self, key: object) -> bool:
        return key in self._count

    def __len__(self) -> int:
        return len(self._count)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._count)

    def count(self, key: Key) -> int:
        """The current use count of resident ``key``."""
        return self._count[key]

    def _unlink(self, key: Key, count: int) -> None:
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min_count == count:
                self._min_count = 0

    def _link(self, key: Key, count: int) -> None:
        bucket = self._buckets.get(count)
        if bucket is None:
            bucket = self._buckets[count] = OrderedDict()
        bucket[key] = None

    def on_insert(self, key: Key, size: int) -> None:
        if key in self._count:
            self._unlink(key, self._count[key])
        self._count[key] = 1
        self._link(key, 1)
        self._min_count = 1

    def on_hit(self, key: Key) -> None:
        count = self._count[key]
        was_min = self._min_count == count
        self._unlink(key, count)
        self._count[key] = count + 1
        self._link(key, count + 1)
        if was_min and self._min_count == 0:
            # the minimum bucket emptied; ``key`` now sits in the next one up
            self._min_count = count + 1

    def on_remove(self, key: Key) -> None:
        self._unlink(key, self._count.pop(key))

    def victim(self, incoming: Key | None = None) -> Key:
        if not self._count:
            raise LookupError("LFU policy is empty: nothing to evict")
        if self._min_count == 0:
            self._min_count = min(self._buckets)
        return next(iter(self._buckets[self._min_count]))

    def check_invariants(self) -> None:
        assert sum(len(b) for b in self._buckets.values()) == len(self._count)
        for count, bucket in self._buckets.items():
            assert bucket, f"empty bucket {count} kept"
            for key in bucket:
                assert self._count[key] == count
        if self._min_count:
            assert self._min_count == min(self._buckets)
