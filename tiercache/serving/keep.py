"""Which shards of a loop larger than memory stay in the page cache: the keep set.

A decoder reads every shard once per token. Shards served by a zero-copy tier
live in the OS page cache; when they do not all fit there (a memory cgroup
counts the page cache), the kernel evicts the least recently used pages -- in
a loop, exactly the ones needed next -- so every pass reads every shard again,
plus the read-ahead evicted before use, and each read waits for reclaim. The
answer for a cyclic scan (Belady's) is to keep a fixed part and stream the
rest: :class:`KeepSet` chooses the part, and the prefetcher drops every other
shard's pages right after the loop is done with it (:meth:`Store.release`), so
the kept pages stay and the reads find free memory. Measured on the 2 GB
synthetic model at RAM 25 % (docs/performance.md).

Sizing, once per pass of the loop:

- The first ``settle_passes`` (3) passes only set the baseline: a cold start
  filling memory may lose shards once, which says nothing of the loop.
- Until two passes in a row find the page cache lost a good part of what it
  held -- at least ``thrash_fraction`` (1/4) of the candidates' bytes read
  before and evicted (:meth:`Store.page_evictions`) -- everything is kept and
  nothing is released: where memory suffices, or nearly (a few shards lost to a
  passing peak, a burst while a cold start fills memory), nothing changes. A
  loop that does not fit loses nearly everything every pass (the least recently
  used page is always the next one needed), so the rule separates the two.
- Then: the room the memory cgroups leave to the page cache
  (:func:`~tiercache.spare_memory.page_cache_room_bytes`), less the prefetch
  window, 8 MiB and a quarter of the rest (the cgroup's own pages, read-ahead in
  flight: a fixed keep set of 120 MiB lost shards where this estimate said 160
  would fit), at most 3/4 of the candidates (3/4 without a cgroup limit).
- Every later pass that loses ``shrink_fraction`` (1/16) of the candidates or
  more: ``shrink`` (4/5) of the target. With ``lost_fraction`` set (the
  prefetcher sets 1/4 when it streams the released shards), a pass that loses
  that fraction of the kept bytes shrinks it too, to at most what the pass kept
  (the kept bytes less those lost): for a small set the page cache cannot hold
  either -- room estimated from a cgroup's limit, taken back by the loop's own
  allocations (TensorFlow's step under a cap) -- whose shards, lost every pass,
  would be read back through page faults inside the compute. (Without streaming,
  on the C kernel's quantized model, the rule read 1.4x the bytes: off there.)
- After ``grow_after / 2`` (2) passes without, the room is estimated again: if
  the whole set fits now (a peak of memory use passed), the set stands down
  (everything kept, nothing released) -- once: if the loop starts losing shards
  again, the set is not stood down a second time.
  Otherwise after ``grow_after`` (4) passes without, the target grows by 1/16
  of the candidates' bytes, never above the room estimate.

The shards kept are every shard read more than once a pass (a tied embedding,
whose first read is a row lookup: released, it would be read whole again for a
few rows -- on SmolLM2's float32 layout, 113 MB a token), then the others in the
order the loop reads them, while they fit.

Complexity: :meth:`KeepSet.new_pass` is O(1) until evictions are seen, then
O(candidates log candidates) per pass; :meth:`KeepSet.keeps` O(1).
Thread-safety: not thread-safe; the prefetcher calls it from the loop's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "KeepSet"]

log = logging.getLogger("tiercache")

MIB = 1 << 20


@dataclass(frozen=True)
class Candidate:
    """A shard the page cache could keep: served by a zero-copy tier."""

    key: str
    nbytes: int
    uses: int = 1  # reads per pass
    first: int = 0  # its first position in the schedule


class KeepSet:
    """The keep set's target size and members (see the module docstring).

    Parameters
    ----------
    shrink:
        Factor applied to the target after a pass with evictions.
    grow_after:
        Passes without evictions before the target grows.
    grow_fraction:
        Growth step, a fraction of the candidates' bytes.
    margin_bytes, margin_fraction:
        Left free below the room estimate (activations, the kernel's own pages).
    thrash_fraction:
        Evictions in one pass, as a fraction of the candidates' bytes, that start
        releasing.
    shrink_fraction:
        Evictions in one pass, as such a fraction, that shrink an active set.
    lost_fraction:
        Evictions in one pass, as a fraction of the kept bytes, that shrink it too,
        to at most what the pass kept; ``None`` (the default): no such rule.
    settle_passes:
        The first passes, whose evictions are not counted (a cold start fills
        memory; its losses are not the loop's).
    """

    def __init__(self, *, shrink: float = 0.8, grow_after: int = 4,
                 grow_fraction: float = 1 / 16, margin_bytes: int = 8 * MIB,
                 margin_fraction: float = 0.25, thrash_fraction: float = 0.25,
                 shrink_fraction: float = 1 / 16, lost_fraction: float | None = None,
                 settle_passes: int = 3) -> None:
        if not 0 < shrink < 1:
            raise ValueError(f"shrink must be between 0 and 1, got {shrink}")
        if grow_after < 1:
            raise ValueError(f"grow_after must be >= 1, got {grow_after}")
        self.shrink = shrink
        self.grow_after = grow_after
        self.grow_fraction = grow_fraction
        self.margin_bytes = margin_bytes
        self.margin_fraction = margin_fraction
        self.thrash_fraction = thrash_fraction
        self.shrink_fraction = shrink_fraction
        self.lost_fraction = lost_fraction
        self.settle_passes = settle_passes
        #: Bytes of candidates to keep; None: everything (no evictions seen yet).
        self.target_bytes: int | None = None
        #: The keys kept; None: every key.
        self.members: frozenset[str] | None = None
        self.kept_bytes = 0
        self.candidate_bytes = 0
        self._room: int | None = None
        self._candidates: frozenset[str] = frozenset()
        self._evictions: int | None = None
        self._clean_passes = 0
        self._losing_passes = 0  # passes in a row that lost a quarter or more
        self._stood_down = False  # went back to keeping everything once
        self._jump_ok = True  # until the loop lost shards again after that
        #: Passes seen, and how often the target went down and up.
        self.passes = 0
        self.shrinks = 0
        self.grows = 0

    @property
    def losing(self) -> bool:
        """Whether the last pass lost a quarter of the loop while nothing is released
        yet (one more such pass starts the set): the next pass must be watched. O(1)."""
        return self._losing_passes > 0

    @property
    def active(self) -> bool:
        """Whether shards outside the keep set are being released. O(1)."""
        return self.members is not None

    def keeps(self, key: str) -> bool:
        """Whether ``key``'s pages stay after use. O(1)."""
        return self.members is None or key in self.members

    def releases(self, key: str) -> bool:
        """Whether ``key``'s pages go after use: a candidate (a zero-copy tier's shard
        at the last pass) outside the set. O(1)."""
        return self.members is not None and key in self._candidates \
            and key not in self.members

    def new_pass(self, evictions: int, candidates: Callable[[], Sequence[Candidate]],
                 room: Callable[[], int | None], window: int) -> None:
        """A pass of the loop begins. ``evictions``: the cumulative bytes the stores
        found evicted (:meth:`Store.page_evictions`); ``candidates``: the shards a
        zero-copy tier serves now; ``room``: the page cache's room estimate (None:
        unknown); ``window``: how many shards the prefetcher reads ahead."""
        self.passes += 1
        # the first passes set the baseline: a cold start's burst is not the loop's
        fresh = 0 if self.passes <= self.settle_passes else evictions - (self._evictions or 0)
        self._evictions = evictions
        if fresh <= 0 and self.target_bytes is None:
            self._losing_passes = 0
            return  # the page cache holds the loop: keep everything
        items = list(candidates())
        total = sum(c.nbytes for c in items)
        self.candidate_bytes = total
        if self.target_bytes is None:
            losing = fresh >= self.thrash_fraction * total
            self._losing_passes = self._losing_passes + 1 if losing else 0
            if self._losing_passes < 2:
                return  # a few shards lost, or once (a passing peak): keep everything
            if self._stood_down:  # the whole set fell short again: no more going back
                self._jump_ok = False
            self._room = room()
            target = total * 3 // 4  # whatever the estimate, the whole set fell short
            if self._room is not None:
                target = min(target, self._fitting(self._room, window, total, len(items)))
            self._clean_passes = 0
            self.shrinks += 1
            self._set_target(max(0, target), total)
        elif fresh >= max(1.0, self.shrink_fraction * total) or (
                self.lost_fraction is not None and fresh >= max(
                    1.0, self.lost_fraction * self.kept_bytes)):
            self._clean_passes = 0
            self.shrinks += 1
            target = int(self.target_bytes * self.shrink)
            if self.lost_fraction is not None:
                target = min(target, max(0, self.kept_bytes - fresh))
            self._set_target(target, total)
        else:
            self._clean_passes += 1
            if self._grow(room, window, total, len(items)):
                return
        self._choose(items)

    def _fitting(self, room: int, window: int, total: int, count: int) -> int:
        """What fits in ``room``: less the window's shards (of the average size), a
        fixed margin and a fraction of the rest."""
        spare = room - window * (total // max(1, count))
        return int(spare - self.margin_bytes - self.margin_fraction * spare)

    def _grow(self, room: Callable[[], int | None], window: int, total: int,
              count: int) -> bool:
        """A quiet pass. After ``grow_after // 2`` of them, if the room estimate (read
        again: a peak of memory use may have passed) says the whole set fits, stand
        down -- keep everything, release nothing, watch one pass in eight again --
        once: if the loop loses shards again after that, the set stays sized by the
        steps. Else, after ``grow_after``, one step of ``grow_fraction`` up to that
        estimate. Returns whether it stood down."""
        target = self.target_bytes
        assert target is not None
        now = room() if self._jump_ok and self._clean_passes >= max(1, self.grow_after // 2) \
            else None
        if now is not None and self._fitting(now, window, total, count) >= total:
            log.info("page cache: the room now holds the %.0f MiB of zero-copy shards: "
                     "keeping them all again", total / MIB)
            self._room = now
            self._clean_passes = 0
            self._stood_down = True
            self.grows += 1
            self.target_bytes = None
            self.members = None
            self.kept_bytes = 0
            return True
        if self._clean_passes < self.grow_after:
            return False
        self._clean_passes = 0
        ceiling = total if self._room is None else min(total, self._room)
        grown = min(ceiling, target + max(1, int(total * self.grow_fraction)))
        if grown > target:
            self.grows += 1
            self._set_target(grown, total)
        return False

    def _set_target(self, target: int, total: int) -> None:
        if target != self.target_bytes:
            log.info("page cache: keeping %.0f of %.0f MiB of zero-copy shards between passes, "
                     "releasing the rest after use", target / MIB, total / MIB)
        self.target_bytes = target

    def _choose(self, items: Sequence[Candidate]) -> None:
        """Members: every shard read more than once a pass (a tied embedding: a row
        lookup first, the output head last -- released, it would be read whole again
        for a few rows), then the others in reading order while they fit."""
        budget = self.target_bytes if self.target_bytes is not None else 0
        self._candidates = frozenset(c.key for c in items)
        kept: list[str] = []
        used = 0
        for c in sorted(items, key=lambda c: (-c.uses, c.first)):
            if c.uses > 1 or used + c.nbytes <= budget:
                kept.append(c.key)
                used += c.nbytes
        self.members = frozenset(kept)
        self.kept_bytes = used

    def describe(self) -> dict[str, object]:
        """The state, for ``stats()["loop"]["page_cache"]``."""
        return {"active": self.active, "target_bytes": self.target_bytes,
                "kept_bytes": self.kept_bytes if self.active else None,
                "candidate_bytes": self.candidate_bytes, "passes": self.passes,
                "shrinks": self.shrinks, "grows": self.grows}
