"""S3-FIFO: a small probation FIFO, a main FIFO with lazy promotion, and a ghost FIFO.

Paper
-----
J. Yang, Y. Zhang, Z. Qiu, Y. Yue and K. V. Rashmi, "FIFO queues are all you
need for cache eviction", ACM SOSP 2023, pp. 130-149.

Structure (names of the paper)
------------------------------
* ``S`` -- small FIFO, ``int(0.1 * capacity)`` by default: every new key
  enters here (quick demotion of one-hit wonders);
* ``M`` -- main FIFO, the rest of the capacity, run as a CLOCK with a 2-bit
  counter (lazy promotion);
* ``G`` -- ghost FIFO of keys evicted from S (metadata only),
  ``int(0.9 * capacity)`` by default.

Every key has a frequency counter, 0 on admission, +1 per hit, capped at 3.
Evicting (``evict()`` in the paper): if ``|M| > M's share`` or S is empty,
evict from M, else from S. From S: the oldest key with ``freq >=
move_to_main_threshold`` moves to the young end of M (counter reset to 0) and
the next oldest is examined, until a key below the threshold is found: it is
evicted and remembered in G. From M: the oldest key with ``freq >= 1`` goes
back to the young end with ``freq - 1``; the first with ``freq == 0`` is
evicted (no ghost). If S empties before anything was evicted, the eviction
falls through to M. A miss whose key is in G is admitted straight into M.

Mapping onto the hooks
----------------------
:meth:`S3FIFOPolicy.victim` replays the eviction above on a *virtual* view
(nothing moves) and names the key that would leave; :meth:`S3FIFOPolicy.on_evict`
then performs the moves (S -> M promotions, M reinsertions) and drops the
victim. ``on_miss`` takes a ghost hit out of G at once (libCacheSim does it at
lookup, before evicting), so the evictions made for this very admission cannot
push that ghost out first. ``on_remove`` forgets a key without a ghost.

Exactness and deviations
------------------------
This is libCacheSim's ``S3FIFO`` (``S3FIFO.c``), whose defaults it takes:
``small_size_ratio=0.1``, ``ghost_size_ratio=0.9``, ``move_to_main_threshold=2``
and its documented variant of the paper: before the first eviction ever, a
new key goes to M when S is already full (the original, ``S3FIFOv0.c``,
always fills S). In count mode the hit/miss sequence equals libCacheSim's on
every request for capacities of 20 and more (``tests/policies/test_policies_more.py``).
Smaller caches differ by construction: libCacheSim refuses to build a cache
whose S would be 0 (capacity < 10), and it refuses to admit, into S, a key as
large as S itself (every key when ``int(0.1 * capacity) == 1``), while
tiercache's protocol gives a policy no way to refuse an admission -- such a
key is admitted into S here. For the same reason a key larger than the ghost
budget is not remembered in G (as in libCacheSim).

Complexity: ``on_hit``, ``on_miss``, ``on_insert``, ``on_remove`` O(1).
``victim`` and ``on_evict`` pass over the keys they promote or reinsert:
O(n) in the worst case, amortised O(1) per hit counted (each pass spends a
counter unit or moves a key out of S for good); ``victim`` is memoised until
the next change. Memory O(resident keys + ghosts). Not thread-safe; the owner
serialises calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import Key, Policy

_MAX_FREQ = 3  # the paper's 2-bit counter


def _ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"s3fifo: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


class S3FIFOPolicy(Policy):
    """S3-FIFO (Yang et al., SOSP 2023), libCacheSim's ``S3FIFO`` variant.

    Parameters
    ----------
    capacity:
        Capacity of the cache, in the unit of the sizes (bytes, or 1 per key).
    small_size_ratio:
        Share of the capacity for S (default 0.1); M gets the rest.
    ghost_size_ratio:
        Ghost budget as a share of the capacity (default 0.9).
    move_to_main_threshold:
        A key leaving S moves to M when hit at least this often while in S
        (default 2, libCacheSim's; 1 to 3).
    """

    name = "s3fifo"

    def __init__(self, capacity: int, *, small_size_ratio: float = 0.1,
                 ghost_size_ratio: float = 0.9, move_to_main_threshold: int = 2,
                 **options: Any) -> None:
        super().__init__(capacity, **options)
        self.small_size_ratio = _ratio("small_size_ratio", small_size_ratio)
        self.ghost_size_ratio = _ratio("ghost_size_ratio", ghost_size_ratio)
        if isinstance(move_to_main_threshold, bool) or not isinstance(move_to_main_threshold, int) \
                or not 1 <= move_to_main_threshold <= _MAX_FREQ:
            raise ValueError(f"s3fifo: move_to_main_threshold must be an integer from 1 to "
                             f"{_MAX_FREQ}, got {move_to_main_threshold!r}")
        self.move_to_main_threshold = move_to_main_threshold
        self.small_capacity = int(capacity * self.small_size_ratio)
        self.main_capacity = capacity - self.small_capacity
        self.ghost_capacity = int(capacity * self.ghost_size_ratio)
        self._small: OrderedDict[Key, int] = OrderedDict()  # key -> size, oldest first
        self._main: OrderedDict[Key, int] = OrderedDict()  # key -> size, oldest first
        self._ghost: OrderedDict[Key, int] = OrderedDict()  # key -> size, oldest first
        self._small_size = self._main_size = self._ghost_size = 0
        self._freq: dict[Key, int] = {}
        self._has_evicted = False
        self._to_main: Key | None = None
        self._has_to_main = False
        self._plan_memo: tuple[list[Key], Key] | None = None

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def __iter__(self) -> Iterator[Key]:
        yield from self._small
        yield from self._main

    def lists(self) -> dict[str, list[Key]]:
        """Snapshot of S, M and G, oldest first, for tests and debugging."""
        return {"S": list(self._small), "M": list(self._main), "G": list(self._ghost)}

    def frequency(self, key: Key) -> int:
        """The capped hit counter of resident ``key``. O(1)."""
        return self._freq[key]

    # --- the eviction plan ------------------------------------------------------------
    def _main_victim(self, extra: list[Key]) -> Key:
        """CLOCK over M followed by ``extra`` (just promoted, counter 0): the first
        key with the smallest counter."""
        best: Key | None = None
        best_freq = _MAX_FREQ + 1
        freq = self._freq
        for key in self._main:
            f = freq[key]
            if f < best_freq:
                best, best_freq = key, f
                if f == 0:
                    return key
        if extra:
            return extra[0]
        assert best is not None
        return best

    def _plan(self) -> tuple[list[Key], Key]:
        """(keys that move S -> M first, the key evicted): libCacheSim's ``evict()``
        computed without changing anything. Memoised until the next change."""
        if self._plan_memo is not None:
            return self._plan_memo
        if not self._freq:
            raise LookupError("S3-FIFO policy is empty: nothing to evict")
        moved: list[Key] = []
        plan: tuple[list[Key], Key] | None = None
        if self._main_size > self.main_capacity or not self._small:
            plan = (moved, self._main_victim(moved))
        else:
            threshold, freq = self.move_to_main_threshold, self._freq
            for key in self._small:
                if freq[key] >= threshold:
                    moved.append(key)
                else:
                    plan = (moved, key)
                    break
            else:  # S emptied into M without an eviction: the next round evicts from M
                plan = (moved, self._main_victim(moved))
        self._plan_memo = plan
        return plan

    # --- hooks -------------------------------------------------------------------
    def on_miss(self, key: Key, size: int) -> None:
        """A ghost hit: drop the ghost now, admit ``key`` into M. O(1)."""
        self._to_main, self._has_to_main = None, False
        if key in self._ghost:
            self._ghost_size -= self._ghost.pop(key)
            self._to_main, self._has_to_main = key, True
        # no state a victim() depends on changed: the memo stays valid

    def victim(self, incoming: Key | None = None) -> Key:
        """The key libCacheSim's ``evict()`` would remove; nothing moves. Memoised."""
        return self._plan()[1]

    def on_evict(self, key: Key) -> None:
        """Apply the plan: promote S -> M, sweep M, drop ``key`` (from S: into G)."""
        moved, victim = self._plan()
        if key != victim:
            self.on_remove(key)
            return
        self._plan_memo = None
        self._has_evicted = True
        freq = self._freq
        for m in moved:
            size = self._small.pop(m)
            self._small_size -= size
            self._main[m] = size
            self._main_size += size
            freq[m] = 0
        if key in self._small:
            size = self._small.pop(key)
            self._small_size -= size
            del freq[key]
            if size <= self.ghost_capacity:
                self._ghost[key] = size
                self._ghost_size += size
                while self._ghost_size > self.ghost_capacity:
                    self._ghost_size -= self._ghost.popitem(last=False)[1]
            return
        main = self._main
        while True:
            front = next(iter(main))
            f = freq[front]
            if f == 0:
                break
            freq[front] = min(f, _MAX_FREQ) - 1
            main.move_to_end(front)
        assert front == key, "S3-FIFO main sweep disagrees with victim()"
        self._main_size -= main.pop(front)
        del freq[front]

    def on_remove(self, key: Key) -> None:
        """Forget ``key`` (no ghost). O(1)."""
        if key in self._small:
            self._small_size -= self._small.pop(key)
        else:
            self._main_size -= self._main.pop(key)
        del self._freq[key]
        self._plan_memo = None

    def on_insert(self, key: Key, size: int) -> None:
        """Into M after a ghost hit (or while S is full before the first eviction),
        else into S; counter 0. O(1)."""
        if key in self._freq:  # re-insert of a resident key: refresh
            self.on_remove(key)
        if key in self._ghost:  # restart re-index of a key that is also a ghost
            self._ghost_size -= self._ghost.pop(key)
        to_main = self._has_to_main and self._to_main == key
        self._to_main, self._has_to_main = None, False
        if to_main or (not self._has_evicted and self._small_size >= self.small_capacity):
            self._main[key] = size
            self._main_size += size
        else:
            self._small[key] = size
            self._small_size += size
        self._freq[key] = 0
        self._plan_memo = None

    def on_hit(self, key: Key) -> None:
        """Count the hit (capped at 3). O(1)."""
        f = self._freq[key]
        if f < _MAX_FREQ:
            self._freq[key] = f + 1
            self._plan_memo = None

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        for name, table, total in (("S", self._small, self._small_size),
                                   ("M", self._main, self._main_size),
                                   ("G", self._ghost, self._ghost_size)):
            assert sum(table.values()) == total, f"{name} size bookkeeping is off"
        keys = [set(self._small), set(self._main), set(self._ghost)]
        assert sum(map(len, keys)) == len(set().union(*keys)), "a key is in two S3-FIFO queues"
        assert set(self._freq) == keys[0] | keys[1], "counters do not match the residents"
        assert all(0 <= f <= _MAX_FREQ for f in self._freq.values()), "counter out of range"
        assert self._ghost_size <= self.ghost_capacity, "ghost over budget"
        if self._plan_memo is not None:
            memo = self._plan_memo
            self._plan_memo = None
            try:
                assert self._plan() == memo, "stale memoised S3-FIFO plan"
            finally:
                self._plan_memo = memo

    def extra_stats(self) -> dict[str, float]:
        return {"small_size": self._small_size, "main_size": self._main_size,
                "ghost_size": self._ghost_size}
