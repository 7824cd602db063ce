"""The loop's declared order: schedule positions and the cursor.

An inference loop reads its shards in a known order, pass after pass. It
declares that order once (:meth:`Scheduling.declare_schedule`); every later
``get`` of a listed key moves the cursor to its position, wakes the prefetcher
and counts stall time. Policies that know schedules (``uses_schedule``, e.g.
``opt``) get the schedule and the cursor through their hooks, and the engine
uses the next-use distance to skip promotions that cannot pay.

Thread-safety: ``declare_schedule`` takes the cache lock; the cursor is moved by
the loop's thread.
"""

from __future__ import annotations

import logging

from ..core.hierarchy import Hierarchy

log = logging.getLogger("tiercache")

class Scheduling(Hierarchy):
    """The declared schedule and the loop's cursor."""

    def declare_schedule(self, keys: list[str] | tuple[str, ...]) -> None:
        """Declare the order in which a loop reads its shards, repeated pass after pass.

        Every later ``get`` of a listed key moves the cursor to its position (for
        a key listed several times, e.g. tied embeddings read first and last, its
        next occurrence after the cursor); a running prefetcher fetches the
        shards after it, and policies that know schedules (``set_schedule`` /
        ``on_cursor`` hooks, e.g. ``opt``) use it to evict the shard needed
        furthest in the future. O(len(keys)).
        """
        keys = tuple(keys)
        if not keys:
            raise ValueError("a schedule needs at least one key")
        positions: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            positions.setdefault(k, []).append(i)
        index: dict[str, int | tuple[int, ...]] = {
            k: p[0] if len(p) == 1 else tuple(p) for k, p in positions.items()}
        with self._lock:
            self.schedule = keys
            self._schedule_index = index
            self._cursor = -1
            self._schedule_policies = self._schedule_aware()
            for policy in self._schedule_policies:
                policy.set_schedule(list(keys))

    @property
    def cursor(self) -> int:
        """The schedule position of the loop's last get (-1 before the first)."""
        return self._cursor

    def _move_cursor(self, where: int | tuple[int, ...]) -> None:
        """A get by the loop of a key in the declared schedule: move the cursor to its
        position (for a key read several times per pass, its next occurrence after
        the cursor), tell schedule-aware policies and wake the prefetcher. O(tiers)."""
        position = self._advance_cursor(where)
        prefetcher = self._prefetcher
        if prefetcher is not None:
            prefetcher.notify(position)

    def _advance_cursor(self, where: int | tuple[int, ...]) -> int:
        """:meth:`_move_cursor` without telling the prefetcher (:meth:`get_many` tells it
        once, where its run of keys ends); returns the new position. O(tiers)."""
        if isinstance(where, int):
            position = where
        else:  # a key read several times per pass: its next occurrence after the cursor
            position = next((p for p in where if p > self._cursor), where[0])
        self._cursor = position
        for policy in self._schedule_policies:
            policy.on_cursor(position)
        self.loop_stats.gets += 1
        return position
