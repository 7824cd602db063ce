"""packed store: every shard in one append-only data file, served as memory-mapped views.

Why
    A model's weights are read in the same order every forward pass. Laid out
    back to back in that order in one file -- as a GGUF file is, and as
    llama.cpp memory-maps it -- a cold pass reads the disk sequentially, at its
    full bandwidth; one file per shard (the diskcache store) read at 60-70 % of
    it on the benchmark machine (docs/performance.md). This store keeps that
    layout and still behaves like a tier: shards can be added, replaced and
    deleted at any time, and the space of dead ones is reclaimed.
Layout (in the store's directory)
    ``data.<generation>.bin``
        The shards, each a :mod:`~tiercache.codec` header followed by the
        payload, at an offset aligned to :data:`LARGE_ALIGN_BYTES` (shards of
        at least :data:`LARGE_SHARD_BYTES`) or to 64 bytes (smaller ones), so
        every payload is at least 64-byte aligned for zero-copy handoff.
    ``index.sqlite``
        ``key -> (offset, length)`` plus the current generation and the live
        bytes, in sqlite (WAL mode).
    ``epoch``
        An 8-byte change counter, mapped shared by every process that opens the
        store; bumped after every committed change. A reader compares it to the
        value it last saw (a memory read) to know whether its cached views may
        be stale.
    ``lock``
        Writers hold an exclusive ``flock`` on it for each write: one writer at a
        time across the instances that share the folder; readers never wait for it.
    ``.tiercache.lock``
        A tier's store (``exclusive``, the default when a capacity is given) holds
        :func:`~tiercache.stores.base.lock_tier_folder`'s lock on it while open: a
        second process -- or a second exclusive store in this one -- opening the
        folder is refused with a message naming the holder's pid. Instances opened
        without ``exclusive`` (tools, tests) share the folder through the per-write
        ``flock`` and the epoch counter.
Writes are appends
    A put writes header and payload past the current end of the data file,
    then commits the index row. Bytes in a file are never rewritten, so a view
    handed out earlier stays correct for as long as it is referenced, whatever
    happens to its key afterwards (the contract of :meth:`Store.get_view`), in
    this process and in others. A replaced or deleted shard's bytes become dead
    space; when dead bytes exceed both the live bytes and
    :data:`COMPACT_MIN_DEAD_BYTES`, the store *compacts*: it copies the live
    shards into ``data.<generation + 1>.bin`` (fsynced), switches the index to
    it in one transaction and unlinks the old file (mappings of it stay valid).
    :meth:`PackedStore.compact` does the same on demand, optionally in a given
    key order: pass a model's schedule to lay its shards out in reading order.
    So the directory holds at most ``2 x live bytes + COMPACT_MIN_DEAD_BYTES``
    plus one shard.
Crashes
    A process killed after writing a shard but before committing its row leaves
    unreferenced bytes at the end of the file (dead space, reclaimed by the next
    compaction); one killed during a compaction leaves a ``data.<n>.bin`` file
    the index does not name (:meth:`PackedStore.sweep_orphans`, i.e. ``tiercache
    verify --repair``, removes it). Plain puts are not fsynced (as the other
    disk stores): after an OS crash a row may point at lost bytes, which the
    checksum (or the length check) turns into
    :class:`~tiercache.errors.CorruptShardError`; compactions are fsynced before
    the index switches to the new file.
Reads
    :meth:`PackedStore.get_view` maps the data file (private, copy-on-write:
    the array is read-only and can never change the file) and returns an array
    over the payload; with ``verify="always"`` the payload checksum is checked
    the first time each stored shard is viewed in this process. Views are
    cached per key: a repeated call costs a dict lookup and a read of the
    epoch counter. :meth:`PackedStore.get` copies from the mapping into the
    destination and checks the checksum in the same pass.
    :meth:`PackedStore.willneed` (what the prefetcher calls on a zero-copy
    tier) starts reading a shard this process has not read before into the
    page cache without waiting (``posix_fadvise(WILLNEED)`` in
    read-ahead-window sized pieces, the most Linux reads per call); later
    passes are left to the kernel's read-ahead over the file, which reads it
    front to back since the shards are in reading order.

Damage
    A damaged ``index.sqlite`` -- sqlite says it is not a database or malformed, its
    schema is not ours, or a row holds what :meth:`PackedStore.put` never writes (a
    key that is not UTF-8 bytes, an offset or length that is not a non-negative
    integer, a meta value that is not a count) -- raises
    :class:`~tiercache.errors.MediumDamagedError` naming the file and the row, from
    the constructor or :meth:`PackedStore.keys`: the engine opens such a tier
    degraded and ``tiercache verify --repair`` empties it. A row read by its key
    (:meth:`PackedStore.get`) with a damaged offset or length is that entry's
    :class:`~tiercache.errors.CorruptShardError`, as is a row pointing past the end of
    the data file (an OS crash can lose unsynced appends); compaction drops the
    latter. Every shard's bytes are checked against their header, which names the
    key, so a damaged index never serves another shard's bytes.
Closing
    After :meth:`PackedStore.close` -- and for a call that runs into it -- every
    method raises :class:`~tiercache.errors.CacheClosedError`; views handed out
    stay valid.

Thread-safety: all methods may be called from any thread. Index and file state
are guarded by one lock; the view cache is read without it (GIL-atomic dict
operations). Writers in several processes are serialised by the ``flock``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import codec
from ..errors import CacheClosedError, CorruptShardError, MediumDamagedError, StoreError
from .base import (
    LockHandle,
    ShardInfo,
    Store,
    VerifyMode,
    check_verify_mode,
    file_identity_problem,
    lock_tier_folder,
)

#: Shards of at least this many bytes start on a page boundary.
LARGE_SHARD_BYTES = 64 * 1024
#: Alignment of large shards in the data file (one page).
LARGE_ALIGN_BYTES = 4096
#: Alignment of small shards (keeps payloads 64-byte aligned; headers are 64-multiples).
SMALL_ALIGN_BYTES = 64
#: Dead bytes must exceed both this and the live bytes before a put or delete compacts.
COMPACT_MIN_DEAD_BYTES = 64 << 20
#: Read-ahead request size used when the block device's limits cannot be read.
DEFAULT_ADVICE_BYTES = 128 * 1024
#: Upper bound on one read-ahead request (Linux splits them into 2 MiB pieces anyway).
MAX_ADVICE_BYTES = 16 << 20
FORMAT = 1
INDEX_NAME = "index.sqlite"
EPOCH_NAME = "epoch"
LOCK_NAME = "lock"
_PAGE = mmap.PAGESIZE
#: errnos meaning "copy_file_range cannot copy between these files": fall back to pread
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
_DATA_RE = re.compile(r"^data\.(\d+)\.bin$")
#: sqlite primary result codes saying the index file itself is damaged (SQLITE_CORRUPT,
#: SQLITE_NOTADB)
_DAMAGED_CODES = frozenset({11, 26})
#: sqlite messages saying so (a damaged schema makes our fixed statements fail)
_DAMAGED_MESSAGES = ("malformed database schema", "database disk image is malformed",
                     "file is not a database", "no such table", "no such column")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    key BLOB PRIMARY KEY, offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('format', 1), ('generation', 0), ('live_bytes', 0);
"""


def data_name(generation: int) -> str:
    """File name of the data file of ``generation``."""
    return f"data.{generation}.bin"


@dataclass
class _Entry:
    """What a process knows of one stored shard: where it is and its header. Its view
    lives in :attr:`PackedStore._views` (dropped when the data file is remapped), so an
    entry never keeps a superseded mapping alive."""

    generation: int
    offset: int
    length: int
    header: codec.ShardHeader
    verified: bool = False
    seen: bool = False  # read ahead or viewed by this process before


class _DataFile:
    """One generation's data file: a descriptor plus the largest mapping made of it."""

    def __init__(self, path: Path, generation: int, *, create: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self.path = path
        self.generation = generation
        self.fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.inode = os.fstat(self.fd).st_ino
        self.mapping: mmap.mmap | None = None
        self.mapped_bytes = 0

    def mapped(self, end: int) -> mmap.mmap | None:
        """A mapping covering ``[0, end)``, remapping (once) if the file grew; ``None`` if
        the file is shorter than ``end``. The superseded mapping is dropped here: it
        stays alive (a memory map and a descriptor) only as long as views over it are
        referenced, and is unmapped and closed with the last of them (its refcount --
        never closed explicitly, since numpy views do not pin an mmap's buffer). O(1)."""
        if self.mapping is not None and end <= self.mapped_bytes:
            return self.mapping
        size = os.fstat(self.fd).st_size
        if size < end or size == 0:
            return None
        self.mapping = mmap.mmap(self.fd, size, access=mmap.ACCESS_COPY)
        self.mapped_bytes = size
        return self.mapping

    def close(self) -> None:
        self.mapping = None  # views keep their own mapping alive
        with contextlib.suppress(OSError):
            os.close(self.fd)


class PackedStore(Store):
    """Persistent store keeping every shard in one append-only, memory-mapped data file.

    Parameters
    ----------
    path:
        Directory of the store; created if missing.
    verify:
        ``"always"`` checks the payload checksum on every copying read and on the
        first view of each shard; ``"never"`` skips the payload check (headers and
        lengths are always checked).
    capacity_bytes:
        Accepted for a uniform constructor; only decides ``exclusive``'s default.
    exclusive:
        Hold :func:`~tiercache.stores.base.lock_tier_folder`'s lock while open, so no
        other process (or exclusive store) can open the folder: what a tier's store
        does. Default: when ``capacity_bytes`` is given, as for a tier's store.

    Raises :class:`~tiercache.errors.MediumDamagedError` when ``index.sqlite`` is
    damaged, and :class:`~tiercache.errors.StoreError` when the folder cannot be
    opened or another process holds it.

    Capacity counts :func:`tiercache.codec.stored_nbytes` (header plus payload);
    alignment padding and dead space are not counted (see the module docstring
    for the bound on disk use).
    """

    backend = "packed"
    persistent = True
    supports_views = True

    def __init__(self, path: str | os.PathLike[str], *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> None:
        check_verify_mode(verify)
        self.path = Path(path)
        self.verify: VerifyMode = verify
        self._exclusive = capacity_bytes is not None if exclusive is None else exclusive
        self._folder_lock: LockHandle | None = None
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        #: Views over the *current* mapping, per key, with the entry each was made for.
        #: Replaced by an empty dict whenever the data file is remapped or switched, so
        #: the store itself never holds a superseded mapping (and its descriptor).
        self._views: dict[str, tuple[_Entry, np.ndarray]] = {}
        self._closed = True
        self._open()

    # -- opening and closing ---------------------------------------------------------
    def _open(self) -> None:
        """Open (creating if needed) the directory, index, epoch counter and data file,
        first taking the folder's lock when ``exclusive``. A failed open closes the
        lock files again (the tier retries opens)."""
        self._lock_fd = -1
        if self._exclusive:
            self._folder_lock = lock_tier_folder(self.path)  # StoreError: someone has it
        try:
            self._open_files()
        except BaseException:
            if self._lock_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
            self._release_folder()
            raise

    def _release_folder(self) -> None:
        """Release the folder lock if held. Idempotent."""
        lock, self._folder_lock = self._folder_lock, None
        if lock is not None:
            lock.release()

    def _open_files(self) -> None:
        """Open the index, the epoch counter and the data file (folder lock held if
        exclusive). Whatever it opened is closed again when it fails."""
        conn: sqlite3.Connection | None = None
        epoch_map: mmap.mmap | None = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o644)
            with self._flocked():
                conn = sqlite3.connect(str(self.path / INDEX_NAME), timeout=60,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                fmt = self._meta(conn, "format")
                if fmt != FORMAT:
                    raise MediumDamagedError(
                        f"packed store {self.path}: {INDEX_NAME} says format {fmt} (damaged, "
                        f"or written by another tiercache version); this tiercache reads "
                        f"format {FORMAT}: use a new folder, or `tiercache verify --repair` "
                        "empties this one")
                epoch_path = self.path / EPOCH_NAME
                fd = os.open(epoch_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    if os.fstat(fd).st_size < 8:
                        os.ftruncate(fd, 8)
                    epoch_map = mmap.mmap(fd, 8, access=mmap.ACCESS_WRITE)
                finally:
                    os.close(fd)
                generation = self._meta(conn, "generation")
                has_rows = conn.execute("SELECT 1 FROM shards LIMIT 1").fetchone() is not None
                data_path = self.path / data_name(generation)
                if has_rows and not data_path.exists():
                    raise self._damaged(f"it names shards in {data_name(generation)}, which "
                                        "is missing (the folder lost files, or the index its "
                                        "generation)")
                self._data = _DataFile(data_path, generation, create=True)
        except BaseException as exc:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if epoch_map is not None:
                epoch_map.close()
            if isinstance(exc, sqlite3.Error):
                raise self._index_error(exc, f"packed store {self.path}: cannot open the "
                                             "index") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"packed store {self.path}: cannot open ({exc}); check the "
                                 "path is a writable directory") from exc
            raise
        self._epoch_map = epoch_map
        self._conn = conn
        self._epoch = memoryview(self._epoch_map).cast("Q")
        self._epoch_seen = self._epoch[0]
        st = os.stat(self.path / INDEX_NAME)
        self._identity = (st.st_dev, st.st_ino)
        self._advice_bytes = _advice_bytes(self._data.fd)
        self._closed = False

    def close(self) -> None:
        """Close the store; later calls -- and calls running into the close -- raise
        :class:`~tiercache.errors.CacheClosedError`. Views stay valid. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._forget_all()
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._data.close()
            self._epoch.release()
            with contextlib.suppress(BufferError):
                self._epoch_map.close()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._release_folder()

    def reopen(self) -> None:
        """Close and open the directory now at :attr:`path` (created if missing)."""
        self.close()
        self._open()

    def check_health(self) -> str | None:
        """Why the store is unusable, or ``None``. One ``stat`` of the index."""
        if self._closed:
            return f"packed store {self.path} is closed"
        return file_identity_problem(self.path / INDEX_NAME, self._identity)

    # -- helpers ---------------------------------------------------------------------
    def _where(self, key: str) -> str:
        return f"packed store {self.path}, key {key!r}"

    def _forget_all(self) -> None:
        """Drop every cached entry and view (the index changed under us). O(1)."""
        self._entries = {}
        self._views = {}

    def _forget(self, key: str) -> None:
        """Drop ``key``'s cached entry and view. O(1)."""
        self._entries.pop(key, None)
        self._views.pop(key, None)

    def _forget_if(self, key: str, entry: _Entry) -> None:
        """Drop ``key``'s cached entry if it is still ``entry`` (its bytes failed a check).
        Lock held."""
        if self._entries.get(key) is entry:
            self._forget(key)

    def _mapped(self, data: _DataFile, end: int) -> mmap.mmap | None:
        """``data.mapped(end)``, dropping the cached views when that remapped the file (so
        the superseded mapping dies with the caller's last view). Lock held. O(1)."""
        before = data.mapping
        mapping = data.mapped(end)
        if mapping is not before:
            self._views = {}
        return mapping

    def _check_open(self) -> None:
        """Raise :class:`CacheClosedError` once :meth:`close` has begun."""
        if self._closed:
            raise CacheClosedError(f"packed store {self.path}: the store was closed")

    def _damaged(self, what: str) -> MediumDamagedError:
        """The error for an index whose content cannot be what this store wrote."""
        return MediumDamagedError(f"packed store {self.path}: {self.path / INDEX_NAME} is "
                                  f"damaged: {what}; `tiercache verify --repair` empties the "
                                  "tier (it refills from below)")

    def _index_error(self, exc: sqlite3.Error, what: str) -> StoreError:
        """``exc`` from the index as a :class:`MediumDamagedError` when sqlite says the file
        is damaged (not a database, malformed image or schema), else a StoreError."""
        code = getattr(exc, "sqlite_errorcode", None)
        if (isinstance(code, int) and code & 0xFF in _DAMAGED_CODES) \
                or str(exc).startswith(_DAMAGED_MESSAGES):
            return MediumDamagedError(f"{what}: {self.path / INDEX_NAME} is damaged ({exc}); "
                                      "`tiercache verify --repair` empties the tier (it "
                                      "refills from below)")
        return StoreError(f"{what} ({exc})")

    def _meta(self, conn: sqlite3.Connection, name: str) -> int:
        """The integer meta value ``name`` (0 if missing); MediumDamagedError if the row
        holds anything but a non-negative integer. O(log n)."""
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return 0
        value = row[0]
        if type(value) is not int or value < 0:
            raise self._damaged(f"meta row {name!r} holds {_show(value)}, not a count")
        return value

    @contextlib.contextmanager
    def _flocked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sync_epoch(self) -> None:
        """Forget cached views if any process changed the store since we last looked."""
        try:
            now = self._epoch[0]
        except ValueError:  # close() released the counter: a StoreError, as every store
            self._check_open()
            raise
        if now != self._epoch_seen:
            with self._lock:
                self._forget_all()
                self._epoch_seen = now

    def _bump_epoch(self, before: int) -> None:
        """Record a committed change (flock held). ``before`` is the counter read when
        the change began: if nobody else changed the store meanwhile, our cached views
        of other keys stay valid."""
        value = (self._epoch[0] + 1) & ((1 << 64) - 1)
        self._epoch[0] = value
        if before == self._epoch_seen:
            self._epoch_seen = value
        else:
            self._forget_all()
            self._epoch_seen = value

    def _data_for(self, generation: int) -> _DataFile:
        """The data file of ``generation`` (switching to it after another process
        compacted). Lock held."""
        if generation != self._data.generation:
            new = _DataFile(self.path / data_name(generation), generation, create=False)
            self._data.close()
            self._data = new
            self._views = {}
        return self._data

    def _lookup(self, key: str) -> tuple[int, int, int] | None:
        """``(generation, offset, length)`` of ``key`` in one consistent read. Lock held."""
        row = self._conn.execute(
            "SELECT s.offset, s.length, m.value FROM shards AS s, meta AS m "
            "WHERE s.key = ? AND m.name = 'generation'", (codec.key_bytes(key),)).fetchone()
        if row is None:
            return None
        offset, length, generation = row
        if type(generation) is not int or generation < 0:
            raise self._damaged(f"meta row 'generation' holds {_show(generation)}")
        if not _plausible(offset, length):
            raise CorruptShardError(f"{self._where(key)}: its index row is damaged (offset "
                                    f"{_show(offset)}, length {_show(length)})")
        return generation, offset, length

    def _entry(self, key: str) -> tuple[_Entry, np.ndarray] | None:
        """The cached entry of ``key`` and a view of its payload over the current mapping,
        resolving the entry from the index and (re)building the view if needed. O(1)
        once cached (two dict lookups); O(header) otherwise."""
        self._sync_epoch()
        entry = self._entries.get(key)
        if entry is not None:
            cached = self._views.get(key)
            if cached is not None and cached[0] is entry:
                return cached
        where = self._where(key)
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is not None and entry.generation == self._data.generation:
                mapping = self._map_for(self._data, entry.offset + entry.length, where)
                if mapping is not None:  # else the file shrank: resolve it again below
                    return self._cache_view(key, entry, mapping)
            for attempt in range(3):
                try:
                    found = self._lookup(key)
                    if found is None:
                        return None
                    generation, offset, length = found
                    data = self._data_for(generation)
                    break
                except FileNotFoundError:
                    if attempt == 2:  # compacted away under us three times in a row
                        raise StoreError(f"{where}: its data file keeps disappearing") from None
                except sqlite3.Error as exc:
                    raise self._index_error(exc, f"{where}: index read failed") from exc
                except OSError as exc:
                    raise StoreError(f"{where}: cannot open the data file ({exc})") from exc
            mapping = self._map_for(data, offset + length, where)
            if mapping is None:
                raise CorruptShardError(f"{where}: the shard lies past the end of "
                                        f"{data.path.name} (lost in a crash?)")
            with memoryview(mapping) as whole:
                prefix = whole[offset:offset + codec.HEADER_ALIGN_BYTES]
                hlen = codec.fixed_header_length(prefix, where=where)
                prefix.release()
                if hlen > length:
                    raise CorruptShardError(f"{where}: header of {hlen} bytes in an entry of "
                                            f"{length}")
                raw = whole[offset:offset + hlen]
                header = codec.decode_header(bytes(raw), key, where=where)
                raw.release()
            if header.total_nbytes != length:
                raise CorruptShardError(f"{where}: entry has {length} bytes, the header says "
                                        f"{header.total_nbytes}")
            entry = _Entry(generation, offset, length, header)
            self._entries[key] = entry
            return self._cache_view(key, entry, mapping)

    def _map_for(self, data: _DataFile, end: int, where: str) -> mmap.mmap | None:
        """:meth:`_mapped` with its errors as StoreError naming the file. Lock held."""
        try:
            return self._mapped(data, end)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{where}: cannot map {data.path} ({exc})") from exc

    def _cache_view(self, key: str, entry: _Entry,
                    mapping: mmap.mmap) -> tuple[_Entry, np.ndarray]:
        """Build ``entry``'s read-only payload view over ``mapping`` and cache it. Lock held;
        O(1)."""
        header = entry.header
        view: np.ndarray = np.ndarray(header.shape, dtype=header.dtype, buffer=mapping,
                                      offset=entry.offset + header.header_nbytes)
        view.flags.writeable = False
        pair = (entry, view)
        self._views[key] = pair
        return pair

    def _verify(self, entry: _Entry, view: np.ndarray, key: str) -> None:
        """Check ``entry``'s payload checksum once (outside the lock: it may read disk)."""
        if entry.verified:
            return
        payload = codec.byte_view(view)
        if codec.payload_checksum(payload) != entry.header.payload_checksum:
            with self._lock:
                self._forget_if(key, entry)
            raise CorruptShardError(f"{self._where(key)}: payload checksum mismatch")
        entry.verified = True

    # -- reads -----------------------------------------------------------------------
    def get_view(self, key: str) -> np.ndarray | None:
        """A zero-copy, read-only view of ``key``'s payload in the mapped data file.

        Valid for as long as it is referenced (the file's bytes are never rewritten).
        With ``verify="always"`` the checksum is checked the first time this process
        views the stored shard (that pass also reads it from disk). O(1) once cached:
        a dict lookup and an epoch read; O(n) the first time. Thread-safe.
        """
        found = self._entry(key)
        if found is None:
            return None
        entry, view = found
        entry.seen = True
        if self.verify == "always" and not entry.verified:
            self._verify(entry, view, key)
        return view

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Copy ``key``'s shard into ``out`` (or a new page-aligned array) and return it.

        Copy and checksum run in one pass over the mapping (the checksum only with
        ``verify="always"``). O(n). Thread-safe.
        """
        return self._copy(key, out, self.verify == "always")

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """:meth:`get` that always verifies the payload (``verify`` ignored)."""
        return self._copy(key, out, True)

    def _copy(self, key: str, out: np.ndarray | None, verify: bool) -> np.ndarray | None:
        found = self._entry(key)
        if found is None:
            return None
        entry, view = found
        header = entry.header
        result = codec.prepare_out(header, out, key)
        try:
            codec.copy_verified(codec.byte_view(result), codec.byte_view(view),
                                header.payload_checksum if verify else None,
                                where=self._where(key))
        except CorruptShardError:
            with self._lock:
                self._forget_if(key, entry)
            raise
        if verify:
            entry.verified = True
        return result

    def willneed(self, key: str) -> int:
        """Get ``key`` ready for a fast :meth:`get_view` without waiting; return its
        stored bytes (0 if absent).

        - All its pages in the page cache (``mincore``): nothing to do.
        - Not there, and never read by this process: start reading it into the page
          cache (``posix_fadvise(WILLNEED)`` in read-ahead-window pieces, the most
          Linux reads per call; asynchronous).
        - Not there, but read before: the page cache evicted it, so it cannot hold
          the loop. Nothing is advised then: pages read ahead sit unmapped on the
          inactive list and are the first the kernel reclaims -- before the loop gets
          to them, while the pages it already used stay, protected by their accessed
          bits. Measured (docs/performance.md): advising under a memory cap read
          7-15 % more and ran slower than leaving it to the page-fault read-ahead,
          which reads the file sequentially since shards are laid out in order.

        Never waits for I/O (verification is :meth:`get_view`'s, see
        :meth:`needs_check`). O(pages / 4096) plus system calls that release the
        GIL. Thread-safe."""
        found = self._entry(key)
        if found is None:
            return 0
        entry, view = found
        data = self._data
        if not entry.seen and entry.generation == data.generation \
                and _resident(entry, view) is False:
            end = entry.offset + entry.length
            step = self._advice_bytes
            with contextlib.suppress(OSError):
                for start in range(entry.offset, end, step):
                    os.posix_fadvise(data.fd, start, min(step, end - start),
                                     os.POSIX_FADV_WILLNEED)
        entry.seen = True
        return entry.length

    def needs_check(self, key: str) -> bool:
        """Whether :meth:`get_view` would verify ``key`` first (``verify="always"`` and
        not yet verified in this process, or not looked up yet). O(1)."""
        if self.verify != "always":
            return False
        entry = self._entries.get(key)
        return entry is None or not entry.verified

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` (header only). O(1) once cached."""
        found = self._entry(key)
        if found is None:
            return None
        return ShardInfo.from_header(found[0].header)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry (damaged or not). One index lookup."""
        if not isinstance(key, str):
            return False
        self._sync_epoch()
        if key in self._entries:
            return True
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute("SELECT 1 FROM shards WHERE key = ?",
                                          (codec.key_bytes(key),)).fetchone() is not None
            except sqlite3.Error as exc:
                raise self._index_error(exc, f"{self._where(key)}: lookup failed") from exc

    def keys(self) -> Iterator[str]:
        """Snapshot of every key, in data-file order. O(number of shards)."""
        return iter([key for key, _offset, _length in self.layout()])

    def layout(self) -> list[tuple[str, int, int]]:
        """``(key, offset, length)`` of every shard, in data-file order. O(shards).

        Raises :class:`MediumDamagedError` (naming ``index.sqlite`` and the row) when
        the index is damaged: sqlite cannot read it, or a row holds what this store
        never writes (a key that is not UTF-8 bytes, an offset or length that is not a
        non-negative integer). A row pointing past the end of the data file is listed:
        reading it raises :class:`CorruptShardError` (an OS crash can lose unsynced
        bytes), and the tier drops it.
        """
        with self._lock:
            self._check_open()
            rows = self._rows(f"packed store {self.path}: listing keys failed")
        return [(codec.key_from_bytes(k), o, n) for k, o, n in rows]

    def _rows(self, what: str) -> list[tuple[bytes, int, int]]:
        """Every index row ``(key bytes, offset, length)`` by offset, each checked to be
        what :meth:`put` writes (MediumDamagedError otherwise). Lock held. O(shards)."""
        try:
            rows = self._conn.execute(
                "SELECT key, offset, length FROM shards ORDER BY offset").fetchall()
        except sqlite3.Error as exc:
            raise self._index_error(exc, what) from exc
        for kb, offset, length in rows:
            if not isinstance(kb, bytes):
                raise self._damaged(f"a shard row has a key of type {type(kb).__name__} "
                                    f"({_show(kb)}), not a BLOB")
            try:
                codec.key_from_bytes(kb)
            except UnicodeDecodeError as exc:
                raise self._damaged(f"the key {_show(kb)} of a shard row is not UTF-8 "
                                    f"({exc.reason} at byte {exc.start})") from None
            if not _plausible(offset, length):
                raise self._damaged(f"the row of key {_show(kb)} has offset {_show(offset)} "
                                    f"and length {_show(length)}")
        return cast("list[tuple[bytes, int, int]]", rows)

    def stored_size(self, array: np.ndarray) -> int:
        """Header plus payload bytes of ``array`` (what capacity counts). O(1)."""
        codec.check_storable(array)
        return codec.stored_nbytes(array)

    def disk_usage(self) -> tuple[int, int]:
        """``(live bytes, data file bytes)``; the difference is dead space and padding."""
        with self._lock:
            self._check_open()
            live = self._meta(self._conn, "live_bytes")
            return live, os.fstat(self._data.fd).st_size

    # -- writes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[_DataFile, int]]:
        """Hold the thread lock and the cross-process flock; yield the current data file
        and the epoch counter's value at the start."""
        with self._lock:
            self._check_open()
            with self._flocked():
                before = self._epoch[0]
                try:
                    generation = self._meta(self._conn, "generation")
                    data = self._data_for(generation)
                except sqlite3.Error as exc:
                    raise self._index_error(exc, f"packed store {self.path}: index read "
                                                 "failed") from exc
                except OSError as exc:
                    raise StoreError(f"packed store {self.path}: cannot open data file "
                                     f"({exc})") from exc
                yield data, before

    def put(self, key: str, array: np.ndarray) -> int:
        """Append a copy of ``array`` and point ``key`` at it (atomically replacing any
        old value). O(n): one hash pass and one write from the array's own buffer."""
        payload = codec.contiguous_payload(array)
        header = codec.encode_header(key, array, codec.payload_checksum(payload))
        length = len(header) + payload.nbytes
        align = LARGE_ALIGN_BYTES if length >= LARGE_SHARD_BYTES else SMALL_ALIGN_BYTES
        kb = codec.key_bytes(key)
        where = self._where(key)
        with self._writing() as (data, before):
            start = 0
            try:
                start = os.fstat(data.fd).st_size
                offset = -(-start // align) * align
                _pwrite_all(data.fd, memoryview(header), offset)
                _pwrite_all(data.fd, payload, offset + len(header))
                conn = self._conn
                with _transaction(conn):
                    old = conn.execute("SELECT length FROM shards WHERE key = ?",
                                       (kb,)).fetchone()
                    old_length = old[0] if old is not None else 0
                    if type(old_length) is not int:
                        old_length = 0  # a damaged row: replaced now, its size unknown
                    conn.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)",
                                 (kb, offset, length))
                    conn.execute("UPDATE meta SET value = value + ? WHERE name = 'live_bytes'",
                                 (length - old_length,))
            except (OSError, sqlite3.Error) as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(data.fd, start)  # nothing committed points past start
                if isinstance(exc, sqlite3.Error):
                    raise self._index_error(exc, f"{where}: write failed") from exc
                raise StoreError(f"{where}: write failed ({exc})") from exc
            self._forget(key)
            self._bump_epoch(before)
            self._maybe_compact(data)
        return codec.stored_nbytes(array)

    def delete(self, key: str) -> bool:
        """Remove ``key``'s entry (its bytes become dead space); return whether it was
        present. O(log n)."""
        kb = codec.key_bytes(key)
        with self._writing() as (data, before):
            conn = self._conn
            try:
                with _transaction(conn):
                    old = conn.execute("SELECT length FROM shards WHERE key = ?",
                                       (kb,)).fetchone()
                    if old is not None:
                        old_length = old[0] if type(old[0]) is int else 0
                        conn.execute("DELETE FROM shards WHERE key = ?", (kb,))
                        conn.execute("UPDATE meta SET value = value - ? "
                                     "WHERE name = 'live_bytes'", (old_length,))
            except sqlite3.Error as exc:
                raise self._index_error(exc, f"{self._where(key)}: delete failed") from exc
            self._forget(key)
            if old is None:
                return False
            self._bump_epoch(before)
            self._maybe_compact(data)
            return True

    def _maybe_compact(self, data: _DataFile) -> None:
        """Compact when dead bytes exceed both the live bytes and the minimum. Locks held."""
        live = self._meta(self._conn, "live_bytes")
        dead = os.fstat(data.fd).st_size - live
        if dead > max(COMPACT_MIN_DEAD_BYTES, live):
            self._compact_locked(data, None)

    def compact(self, order: Sequence[str] | None = None) -> int:
        """Rewrite the live shards into a new data file, reclaiming dead space; with
        ``order``, those keys first, in that order (a model's schedule, so a forward
        pass reads the file front to back), then the rest in their current order.

        Returns the bytes reclaimed (may be negative by the alignment padding). Views
        handed out before stay valid. O(live bytes), copied in the kernel
        (``copy_file_range``); the new file is fsynced before the index switches.
        """
        with self._writing() as (data, before):
            size = os.fstat(data.fd).st_size
            new_size = self._compact_locked(data, order)
            self._bump_epoch(before)
            return size - new_size

    def _compact_locked(self, data: _DataFile, order: Sequence[str] | None) -> int:
        """Copy the live shards into the next generation's file and switch to it. Rows
        pointing past the end of the data file (bytes an OS crash lost: unreadable) are
        dropped from the index. Locks held. O(live bytes)."""
        all_rows = self._rows(f"packed store {self.path}: compaction failed")
        size = os.fstat(data.fd).st_size
        kept = [r for r in all_rows if r[1] + r[2] <= size]
        lost = [(kb,) for kb, o, n in all_rows if o + n > size]
        rows = kept
        if order is not None:
            rank: dict[bytes, int] = {}
            for i, key in enumerate(order):
                rank.setdefault(codec.key_bytes(key), i)
            rows.sort(key=lambda r: (rank.get(r[0], len(rank)), r[1]))
        generation = data.generation + 1
        path = self.path / data_name(generation)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"packed store {self.path}: cannot create {path.name} "
                             f"({exc})") from exc
        moved: list[tuple[int, bytes]] = []
        position = 0
        try:
            for kb, offset, length in rows:
                align = LARGE_ALIGN_BYTES if length >= LARGE_SHARD_BYTES else SMALL_ALIGN_BYTES
                position = -(-position // align) * align
                _copy_range(data.fd, fd, offset, position, length)
                moved.append((position, kb))
                position += length
            os.fsync(fd)
            conn = self._conn
            with _transaction(conn):
                conn.executemany("UPDATE shards SET offset = ? WHERE key = ?", moved)
                conn.executemany("DELETE FROM shards WHERE key = ?", lost)
                conn.execute("UPDATE meta SET value = ? WHERE name = 'generation'",
                             (generation,))
                if lost:
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'live_bytes'",
                                 (sum(n for _kb, _o, n in kept),))
        except (OSError, sqlite3.Error) as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise StoreError(f"packed store {self.path}: compaction failed ({exc}); the "
                             "old data file is still in use") from exc
        os.close(fd)
        self._forget_all()
        old_path = data.path
        self._data_for(generation)
        with contextlib.suppress(OSError):
            old_path.unlink()
        _fsync_dir(self.path)
        return position

    def sweep_orphans(self, *, remove: bool = False, min_age_s: float = 60.0) -> int:
        """Count (with ``remove``: delete) data files of other generations than the
        current one -- left by a compaction interrupted by a crash -- older than
        ``min_age_s``. Holds the writers' lock, so no compaction can finish meanwhile.
        O(files in the folder)."""
        with self._lock:
            self._check_open()
            with self._flocked():
                try:
                    current = self._meta(self._conn, "generation")
                except sqlite3.Error as exc:
                    raise self._index_error(exc, f"packed store {self.path}: index read "
                                                 "failed") from exc
                found = 0
                now = time.time()
                for child in self.path.iterdir():
                    match = _DATA_RE.match(child.name)
                    if match is None or int(match.group(1)) == current:
                        continue
                    try:
                        if now - child.stat().st_mtime < min_age_s:
                            continue
                        found += 1
                        if remove:
                            child.unlink()
                    except OSError:
                        continue
                return found


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``. On an error, roll back unless sqlite already did
    (it does by itself after SQLITE_FULL or an I/O error) and re-raise the *original*
    error -- never the "cannot rollback - no transaction is active" of the cleanup."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _plausible(offset: object, length: object) -> bool:
    """Whether an index row's offset and length are what :meth:`PackedStore.put` writes:
    integers, the offset non-negative, the length at least a header. O(1)."""
    return (type(offset) is int and type(length) is int and offset >= 0
            and length >= codec.HEADER_ALIGN_BYTES)


def _show(value: object) -> str:
    """A short repr of a value read from a damaged index, for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """``os.pwrite`` until every byte of ``data`` is written at ``offset``."""
    done, n = 0, data.nbytes
    flat = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while done < n:
        done += os.pwrite(fd, flat[done:], offset + done)


def _copy_range(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between files in the kernel (pread/pwrite if unsupported)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, src_offset + done,
                                   dst_offset + done)
            if n == 0:
                raise OSError(f"source ends {length - done} bytes early")
            done += n
        return
    except OSError as exc:
        if done or not isinstance(exc.errno, int) or exc.errno not in _NO_COPY_RANGE:
            raise
    while done < length:
        chunk = os.pread(src, min(8 << 20, length - done), src_offset + done)
        if not chunk:
            raise OSError(f"source ends {length - done} bytes early")
        _pwrite_all(dst, memoryview(chunk), dst_offset + done)
        done += len(chunk)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _load_mincore() -> Callable[[int, int, Any], int] | None:
    """libc's ``mincore`` through ctypes (which releases the GIL), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, Any], int], fn)


_mincore = _load_mincore()


def _resident(entry: _Entry, view: np.ndarray) -> bool | None:
    """Whether every page of ``entry`` is in the page cache (``mincore`` on the pages of
    its ``view``); ``None`` where that cannot be asked. O(pages), one system call."""
    if _mincore is None:
        return None
    base = view.ctypes.data - entry.header.header_nbytes - entry.offset  # the mapping's start
    first = entry.offset // _PAGE * _PAGE
    length = entry.offset + entry.length - first
    pages = -(-length // _PAGE)
    vector = bytearray(pages)
    holder = (ctypes.c_ubyte * pages).from_buffer(vector)
    try:
        if _mincore(base + first, length, holder) != 0:
            return None
    finally:
        del holder
    return (min(vector) & 1) == 1


def _advice_bytes(fd: int) -> int:
    """How many bytes one ``posix_fadvise(WILLNEED)`` reads on the file's device: Linux
    reads at most ``max(read_ahead_kb, max_sectors_kb)`` per call. Falls back to
    :data:`DEFAULT_ADVICE_BYTES` where sysfs does not say."""
    try:
        st = os.fstat(fd)
        base = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        for queue in (base / "queue", base / ".." / "queue"):
            if queue.is_dir():
                ra = int((queue / "read_ahead_kb").read_text())
                sectors = int((queue / "max_sectors_kb").read_text())
                kib = max(ra, sectors)
                return min(max(kib * 1024, DEFAULT_ADVICE_BYTES), MAX_ADVICE_BYTES)
    except (OSError, ValueError):
        pass
    return DEFAULT_ADVICE_BYTES
