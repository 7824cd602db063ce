"""ARC: Adaptive Replacement Cache.

N. Megiddo and D. S. Modha, "ARC: A Self-Tuning, Low Overhead Replacement
Cache", USENIX FAST 2003, pp. 115-130. Names follow Figure 4 of the paper:

* ``T1`` -- resident keys seen once recently (recency list), LRU first;
* ``T2`` -- resident keys seen at least twice recently (frequency list);
* ``B1``, ``B2`` -- ghost lists: keys recently evicted from T1 and T2 (metadata only);
* ``p``  -- the adaptive target size of T1, a real number in ``[0, c]``.

Mapping of Figure 4 onto the :class:`~tiercache.policies.base.Policy` hooks
-------------------------------------------------------------------------
* Case I (hit in T1 or T2) is :meth:`on_hit`: move to the MRU end of T2.
* Cases II/III (hit in B1/B2): :meth:`on_miss` adapts ``p`` (real division,
  clamped); :meth:`victim` answers REPLACE(x, p); :meth:`on_insert` moves x to T2.
* Case IV (x in no list): :meth:`victim` answers REPLACE, or the LRU of T1 when
  T1 alone fills the cache (Case IV-A, ``|T1| = c``); :meth:`on_insert` puts x
  at the MRU end of T1 and then trims the ghosts: the LRU of B1 while
  ``|T1|+|B1| > c`` (Case IV-A) and the LRU of B2 while the directory exceeds
  ``2c`` (Case IV-B).

The paper trims a ghost *before* REPLACE; here REPLACE comes first because the
caller must move the victim's bytes before the policy forgets anything. The
result is identical: REPLACE moves a key from T1 to B1 (or T2 to B2), which
changes neither ``|T1|+|B1|`` nor the directory size, and it puts the key at the
MRU end of the ghost list, so the LRU ghost trimmed afterwards is the same key
the paper trims. With every size equal to 1 the hit sequence is exactly
Figure 4's (the test-suite checks it against an independent transliteration
of the figure and against libCacheSim).

Generalisation to byte capacities (each key has a size; ``c`` is in bytes)
-------------------------------------------------------------------------
* All list lengths ``|X|`` become the sum of the sizes in ``X``.
* Adaptation on a ghost hit of ``x`` of size ``s``:
  ``p += s * max(|B2|/|B1|, 1)`` on a B1 hit and ``p -= s * max(|B1|/|B2|, 1)``
  on a B2 hit, clamped to ``[0, c]``: the paper's step scaled by the bytes the
  request brings.
* REPLACE evicts T1's LRU when ``|T1| > p``, or ``|T1| >= p`` for a B2 hit
  (the paper's ``|T1| = p`` case), otherwise T2's LRU; an empty list yields to
  the other.
* T1 alone must leave room for ``x``: if ``|T1| + s > c`` the victim is T1's LRU
  (Case IV-A's "delete the LRU page in T1").
* Ghost trimming keeps ``|T1|+|B1| <= c`` and ``|T1|+|T2|+|B1|+|B2| <= 2c``.
With ``s = 1`` every rule reduces to Figure 4.

Deletions (a key promoted out of the tier, or deleted by the user) leave the
cache below capacity while ghosts exist, which the paper's model never does;
REPLACE then simply runs later, when the caller next needs room.

Complexity: every hook is O(1) amortised (ghost trimming pops at most what
was pushed). Not thread-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import Key, Policy


class ARCPolicy(Policy):
    """Adaptive Replacement Cache (Megiddo & Modha, FAST 2003, Figure 4)."""

    name = "arc"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self.p = 0.0
        self._t1: OrderedDict[Key, int] = OrderedDict()
        self._t2: OrderedDict[Key, int] = OrderedDict()
        self._b1: OrderedDict[Key, int] = OrderedDict()
        self._b2: OrderedDict[Key, int] = OrderedDict()
        self._t1_size = self._t2_size = self._b1_size = self._b2_size = 0
        self._incoming: Key | None = None
        self._incoming_size = 0

    # --- queries -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __iter__(self) -> Iterator[Key]:
        yield from self._t1
        yield from self._t2

    def lists(self) -> dict[str, list[Key]]:
        """Snapshot of T1, T2, B1, B2 (LRU first), for tests and debugging."""
        return {"T1": list(self._t1), "T2": list(self._t2),
                "B1": list(self._b1), "B2": list(self._b2)}

    def sizes(self) -> dict[str, dict[Key, int]]:
        """Snapshot of T1, T2, B1, B2 with each key's size (LRU first), for tests that
        recompute the size totals and for debugging. O(entries)."""
        return {"T1": dict(self._t1), "T2": dict(self._t2),
                "B1": dict(self._b1), "B2": dict(self._b2)}

    # --- hooks -------------------------------------------------------------------
    def on_miss(self, key: Key, size: int) -> None:
        self._incoming, self._incoming_size = key, size
        if key in self._b1:  # Case II: adapt towards recency
            ratio = self._b2_size / self._b1_size if self._b1_size else 1.0
            self.p = min(float(self.capacity), self.p + size * max(ratio, 1.0))
        elif key in self._b2:  # Case III: adapt towards frequency
            ratio = self._b1_size / self._b2_size if self._b2_size else 1.0
            self.p = max(0.0, self.p - size * max(ratio, 1.0))

    def victim(self, incoming: Key | None = None) -> Key:
        t1, t2 = self._t1, self._t2
        if not t1 and not t2:
            raise LookupError("ARC policy is empty: nothing to evict")
        size = self._incoming_size if incoming is not None and incoming == self._incoming else 0
        if t1 and self._t1_size + size > self.capacity:
            return next(iter(t1))  # Case IV-A: T1 alone fills the cache
        # REPLACE(x, p)
        in_b2 = incoming is not None and incoming in self._b2
        if t1 and (self._t1_size > self.p or (in_b2 and self._t1_size >= self.p)):
            return next(iter(t1))
        return next(iter(t2)) if t2 else next(iter(t1))

    def on_evict(self, key: Key) -> None:
        if key in self._t1:
            size = self._t1.pop(key)
            self._t1_size -= size
            self._b1[key] = size
            self._b1_size += size
        else:
            size = self._t2.pop(key)
            self._t2_size -= size
            self._b2[key] = size
            self._b2_size += size

    def on_remove(self, key: Key) -> None:
        if key in self._t1:
            self._t1_size -= self._t1.pop(key)
        else:
            self._t2_size -= self._t2.pop(key)

    def on_insert(self, key: Key, size: int) -> None:
        if key in self._t1 or key in self._t2:  # re-insert of a resident key: refresh
            self.on_remove(key)
        if key in self._b1:
            self._b1_size -= self._b1.pop(key)
            self._t2[key] = size
            self._t2_size += size
        elif key in self._b2:
            self._b2_size -= self._b2.pop(key)
            self._t2[key] = size
            self._t2_size += size
        else:
            self._t1[key] = size
            self._t1_size += size
        self._incoming = None
        self._incoming_size = 0
        c = self.capacity
        b1, b2 = self._b1, self._b2
        while b1 and self._t1_size + self._b1_size > c:  # Case IV-A ghost trim
            self._b1_size -= b1.popitem(last=False)[1]
        while b2 and (self._t1_size + self._t2_size + self._b1_size + self._b2_size > 2 * c):
            self._b2_size -= b2.popitem(last=False)[1]  # Case IV-B ghost trim

    def on_hit(self, key: Key) -> None:
        if key in self._t1:  # Case I: T1 -> MRU of T2
            size = self._t1.pop(key)
            self._t1_size -= size
            self._t2[key] = size
            self._t2_size += size
        else:
            self._t2.move_to_end(key)

    # --- trace replay -------------------------------------------------------------
    def replay_count(self, keys: Sequence[Key]) -> npt.NDArray[np.bool_]:
        """Count-mode replay (see :meth:`Policy.replay_count`), inlined on T1, T2, B1, B2.

        With every size 1 the hooks above reduce to Figure 4, and this loop is
        that reduction written out on the same four OrderedDicts, with the list
        lengths in local variables: Case I (hit) moves x to T2's MRU end; a miss
        adapts ``p`` exactly as :meth:`on_miss` (same float expressions), evicts
        at most one key as :meth:`victim` + :meth:`on_evict` (into B1 or B2), and
        inserts and trims ghosts as :meth:`on_insert`. The hit sequence, ``p``
        and the four lists therefore equal the generic, hook-calling replay's
        (``tests/sim/test_sim_replay.py`` checks it on random traces, in chunks and
        from a warm state). A subclass that overrides a hook, or a state holding
        sizes other than 1, gets the generic replay.

        Complexity: O(len(keys)) amortised, ~0.7 µs per request. Not thread-safe.
        """
        t1, t2, b1, b2 = self._t1, self._t2, self._b1, self._b2
        c = self.capacity
        if (not self._hooks_are(ARCPolicy) or not isinstance(c, int) or c < 1
                or len(t1) + len(t2) > c
                or any(size != 1 for table in (t1, t2, b1, b2) for size in table.values())):
            return super().replay_count(keys)
        n1, n2, m1, m2 = len(t1), len(t2), len(b1), len(b2)
        p = self.p
        fc = float(c)
        c2 = 2 * c
        hits = bytearray(len(keys))
        move_to_end = t2.move_to_end
        try:
            for i, x in enumerate(keys):
                if x in t1:  # Case I, hit in T1: to the MRU end of T2
                    del t1[x]
                    t2[x] = 1
                    n1 -= 1
                    n2 += 1
                    hits[i] = 1
                    continue
                if x in t2:  # Case I, hit in T2
                    move_to_end(x)
                    hits[i] = 1
                    continue
                # on_miss: adapt p on a ghost hit
                if x in b1:  # Case II
                    p = min(fc, p + max(m2 / m1, 1.0))
                    ghost = 1
                elif x in b2:  # Case III
                    p = max(0.0, p - max(m1 / m2, 1.0))
                    ghost = 2
                else:  # Case IV
                    ghost = 0
                # victim + on_evict: at most one, since every size is 1
                if n1 + n2 >= c:
                    if n1 and (n1 >= c or n1 > p or (ghost == 2 and n1 >= p) or not n2):
                        b1[t1.popitem(last=False)[0]] = 1
                        n1 -= 1
                        m1 += 1
                    else:
                        b2[t2.popitem(last=False)[0]] = 1
                        n2 -= 1
                        m2 += 1
                # on_insert, then the ghost trims of Case IV
                if ghost == 1:
                    del b1[x]
                    m1 -= 1
                    t2[x] = 1
                    n2 += 1
                elif ghost == 2:
                    del b2[x]
                    m2 -= 1
                    t2[x] = 1
                    n2 += 1
                else:
                    t1[x] = 1
                    n1 += 1
                while m1 and n1 + m1 > c:
                    b1.popitem(last=False)
                    m1 -= 1
                while m2 and n1 + n2 + m1 + m2 > c2:
                    b2.popitem(last=False)
                    m2 -= 1
        finally:  # also after an exception (e.g. an unhashable key): the state stays coherent
            self.p = p
            self._t1_size, self._t2_size, self._b1_size, self._b2_size = (
                len(t1), len(t2), len(b1), len(b2))
            self._incoming = None
            self._incoming_size = 0
        return np.frombuffer(hits, dtype=np.bool_)

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:
        c = self.capacity
        for name, lst, total in (("T1", self._t1, self._t1_size), ("T2", self._t2, self._t2_size),
                                 ("B1", self._b1, self._b1_size), ("B2", self._b2, self._b2_size)):
            assert sum(lst.values()) == total, f"{name} size bookkeeping is off"
        keys = [set(self._t1), set(self._t2), set(self._b1), set(self._b2)]
        assert sum(len(k) for k in keys) == len(set().union(*keys)), "a key is in two ARC lists"
        assert 0.0 <= self.p <= c, f"p={self.p} outside [0, {c}]"
        assert self._t1_size + self._b1_size <= c or not self._b1, "|T1|+|B1| > c"
        directory = self._t1_size + self._t2_size + self._b1_size + self._b2_size
        assert directory <= 2 * c or not self._b2, "|T1|+|T2|+|B1|+|B2| > 2c"

    def extra_stats(self) -> dict[str, float]:
        return {"p": self.p, "t1_size": self._t1_size, "t2_size": self._t2_size,
                "b1_size": self._b1_size, "b2_size": self._b2_size}
