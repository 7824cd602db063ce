"""The eviction-policy interface shared by tiers and the simulator.

A policy keeps **metadata only** (keys and sizes, never values), so the same
class drives a real tier and a trace replay. The caller (a :class:`~tiercache.tier.Tier`
or the simulator) owns capacity accounting and calls the hooks in this order
when it admits a key that is not resident::

    policy.on_miss(key, size)            # once: adaptive policies learn here
    while used + size > capacity:
        v = policy.victim(key)           # pure: no side effect
        ... move v's bytes down a tier ...
        policy.on_evict(v)               # only after the bytes are safe
        used -= size_of(v)
    policy.on_insert(key, size)

A hit on a resident key calls ``on_hit(key)``; a resident key that leaves for
another reason than eviction (delete, promotion out of the tier) calls
``on_remove(key)``. Because ``victim()`` has no side effect, a failed
demotion never loses data: the caller simply does not call ``on_evict``
(nor ``on_insert``: the admission is abandoned after ``on_miss``).

Two more sequences are allowed: ``victim()`` + ``on_evict`` to shed a key with
no incoming one (e.g. a tier shrinking), and ``on_insert`` *without*
``on_miss`` while there is room, when a tier re-indexes what a persistent store
already holds after a restart. ``victim(incoming)`` is only asked with a
non-resident ``incoming``. The contract test-kit ``tests/policy_contract.py``
checks all of this for every registered policy; see docs/policies.md.

Thread-safety: policies are not thread-safe; the owner serialises calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar

Key = Hashable


class Policy(ABC):
    """Base class of every eviction policy.

    Parameters
    ----------
    capacity:
        The capacity of the cache the policy serves, in the unit of the sizes
        passed to :meth:`on_insert` (bytes in a tier, 1 per object in count
        mode). Policies that do not need it (LRU) may ignore it.
    **options:
        Policy-specific settings from the ``policy_options`` table of a tier.
    """

    #: Registry name (``"lru"``); set by each subclass.
    name: ClassVar[str] = ""

    def __init__(self, capacity: int, **options: Any) -> None:
        if options:
            unknown = ", ".join(sorted(options))
            raise TypeError(f"{type(self).__name__} takes no options (got {unknown})")
        self.capacity = capacity

    # --- queries -----------------------------------------------------------------
    @abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is resident (ghost entries do not count)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of resident keys."""

    @abstractmethod
    def __iter__(self) -> Iterator[Key]:
        """Resident keys, in no guaranteed order."""

    # --- hooks -------------------------------------------------------------------
    def on_miss(self, key: Key, size: int) -> None:  # noqa: B027 - optional hook
        """``key`` (not resident) is about to be admitted. Adaptive policies learn here."""

    @abstractmethod
    def on_insert(self, key: Key, size: int) -> None:
        """``key`` of ``size`` units became resident."""

    @abstractmethod
    def on_hit(self, key: Key) -> None:
        """Resident ``key`` was read."""

    @abstractmethod
    def on_remove(self, key: Key) -> None:
        """Resident ``key`` left for a reason other than eviction (no ghost is kept)."""

    def on_evict(self, key: Key) -> None:
        """Resident ``key`` was evicted. Ghost-keeping policies override this."""
        self.on_remove(key)

    @abstractmethod
    def victim(self, incoming: Key | None = None) -> Key:
        """The resident key to evict next to make room for ``incoming``.

        Must not change any state. Raises :class:`LookupError` when empty.
        """

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`AssertionError` if the policy's own invariants are broken."""

    def extra_stats(self) -> dict[str, float]:
        """Policy-specific figures for reports (ARC reports ``p``)."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} capacity={self.capacity} resident={len(self)}>"
