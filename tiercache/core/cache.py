"""TieredCache: a hierarchy of tiers, fastest first, behind a dict-like API.

The cache combines its parts: :mod:`~tiercache.core.lookup` (the read path),
:mod:`~tiercache.core.hierarchy` (admission, demotion, promotion),
:mod:`~tiercache.core.maintenance` (duplicates, flush, verify),
:mod:`~tiercache.serving.schedule` and :mod:`~tiercache.serving.prefetch`
(model serving). This module holds construction, writes, versions, stats and
closing.

Thread-safety: every public method is safe to call from several threads (a
prefetch thread calls :meth:`get` while the inference loop does). One
re-entrant lock guards the indices, policies and statistics; reads from disk
tiers and from the origin run outside it, and a per-key version number makes
a read that raced with a ``put`` or ``delete`` of the same key start over, so
a stale value is never promoted or returned after the write completed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..codec import check_storable
from ..config import CacheConfig, TierConfig, load_config
from ..errors import (
    StoreError,
    TierCacheError,
)
from ..origins import Origin, open_origin
from ..policies import Policy
from ..serving.prefetcher import Prefetcher
from .build import build_tier
from .lookup import Lookup
from .maintenance import Maintenance
from .recording import TraceRecorder
from .stats import LoopStats, TierStats
from .tier import Tier

#: Size of the per-key version map below which it is never pruned.
_VERSIONS_PRUNE_AT = 65536

log = logging.getLogger("tiercache")

class TieredCache(Lookup, Maintenance):
    """Named numpy arrays served from a hierarchy of storage tiers.

    Build one with :meth:`from_config` (a TOML path or a dict) or
    :func:`tiercache.open`. Use it as a context manager so it is closed (and,
    with ``flush_on_close``, volatile shards are written down) at the end.
    """


    def __init__(self, tiers: list[Tier], *, mode: str = "exclusive",
                 origin: Origin | None = None, flush_on_close: bool = True,
                 record_trace: str | os.PathLike[str] | None = None,
                 read_only: bool = False,
                 tier_configs: tuple[TierConfig, ...] | None = None) -> None:
        if not tiers:
            raise TierCacheError("a TieredCache needs at least one tier")
        if mode not in ("exclusive", "inclusive"):
            raise TierCacheError(f"mode must be 'exclusive' or 'inclusive', got {mode!r}")
        self._tiers = tiers
        self.mode = mode
        self.inclusive = mode == "inclusive"
        self.origin = origin
        self.origin_stats = TierStats()
        self.flush_on_close = flush_on_close
        self._lock = threading.RLock()
        #: Opened by a read-only command: no put/delete, no movement, no recording, no
        #: deletes of duplicates or damaged entries -- nothing on disk changes.
        self.read_only = read_only
        self._tier_configs = tier_configs
        # Per-key write versions, so a read that raced a put/delete starts over. Values come
        # from one counter; a key absent from the map has version ``_version_floor``, which
        # moves on when the map is pruned (see :meth:`_bump`), so pruning never makes an
        # old version look current.
        self._versions: dict[str, int] = {}
        self._version_counter = 0
        self._version_floor = 0
        self._scratch: dict[int, np.ndarray] = {}
        self._closed = False
        # model serving: the declared schedule, the loop's cursor, in-flight prefetches
        self.schedule: tuple[str, ...] = ()
        self._schedule_index: dict[str, int | tuple[int, ...]] = {}
        self._schedule_policies: tuple[Policy, ...] = ()  # the tiers' schedule-aware policies
        self._cursor = -1
        self._inflight: dict[str, threading.Event] = {}
        self._prefetcher: Prefetcher | None = None
        # shards the prefetcher read that the top tier did not admit (OPT bypasses a
        # shard whose next use after this one is far): held until the loop reads them
        self._staged: dict[str, tuple[int, int, np.ndarray]] = {}  # key -> index, version, array
        self._staged_bytes = 0
        self._staging_max_bytes = 0
        self.loop_stats = LoopStats()
        #: Writes ``key,size`` for every get that returns a shard (``record_trace``).
        self._recorder = (TraceRecorder(record_trace)
                          if record_trace is not None and not read_only else None)
        if read_only:
            self.flush_on_close = False
        #: (tier, key) pairs whose corrupt copy was already logged (log once, not per read).
        self._reported_corrupt: set[tuple[str, str]] = set()
        #: Copies dropped on open by :meth:`_resolve_duplicates` (stale or redundant).
        self.duplicates_dropped = self._resolve_duplicates()

    @classmethod
    def from_config(cls, config: str | os.PathLike[str] | Mapping[str, Any] | CacheConfig,
                    *, drop_corrupt: bool = True, read_only: bool = False) -> TieredCache:
        """Validate ``config`` fully, open the origin, then create the tiers (and their
        folders), so a bad origin leaves nothing on disk. ``drop_corrupt=False``
        keeps entries with a damaged header for :meth:`verify` to report.

        ``read_only=True`` (what ``tiercache stats`` and ``verify`` use) changes
        nothing on disk: no folder is created, nothing is deleted (damaged entries,
        duplicates, shards beyond a lowered capacity), nothing is recorded or
        flushed, and ``put``/``delete`` raise :class:`TierCacheError`.
        """
        cfg = config if isinstance(config, CacheConfig) else load_config(config)
        tiers: list[Tier] = []
        origin = (open_origin(cfg.origin.kind, cfg.origin.path, config_path=cfg.config_path)
                  if cfg.origin else None)
        try:
            for tier_cfg in cfg.tiers:
                tiers.append(build_tier(tier_cfg, drop_corrupt=drop_corrupt and not read_only,
                                        read_only=read_only))
            return cls(tiers, mode=cfg.mode, origin=origin, flush_on_close=cfg.flush_on_close,
                       record_trace=cfg.record_trace, read_only=read_only,
                       tier_configs=cfg.tiers)
        except BaseException:
            for t in tiers:
                t.close()
            if origin is not None:
                origin.close()
            raise

    def put(self, key: str, array: np.ndarray, *, tier: str | None = None) -> None:
        """Store ``array`` under ``key``, replacing any older value in every tier.

        The shard goes to ``tier`` (default: the fastest) or, if it is larger than
        that tier, the next one that can hold it; evictions cascade down. Raises
        :class:`~tiercache.errors.TierCacheError` if no tier can hold it (naming
        each tier's reason).

        If a persistent tier refused to delete the older value (a full disk), the
        new value is also written to a persistent tier, whose newer write sequence
        makes it win over the stale copy after a restart; if no persistent tier
        takes it, :class:`~tiercache.errors.StoreError` is raised: the put is not
        durable (this process serves the new value; a restart may bring back the
        value before it -- never an older one: its durable copy stays on its medium
        until the stale copy is deleted).
        """
        if not isinstance(key, str):
            raise TypeError(f"keys are strings, got {type(key).__name__}")
        if isinstance(array, np.ndarray):
            check_storable(array)  # before asarray, which would drop a subclass's state
        array = np.asarray(array)
        check_storable(array)
        self._check_writable()
        with self._lock:
            start = 0 if tier is None else self._tiers.index(self.tier(tier))
            self._bump(key)
            waits = bool(self._stale_tiers(key)) and self._older_copy_waits(key)
            durable = self._write_ahead_of_stale(key, array)
            # no tier took the new value durably while an older copy waits: the current
            # durable copy stays on its medium (held), so a restart never goes back further
            self._unserve(key, keep_durable=durable is None and waits, spare=durable)
            landed = (durable if durable is self._tiers[start]
                      else self._admit_where(start, key, array, adopt=False))
            if durable is not None and landed is not None and landed is not durable \
                    and landed.persistent:  # durable where asked: one persistent copy
                durable.remove(key)
            if landed is None:
                raise TierCacheError(
                    f"shard {key!r} ({array.nbytes} bytes) could not be stored: "
                    + "; ".join(self._refusal(t, array) for t in self._tiers[start:]))
            stale = self._stale_tiers(key)
            if stale and any(key in t for t in self._tiers if t.persistent):
                self._older_copy_waits(key)  # the new value is durable: held copies can go
            elif stale:
                first = next((i for i, t in enumerate(self._tiers) if t.persistent
                              and not t.shared), None)
                if first is None or not self._admit_from(first, key, array, adopt=False):
                    raise StoreError(
                        f"put of {key!r} is not durable: tier(s) {', '.join(stale)} could not "
                        "delete an older value and no persistent tier took the new one; "
                        "this process serves the new value, a restart may bring back the "
                        "value before it")

    def _write_ahead_of_stale(self, key: str, array: np.ndarray) -> Tier | None:
        """When a tier still holds an older copy of ``key`` it could not delete (a full
        disk), write the new value to a persistent tier *before* any current copy is
        removed -- into the stale tier itself when it takes writes, which overwrites
        the stale bytes -- so that no kill in between leaves the stale copy the newest
        on disk. Returns the tier that took it, or None (nothing stale, or no tier
        took it: :meth:`put` then writes it after the removals, as before). Lock held."""
        stale = self._stale_tiers(key)
        if not stale:
            return None
        for index, tier in enumerate(self._tiers):  # the stale tier first: it may take writes
            if tier.name in stale:
                try:
                    if tier.admit(key, array, self._demoter(index), force=True):
                        return tier
                except StoreError as exc:
                    tier.count("errors")
                    log.warning("tier %s failed to take %r: %s", tier.name, key, exc)
        first = next((i for i, t in enumerate(self._tiers) if t.persistent and not t.shared),
                     None)
        return None if first is None else self._admit_where(first, key, array, adopt=False)

    def __setitem__(self, key: str, array: np.ndarray) -> None:
        self.put(key, array)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier (the origin is read-only). Returns whether any held it.

        Raises :class:`~tiercache.errors.StoreError` when a persistent tier could not
        delete its copy (a full disk): the key is no longer served by this process and
        the delete is retried when the tier recovers, but a restart before that would
        bring its last value back (never an older one: while an older copy waits for
        its delete, the last value's durable copy is kept on its medium, unserved, and
        deleted after it), so the delete is not reported done.
        """
        self._check_writable()
        with self._lock:
            self._bump(key)
            waits = self._older_copy_waits(key)
            removed = self._unserve(key, keep_durable=waits)
            stale = self._stale_tiers(key)
            if stale:
                raise StoreError(
                    f"delete of {key!r} is not durable: tier(s) {', '.join(stale)} could not "
                    "delete it (it is retried when the tier recovers; until then a restart "
                    "would bring back its last value)")
            return removed

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    @property
    def versions_tracked(self) -> int:
        """Entries in the per-key write-version map (bounded, see :meth:`_bump`)."""
        return len(self._versions)

    def _indexed_count(self) -> int:
        return sum(len(t) for t in self._tiers)

    def _prune_versions(self) -> None:
        """Forget the versions of keys held by no tier. O(map size). Lock held."""
        self._version_counter += 1
        self._version_floor = self._version_counter
        self._versions = {k: v for k, v in self._versions.items()
                          if self._locate(k) is not None or k in self._inflight}

    def _bump(self, key: str) -> None:
        """Give ``key`` a new version (a put or delete). The map is bounded: when it holds
        more than twice the keys the tiers index (and at least 65,536), entries of keys
        in no tier are pruned and the floor moves past every version handed out, so a
        read that started before the prune starts over. O(1) amortised. Lock held."""
        self._version_counter += 1
        self._versions[key] = self._version_counter
        if len(self._versions) > max(_VERSIONS_PRUNE_AT, 2 * self._indexed_count()):
            self._prune_versions()
        if key in self._staged:
            self._staged_bytes -= self._staged.pop(key)[2].nbytes
        if self._reported_corrupt:  # a new value: a new corrupt copy deserves a new log line
            for tier in self._tiers:
                self._reported_corrupt.discard((tier.name, key))

    def stats(self) -> dict[str, Any]:
        """Per-tier statistics as a plain dict (see docs/configuration.md#stats)."""
        with self._lock:
            tiers = {t.name: t.describe() for t in self._tiers}
            origin = None
            if self.origin is not None:
                o = self.origin_stats.as_dict()
                origin = {"kind": type(self.origin).__name__,
                          **{k: o[k] for k in ("hits", "bytes_read", "get_latency_p50_s",
                                               "get_latency_p99_s")}}
            loop = self.loop_stats.as_dict()
            prefetcher = self._prefetcher
            loop["page_cache"] = (prefetcher.keep.describe() if prefetcher is not None
                                  and prefetcher.drop_behind else None)
            return {"mode": self.mode, "tiers": tiers, "origin": origin, "loop": loop}

    def close(self) -> None:
        """Stop the prefetcher, flush volatile shards (if ``flush_on_close``) and close
        every store. Idempotent."""
        self.stop_prefetcher()  # before taking the lock: its thread may be waiting for it
        with self._lock:
            if self._closed:
                return
            try:
                if self.flush_on_close:
                    self.flush()
            finally:
                self._closed = True
                if not self.read_only:  # last chance: no stale entry outlives us
                    for tier in self._tiers:
                        if tier.pending_deletes:
                            tier.retry_pending_deletes()
                    self._release_held()  # (after: the older copies go first)
                for tier in self._tiers:
                    tier.close()
                if self.origin is not None:
                    self.origin.close()
                if self._recorder is not None:
                    self._recorder.close()

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        layout = ", ".join(f"{t.name}:{t.backend}/{t.policy.name}" for t in self._tiers)
        return f"<TieredCache {self.mode} [{layout}]>"


def open(config: str | os.PathLike[str] | Mapping[str, Any] | Path) -> TieredCache:
    """Open the cache described by a TOML file or a dict (see docs/configuration.md)."""
    return TieredCache.from_config(config)
