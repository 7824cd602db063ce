"""TieredCache: a hierarchy of tiers, fastest first, behind a dict-like API.

Lookups walk the tiers top-down; probing a tier that lacks a key touches only
an in-memory index, never the medium, and does not disturb its policy. A hit
in a lower tier counts toward that tier's promotion rule; a promoted shard
moves up one tier (exclusive mode: it leaves the lower tier; inclusive mode: the
lower copy stays). Making room in a tier evicts the victims its policy picks,
which are demoted one tier down -- or simply dropped in inclusive mode when the
tier below already holds a copy. A shard larger than a tier skips it. A shard
in no tier comes from the origin, if one is configured, and is admitted at the
top; otherwise :class:`~tiercache.errors.ShardNotFoundError` (a ``KeyError``).

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
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .codec import check_storable, empty_aligned
from .config import CacheConfig, TierConfig, load_config
from .errors import (
    CacheClosedError,
    CorruptShardError,
    MediumDamagedError,
    ShardNotFoundError,
    StoreError,
    TierCacheError,
)
from .origins import Origin, open_origin
from .policies import get_policy_class
from .prefetch import Prefetcher
from .recording import TraceRecorder
from .stats import LoopStats, TierStats
from .stores import open_store
from .stores.base import ShardInfo, Store
from .stores.damaged import AbsentStore, DamagedStore
from .stores.memory import MemoryStore
from .tier import DemotionFailed, PromotionRule, Tier

log = logging.getLogger("tiercache")

_MISSING: Any = object()
_MAX_RETRIES = 8
#: Size of the per-key version map below which it is never pruned.
_VERSIONS_PRUNE_AT = 65536
#: Longest a get waits for a prefetch of the same shard before reading it itself.
PREFETCH_WAIT_TIMEOUT_S = 30.0


def build_tier(cfg: TierConfig, *, drop_corrupt: bool = True, read_only: bool = False) -> Tier:
    """Create the store and policy of one configured tier (creates its folder).

    ``drop_corrupt=False`` leaves entries with a damaged header in place (not
    indexed) for :meth:`TieredCache.verify` to report; see :meth:`Tier.load_existing`.
    ``read_only`` creates nothing: a disk tier whose folder does not exist opens
    empty, and a disk tier's folder lock is not taken (a reader beside the process
    that owns the cache, e.g. ``tiercache stats`` while a server runs). A medium
    too damaged to open (:class:`MediumDamagedError`) gives a *degraded* tier that
    holds nothing (:class:`DamagedStore`) instead of an error: the cache still
    opens and serves from its other tiers and the origin.
    """
    def new_tier(store: Store) -> Tier:
        policy = get_policy_class(cfg.policy)(cfg.capacity_bytes, **dict(cfg.policy_options))
        tier = Tier(cfg.name, store, policy, cfg.capacity_bytes, PromotionRule(cfg.promote_after))
        tier.zero_copy = cfg.zero_copy and store.supports_views
        return tier

    if read_only and cfg.path is not None and not cfg.path.exists():
        return new_tier(AbsentStore(cfg.backend, cfg.path))
    try:
        store = open_store(cfg.backend, cfg.path, verify=cfg.verify,
                           capacity_bytes=cfg.capacity_bytes, options=cfg.options,
                           exclusive=False if read_only else None)
    except MediumDamagedError as exc:
        return _damaged_tier(new_tier, cfg, exc)
    tier = new_tier(store)
    if store.persistent:
        try:
            tier.load_existing(drop_corrupt=drop_corrupt)
        except MediumDamagedError as exc:
            store.close()
            return _damaged_tier(new_tier, cfg, exc)
        except BaseException:
            store.close()
            raise
    return tier


def _damaged_tier(new_tier: Any, cfg: TierConfig, exc: MediumDamagedError) -> Tier:
    log.warning("tier %s: its medium is damaged and cannot be used (%s); serving from the "
                "other tiers -- `tiercache verify --repair` empties and reopens it", cfg.name, exc)
    tier: Tier = new_tier(DamagedStore(cfg.backend, cfg.path, str(exc)))
    tier.mark_damaged(str(exc))
    return tier


class TieredCache:
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
            if tier.store.persistent:
                for key in tier.keys():
                    holders.setdefault(key, []).append(index)
        dropped = 0
        for key, where in holders.items():
            if len(where) < 2:
                continue
            infos: list[ShardInfo | None] = []
            for index in where:
                try:
                    infos.append(self._tiers[index].store.info(key))
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
                if self.read_only or tier.store.shared:
                    tier.forget_index(key)
                else:
                    tier.remove(key)
                dropped += 1
                log.info("tier %s: dropped the %s copy of %r found on open", tier.name,
                         "redundant" if same[j] else "stale", key)
        return dropped

    # --- construction ---------------------------------------------------------------
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
        origin = (open_origin(cfg.origin.kind, cfg.origin.path, source=cfg.source)
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
                t.store.close()
            if origin is not None:
                origin.close()
            raise

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return tuple(self._tiers)

    def tier(self, name: str) -> Tier:
        for t in self._tiers:
            if t.name == name:
                return t
        raise KeyError(f"no tier named {name!r} (tiers: {', '.join(t.name for t in self._tiers)})")

    # --- reads ------------------------------------------------------------------------
    def get(self, key: str, default: Any = _MISSING, *, out: np.ndarray | None = None) -> Any:
        """Return the shard ``key`` (dtype and shape as put).

        Served from the highest tier that holds it, else from the origin. With
        ``out`` the bytes are copied into that preallocated, C-contiguous array
        (same dtype and shape) and ``out`` is returned. Without it, the result
        may be read-only (a RAM-tier hit returns the cached array itself, no
        copy). Raises :class:`~tiercache.errors.ShardNotFoundError` (a
        ``KeyError``) when no tier and no origin has it, unless ``default`` is
        given. With ``record_trace`` configured, a get that returns a shard
        appends ``key,size`` (the shard's ``nbytes``) to the trace.
        """
        position = self._schedule_index.get(key)
        if position is None:
            value = self._get(key, default, out)
        else:
            value = self._get_scheduled(key, position, default, out)
        recorder = self._recorder
        if recorder is not None and isinstance(value, np.ndarray) and value is not default:
            recorder.record(key, value.nbytes)
        return value

    def _get_scheduled(self, key: str, where: int | tuple[int, ...], default: Any,
                       out: np.ndarray | None) -> Any:
        """A get by the loop of a key in the declared schedule: move the cursor, wake the
        prefetcher and account stall time (time spent on a shard not in the top tier)."""
        if isinstance(where, int):
            position = where
        else:  # a key read several times per pass: its next occurrence after the cursor
            position = next((p for p in where if p > self._cursor), where[0])
        self._cursor = position
        for tier in self._tiers:
            hook = getattr(tier.policy, "on_cursor", None)
            if hook is not None:
                hook(position)
        prefetcher = self._prefetcher
        if prefetcher is not None:
            prefetcher.notify(position)
        stats = self.loop_stats
        stats.gets += 1
        if key in self._tiers[0] or key in self._staged:
            return self._get(key, default, out)
        started = time.perf_counter()
        try:
            return self._get(key, default, out)
        finally:
            stats.stalls += 1
            stats.stall_s += time.perf_counter() - started

    def _get(self, key: str, default: Any, out: np.ndarray | None) -> Any:
        """The lookup behind :meth:`get` (which adds trace recording)."""
        started = time.perf_counter()
        self._check_open()
        for _ in range(_MAX_RETRIES):
            with self._lock:
                found = self._locate(key)
                pending = self._inflight.get(key) if found is None or found[0] > 0 else None
                if found is None and pending is None:
                    break
                if pending is None and found is not None:
                    index, tier = found
                    for above in self._tiers[:index]:
                        above.stats.misses += 1
                    version = self._version(key)
                    staged = self._take_staged(key, index, version) if self._staged else None
                    if tier.is_memory:
                        array = tier.store.get(key)
                        if array is None:  # index and store disagree: repair and retry
                            tier.remove(key)
                            continue
                        result = array if out is None else self._copy_out(key, array, out)
                        if tier.record_hit(key, array.nbytes, time.perf_counter() - started) \
                                and index > 0:
                            self._promote(index, key, array, private=False)
                        return result
            if pending is not None:  # the prefetcher is reading it: wait, don't read twice
                waited = time.perf_counter()
                pending.wait(PREFETCH_WAIT_TIMEOUT_S)
                self.loop_stats.prefetch_wait_s += time.perf_counter() - waited
                continue
            # disk tier: read outside the lock (unless the prefetcher staged a copy)
            try:
                if staged is not None:
                    array = staged if out is None else self._copy_out(key, staged, out)
                else:
                    array = tier.read(key, out)
            except CorruptShardError as exc:
                self._drop_corrupt(tier, key, exc, version)
                continue
            except StoreError as exc:
                if self._closed:  # the cache was closed under this read
                    raise CacheClosedError(f"the cache was closed while {key!r} was read") \
                        from exc
                with self._lock:
                    tier.stats.errors += 1
                    tier.note_failure(exc, "get")  # logs when the tier becomes degraded
                log.debug("tier %s failed to read %r: %s", tier.name, key, exc)
                array = None
                if self._version(key) == version:
                    # skip this tier for this read: serve from below or the origin
                    return self._get_below(key, index, default, out, started)
                continue
            if array is None:  # moved meanwhile, or the medium lost it (Redis evicts)
                self._forget_lost(tier, key, version)
                continue
            with self._lock:
                if self._version(key) != version or key not in tier:
                    continue
                due = tier.record_hit(key, array.nbytes, time.perf_counter() - started)
                if due and index > 0:
                    private = out is None and (staged is not None or not tier.zero_copy)
                    if self._promote(index, key, array, private=private) and private:
                        array = self._kept(key, array)
            return array
        shared = self._get_shared(key, out, started)
        if shared is not None:
            return shared
        return self._get_from_origin(key, default, out, started)

    def _get_shared(self, key: str, out: np.ndarray | None, started: float) -> Any:
        """``key`` from a shared tier (Redis) whose index lacks it -- another process may
        have put it there -- or None. A shard found is indexed if it fits without
        evicting anything. O(shared tiers) reads; nothing to do without shared tiers."""
        for index, tier in enumerate(self._tiers):
            if not tier.store.shared or key in tier:
                continue
            with self._lock:
                version = self._version(key)
            try:
                array = tier.read(key, out)
            except StoreError as exc:  # a corrupt copy is overwritten by the next admission
                with self._lock:
                    tier.stats.errors += 1
                log.warning("tier %s failed to read %r: %s", tier.name, key, exc)
                continue
            if array is None:
                continue
            with self._lock:
                for above in self._tiers[:index]:
                    above.stats.misses += 1
                latency = time.perf_counter() - started
                if self._version(key) == version and self._locate(key) is None and \
                        tier.index_existing(key, tier.store.stored_size(array)):
                    if tier.record_hit(key, array.nbytes, latency) and index > 0 and \
                            self._promote(index, key, array, private=out is None) and out is None:
                        array = self._kept(key, array)
                else:
                    tier.stats.hits += 1
                    tier.stats.bytes_read += array.nbytes
                    tier.stats.latency.record(latency)
            return array
        return None

    def _get_below(self, key: str, failed_index: int, default: Any, out: np.ndarray | None,
                   started: float) -> Any:
        for tier in self._tiers[failed_index + 1:]:
            if key in tier:
                try:
                    array = tier.read(key, out)
                except CorruptShardError as exc:
                    with self._lock:
                        version = self._version(key)
                    self._drop_corrupt(tier, key, exc, version)
                    continue
                except StoreError:
                    continue
                if array is not None:
                    with self._lock:
                        tier.record_hit(key, array.nbytes, time.perf_counter() - started)
                    return array
        return self._get_from_origin(key, default, out, started, admit=False)

    def _get_from_origin(self, key: str, default: Any, out: np.ndarray | None, started: float,
                         *, admit: bool = True) -> Any:
        with self._lock:
            for tier in self._tiers:
                tier.stats.misses += 1
            version = self._version(key)
        origin = self.origin
        array = origin.get(key) if origin is not None else None
        if array is None:
            if default is _MISSING:
                where = " or the origin" if origin is not None else ""
                raise ShardNotFoundError(f"shard {key!r} is in no tier{where}")
            return default
        stats = self.origin_stats
        with self._lock:
            stats.hits += 1
            stats.bytes_read += array.nbytes
            stats.latency.record(time.perf_counter() - started)
            if admit and not self.read_only and self._version(key) == version \
                    and self._locate(key) is None \
                    and self._admit_from(0, key, array, adopt=origin is not None
                                         and origin.fresh_arrays) and out is None:
                array = self._kept(key, array)
        if out is not None:
            return self._copy_out(key, array, out)
        if self.origin is not None and self.origin.fresh_arrays:
            array.flags.writeable = False
        return array

    # --- model serving: schedule and prefetch ------------------------------------------
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
            for tier in self._tiers:
                setter = getattr(tier.policy, "set_schedule", None)
                if setter is not None:
                    setter(list(keys))

    def start_prefetcher(self, *, depth: int = 8, max_bytes: int | None = None,
                         workers: int = 2) -> Prefetcher:
        """Start (or restart) the background prefetcher along the declared schedule
        (see :class:`~tiercache.prefetch.Prefetcher` for the parameters)."""
        self.stop_prefetcher()
        prefetcher = Prefetcher(self, depth=depth, max_bytes=max_bytes, workers=workers)
        with self._lock:
            self._staging_max_bytes = prefetcher.max_bytes
        self._prefetcher = prefetcher.start()
        return prefetcher

    def stop_prefetcher(self) -> None:
        """Stop the background prefetcher, if any. Idempotent."""
        prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            prefetcher.stop()
        with self._lock:
            self._staged.clear()
            self._staged_bytes = 0
            self._staging_max_bytes = 0

    def advise(self, key: str) -> int | None:
        """Start reading ``key`` ahead of use if that needs no copy: when its fastest
        copy is on a ``zero_copy`` tier, ask that store to read it into the page cache
        asynchronously (:meth:`Store.willneed`) and return the bytes advised. Returns 0
        when there is nothing to do (already in a memory top tier, or nowhere), and
        ``None`` when bringing it up means a copy or reading it whole to verify its
        checksum first (:meth:`prefetch`'s job, on the prefetcher's threads). Cheap
        enough for the loop's thread: one lock, one index lookup, a system call or
        two."""
        with self._lock:
            if self._closed:
                return 0
            found = self._locate(key)
            if found is None:
                return None if self.origin is not None else 0
            index, tier = found
            if not tier.zero_copy:
                return None if index > 0 else 0
            if tier.store.needs_check(key):
                return None
        try:
            advised = tier.willneed(key)
        except StoreError as exc:
            log.debug("read-ahead of %r on tier %s failed: %s", key, tier.name, exc)
            return 0
        if advised:
            with self._lock:
                self.loop_stats.prefetched += 1
                self.loop_stats.prefetched_bytes += advised
        return advised

    def prefetch(self, key: str) -> int:
        """Bring ``key`` into the top tier ahead of use, from a lower tier or the origin.

        Returns the bytes brought up (0 if it was already there, is being fetched,
        or exists nowhere). Reads run outside the cache lock; a concurrent ``get``
        of the same key waits for this read instead of issuing its own.
        Ignores promotion rules: prefetching is an explicit request.
        """
        top = self._tiers[0]
        with self._lock:
            if self._closed or self.read_only or key in top or key in self._inflight \
                    or key in self._staged:
                return 0
            found = self._locate(key)
            if found is None and self.origin is None:
                return 0
            version = self._version(key)
            event = self._inflight[key] = threading.Event()
        try:
            if found is None:
                array = self.origin.get(key) if self.origin is not None else None
                private = self.origin is not None and self.origin.fresh_arrays
            elif found[1].zero_copy:
                # a view-serving tier: start the page cache filling and, here on the
                # prefetcher's thread, verify a shard not verified yet (its first view
                # reads it whole) instead of copying the shard into RAM
                advised = found[1].willneed(key)
                if not advised:
                    return 0
                if found[1].store.needs_check(key):
                    found[1].read(key)
                with self._lock:
                    self.loop_stats.prefetched += 1
                    self.loop_stats.prefetched_bytes += advised
                return advised
            else:
                array = found[1].read(key)
                private = not found[1].is_memory
            if array is None:
                return 0
            with self._lock:
                if self._version(key) != version or key in top:
                    return 0
                if found is None:
                    if self._locate(key) is not None:
                        return 0
                    self.origin_stats.bytes_read += array.nbytes
                    if not self._admit_from(0, key, array, adopt=private):
                        return 0
                else:
                    index, tier = found
                    if key not in tier:
                        return 0
                    tier.stats.bytes_read += array.nbytes
                    if private and self._staging_max_bytes:
                        # the prefetcher's copy waits for the loop's get, which then
                        # applies the top tier's promotion rule and policy (OPT keeps
                        # what is worth keeping; a streamed shard just passes through)
                        if not self._stage(index, key, version, array):
                            return 0
                    elif not self._promote(index, key, array, private=private, to_top=True):
                        return 0
                self.loop_stats.prefetched += 1
                self.loop_stats.prefetched_bytes += array.nbytes
                return int(array.nbytes)
        except CorruptShardError as exc:
            if found is not None:
                self._drop_corrupt(found[1], key, exc, version)
            return 0
        except StoreError as exc:
            log.warning("prefetch of %r failed: %s", key, exc)
            return 0
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            event.set()

    def __contains__(self, key: object) -> bool:
        """Whether a tier holds ``key`` (the origin is not consulted). O(tiers)."""
        if not isinstance(key, str):
            return False
        with self._lock:
            return self._locate(key) is not None

    def keys(self) -> list[str]:
        """Every key held by some tier (not the origin's)."""
        with self._lock:
            seen: dict[str, None] = {}
            for tier in self._tiers:
                seen.update(dict.fromkeys(tier.keys()))
            return list(seen)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def where(self, key: str) -> list[str]:
        """Names of the tiers holding ``key``, fastest first (for tests and debugging)."""
        with self._lock:
            return [t.name for t in self._tiers if key in t]

    # --- writes -----------------------------------------------------------------------
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
        old one).
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
            for t in self._tiers:
                t.remove(key)
            if not self._admit_from(start, key, array, adopt=False):
                raise TierCacheError(
                    f"shard {key!r} ({array.nbytes} bytes) could not be stored: "
                    + "; ".join(self._refusal(t, array) for t in self._tiers[start:]))
            stale = self._stale_tiers(key)
            if stale and not any(key in t for t in self._tiers if t.store.persistent):
                first = next((i for i, t in enumerate(self._tiers) if t.store.persistent
                              and not t.store.shared), None)
                if first is None or not self._admit_from(first, key, array, adopt=False):
                    raise StoreError(
                        f"put of {key!r} is not durable: tier(s) {', '.join(stale)} could not "
                        "delete the older value and no persistent tier took the new one; "
                        "this process serves the new value, a restart may bring back the old")

    def _stale_tiers(self, key: str) -> list[str]:
        """Persistent private tiers still holding an older copy of ``key`` on the medium
        (their delete failed and waits for a retry). O(tiers). Lock held."""
        return [t.name for t in self._tiers if t.store.persistent and not t.store.shared
                and key in t.pending_deletes]

    @staticmethod
    def _refusal(tier: Tier, array: np.ndarray) -> str:
        """Why ``tier`` did not take ``array`` (for the error of a failed put). O(1)."""
        if tier.degraded_reason is not None:
            return f"tier {tier.name} is degraded ({tier.degraded_reason})"
        size = tier.store.stored_size(array)
        if size > tier.capacity_bytes:
            return (f"tier {tier.name} is too small ({size} bytes stored > capacity "
                    f"{tier.capacity_bytes})")
        return f"tier {tier.name} could not make room (a victim could not be moved down)"

    def __setitem__(self, key: str, array: np.ndarray) -> None:
        self.put(key, array)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier (the origin is read-only). Returns whether any held it.

        Raises :class:`~tiercache.errors.StoreError` when a persistent tier could not
        delete its copy (a full disk): the key is no longer served by this process and
        the delete is retried when the tier recovers, but a restart before that would
        bring the old value back, so the delete is not reported done.
        """
        self._check_writable()
        with self._lock:
            self._bump(key)
            removed = False
            for t in self._tiers:
                removed = t.remove(key) or removed
            stale = self._stale_tiers(key)
            if stale:
                raise StoreError(
                    f"delete of {key!r} is not durable: tier(s) {', '.join(stale)} could not "
                    "delete it (it is retried when the tier recovers; until then a restart "
                    "would bring it back)")
            return removed

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def _indexed_count(self) -> int:
        return sum(len(t) for t in self._tiers)

    def _prune_versions(self) -> None:
        """Forget the versions of keys held by no tier. O(map size). Lock held."""
        self._version_counter += 1
        self._version_floor = self._version_counter
        self._versions = {k: v for k, v in self._versions.items()
                          if self._locate(k) is not None or k in self._inflight}

    # --- movement between tiers -----------------------------------------------------
    def _locate(self, key: str) -> tuple[int, Tier] | None:
        for i, tier in enumerate(self._tiers):
            if key in tier:
                return i, tier
        return None

    def _version(self, key: str) -> int:
        """The write version of ``key``: compare before and after an unlocked read. O(1)."""
        return self._versions.get(key, self._version_floor)

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

    def _admit_from(self, start: int, key: str, array: np.ndarray, *, adopt: bool) -> bool:
        """Admit into the first tier at or below ``start`` that accepts it. Lock held.

        If none does, degraded tiers waiting for their retry time are tried once
        more (a last resort: a put fails only if no tier can take it right now)."""
        for force in (False, True):
            for index in range(start, len(self._tiers)):
                tier = self._tiers[index]
                if force and not tier.degraded:
                    continue
                try:
                    if tier.admit(key, array, self._demoter(index),
                                  adopt=adopt and tier.is_memory, force=force):
                        return True
                except StoreError as exc:  # e.g. Redis is down: try the tiers below
                    tier.stats.errors += 1
                    log.warning("tier %s failed to take %r: %s", tier.name, key, exc)
        return False

    def _demoter(self, index: int) -> Any:
        def demote(victim: str) -> None:
            self._demote(index, victim)
        return demote

    def _demote(self, index: int, key: str) -> None:
        """Move ``key`` out of tier ``index`` to a lower tier, or drop it. Lock held.

        Raises :class:`DemotionFailed` when the bytes can go nowhere safe and
        are not dropped by design (then the victim stays).
        """
        source = self._tiers[index]
        below = self._tiers[index + 1:]
        if any(key in t for t in below):
            source.stats.clean_drops += 1
            return  # a copy of this version already lives below: writing it again is waste
        if source.store.persistent:  # never leave a persisted shard only in memory
            below = [t for t in below if t.store.persistent]
        if not below:
            source.stats.dropped += 1  # evicted out of the hierarchy
            return
        try:
            array = self._read_for_move(index, key)
        except CorruptShardError as exc:
            self._report_corrupt(source, key, exc)
            source.stats.corrupt += 1
            return
        except (StoreError, OSError) as exc:  # unreadable now: keep it, degrade the tier
            source.stats.errors += 1
            source.note_failure(exc, "read")
            raise DemotionFailed(key) from exc
        if array is None:
            return
        for force in (False, True):  # last resort: retry degraded tiers before giving up
            for target in below:
                offset = self._tiers.index(target)
                if force and not target.degraded:
                    continue
                try:
                    if target.admit(key, array, self._demoter(offset), adopt=False,
                                    force=force):
                        source.stats.demotions_out += 1
                        target.stats.demotions_in += 1
                        return
                except StoreError as exc:
                    target.stats.errors += 1
                    log.warning("tier %s failed to take demoted %r: %s", target.name, key, exc)
        raise DemotionFailed(key)

    def _read_for_move(self, index: int, key: str) -> np.ndarray | None:
        """Read a shard that is about to move, into tier ``index``'s reused scratch buffer."""
        tier = self._tiers[index]
        if tier.is_memory:
            return tier.store.get(key)
        info = tier.store.info(key)
        if info is None:
            return None
        nbytes = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
        scratch = self._scratch.get(index)
        if scratch is None or scratch.nbytes < nbytes:
            scratch = self._scratch[index] = empty_aligned(max(nbytes, 1 << 20))
        out = scratch[:nbytes].view(info.dtype).reshape(info.shape)
        array = tier.store.get(key, out)
        tier.stats.bytes_read += nbytes
        return array

    def _kept(self, key: str, array: np.ndarray) -> np.ndarray:
        """What a get hands out after offering ``array`` to a memory tier to adopt: the
        array that tier keeps, which numpy cannot make writable again (``array`` itself
        can be), or ``array`` if no memory store holds ``key``. Lock held. O(tiers)."""
        for tier in self._tiers:
            if isinstance(tier.store, MemoryStore) and key in tier:
                kept = tier.store.get(key)
                if kept is not None:
                    return kept
        return array

    def _promote(self, index: int, key: str, array: np.ndarray, *, private: bool,
                 to_top: bool = False) -> bool:
        """Move ``key`` from tier ``index`` up to the nearest tier above that can hold it
        (with ``to_top``, the highest one that can); return whether it moved. Lock held.

        A promotion is optional movement, so it is skipped (counted in the target's
        ``bypassed``) when the target would have to evict a shard the declared schedule
        needs sooner than this one (:meth:`_worth_promoting`). Exclusive mode moves
        the shard, except out of a persistent tier into a volatile one: that copy
        stays (a shard that reached a persistent tier is never held only in memory),
        so evicting the memory copy later writes nothing.
        """
        if self.read_only:
            return False
        source = self._tiers[index]
        targets = range(0, index) if to_top else range(index - 1, -1, -1)
        for target_index in targets:
            target = self._tiers[target_index]
            size = target.store.stored_size(array)
            if not target.wants(key, size):
                continue
            if not self._worth_promoting(target, key, size):
                target.stats.bypassed += 1
                return False
            keep_source = self.inclusive or (source.store.persistent
                                             and not target.store.persistent)
            if not keep_source:
                source.remove(key)  # the bytes are in `array`; re-admitted below on failure
            adopt = private and target.is_memory
            try:
                moved = target.admit(key, array, self._demoter(target_index), adopt=adopt)
            except StoreError as exc:
                target.stats.errors += 1
                log.warning("tier %s failed to take promoted %r: %s", target.name, key, exc)
                moved = False
            if moved:
                source.stats.promotions_out += 1
                target.stats.promotions_in += 1
            elif not keep_source and not self._admit_from(index, key, array, adopt=False):
                log.warning("shard %r could not be kept after a failed promotion", key)
                source.stats.dropped += 1
            return moved
        return False

    def _next_use(self, key: str) -> int | None:
        """Scheduled gets from the cursor until ``key`` is read again (the schedule's
        length for the key read at the cursor), or ``None`` when the schedule does
        not list it. O(occurrences of the key). Lock held."""
        where = self._schedule_index.get(key)
        if where is None:
            return None
        length = len(self.schedule)
        cursor = self._cursor
        positions = (where,) if isinstance(where, int) else where
        return min((p - cursor - 1) % length + 1 for p in positions)

    def _worth_promoting(self, target: Tier, key: str, size: int) -> bool:
        """Whether promoting ``key`` into ``target`` can pay: yes when it fits without
        evicting, or when no schedule is declared (the policy alone decides); with a
        schedule, no when the victim ``target``'s policy would evict first is needed
        again sooner than ``key`` -- the swap would cost a miss before it saves one
        (Belady's rule applied to the policy's own choice of victim, so a recency
        policy on a tier smaller than a loop keeps a fixed part of the loop instead of
        cycling every shard through). O(1) policy calls. Lock held."""
        if not self._schedule_index or target.used_bytes + size <= target.capacity_bytes:
            return True
        mine = self._next_use(key)
        if mine is None:
            return True
        try:
            victim = target.policy.victim(key)
        except Exception:  # an empty or refusing policy: let admit() decide
            return True
        if not isinstance(victim, str) or victim == key:
            return True
        theirs = self._next_use(victim)
        return theirs is None or mine < theirs

    def _stage(self, index: int, key: str, version: int, array: np.ndarray) -> bool:
        """Hold a prefetched copy the top tier refused until the loop reads it, within
        the prefetcher's byte budget (oldest dropped first). Lock held. O(1) amortised."""
        if array.nbytes > self._staging_max_bytes:
            return False
        old = self._staged.pop(key, None)
        if old is not None:
            self._staged_bytes -= old[2].nbytes
        while self._staged and self._staged_bytes + array.nbytes > self._staging_max_bytes:
            self._staged_bytes -= self._staged.pop(next(iter(self._staged)))[2].nbytes
        self._staged[key] = (index, version, array)
        self._staged_bytes += array.nbytes
        return True

    def _take_staged(self, key: str, index: int, version: int) -> np.ndarray | None:
        """The staged copy of ``key`` if it is still current (read from tier ``index`` at
        ``version``), removing it from staging. Lock held. O(1)."""
        staged = self._staged.pop(key, None)
        if staged is None:
            return None
        self._staged_bytes -= staged[2].nbytes
        if staged[0] != index or staged[1] != version:
            return None
        self.loop_stats.staged_hits += 1
        return staged[2]

    def _drop_corrupt(self, tier: Tier, key: str, exc: Exception, version: int) -> None:
        with self._lock:
            tier.stats.corrupt += 1
            if self._version(key) == version and key in tier:
                tier.remove(key)
        self._report_corrupt(tier, key, exc)

    def _report_corrupt(self, tier: Tier, key: str, exc: Exception,
                        what: str = "dropped corrupt copy of %r (%s); reading from the next "
                                    "tier") -> None:
        """Log a corrupt copy once per (tier, key), however often it is read. O(1)."""
        seen = self._reported_corrupt
        if (tier.name, key) in seen:
            return
        if len(seen) >= 65536:  # bounded: forget old reports rather than grow forever
            seen.clear()
        seen.add((tier.name, key))
        log.warning("tier %s: " + what, tier.name, key, exc)

    def _forget_lost(self, tier: Tier, key: str, version: int) -> None:
        """A read of ``key`` from ``tier`` found nothing. If the index still lists it and the
        medium confirms it is gone (Redis evicted it), forget the entry, so the tier's
        accounting stays honest and the next lookup goes below. Counted in ``lost``."""
        with self._lock:
            if self._version(key) != version or key not in tier:
                return  # replaced or moved meanwhile
            if not tier.check_medium():
                return  # the folder was removed: every entry is forgotten, tier degraded
            try:
                if key in tier.store:
                    return  # moved away and back meanwhile: the copy is there
            except StoreError:
                return  # cannot tell now; the next read tries again
            tier.forget_lost(key)
        log.info("tier %s: %r was gone from the medium; dropped from its index", tier.name, key)

    @staticmethod
    def _copy_out(key: str, array: np.ndarray, out: np.ndarray) -> np.ndarray:
        if out.dtype != array.dtype or out.shape != array.shape:
            raise ValueError(f"out has dtype {out.dtype} and shape {out.shape}, but shard "
                             f"{key!r} is {array.dtype} {array.shape}")
        np.copyto(out, array)
        return out

    # --- maintenance ------------------------------------------------------------------
    def flush(self) -> int:
        """Write shards that live only in volatile tiers down to the first persistent
        tier below that can hold them, so they survive a restart. In exclusive mode
        they move (leave the volatile tier); in inclusive mode they are copied.
        Returns how many shards were written."""
        written = 0
        with self._lock:
            for index, tier in enumerate(self._tiers):
                if tier.store.persistent:
                    continue
                for key in tier.keys():
                    if any(key in t for t in self._tiers if t.store.persistent):
                        continue
                    array = tier.store.get(key)
                    if array is None:
                        continue
                    for below in range(index + 1, len(self._tiers)):
                        target = self._tiers[below]
                        if target.store.persistent and target.admit(
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
                "backend": tier.store.backend, "checked": 0, "ok": 0, "corrupt": 0,
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
                    keys = list(tier.store.keys())
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
                entry["orphans"] = tier.store.sweep_orphans(remove=repair,
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
                if any(t.store.shared and key in t.store for t in self._tiers):
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
                old.store.close()
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
            if self._schedule_index:
                setter = getattr(fresh.policy, "set_schedule", None)
                if setter is not None:
                    setter(list(self.schedule))
            self._tiers[index] = fresh
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
                info = tier.store.info(key)
                if info is None:
                    return "ok"  # deleted since the listing
                nbytes = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
                scratch = self._scratch.get(-1 - index)
                if scratch is None or scratch.nbytes < nbytes:
                    scratch = self._scratch[-1 - index] = empty_aligned(max(nbytes, 1 << 20))
                tier.store.check(key, scratch[:nbytes].view(info.dtype).reshape(info.shape))
                return "ok"
            except CorruptShardError as exc:
                tier.stats.corrupt += 1
                self._report_corrupt(tier, key, exc, "removed corrupt copy of %r (%s)" if repair
                                     else "found corrupt copy of %r (%s)")
                if repair:
                    if key in tier:
                        tier.remove(key)
                    else:
                        tier.delete_unindexed(key)
                return "corrupt"
            except (StoreError, OSError) as exc:
                tier.stats.errors += 1
                log.warning("tier %s: cannot read %r while verifying: %s", tier.name, key, exc)
                return "unreadable"

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
            return {"mode": self.mode, "tiers": tiers, "origin": origin,
                    "loop": self.loop_stats.as_dict()}

    def check_invariants(self) -> None:
        """Raise AssertionError if any tier breaks capacity or index invariants (tests)."""
        with self._lock:
            for tier in self._tiers:
                tier.check_invariants()
            if not self.inclusive:  # exclusive: one persistent copy, one volatile at most
                for tier in self._tiers:
                    for key in tier.keys():
                        kept = [t.store.persistent for t in self._tiers if key in t]
                        assert kept.count(True) <= 1 and kept.count(False) <= 1, (
                            f"{key!r} in several tiers: {self.where(key)}")

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError("the cache is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise TierCacheError("the cache was opened read-only (tiercache stats/verify); "
                                 "open it with tiercache.open() to write")

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
                for tier in self._tiers:
                    if tier.pending_deletes and not self.read_only:
                        tier.retry_pending_deletes()  # last chance: no stale entry outlives us
                    tier.store.close()
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
        layout = ", ".join(f"{t.name}:{t.store.backend}/{t.policy.name}" for t in self._tiers)
        return f"<TieredCache {self.mode} [{layout}]>"


def open(config: str | os.PathLike[str] | Mapping[str, Any] | Path) -> TieredCache:
    """Open the cache described by a TOML file or a dict (see docs/configuration.md)."""
    return TieredCache.from_config(config)
