"""Maintenance of a cache's tiers: duplicates on open, flush, verify and repair.

Thread-safety: each method takes the cache lock (``verify`` per shard, so gets
wait at most one shard's read).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..codec import empty_aligned
from ..errors import (
    CorruptShardError,
    StoreError,
    TierCacheError,
)
from ..stores.base import ShardInfo
from .build import build_tier
from .hierarchy import Hierarchy

log = logging.getLogger("tiercache")

class Maintenance(Hierarchy):
    """Duplicates on open, flush, scrub and repair, invariants for tests."""

    def _resolve_duplicates(self) -> int:
        """Resolve keys found in several persistent tiers on open, by write sequence.

        A failure can leave copies of one key in two tiers: a process killed between
        writing a demoted shard below and deleting it above (same value), or a put
        reported failed although it landed, followed by a newer put elsewhere
        (different values). The copy with the highest write sequence in its header
        is the newest value; copies with another payload are stale and dropped,
        whatever tier they are in. Of the copies of the newest value, exclusive mode
        keeps the fastest; inclusive keeps them all. Shards written before headers
        carried a sequence (0) fall back to "the fastest wins". A shared tier's copy
        is only forgotten from this process's index, never deleted (other processes
        own it too); a read-only cache deletes nothing. O(keys) plus one header
        read per duplicated copy. Returns the number of copies dropped.
        """
        holders: dict[str, list[int]] = {}
        for index, tier in enumerate(self._tiers):
            if tier.persistent:
                for key in tier.keys():
                    holders.setdefault(key, []).append(index)
        dropped = 0
        for key, where in holders.items():
            if len(where) < 2:
                continue
            infos: list[ShardInfo | None] = []
            for index in where:
                try:
                    infos.append(self._tiers[index].info(key))
                except (StoreError, OSError):
                    infos.append(None)
            sequences = [info.sequence if info is not None else -1 for info in infos]
            newest = max(range(len(where)), key=lambda j: (sequences[j], -j))
            ref = infos[newest]
            same = [ref is not None and info is not None
                    and info.payload_checksum is not None
                    and info.payload_checksum == ref.payload_checksum
                    and info.dtype == ref.dtype and info.shape == ref.shape
                    for info in infos]
            same[newest] = True
            keep_first = next(j for j, s in enumerate(same) if s)
            for j, index in enumerate(where):
                if same[j] and (self.inclusive or j == keep_first):
                    continue
                tier = self._tiers[index]
                if self.read_only or tier.shared:
                    tier.forget(key)
                else:
                    tier.remove(key)
                dropped += 1
                log.info("tier %s: dropped the %s copy of %r found on open", tier.name,
                         "redundant" if same[j] else "stale", key)
        return dropped

    def flush(self) -> int:
        """Write shards that live only in volatile tiers down to the first persistent
        tier below that can hold them, so they survive a restart. In exclusive mode
        they move (leave the volatile tier); in inclusive mode they are copied.
        Returns how many shards were written."""
        written = 0
        with self._lock:
            for index, tier in enumerate(self._tiers):
                if tier.persistent:
                    continue
                for key in tier.keys():
                    if any(key in t for t in self._tiers if t.persistent):
                        continue
                    array = tier.read(key)
                    if array is None:
                        continue
                    for below in range(index + 1, len(self._tiers)):
                        target = self._tiers[below]
                        if target.persistent and target.admit(
                                key, array, self._demoter(below)):
                            written += 1
                            if not self.inclusive:
                                tier.remove(key)
                            break
        return written

    def verify(self, *, repair: bool = False, orphan_min_age_s: float = 60.0,
               max_listed: int = 100, expected_keys: Iterable[str] | None = None
               ) -> dict[str, Any]:
        """Scrub every tier: read each shard its medium holds and check header and payload.

        Disk and remote tiers are read in full (the payload checksum is checked even
        on a ``verify = "never"`` tier); memory tiers hold plain arrays (nothing to
        check) and count as ok. Returns::

            {"ok": bool, "repair": bool,
             "missing": int, "missing_keys": [...],     # of expected_keys
             "tiers": {name: {
                "backend", "checked", "ok", "corrupt", "unreadable", "repaired",
                "orphans", "degraded", "degraded_reason", "over_capacity_bytes",
                "corrupt_keys": [...], "unreadable_keys": [...]}}}

        ``ok`` is false when any tier has a corrupt or unreadable entry, a medium
        too damaged to open, or when a key of ``expected_keys`` (e.g. a model
        manifest's tensors) is held by no tier and no origin. Damage found when the
        tiers were opened counts too (an entry dropped at open is reported as corrupt
        and repaired). With ``repair`` every corrupt entry is deleted (gets fall through
        to the next copy or the origin), a damaged medium is emptied and reopened, and
        leftover files of interrupted writes older than ``orphan_min_age_s`` are
        removed (``orphans`` counts them either way). Unreadable entries (I/O errors)
        are kept: the error may pass. Key lists hold at most ``max_listed`` keys each.

        O(bytes stored). Each shard is read under the cache lock into a reused
        buffer, so concurrent gets wait at most one shard's read; keys put while
        the scrub runs may or may not be checked.
        """
        self._check_open()
        if repair and self.read_only:
            raise TierCacheError("verify(repair=True) needs a cache opened for writing")
        report: dict[str, Any] = {"ok": True, "repair": repair, "missing": 0,
                                  "missing_keys": [], "tiers": {}}
        for index, tier in enumerate(self._tiers):
            entry: dict[str, Any] = {
                "backend": tier.backend, "checked": 0, "ok": 0, "corrupt": 0,
                "unreadable": 0, "repaired": 0, "orphans": 0,
                "corrupt_keys": [], "unreadable_keys": []}
            report["tiers"][tier.name] = entry
            if tier.damaged:
                entry["checked"] = entry["corrupt"] = 1
                entry["corrupt_keys"].append(f"<{tier.degraded_reason}>")
                if repair and self._repair_medium(index):
                    entry["repaired"] = 1
                tier = self._tiers[index]
            # entries found damaged at open and dropped there (left ones are scanned below)
            for key in tier.damaged_at_open:
                if key in tier.unindexed_corrupt:
                    continue
                entry["checked"] += 1
                entry["corrupt"] += 1
                entry["repaired"] += 1
                if len(entry["corrupt_keys"]) < max_listed:
                    entry["corrupt_keys"].append(key)
            try:
                with self._lock:
                    keys = list(tier.medium_keys())
            except (StoreError, OSError) as exc:
                entry["unreadable"] += 1
                entry["unreadable_keys"].append(f"<listing keys failed: {exc}>")
                keys = []
            for key in keys:
                entry["checked"] += 1
                status = self._scrub_one(index, key, repair)
                entry[status] += 1
                listed = entry.get(f"{status}_keys")
                if listed is not None and len(listed) < max_listed:
                    listed.append(key)
                if status == "corrupt" and repair:
                    entry["repaired"] += 1
            try:
                entry["orphans"] = tier.sweep_orphans(remove=repair,
                                                            min_age_s=orphan_min_age_s)
            except (StoreError, OSError) as exc:
                log.warning("tier %s: cannot look for orphan files: %s", tier.name, exc)
            entry["degraded"] = tier.degraded
            entry["degraded_reason"] = tier.degraded_reason
            entry["over_capacity_bytes"] = tier.over_capacity_bytes
            if entry["corrupt"] or entry["unreadable"]:
                report["ok"] = False
        if expected_keys is not None:
            missing = self._missing(expected_keys)
            report["missing"] = len(missing)
            report["missing_keys"] = missing[:max_listed]
            if missing:
                report["ok"] = False
        return report

    def _missing(self, keys: Iterable[str]) -> list[str]:
        """The keys held by no tier and not provided by the origin. O(keys x tiers)."""
        origin = self.origin
        missing = []
        with self._lock:
            for key in keys:
                if self._locate(key) is not None:
                    continue
                if any(t.shared and t.medium_has(key) for t in self._tiers):
                    continue
                if origin is not None and key in origin:
                    continue
                missing.append(key)
        return missing

    def _repair_medium(self, index: int) -> bool:
        """Empty the folder of tier ``index``, whose medium could not be opened, and open a
        fresh store there. Returns whether the tier is usable again. Lock taken."""
        configs = self._tier_configs
        old = self._tiers[index]
        if configs is None or configs[index].path is None:
            return False
        cfg = configs[index]
        folder = cfg.path
        assert folder is not None
        with self._lock:
            try:
                old.close()
                if folder.is_dir():
                    for child in folder.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            except OSError as exc:
                log.warning("tier %s: cannot empty %s (%s)", old.name, folder, exc)
                return False
            fresh = build_tier(cfg)
            if fresh.damaged:
                return False
            if self._schedule_index and fresh.policy.uses_schedule:
                fresh.policy.set_schedule(list(self.schedule))
            self._tiers[index] = fresh
            if self._schedule_index:  # the cursor now moves the fresh tier's policy
                self._schedule_policies = self._schedule_aware()
            log.warning("tier %s: damaged medium emptied and reopened at %s", fresh.name, folder)
        return True

    def _scrub_one(self, index: int, key: str, repair: bool) -> str:
        """Check one stored entry of tier ``index``: ``"ok"``, ``"corrupt"`` (deleted with
        ``repair``) or ``"unreadable"``. Takes the lock."""
        tier = self._tiers[index]
        with self._lock:
            try:
                if tier.is_memory:
                    return "ok"
                info = tier.info(key)
                if info is None:
                    return "ok"  # deleted since the listing
                nbytes = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
                scratch = self._scratch.get(-1 - index)
                if scratch is None or scratch.nbytes < nbytes:
                    scratch = self._scratch[-1 - index] = empty_aligned(max(nbytes, 1 << 20))
                tier.check(key, scratch[:nbytes].view(info.dtype).reshape(info.shape))
                return "ok"
            except CorruptShardError as exc:
                tier.count("corrupt")
                self._report_corrupt(tier, key, exc, "removed corrupt copy of %r (%s)" if repair
                                     else "found corrupt copy of %r (%s)")
                if repair:
                    if key in tier:
                        tier.remove(key)
                    else:
                        tier.remove_unindexed(key)
                return "corrupt"
            except (StoreError, OSError) as exc:
                tier.count("errors")
                log.warning("tier %s: cannot read %r while verifying: %s", tier.name, key, exc)
                return "unreadable"

    def check_invariants(self) -> None:
        """Raise AssertionError if any tier breaks capacity or index invariants (tests)."""
        with self._lock:
            for tier in self._tiers:
                tier.check_invariants()
            if not self.inclusive:  # exclusive: one persistent copy, one volatile at most
                for tier in self._tiers:
                    for key in tier.keys():
                        kept = [t.persistent for t in self._tiers if key in t]
                        assert kept.count(True) <= 1 and kept.count(False) <= 1, (
                            f"{key!r} in several tiers: {self.where(key)}")
