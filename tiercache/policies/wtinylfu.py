"""W-TinyLFU: an LRU admission window, a segmented-LRU main cache, and a TinyLFU filter.

Paper
-----
G. Einziger, R. Friedman and B. Manes, "TinyLFU: A Highly Efficient Cache
Admission Policy", *ACM Transactions on Storage* 13(4), article 35, 2017
(W-TinyLFU is defined in its Section 5; it is the policy of the Caffeine
library).

Structure
---------
* window -- an LRU of about 1 % of the capacity (``capacity - int(0.99 *
  capacity)``, Caffeine's rounding, so even a tiny cache has a window); every
  new key enters here;
* main -- a segmented LRU (SLRU) holding the rest: *probation* (keys that
  came from the window) and *protected* (keys hit while on probation), the
  latter at most 80 % of the main share; a key pushed out of protected goes
  back to the MRU end of probation;
* the TinyLFU frequency histogram -- an estimate of how often each key was
  requested recently, used to decide whether a key leaving the window may
  displace a key of the main cache.

Eviction: when an admission makes the window overflow, the window's LRU key
is the *candidate* and the main cache's victim (probation's LRU, else
protected's) duels with it: the candidate wins only if its frequency is
strictly higher; the loser is evicted. :meth:`WTinyLFUPolicy.victim` names the
loser without changing anything; the winner stays where it is, and the window
overflow moves to probation's MRU end on :meth:`WTinyLFUPolicy.on_insert`
(Caffeine's ``evictFromWindow``). In byte mode, where one admission may need
several evictions, the same candidate duels with each successive main victim
until it loses or room is made. If the window does not overflow, the main
victim goes; an empty main cache yields the window's LRU.

Frequency histogram -- deviations from the paper
------------------------------------------------
* Exact counts instead of a Count-Min sketch: a dict of 4-bit saturating
  counters (max 15, as the paper's), incremented on every request (``on_hit``
  and ``on_miss``). Ages like TinyLFU's *reset*: after ``sample_factor`` times
  the number of keys the cache holds (W = 10 x capacity in count mode; in
  byte mode the capacity divided by the mean admitted size), every counter and
  the sample count are halved. The table therefore holds at most ~W keys
  (Caffeine's simulator offers the same "perfect" frequency as an option).
  Exact counts make the policy deterministic for any hashable key (no hash
  seed, no collision luck) and let ``on_remove`` forget a key completely, as
  the hook protocol requires; an eviction keeps the key's count (that history
  is the point of TinyLFU).
* No doorkeeper (Bloom filter), no random admission of warm candidates against
  hash flooding, no adaptive window (hill climbing): the 2017 W-TinyLFU with a
  static 1 % window, deterministic.

Exactness: *not* request-by-request equal to libCacheSim's ``WTinyLFU``, and
cannot be: libCacheSim estimates with a counting Bloom filter (hash
collisions), counts only main-cache hits, insertions and window victims, and
refuses in count mode every key while ``int(0.01 * capacity) == 0`` (capacity
< 100). ``tests/policies/test_policies_more.py`` checks that on skewed (Zipf) traces
its hit ratio is within 2 percentage points of libCacheSim's ``WTinyLFU`` at
capacities of 100 and more, and above LRU's.

Complexity: every hook and ``victim`` is O(1), except the aging step, O(table)
once every W recorded requests (amortised O(1)). Memory O(resident keys +
W counters). Not thread-safe; the owner serialises calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import Key, Policy

COUNTER_MAX = 15  # 4-bit counters, as in the paper


def _ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"wtinylfu: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _first(table: OrderedDict[Key, int]) -> Key:
    return next(iter(table))


class WTinyLFUPolicy(Policy):
    """W-TinyLFU (Einziger, Friedman & Manes, ACM TOS 2017) with an exact, aged histogram.

    Parameters
    ----------
    capacity:
        Capacity of the cache, in the unit of the sizes (bytes, or 1 per key).
    window_ratio:
        Share of the capacity for the admission window (default 0.01).
    protected_ratio:
        Share of the main cache the protected segment may fill (default 0.8).
    sample_factor:
        Age (halve every counter) after ``sample_factor`` x (keys the cache
        holds) recorded requests (default 10, the paper's W = 10 C).
    """

    name = "wtinylfu"

    def __init__(self, capacity: int, *, window_ratio: float = 0.01,
                 protected_ratio: float = 0.8, sample_factor: int = 10,
                 **options: Any) -> None:
        super().__init__(capacity, **options)
        self.window_ratio = _ratio("window_ratio", window_ratio)
        self.protected_ratio = _ratio("protected_ratio", protected_ratio)
        if isinstance(sample_factor, bool) or not isinstance(sample_factor, int) \
                or sample_factor < 1:
            raise ValueError(f"wtinylfu: sample_factor must be a positive integer, "
                             f"got {sample_factor!r}")
        self.sample_factor = sample_factor
        self.window_capacity = capacity - int(capacity * (1.0 - self.window_ratio))
        self.main_capacity = capacity - self.window_capacity
        self.protected_capacity = int(self.main_capacity * self.protected_ratio)
        self._window: OrderedDict[Key, int] = OrderedDict()  # key -> size, LRU first
        self._probation: OrderedDict[Key, int] = OrderedDict()
        self._protected: OrderedDict[Key, int] = OrderedDict()
        self._window_size = self._probation_size = self._protected_size = 0
        self._freq: dict[Key, int] = {}
        self._samples = 0  # requests recorded since the last aging (halved by it)
        self._agings = 0
        self._admitted = 0  # keys admitted, and their total size: the mean key size
        self._admitted_size = 0
        self._incoming: Key | None = None
        self._incoming_size = 0

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._window or key in self._probation or key in self._protected

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)

    def __iter__(self) -> Iterator[Key]:
        yield from self._window
        yield from self._probation
        yield from self._protected

    def lists(self) -> dict[str, list[Key]]:
        """Snapshot of the window, probation and protected segments, LRU first."""
        return {"window": list(self._window), "probation": list(self._probation),
                "protected": list(self._protected)}

    def frequency(self, key: Key) -> int:
        """The histogram's count for ``key`` (0 if unknown). O(1)."""
        return self._freq.get(key, 0)

    @property
    def sample_size(self) -> int:
        """Recorded requests between two agings: ``sample_factor`` x keys the cache holds."""
        if self._admitted_size > 0:
            keys = max(1, round(self.capacity * self._admitted / self._admitted_size))
        else:
            keys = max(1, self.capacity)
        return self.sample_factor * keys

    # --- frequency histogram ------------------------------------------------------------
    def _record(self, key: Key) -> None:
        freq = self._freq
        count = freq.get(key, 0)
        if count < COUNTER_MAX:
            freq[key] = count + 1
        self._samples += 1
        if self._samples >= self.sample_size:
            self._age()

    def _age(self) -> None:
        """TinyLFU's reset: halve every counter (dropping zeros) and the sample count."""
        self._freq = {k: c >> 1 for k, c in self._freq.items() if c > 1}
        self._samples //= 2
        self._agings += 1

    # --- hooks -------------------------------------------------------------------
    def on_miss(self, key: Key, size: int) -> None:
        """Record the request; remember the incoming size for :meth:`victim`. O(1)."""
        self._record(key)
        self._incoming, self._incoming_size = key, size

    def victim(self, incoming: Key | None = None) -> Key:
        """The loser of the window candidate vs. main victim duel; pure, O(1)."""
        window = self._window
        size = self._incoming_size if incoming is not None and incoming == self._incoming else 0
        candidate = (_first(window) if window and self._window_size + size > self.window_capacity
                     else None)
        if self._probation:
            main_victim: Key | None = _first(self._probation)
        elif self._protected:
            main_victim = _first(self._protected)
        else:
            main_victim = None
        if candidate is None:
            if main_victim is not None:
                return main_victim
            if window:
                return _first(window)
            raise LookupError("W-TinyLFU policy is empty: nothing to evict")
        if main_victim is None:
            return candidate
        freq = self._freq
        if freq.get(candidate, 0) > freq.get(main_victim, 0):
            return main_victim  # the candidate is admitted
        return candidate

    def on_evict(self, key: Key) -> None:
        """Drop ``key``; its frequency is kept (TinyLFU's history). O(1)."""
        self._unlink(key)

    def on_remove(self, key: Key) -> None:
        """Drop ``key`` and forget its frequency (no ghost). O(1)."""
        self._unlink(key)
        self._freq.pop(key, None)

    def _unlink(self, key: Key) -> None:
        if key in self._window:
            self._window_size -= self._window.pop(key)
        elif key in self._probation:
            self._probation_size -= self._probation.pop(key)
        else:
            self._protected_size -= self._protected.pop(key)

    def on_insert(self, key: Key, size: int) -> None:
        """Put ``key`` at the window's MRU end; the window overflow moves to probation.

        O(1) amortised.
        """
        if key in self:  # re-insert of a resident key: refresh its place
            self._unlink(key)
        self._incoming, self._incoming_size = None, 0
        self._admitted += 1
        self._admitted_size += size
        self._window[key] = size
        self._window_size += size
        while self._window_size > self.window_capacity:
            old, old_size = self._window.popitem(last=False)
            self._window_size -= old_size
            self._probation[old] = old_size
            self._probation_size += old_size

    def on_hit(self, key: Key) -> None:
        """Record the request; refresh recency; a probation hit promotes to protected.

        O(1) amortised (demotions from protected pop at most what was pushed).
        """
        self._record(key)
        if key in self._window:
            self._window.move_to_end(key)
        elif key in self._protected:
            self._protected.move_to_end(key)
        else:
            size = self._probation.pop(key)
            self._probation_size -= size
            self._protected[key] = size
            self._protected_size += size
            while self._protected_size > self.protected_capacity:
                old, old_size = self._protected.popitem(last=False)
                self._protected_size -= old_size
                self._probation[old] = old_size
                self._probation_size += old_size

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        for name, table, total in (("window", self._window, self._window_size),
                                   ("probation", self._probation, self._probation_size),
                                   ("protected", self._protected, self._protected_size)):
            assert sum(table.values()) == total, f"{name} size bookkeeping is off"
        keys = [set(self._window), set(self._probation), set(self._protected)]
        assert sum(map(len, keys)) == len(set().union(*keys)), "a key is in two segments"
        assert self._window_size <= self.window_capacity, "window over its share"
        assert self._protected_size <= self.protected_capacity, "protected over its share"
        assert all(1 <= c <= COUNTER_MAX for c in self._freq.values()), "counter out of range"
        assert self._samples >= 0, "negative sample count"

    def extra_stats(self) -> dict[str, float]:
        return {"window_size": self._window_size, "probation_size": self._probation_size,
                "protected_size": self._protected_size, "agings": self._agings,
                "tracked_keys": len(self._freq)}
