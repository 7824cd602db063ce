"""An independent reference ARC: a literal transliteration of Figure 4 of

    N. Megiddo and D. S. Modha, "ARC: A Self-Tuning, Low Overhead Replacement
    Cache", USENIX FAST 2003, pp. 115-130.

This module deliberately shares **no code** with ``tiercache/policies/arc.py``: it keeps
the four LRU lists as plain Python lists (index 0 is the LRU end, the last
element the MRU end), ``p`` as a real number clamped to ``[0, c]``, and follows
the figure's case analysis line by line, including the order in which the
figure trims a ghost *before* calling REPLACE. It models a cache of ``c`` pages
(every request has size 1) and is only meant for tests: every operation is
O(c).

The figure, for reference::

    Case I:   x in T1 or T2 (hit). Move x to the MRU position in T2.
    Case II:  x in B1 (miss). p = min(p + d1, c), d1 = 1 if |B1| >= |B2| else |B2|/|B1|.
              REPLACE(x, p). Move x from B1 to the MRU position in T2.
    Case III: x in B2 (miss). p = max(p - d2, 0), d2 = 1 if |B2| >= |B1| else |B1|/|B2|.
              REPLACE(x, p). Move x from B2 to the MRU position in T2.
    Case IV:  x in no list (miss).
      A: |T1| + |B1| = c:
           if |T1| < c: delete the LRU page of B1; REPLACE(x, p).
           else:        delete the LRU page of T1 (B1 is empty).
      B: |T1| + |B1| < c:
           if |T1| + |T2| + |B1| + |B2| >= c:
               if |T1| + |T2| + |B1| + |B2| = 2c: delete the LRU page of B2.
               REPLACE(x, p).
      Put x at the MRU position in T1.

    REPLACE(x, p):
      if T1 is not empty and (|T1| > p or (x in B2 and |T1| = p)):
          move the LRU page of T1 to the MRU position of B1.
      else:
          move the LRU page of T2 to the MRU position of B2.
"""

from __future__ import annotations

from collections.abc import Hashable


class ReferenceARC:
    """Figure 4 of Megiddo & Modha (FAST 2003), page-count cache of ``c`` pages."""

    def __init__(self, c: int) -> None:
        if c < 1:
            raise ValueError("c must be >= 1")
        self.c = c
        self.p: float = 0.0
        self.T1: list[Hashable] = []
        self.T2: list[Hashable] = []
        self.B1: list[Hashable] = []
        self.B2: list[Hashable] = []
        #: The page evicted from the cache by the last request, or ``None``.
        self.last_evicted: Hashable | None = None

    def resident(self) -> set[Hashable]:
        """The pages in the cache (T1 and T2)."""
        return set(self.T1) | set(self.T2)

    def _replace(self, x: Hashable) -> None:
        if self.T1 and (len(self.T1) > self.p or (x in self.B2 and len(self.T1) == self.p)):
            page = self.T1.pop(0)
            self.B1.append(page)
        else:
            page = self.T2.pop(0)
            self.B2.append(page)
        self.last_evicted = page

    def request(self, x: Hashable) -> bool:
        """Serve one request for page ``x``; return ``True`` on a cache hit."""
        c = self.c
        self.last_evicted = None
        # Case I: a hit in T1 or T2.
        if x in self.T1 or x in self.T2:
            if x in self.T1:
                self.T1.remove(x)
            else:
                self.T2.remove(x)
            self.T2.append(x)
            return True
        # Case II: x in B1.
        if x in self.B1:
            delta1 = 1.0 if len(self.B1) >= len(self.B2) else len(self.B2) / len(self.B1)
            self.p = min(self.p + delta1, float(c))
            self._replace(x)
            self.B1.remove(x)
            self.T2.append(x)
            return False
        # Case III: x in B2.
        if x in self.B2:
            delta2 = 1.0 if len(self.B2) >= len(self.B1) else len(self.B1) / len(self.B2)
            self.p = max(self.p - delta2, 0.0)
            self._replace(x)
            self.B2.remove(x)
            self.T2.append(x)
            return False
        # Case IV: x is in no list.
        l1 = len(self.T1) + len(self.B1)
        directory = l1 + len(self.T2) + len(self.B2)
        if l1 == c:  # Case A
            if len(self.T1) < c:
                self.B1.pop(0)
                self._replace(x)
            else:
                self.last_evicted = self.T1.pop(0)
        else:  # Case B: l1 < c
            assert l1 < c, "Figure 4 invariant |T1|+|B1| <= c broken"
            if directory >= c:
                if directory == 2 * c:
                    self.B2.pop(0)
                self._replace(x)
        self.T1.append(x)
        return False
