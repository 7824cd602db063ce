"""2Q (full version): a FIFO probation queue, a ghost FIFO and an LRU main queue.

Paper
-----
T. Johnson and D. Shasha, "2Q: A Low Overhead High Performance Buffer
Management Replacement Algorithm", VLDB 1994, pp. 439-450. Names follow the
paper's "Full 2Q" (Figure 3):

* ``A1in`` -- resident keys seen once, a FIFO of at most ``Kin`` (25 % of the
  capacity by default); a hit here changes nothing (correlated references);
* ``A1out`` -- ghost FIFO of keys evicted from A1in (metadata only), at most
  ``Kout`` (50 % of the capacity by default);
* ``Am`` -- resident keys re-referenced after leaving A1in, an LRU.

Mapping onto the hooks
----------------------
* ``on_miss(x)``: if x is in A1out, take it out of the ghost and remember that
  x goes to Am (libCacheSim also drops the ghost at lookup, before evicting,
  so evictions during this admission cannot push x's ghost out first).
* ``victim()``: the paper's ``reclaimfor``: the FIFO end of A1in when
  ``|A1in| > Kin``, otherwise Am's LRU end (A1in's FIFO end when Am is empty,
  which the paper's model never reaches but deletions and byte sizes can).
* ``on_evict(v)``: a key from A1in becomes a ghost at the head of A1out, and the
  oldest ghosts are trimmed while ``|A1out| > Kout``; a key from Am is forgotten.
* ``on_insert(x)``: x goes to the MRU end of Am if its ghost was hit, else to
  the tail of A1in.
* ``on_hit(x)``: Am: move to the MRU end; A1in: nothing.

With byte sizes, ``|X|`` is the sum of the sizes in X, and ``Kin``/``Kout``
are ``int(capacity * ratio)`` bytes.

Exactness and deviations
------------------------
Defaults equal libCacheSim's ``TwoQ`` (``a_in_size_ratio=0.25``,
``a_out_size_ratio=0.5``; Kin and Kout truncated with ``int``). In count mode
the hit/miss sequence equals libCacheSim's on every request for capacities of
4 and more (``tests/policies/test_policies_more.py``). Below 4, ``Kin`` is 0 and
libCacheSim refuses every object larger than A1in, so it caches nothing;
tiercache's protocol gives a policy no way to refuse an admission, so here the
key is admitted into A1in and evicted first. libCacheSim's Am is also capped
at ``capacity - Kin`` on its own; in a pure request replay that cap is never
binding (A1in never shrinks below Kin once it exceeded it), so tiercache does
not model it.

Complexity: every hook and ``victim`` is O(1) amortised (ghost trimming pops at
most what was pushed). Memory O(resident keys + ghosts), ghosts at most
``Kout`` units. Not thread-safe; the owner serialises calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import Key, Policy


def _ratio(policy: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{policy}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


class TwoQPolicy(Policy):
    """Full 2Q (Johnson & Shasha, VLDB 1994).

    Parameters
    ----------
    capacity:
        Capacity of the cache, in the unit of the sizes (bytes, or 1 per key).
    a_in_size_ratio:
        ``Kin`` as a fraction of the capacity (paper: 25 %).
    a_out_size_ratio:
        ``Kout``, the ghost budget, as a fraction of the capacity (paper: 50 %).
    """

    name = "2q"

    def __init__(self, capacity: int, *, a_in_size_ratio: float = 0.25,
                 a_out_size_ratio: float = 0.5, **options: Any) -> None:
        super().__init__(capacity, **options)
        self.a_in_size_ratio = _ratio("2q", "a_in_size_ratio", a_in_size_ratio)
        self.a_out_size_ratio = _ratio("2q", "a_out_size_ratio", a_out_size_ratio)
        self.kin = int(capacity * self.a_in_size_ratio)
        self.kout = int(capacity * self.a_out_size_ratio)
        self._a1in: OrderedDict[Key, int] = OrderedDict()  # oldest first
        self._a1out: OrderedDict[Key, int] = OrderedDict()  # ghosts, oldest first
        self._am: OrderedDict[Key, int] = OrderedDict()  # LRU first
        self._a1in_size = self._a1out_size = self._am_size = 0
        self._to_am: Key | None = None  # the incoming key whose ghost was hit
        self._has_to_am = False

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._a1in or key in self._am

    def __len__(self) -> int:
        return len(self._a1in) + len(self._am)

    def __iter__(self) -> Iterator[Key]:
        yield from self._a1in
        yield from self._am

    def lists(self) -> dict[str, list[Key]]:
        """Snapshot of A1in, A1out (oldest first) and Am (LRU first), for tests."""
        return {"A1in": list(self._a1in), "A1out": list(self._a1out), "Am": list(self._am)}

    # --- hooks -------------------------------------------------------------------
    def on_miss(self, key: Key, size: int) -> None:
        """A ghost hit in A1out: drop the ghost, send ``key`` to Am on insert. O(1)."""
        self._to_am, self._has_to_am = None, False
        if key in self._a1out:
            self._a1out_size -= self._a1out.pop(key)
            self._to_am, self._has_to_am = key, True

    def victim(self, incoming: Key | None = None) -> Key:
        """``reclaimfor``: A1in's oldest if ``|A1in| > Kin``, else Am's LRU. O(1), pure."""
        if self._a1in and (self._a1in_size > self.kin or not self._am):
            return next(iter(self._a1in))
        if self._am:
            return next(iter(self._am))
        raise LookupError("2Q policy is empty: nothing to evict")

    def on_evict(self, key: Key) -> None:
        """A1in -> ghost at the head of A1out (trimmed to Kout); Am -> forgotten. O(1) amortised."""
        if key in self._a1in:
            size = self._a1in.pop(key)
            self._a1in_size -= size
            if size <= self.kout:  # libCacheSim's ghost FIFO refuses what it cannot hold
                self._a1out[key] = size
                self._a1out_size += size
                while self._a1out_size > self.kout:
                    self._a1out_size -= self._a1out.popitem(last=False)[1]
        else:
            self._am_size -= self._am.pop(key)

    def on_remove(self, key: Key) -> None:
        """Forget ``key`` without a ghost. O(1)."""
        if key in self._a1in:
            self._a1in_size -= self._a1in.pop(key)
        else:
            self._am_size -= self._am.pop(key)

    def on_insert(self, key: Key, size: int) -> None:
        """Am's MRU end after a ghost hit, else the tail of A1in. O(1)."""
        if key in self:  # re-insert of a resident key: refresh
            self.on_remove(key)
        if key in self._a1out:  # restart re-index of a key that is also a ghost
            self._a1out_size -= self._a1out.pop(key)
        if self._has_to_am and self._to_am == key:
            self._am[key] = size
            self._am_size += size
        else:
            self._a1in[key] = size
            self._a1in_size += size
        self._to_am, self._has_to_am = None, False

    def on_hit(self, key: Key) -> None:
        """Am: move to the MRU end; A1in: nothing (a correlated reference). O(1)."""
        if key in self._am:
            self._am.move_to_end(key)

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        for name, table, total in (("A1in", self._a1in, self._a1in_size),
                                   ("A1out", self._a1out, self._a1out_size),
                                   ("Am", self._am, self._am_size)):
            assert sum(table.values()) == total, f"{name} size bookkeeping is off"
        keys = [set(self._a1in), set(self._a1out), set(self._am)]
        assert sum(map(len, keys)) == len(set().union(*keys)), "a key is in two 2Q lists"
        assert self._a1out_size <= self.kout, f"|A1out| = {self._a1out_size} > Kout = {self.kout}"

    def extra_stats(self) -> dict[str, float]:
        return {"a1in_size": self._a1in_size, "a1out_size": self._a1out_size,
                "am_size": self._am_size, "kin": self.kin, "kout": self.kout}
