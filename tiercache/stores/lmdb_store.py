"""lmdb store: shards in one lmdb environment (a directory with ``data.mdb``, ``lock.mdb``).

Layout
    Two named databases keyed alike: ``hdr`` holds each shard's
    :mod:`~tiercache.codec` header, ``data`` its raw payload. Both are written in
    one write transaction, so a put is atomic. Two values instead of one
    ``header + payload`` value let ``put`` hand lmdb the caller's array buffer
    directly (no concatenation copy: measured 4.6 vs 4.2 GB/s for 4 MiB puts,
    1.44 vs 1.23 GB/s for 64 MiB, without fsync), and let :meth:`LmdbStore.info`
    and :meth:`LmdbStore.keys` touch only the small header pages. Reads are
    equally fast either way.
Keys
    The lmdb key is the key's UTF-8 (``surrogatepass``) bytes when they are
    1..511 bytes long; otherwise (empty or longer keys) it is ``0xFF`` followed
    by the BLAKE2b-256 digest of those bytes -- ``0xFF`` never occurs in UTF-8,
    so the two forms cannot collide -- and the header then carries the full key,
    which every read checks. Keys never become file names: nothing is written
    outside the environment directory.
Reads
    ``get`` opens a read transaction with zero-copy buffers, checks the header
    and copies the payload straight from lmdb's memory map into the destination
    with :func:`~tiercache.codec.copy_verified`, inside the transaction (the
    view is only valid there).
Map size
    The map is virtual address space only (the file grows as data is written),
    so it starts generous: ``max(4 GiB, 2 * capacity_bytes + 256 MiB)``. A put
    that still hits ``MapFullError`` grows the map (at least doubling it, and
    enough for the value) and retries, so a put never fails because of the map
    size. Remapping invalidates every open transaction and zero-copy view, so
    operations hold a shared guard and the remap an exclusive one.
Durability
    Opened with ``metasync=False`` and, by default, ``sync=True``: one
    ``fdatasync`` per commit and none for the meta page. lmdb documents this
    mode as keeping atomicity and consistency across an OS crash or power loss;
    only the last committed puts may be undone, which a cache tolerates. A
    process crash loses nothing. ``sync=False`` skips the fsync too (puts run
    ~1.5-2.7x faster here) but then an OS crash can corrupt the environment on
    file systems that reorder writes (ext4 included); use it only for a tier
    you are willing to delete after a power loss. Opening runs lmdb's
    ``reader_check``, which frees the reader slots of processes that died
    (SIGKILL) inside a read transaction; a stale slot would otherwise pin old
    pages and make the file grow without bound.
Space on disk
    lmdb never shrinks its file and needs *contiguous* free pages for a large
    value, so churn fragments it: measured, ``data.mdb`` plateaued at 1.7-2.2x
    the bytes held (docs/reliability.md). A store that knows its tier's
    ``capacity_bytes`` therefore compacts itself (``env.copy(compact=True)``,
    then an atomic rename over ``data.mdb``) when, after a put or a delete, the
    file passes :data:`COMPACT_RATIO` x the bytes of the pages in use (every
    tree's branch, leaf and overflow pages: what a compaction keeps) +
    :data:`COMPACT_SLACK_BYTES`. The threshold follows the live data down as
    well as up, so ``du`` stays within 1.25 x live + 1 MiB however the mix of
    shard sizes changes; a compaction costs O(live) and comes after at least
    0.25 x live + 1 MiB written or deleted. A compaction that fails (a full
    disk) never fails the write that triggered it -- that write is committed --
    it is logged, counted (``compaction_failures``) and retried by a later
    write after a back-off (1 s doubling to 60 s). While it runs, the folder
    briefly holds the compacted copy too (at most the live data). A crash
    during a compaction leaves the old file intact; the leftover copy is removed
    at the next open. Compaction replaces the file, so a tier with a capacity
    belongs to one process: such a store locks its folder
    (:func:`~tiercache.stores.base.lock_tier_folder`); processes sharing an
    environment must open it without a capacity.
Damaged files
    lmdb keeps no checksums of its own pages and maps the file: a page past
    the end of a truncated ``data.mdb`` faults with SIGBUS when touched. Every
    open (and reopen) therefore first reads the two meta pages with plain reads
    (:func:`check_data_file`): both must be valid and the file must hold every
    page up to the newer one's ``mm_last_pg``; the named databases' roots must
    lie within those pages. Otherwise, and for lmdb's own "corrupted" errors
    and stored keys that are not UTF-8, the store raises
    :class:`~tiercache.errors.MediumDamagedError` naming the file (the engine
    opens the tier degraded). A damaged shard (header or payload) stays
    :class:`~tiercache.errors.CorruptShardError`, and so is an entry whose node
    points past the end of the file (a flipped bit in its overflow page number
    or value length), checked before py-lmdb touches the value
    (:meth:`.lmdb_meta.ValueBounds.value`: it would fault with SIGBUS). Not
    covered: damage that makes lmdb itself read out of bounds while searching
    (a branch or leaf page's own offsets).

Thread-safety: one :class:`lmdb.Environment` is shared by all threads (opened
with ``lock=True``); lmdb runs one write transaction at a time and any number
of concurrent readers. Reads do not block each other; the copy and hash
release the GIL.

Processes: several processes may open the same environment (readers beside
one writer; lmdb's lock file coordinates them) -- each through its own
store, opened *after* any ``fork()``: a store used in a process other than
the one that opened it raises :class:`~tiercache.errors.StoreError` instead
of corrupting lmdb's lock table. py-lmdb refuses to open one environment
twice in a process. A store given a ``capacity_bytes`` compacts (replaces
its file) and locks the folder, so only stores without one may be shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np

from .. import codec
from ..buffers import PAGE_BYTES
from ..errors import CorruptShardError, MediumDamagedError, StoreError
from .base import ShardInfo, VerifyMode
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

DEFAULT_MAP_BYTES = 4 << 30
_MAP_SLACK_BYTES = 256 << 20
_MAX_GROW_ATTEMPTS = 16
_DIGEST_PREFIX = b"\xff"
#: Compact when the file exceeds this multiple of the live pages' bytes (plus the slack).
COMPACT_RATIO = 1.25
#: Fixed allowance above ``COMPACT_RATIO * live bytes`` before compacting.
COMPACT_SLACK_BYTES = 1 << 20
#: After a failed compaction, wait this long before trying again (doubling, up to the max).
COMPACT_RETRY_S = 1.0
COMPACT_RETRY_MAX_S = 60.0
_COMPACT_DIR = ".compact.tmp"
#: Environments a forked child closed its store over: kept referenced, never freed here.
_INHERITED_ENVS: list[lmdb.Environment] = []

log = logging.getLogger("tiercache")


class _LmdbEnvironment(DiskStore):
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
        self._compact_retry_at = 0.0
        self._compact_backoff_s = COMPACT_RETRY_S
        self._pid = os.getpid()
        self._guard = RemapGuard()
        self._close_lock = threading.Lock()
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
            shutil.rmtree(self.path / _COMPACT_DIR, ignore_errors=True)  # crashed compaction
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
            raise StoreError(f"lmdb store {self.path} is closed")
        if self._pid != os.getpid():
            raise StoreError(f"lmdb store {self.path} was opened by process {self._pid}: an lmdb "
                             "environment must not be used across fork(); open the store (or "
                             "the cache) in the child process")
        return env

    def _run(self, op: Callable[[lmdb.Environment], _T], grow_for: int = 0) -> _T:
        """Run ``op(env)`` under the shared guard; adopt/grow the map and retry if needed."""
        for _ in range(_MAX_GROW_ATTEMPTS):
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
            self._remap(need)
        raise StoreError(f"lmdb store {self.path}: could not grow the map for a "
                         f"{grow_for}-byte value (disk full?)")

    def _remap(self, need: int) -> None:
        """Adopt another process's map size (``need == 0``) or grow to fit ``need`` bytes."""
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
        if not self.compacting or time.monotonic() < self._compact_retry_at:
            return
        try:
            limit = self.compact_above_bytes
            if limit is None or self.file_nbytes() <= limit:
                return
            self.compact()
        except (StoreError, OSError, lmdb.Error) as exc:  # e.g. the rename's fsync: EIO
            self.compaction_failures += 1
            self._compact_retry_at = time.monotonic() + self._compact_backoff_s
            log.warning("lmdb store %s: %s; the write stands, compaction retried in %.0f s",
                        self.path, exc, self._compact_backoff_s)
            self._compact_backoff_s = min(2 * self._compact_backoff_s, COMPACT_RETRY_MAX_S)
        else:
            self._compact_backoff_s = COMPACT_RETRY_S

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
            tmp = self.path / _COMPACT_DIR
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                env.copy(str(tmp), compact=True)
                _fsync_path(tmp / "data.mdb")
            except (OSError, lmdb.Error) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(f"lmdb store {self.path}: compaction failed ({exc}); the "
                                 "uncompacted file stays in use") from exc
            self._env = None
            env.close()
            try:
                os.replace(tmp / "data.mdb", self.path / "data.mdb")
                _fsync_path(self.path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                self._open_medium()
            after = (int(self._env_or_raise().info()["last_pgno"]) + 1) * PAGE_BYTES
        self.compactions += 1
        log.info("lmdb store %s compacted: %d -> %d bytes", self.path, before, after)
        return after

    def close(self) -> None:
        """Close the environment (waits for in-flight operations). Idempotent."""
        with self._close_lock:
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


class LmdbStore(_LmdbEnvironment):
    """Persistent store over one lmdb environment directory.

    Parameters
    ----------
    path, verify, exclusive:
        As :class:`~tiercache.stores.disk.DiskStore`; ``path`` is the environment's
        directory. ``verify="never"`` skips only the payload check (the header is
        always checked): a damaged payload is returned as stored. A store given a
        capacity compacts (replaces) its file, hence its folder lock; stores shared by
        several processes (readers beside one writer) are opened without a capacity.
    capacity_bytes:
        The tier's capacity: sizes the initial map and makes writes compact the file.
    map_size_bytes:
        Initial map size, overriding the one derived from ``capacity_bytes``.
    sync:
        ``fdatasync`` the data on every commit (see the module docstring).

    Raises :class:`~tiercache.errors.MediumDamagedError` when ``data.mdb`` is
    truncated or its structure is damaged, and
    :class:`~tiercache.errors.StoreError` when the folder cannot be opened or is
    locked by another process.
    """

    backend = "lmdb"

    # -- keys -----------------------------------------------------------------

    def _db_key(self, key: str) -> tuple[bytes, bool]:
        """The lmdb key for ``key`` and whether it is a digest. O(len(key))."""
        raw = codec.key_bytes(key)
        if 0 < len(raw) <= self._max_key:
            return raw, False
        return _DIGEST_PREFIX + hashlib.blake2b(raw, digest_size=32).digest(), True

    # -- Store API --------------------------------------------------------------

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """:meth:`get` that always verifies the payload (``verify`` ignored)."""
        return self._get(key, out, True)

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Return the shard under ``key`` (into ``out`` if given) or ``None``.

        Without ``out`` the result is a new writable, page-aligned array owned by
        the caller. O(n) for an n-byte payload (one copy, hashed on the fly).
        Thread-safe; concurrent reads run in parallel.
        """
        return self._get(key, out, self.verify == "always")

    def _get(self, key: str, out: np.ndarray | None, expect: bool) -> np.ndarray | None:
        db_key, _digest = self._db_key(key)
        where = self._where(key)

        def op(env: lmdb.Environment) -> np.ndarray | None:
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor(db=self._hdr)
                if not cursor.set_key(db_key):
                    return None
                header = codec.decode_header(self._bounds.value(cursor, where, "header"), key,
                                             where=where)
                result = codec.prepare_out(header, out, key)
                cursor = txn.cursor(db=self._data)
                if not cursor.set_key(db_key):
                    raise CorruptShardError(f"{where}: header present but payload missing")
                payload = self._bounds.value(cursor, where, "payload")
                codec.copy_verified(codec.byte_view(result), payload,
                                    header.payload_checksum if expect else None, where=where)
                return result

        return self._run(op)

    def put(self, key: str, array: np.ndarray) -> int:
        """Store a copy of ``array`` under ``key`` in one write transaction.

        Returns :meth:`stored_size` of the array. O(n): one hash pass plus
        lmdb's write of the payload (the array's own buffer when C-contiguous).
        Writers are serialised by lmdb; readers are not blocked.
        """
        payload = codec.contiguous_payload(array)
        db_key, digest = self._db_key(key)
        header = codec.encode_header(key, array, codec.payload_checksum(payload),
                                     store_key=digest)

        def op(env: lmdb.Environment) -> None:
            with env.begin(write=True) as txn:
                txn.put(db_key, header, db=self._hdr)
                txn.put(db_key, payload, db=self._data)

        self._run(op, grow_for=len(header) + payload.nbytes)
        self._maybe_compact()  # never raises: the put is committed whatever happens now
        return codec.stored_nbytes(array)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was present. O(log n), one write transaction."""
        db_key, _digest = self._db_key(key)

        def op(env: lmdb.Environment) -> bool:
            with env.begin(write=True) as txn:
                found = txn.delete(db_key, db=self._hdr)
                found_data = txn.delete(db_key, db=self._data)
                return bool(found or found_data)

        found = self._run(op, grow_for=PAGE_BYTES)
        if found:
            self._maybe_compact()  # fewer live pages: the threshold came down
        return found

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` from its header (payload untouched).

        Raises :class:`~tiercache.errors.CorruptShardError` for a damaged header.
        O(header).
        """
        db_key, _digest = self._db_key(key)
        where = self._where(key)

        def op(env: lmdb.Environment) -> bytes | None:
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor(db=self._hdr)
                if not cursor.set_key(db_key):
                    return None
                return bytes(self._bounds.value(cursor, where, "header"))

        raw_header = self._run(op)
        if raw_header is None:
            return None
        header = codec.decode_header(raw_header, key, where=where)
        return ShardInfo.from_header(header)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry (damaged or not). O(log n); no decoding."""
        if not isinstance(key, str):
            return False
        db_key, _digest = self._db_key(key)

        def op(env: lmdb.Environment) -> bool:
            with env.begin(buffers=True) as txn:
                return bool(txn.cursor(db=self._hdr).set_key(db_key))  # the value untouched

        return self._run(op)

    def keys(self) -> Iterator[str]:
        """Snapshot of all keys, in lmdb key order. O(number of shards).

        A digest-filed key whose header is damaged cannot be named and is
        left out; every other key is listed even if its shard is damaged
        (``get`` then raises). A stored key that is not valid UTF-8 (a bit flipped
        on the medium: tiercache never writes one) raises
        :class:`~tiercache.errors.MediumDamagedError` naming ``data.mdb`` and the
        key's bytes: lmdb keeps no checksums of its own pages, so the tree holding
        it cannot be trusted either.
        """

        def op(env: lmdb.Environment) -> list[str]:
            found: list[str] = []
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor(db=self._hdr)
                for key_view in cursor.iternext(keys=True, values=False):
                    db_key = bytes(key_view)
                    if not db_key.startswith(_DIGEST_PREFIX):
                        try:
                            found.append(codec.key_from_bytes(db_key))
                        except UnicodeDecodeError as exc:
                            raise MediumDamagedError(
                                f"lmdb data file {self.path / 'data.mdb'} is damaged: stored "
                                f"key {db_key[:80]!r} is not valid UTF-8 ({exc.reason} at "
                                f"byte {exc.start})") from None
                        continue
                    try:
                        raw_header = self._bounds.value(cursor, f"lmdb store {self.path}", "header")
                        stored = codec.decode_header(raw_header).key
                    except CorruptShardError:
                        continue
                    if stored is not None:
                        found.append(stored)
            return found

        return iter(self._run(op))


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
