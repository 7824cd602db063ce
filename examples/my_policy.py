"""A user-defined eviction policy, loaded without editing tiercache.

:class:`MRUPolicy` evicts the **most** recently used key. That sounds
backwards, but it is the right policy for the access pattern of layer-by-layer
inference over a model larger than the tier: every token reads the layers in
the same order, a cyclic scan longer than the cache. Under LRU each layer is
evicted just before it is needed again, so every read misses; under MRU the
layers read first stay resident and hit on every pass, and only the tail of
the scan cycles through the remaining room.

Use it from a tier's TOML config (the module must be importable, e.g. run from
the repository root or installed)::

    [[tiers]]
    name = "ram"
    backend = "memory"
    capacity = "2GiB"
    policy = "examples.my_policy:MRUPolicy"

or register it under a short name (see docs/policies.md)::

    from tiercache.policies import register_policy
    register_policy(MRUPolicy)           # now policy = "mru" works

Trust model: a ``"module:Class"`` spec imports and runs that module; only use
config files you trust.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from tiercache.policies import Key, Policy


class MRUPolicy(Policy):
    """Most Recently Used: evict the key that was inserted or hit last.

    Parameters
    ----------
    capacity:
        Capacity of the tier in the unit of the sizes (bytes, or 1 per key in
        count mode). MRU does not need it; it is kept for :meth:`__repr__`.
    **options:
        None are accepted; an unknown option raises :class:`TypeError`.

    Notes
    -----
    The keys live in one :class:`collections.OrderedDict` in recency order
    (least recent first), so every hook and :meth:`victim` is O(1) and memory is
    O(resident keys). Sizes are stored but do not influence the choice. Like
    every policy, it is not thread-safe: the tier serialises calls.
    """

    name = "mru"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)  # rejects unknown options
        self._order: OrderedDict[Key, int] = OrderedDict()  # key -> size, LRU first

    # --- queries: what is resident ----------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._order)

    # --- hooks: the tier tells us what happened -----------------------------------------
    def on_insert(self, key: Key, size: int) -> None:
        """``key`` became resident: it is now the most recently used."""
        self._order[key] = size
        self._order.move_to_end(key)

    def on_hit(self, key: Key) -> None:
        """``key`` was read: move it to the most recent end."""
        self._order.move_to_end(key)

    def on_remove(self, key: Key) -> None:
        """``key`` left (deleted, promoted, or evicted: MRU keeps no ghosts)."""
        del self._order[key]

    # ``on_miss`` (learn from a miss) and ``on_evict`` (keep a ghost) keep the
    # defaults of Policy: MRU does not adapt, and an eviction is just a removal.

    # --- the decision -----------------------------------------------------------------
    def victim(self, incoming: Key | None = None) -> Key:
        """The most recently used resident key. Pure: changes nothing.

        Raises
        ------
        LookupError
            When no key is resident.
        """
        if not self._order:
            raise LookupError("MRU policy is empty: nothing to evict")
        return next(reversed(self._order))

    def check_invariants(self) -> None:
        """Sizes are positive integers (the only state MRU has to keep sane)."""
        for key, size in self._order.items():
            assert isinstance(size, int) and size > 0, f"{key!r} has size {size!r}"
