"""The lmdb environment under :class:`~tiercache.stores.lmdb_store.LmdbStore`: its life.

:class:`LmdbEnvironment` opens the environment (after the file checks of
:mod:`.lmdb_meta`), runs every operation under the remap guard (growing the map, or
adopting another process's map size, and retrying), reopens it, compacts it (with a
back-off after a failure) and closes it, refusing use across ``fork()``. The shard
API (keys, headers, payloads) is :class:`~tiercache.stores.lmdb_store.LmdbStore`'s;
the module docstring of :mod:`tiercache.stores.lmdb_store` describes the map size,
durability and compaction rules this module implements.

Thread-safety: one :class:`lmdb.Environment` is shared by all threads; operations
hold the guard shared, a remap, reopen, compaction or close holds it exclusively.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import lmdb

from ..buffers import PAGE_BYTES
from ..errors import CacheClosedError, MediumDamagedError, StoreError
from .base import VerifyMode
from .disk import DiskStore
from .lmdb_meta import (
    DAMAGE_ERRORS,
    RemapGuard,
    ValueBounds,
    check_data_file,
    check_named_roots,
    round_up,
)

_T = TypeVar("_T")

#: The smallest initial map (virtual address space only: the file grows as data is written).
DEFAULT_MAP_BYTES = 4 << 30
_MAP_SLACK_BYTES = 256 << 20
#: Times one write grows the map and retries before giving up (then StoreError).
MAX_GROW_ATTEMPTS = 16
#: Compact when the file exceeds this multiple of the live pages' bytes (plus the slack).
COMPACT_RATIO = 1.25
#: Fixed allowance above ``COMPACT_RATIO * live bytes`` before compacting.
COMPACT_SLACK_BYTES = 1 << 20
#: After a failed compaction, wait this long before trying again (doubling, up to the max).
COMPACT_RETRY_S = 1.0
COMPACT_RETRY_MAX_S = 60.0
#: The folder, inside the environment's, that holds a compaction's copy while it runs.
COMPACT_DIR = ".compact.tmp"
#: Environments a forked child closed its store over: kept referenced, never freed here.
_INHERITED_ENVS: list[lmdb.Environment] = []

log = logging.getLogger("tiercache")


class CompactionBackoff:
    """When a write may try a compaction again after one failed: ``first_s`` after the
    first failure, doubling up to ``max_s``; a success resets the wait. O(1); guarded by
    the caller (a store's writes)."""

    def __init__(self, first_s: float = COMPACT_RETRY_S,
                 max_s: float = COMPACT_RETRY_MAX_S) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._wait_s = first_s
        self._retry_at = 0.0

    def due(self) -> bool:
        """Whether a compaction may be tried now (no failure, or its wait has passed)."""
        return time.monotonic() >= self._retry_at

    def failed(self) -> float:
        """Record a failure; return the seconds until the next try."""
        wait = self._wait_s
        self._retry_at = time.monotonic() + wait
        self._wait_s = min(2 * wait, self.max_s)
        return wait

    def succeeded(self) -> None:
        """Record a success: the next failure waits ``first_s`` again."""
        self._wait_s = self.first_s

    def expire(self) -> None:
        """Let the next write try now, as if the wait had passed (tools, tests)."""
        self._retry_at = 0.0


class LmdbEnvironment(DiskStore):
    """The open lmdb environment of a store and its life: opening (after the file checks
    of :mod:`.lmdb_meta`), running operations under the remap guard (growing or adopting
    the map), reopening, compacting, closing -- and refusing use across ``fork()``.

    :class:`LmdbStore` adds the shard API over it. Thread-safety: as :class:`LmdbStore`.
    """

    identity_file = "data.mdb"

    def __init__(self, path: str | os.PathLike[str], *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, map_size_bytes: int | None = None,
                 sync: bool = True, exclusive: bool | None = None) -> None:
        super().__init__(path, verify=verify, capacity_bytes=capacity_bytes,
                         exclusive=exclusive)
        if map_size_bytes is None:
            map_size_bytes = max(DEFAULT_MAP_BYTES, 2 * (capacity_bytes or 0) + _MAP_SLACK_BYTES)
        self._map_size_bytes = round_up(map_size_bytes, PAGE_BYTES)
        self._sync = sync
        self._env: lmdb.Environment | None = None
        #: Checks node extents against ``data.mdb`` (owns a descriptor of it while open).
        self._bounds = ValueBounds(self.path / "data.mdb", None, PAGE_BYTES)
        #: Whether writes compact the file (a capacity is known: the store owns its folder).
        self.compacting = capacity_bytes is not None
        self.compactions = 0
        #: Compactions that failed (the write that triggered them stood).
        self.compaction_failures = 0
        #: When a write may retry a compaction that failed.
        self.compaction_backoff = CompactionBackoff()
        self._pid = os.getpid()
        self._guard = RemapGuard()
        self._close_lock = threading.Lock()
        #: Set by :meth:`close`: from then on every operation raises CacheClosedError.
        self._closing = False
        self._open()
        self._max_key: int = self._env_or_raise().max_key_size()

    def _medium_closed(self) -> bool:
        return self._env is None

    def _open_medium(self) -> None:
        """Open (or reopen) the environment at :attr:`path`; free dead readers' slots.

        Checks ``data.mdb`` first (:func:`check_data_file`: a truncated file would
        fault with SIGBUS once mapped) and the named databases' roots after."""
        data_file = self.path / "data.mdb"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.path / COMPACT_DIR, ignore_errors=True)  # crashed compaction
            check_data_file(data_file)
            env = lmdb.open(
                str(self.path), map_size=self._map_size_bytes, subdir=True, max_dbs=2,
                lock=True, sync=self._sync, metasync=False, readahead=True, mode=0o644,
                max_spare_txns=16)
            try:
                # our own descriptor of the file lmdb mapped: its size even once unlinked
                data_fd = os.open(data_file, os.O_RDONLY | os.O_CLOEXEC)
            except BaseException:
                env.close()
                raise
            try:
                bounds = ValueBounds(data_file, data_fd, int(env.stat()["psize"]))
                check_named_roots(env, bounds)
                self._main = env.open_db(None)
                self._hdr = env.open_db(b"hdr")
                self._data = env.open_db(b"data")
                env.reader_check()
                st = os.fstat(data_fd)
            except BaseException:
                os.close(data_fd)
                env.close()
                raise
        except DAMAGE_ERRORS as exc:
            raise MediumDamagedError(f"lmdb data file {data_file} is damaged ({exc})") from exc
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"lmdb store {self.path}: cannot open ({exc}); check the path "
                             "is a writable directory not opened twice in this process") from exc
        self._remember_identity(st)
        self._broken = None
        self._pid = os.getpid()
        self._env = env
        old, self._bounds = self._bounds, bounds
        old.close()

    # -- guarded access -------------------------------------------------------

    def _env_or_raise(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            if self._closing:
                raise CacheClosedError(f"lmdb store {self.path}: the store was closed")
            raise StoreError(f"lmdb store {self.path} is not open (its last reopen failed)")
        if self._pid != os.getpid():
            raise StoreError(f"lmdb store {self.path} was opened by process {self._pid}: an lmdb "
                             "environment must not be used across fork(); open the store (or "
                             "the cache) in the child process")
        return env

    def _run(self, op: Callable[[lmdb.Environment], _T], grow_for: int = 0) -> _T:
        """Run ``op(env)`` under the shared guard; adopt/grow the map and retry if needed."""
        for _ in range(MAX_GROW_ATTEMPTS):
            self._guard.acquire_shared()
            try:
                return op(self._env_or_raise())
            except lmdb.MapResizedError:
                need = 0
            except lmdb.MapFullError:
                if not grow_for:
                    raise StoreError(f"lmdb store {self.path}: map full on a read") from None
                need = grow_for
            except DAMAGE_ERRORS as exc:
                self._broken = f"lmdb data file {self.path / 'data.mdb'} is damaged ({exc})"
                raise MediumDamagedError(self._broken) from exc
            except lmdb.Error as exc:
                if isinstance(exc, lmdb.PanicError):
                    self._broken = f"environment unusable ({exc})"
                raise StoreError(f"lmdb store {self.path}: {exc}") from exc
            finally:
                self._guard.release_shared()
            self.grow_map(need)
        raise StoreError(f"lmdb store {self.path}: could not grow the map for a "
                         f"{grow_for}-byte value (disk full?)")

    def grow_map(self, need: int) -> None:
        """Grow the map to fit a ``need``-byte value (at least doubling it), or adopt the
        map size another process set (``need == 0``). Writes call it when lmdb reports
        the map full; waits for in-flight operations (invalidates their views). Raises
        :class:`~tiercache.errors.StoreError` when lmdb refuses. O(1)."""
        self._guard.acquire_exclusive()
        try:
            env = self._env_or_raise()
            if need == 0:
                env.set_mapsize(0)
                return
            current = env.info()["map_size"]
            env.set_mapsize(round_up(max(2 * current, current + 2 * need + _MAP_SLACK_BYTES),
                                      PAGE_BYTES))
        except lmdb.Error as exc:
            raise StoreError(f"lmdb store {self.path}: cannot resize the map ({exc})") from exc
        finally:
            self._guard.release_exclusive()

    # -- reopening, compaction ---------------------------------------------------------

    def _close_medium(self) -> None:
        """Drop the environment for a reopen (errors suppressed); guard held exclusively."""
        env, self._env = self._env, None
        if env is not None:
            with contextlib.suppress(lmdb.Error):
                env.close()

    def reopen(self) -> None:
        """Close the environment and open the one now at :attr:`path` (created if
        missing), releasing the folder lock and taking it again (the folder may be a
        new one): :meth:`DiskStore.reopen` -- ``check_health`` reports a replaced
        ``data.mdb`` (lmdb would go on working on the unlinked file) or a panicked
        environment. Waits for in-flight operations. Raises StoreError on failure
        (:class:`~tiercache.errors.MediumDamagedError` for a damaged file)."""
        with self._guard.exclusive():
            super().reopen()

    @property
    def map_size_bytes(self) -> int:
        """The environment's current map size in bytes (address space, not disk). O(1)."""
        return int(self._run(lambda env: env.info())["map_size"])

    def set_map_size(self, nbytes: int) -> None:
        """Set the map size to ``nbytes`` rounded up to a page (lmdb raises one below the
        data's size to it); writes grow it again when they need to. Waits for in-flight
        operations. Raises :class:`~tiercache.errors.StoreError` when lmdb refuses. O(1)."""
        with self._guard.exclusive():
            try:
                self._env_or_raise().set_mapsize(round_up(nbytes, PAGE_BYTES))
            except lmdb.Error as exc:
                raise StoreError(f"lmdb store {self.path}: cannot resize the map to {nbytes} "
                                 f"bytes ({exc})") from exc

    def readers(self) -> str:
        """lmdb's reader table as text (one line per slot: pid, thread, transaction), for
        diagnosing a stale reader that pins old pages. O(slots)."""
        return str(self._run(lambda env: env.readers()))

    def file_nbytes(self) -> int:
        """Bytes of ``data.mdb`` up to lmdb's high-water page (what ``du`` sees). O(1)."""
        info = self._run(lambda env: env.info())
        return (int(info["last_pgno"]) + 1) * PAGE_BYTES

    def live_nbytes(self) -> int:
        """Bytes of the pages in use (every tree's branch, leaf and overflow pages plus
        the two meta pages): what :meth:`compact` would leave. O(1): three tree stats."""

        def op(env: lmdb.Environment) -> int:
            with env.begin() as txn:
                pages = 2
                for db in (self._main, self._hdr, self._data):
                    st = txn.stat(db)
                    pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                return pages * int(st["psize"])

        return self._run(op)

    @property
    def compact_above_bytes(self) -> int | None:
        """File size above which a write compacts: :data:`COMPACT_RATIO` x the live
        pages' bytes + :data:`COMPACT_SLACK_BYTES`; ``None`` for a store that does not
        compact (opened without a capacity). Follows the live data down as well as
        up. O(1)."""
        if not self.compacting:
            return None
        return int(COMPACT_RATIO * self.live_nbytes()) + COMPACT_SLACK_BYTES

    def _maybe_compact(self) -> None:
        """Compact if the file passed :attr:`compact_above_bytes`. Never raises: it runs
        after a committed write, which stands whatever happens here; a failure is
        logged and retried after a back-off (1 s doubling to 60 s). O(1) unless it
        compacts."""
        if not self.compacting or not self.compaction_backoff.due():
            return
        try:
            limit = self.compact_above_bytes
            if limit is None or self.file_nbytes() <= limit:
                return
            self.compact()
        except (StoreError, OSError, lmdb.Error) as exc:  # e.g. the rename's fsync: EIO
            self.compaction_failures += 1
            log.warning("lmdb store %s: %s; the write stands, compaction retried in %.0f s",
                        self.path, exc, self.compaction_backoff.failed())
        else:
            self.compaction_backoff.succeeded()

    def compact(self) -> int:
        """Rewrite ``data.mdb`` without its free pages; return the new size in bytes.

        Copies the live pages (``env.copy(compact=True)``) into a folder beside
        the file, fsyncs the copy, closes the environment, renames the copy over
        ``data.mdb`` and reopens. O(live bytes); every other operation on this
        store waits meanwhile. Only for a store no other process has open.
        Raises :class:`~tiercache.errors.StoreError` on failure (the old file
        then stays in use).
        """
        with self._guard.exclusive():
            env = self._env_or_raise()
            before = (int(env.info()["last_pgno"]) + 1) * PAGE_BYTES
            tmp = self.path / COMPACT_DIR
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                env.copy(str(tmp), compact=True)
                fsync_path(tmp / "data.mdb")
            except (OSError, lmdb.Error) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(f"lmdb store {self.path}: compaction failed ({exc}); the "
                                 "uncompacted file stays in use") from exc
            self._env = None
            env.close()
            try:
                os.replace(tmp / "data.mdb", self.path / "data.mdb")
                fsync_path(self.path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                self._open_medium()
            after = (int(self._env_or_raise().info()["last_pgno"]) + 1) * PAGE_BYTES
        self.compactions += 1
        log.info("lmdb store %s compacted: %d -> %d bytes", self.path, before, after)
        return after

    def close(self) -> None:
        """Close the environment (waits for in-flight operations); later operations
        raise :class:`~tiercache.errors.CacheClosedError`. Idempotent."""
        with self._close_lock:
            self._closing = True
            if self._env is None:  # closed, or a reopen failed: still let the folder go
                if self._pid == os.getpid():
                    self._bounds.close()
                    self._release_folder()
                return
            with self._guard.exclusive():
                env, self._env = self._env, None
                if self._pid == os.getpid():
                    env.close()
                    self._bounds.close()
                    self._release_folder()
                else:  # a forked child must not touch the parent's env -- not even free it:
                    _INHERITED_ENVS.append(env)  # that closes it, clearing the parent's
                    # reader slots in lock.mdb (its next read: MDB_BAD_RSLOT)



def fsync_path(path: Path) -> None:
    """fsync a file or a folder (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
