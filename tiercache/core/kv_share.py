"""A tier's share of KV blocks: which it holds, least recently used first, and their bound.

KV blocks (keys of :func:`~tiercache.keyspace.is_kv_key`) live in the tiers like
weights, but a tier's ``kv_capacity`` may bound the bytes they take so that a
running loop's weights keep the rest of the tier. :class:`KVShare` is the
tier's bookkeeping of them: the tier tells it every key it indexes or drops
and every hit, and asks it whether a block fits and which block to move down
first when the share is full (the least recently used one, whatever the
tier's policy would pick).

Thread-safety: none (owned by one tier, whose engine serialises calls).
"""

from __future__ import annotations

from collections import OrderedDict

from ..keyspace import is_kv_key


class KVShare:
    """The KV blocks of one tier and their bound (``None``: no bound of their own)."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        #: Bytes of the blocks held.
        self.bytes = 0
        #: Opened holding more than the bound (``kv_capacity`` lowered since): nothing is
        #: deleted for it; the excess moves down as blocks are admitted.
        self.opened_over = False

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def add(self, key: str, size: int) -> None:
        """The tier now holds ``key`` (counted only if it is a KV block). O(1)."""
        if is_kv_key(key):
            self._sizes[key] = size
            self.bytes += size
            if self.opened_over and self.capacity_bytes is not None \
                    and self.bytes <= self.capacity_bytes:
                self.opened_over = False

    def discard(self, key: str) -> None:
        """The tier no longer holds ``key``. O(1)."""
        size = self._sizes.pop(key, None)
        if size is not None:
            self.bytes -= size

    def touch(self, key: str) -> None:
        """A hit on ``key``: it becomes the most recently used block. O(1)."""
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def clear(self) -> None:
        self._sizes.clear()
        self.bytes = 0

    def refuses(self, key: str, size: int) -> bool:
        """Whether ``key`` is a KV block larger than the whole share. O(1)."""
        return (self.capacity_bytes is not None and is_kv_key(key)
                and size > self.capacity_bytes)

    def needs_room(self, key: str, size: int) -> bool:
        """Whether admitting the KV block ``key`` of ``size`` bytes would pass the share
        (then :meth:`oldest` must move down first). O(1)."""
        return (self.capacity_bytes is not None and is_kv_key(key)
                and self.bytes + size > self.capacity_bytes and bool(self._sizes))

    def oldest(self) -> str:
        """The least recently used block. O(1)."""
        return next(iter(self._sizes))

    def opened(self) -> None:
        """The tier indexed what its medium held: note a share already over the bound."""
        self.opened_over = self.capacity_bytes is not None and self.bytes > self.capacity_bytes

    def check(self, held: dict[str, int], over_capacity: bool) -> None:
        """Raise AssertionError unless this agrees with the tier's index ``held`` and
        (unless the tier or its share opened over capacity) with the bound. O(n)."""
        assert dict(self._sizes) == {k: v for k, v in held.items() if is_kv_key(k)}
        assert self.bytes == sum(self._sizes.values())
        if self.capacity_bytes is not None and not over_capacity and not self.opened_over:
            assert self.bytes <= self.capacity_bytes, (
                f"KV blocks take {self.bytes} bytes > kv_capacity {self.capacity_bytes}")

    def describe(self) -> dict[str, int | None]:
        return {"kv_blocks": len(self._sizes), "kv_bytes": self.bytes,
                "kv_capacity_bytes": self.capacity_bytes}
