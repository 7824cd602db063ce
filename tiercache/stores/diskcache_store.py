"""diskcache store: shards as raw files indexed by python-diskcache's sqlite table.

Layout
    A :class:`diskcache.Cache` directory. Each shard is one value: the
    :mod:`~tiercache.codec` header followed by the payload. Shards of at least
    32 KiB (diskcache's ``disk_min_file_size``) are files
    ``<path>/xx/yy/<random>.val``; smaller ones live inline in the sqlite
    row. Keys are stored as the key's UTF-8 (``surrogatepass``) bytes, a BLOB,
    so any key works and no key ever becomes a file name.
No pickle
    diskcache pickles anything that is not bytes/str/int/float. A private
    :class:`diskcache.Disk` subclass writes header and payload straight from
    the caller's array buffer to the value file (no concatenation, no
    ``bytes`` round trip), and refuses to unpickle: a row whose key or value is
    in pickle (or text) mode raises :class:`~tiercache.errors.CorruptShardError`.
No eviction
    The cache is opened with ``eviction_policy="none"``, ``cull_limit=0`` and a
    huge ``size_limit``: the tier's policy alone decides what leaves.
Reads
    ``get`` opens the value file unbuffered, checks the header and the file
    length, then ``readinto``s the payload in 256 KiB chunks straight into the
    destination, hashing each chunk while it is in cache
    (:func:`~tiercache.codec.readinto_verified`).
Atomicity and crashes
    A put writes a new, uniquely named file and then switches the sqlite row
    to it in one transaction (diskcache's ``set``); the old file is removed
    after the commit. A reader sees the old value, the new one, or -- if it
    picked the old row just before the old file was removed -- nothing.
    Files are not fsynced: after an OS crash a row may point at a short or
    zero-filled file, which the checksum turns into ``CorruptShardError``;
    the tier should then delete the key. A process killed between writing a
    value file and committing its row (or between deleting a row and its
    file) leaves an *orphan* file no row names: harmless, but it occupies
    disk; :meth:`DiskcacheStore.sweep_orphans` (``tiercache verify --repair``)
    removes them.
Space on disk
    sqlite runs in WAL mode; the WAL is checkpointed every
    :data:`WAL_AUTOCHECKPOINT_PAGES` pages and truncated back to
    :data:`WAL_SIZE_LIMIT_BYTES` afterwards, so it stays near 1 MiB instead of
    growing to ~4 MiB (sqlite's default). Value files round up to 4 KiB
    blocks and live in ``xx/yy/`` folders (4 KiB each). Measured overheads
    are in docs/reliability.md.
Damaged index
    sqlite keeps no checksums either. A ``cache.db`` that sqlite calls
    malformed or not a database, a Settings table diskcache cannot use, a row
    whose columns a damaged page garbled (TEXT that is not UTF-8, NULL where a
    string belongs: diskcache and sqlite3 then raise ``ValueError``,
    ``TypeError``, ``AttributeError``...), or a stored key that is not valid
    UTF-8 (or is pickled or TEXT: tiercache writes only BLOB keys) raises
    :class:`~tiercache.errors.MediumDamagedError` naming the file -- from the
    constructor, :meth:`DiskcacheStore.keys` or any other call -- rather than
    being skipped: the rest of the index cannot be trusted either. The engine
    opens such a tier degraded; ``tiercache verify --repair`` empties it. A
    damaged value (header, payload, length) stays
    :class:`~tiercache.errors.CorruptShardError`.
One process
    A store given a ``capacity_bytes`` (a tier's store) locks its folder
    (:func:`~tiercache.stores.base.lock_tier_folder`): several writer processes
    on one folder grew the WAL to 22 MB for a 2 MiB tier.

Thread-safety: :class:`diskcache.Cache` keeps one sqlite connection per
thread and serialises writers with sqlite transactions (``retry=True``), so a
store may be shared by all threads. :meth:`DiskcacheStore.close` closes the
calling thread's connection; the others close when the store is collected.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

from .. import codec
from ..errors import CacheClosedError, CorruptShardError, MediumDamagedError, StoreError
from .base import ShardInfo, VerifyMode
from .disk import DiskStore

_MODE_RAW = diskcache.core.MODE_RAW
_MODE_BINARY = diskcache.core.MODE_BINARY
_UNKNOWN = diskcache.core.UNKNOWN
_MAX_OPEN_TRIES = 10
#: sqlite ``wal_autocheckpoint``: pages in the WAL before it is checkpointed (1 MiB).
WAL_AUTOCHECKPOINT_PAGES = 256
#: sqlite ``journal_size_limit``: the WAL is truncated to this after a checkpoint.
WAL_SIZE_LIMIT_BYTES = 1 << 20
#: sqlite primary result codes of a damaged database file: SQLITE_CORRUPT, SQLITE_NOTADB.
_SQLITE_DAMAGE_CODES = (11, 26)
#: What a damaged database makes Python's sqlite3 (or diskcache reading its settings)
#: raise besides those codes: undecodable TEXT, values of the wrong type.
_DAMAGE_MESSAGES = ("malformed", "not a database", "could not decode")


#: What diskcache and Python's sqlite3 raise on a row whose columns a damaged page garbled
#: (TEXT that is not UTF-8, NULL or a number where a string belongs): never raised on an
#: intact index, so taken as damage.
_GARBLED_ROW_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError)


def _is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` (from sqlite3 or diskcache) says the database file is damaged
    rather than busy, unwritable or full. O(1)."""
    if isinstance(exc, _GARBLED_ROW_ERRORS):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _SQLITE_DAMAGE_CODES:
        return True
    return any(m in str(exc).lower() for m in _DAMAGE_MESSAGES)


class _Encoded:
    """A shard ready to write: header bytes plus the payload buffer (not copied)."""

    __slots__ = ("header", "nbytes", "payload")

    def __init__(self, header: bytes, payload: memoryview) -> None:
        self.header = header
        self.payload = payload
        self.nbytes = len(header) + payload.nbytes


class _ShardDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no type hints
    """diskcache serialiser for tiercache: raw shard bytes only, never pickle."""

    def put(self, key: object) -> tuple[Any, bool]:
        if type(key) is not bytes:
            raise TypeError("tiercache diskcache keys are bytes")
        return sqlite3.Binary(key), True

    def get(self, key: Any, raw: bool) -> bytes:
        if not raw:
            raise CorruptShardError(f"diskcache store {self._directory}: a key is stored "
                                    "pickled; tiercache never writes those (delete the tier)")
        if not isinstance(key, bytes | memoryview):  # a TEXT or number key: not written by us
            raise CorruptShardError(f"diskcache store {self._directory}: a key of type "
                                    f"{type(key).__name__}; tiercache writes only bytes keys")
        return bytes(key)

    def store(self, value: object, read: bool, key: Any = _UNKNOWN) -> tuple[int, int, Any, Any]:
        if not isinstance(value, _Encoded):
            raise TypeError("tiercache diskcache values are encoded shards")
        if value.nbytes < self.min_file_size:
            return 0, _MODE_RAW, None, sqlite3.Binary(value.header + value.payload)
        filename, full_path = self.filename(key, value)
        self._write_shard(full_path, value)
        return value.nbytes, _MODE_BINARY, filename, None

    def _write_shard(self, full_path: str, value: _Encoded) -> None:
        """Create ``full_path`` and write header then payload (retrying like diskcache)."""
        directory = os.path.dirname(full_path)
        for attempt in range(1, _MAX_OPEN_TRIES + 1):
            with contextlib.suppress(OSError):
                os.makedirs(directory)
            try:
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError:
                if attempt == _MAX_OPEN_TRIES:
                    raise
                continue  # a concurrent cleanup removed the directory; make it again
            try:
                write_all(fd, memoryview(value.header))
                write_all(fd, value.payload)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.remove(full_path)
                raise
            os.close(fd)
            return

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == _MODE_RAW:
            return bytes(value)
        if mode == _MODE_BINARY and filename is not None:
            return open(os.path.join(self._directory, filename), "rb", buffering=0)
        raise CorruptShardError(f"diskcache store {self._directory}: value in diskcache mode "
                                f"{mode}; tiercache stores only raw shards (pickle refused)")


def write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until every byte of ``data`` is written: how a value file's bytes
    reach the disk (the one write of this module, a fault-injection point for tests).
    Raises OSError. O(n)."""
    pos, n = 0, data.nbytes
    while pos < n:
        pos += os.write(fd, data[pos:])


class DiskcacheStore(DiskStore):
    """Persistent store over a python-diskcache directory.

    Parameters
    ----------
    path, verify, capacity_bytes, exclusive:
        As :class:`~tiercache.stores.disk.DiskStore`; ``path`` is the cache's
        directory. ``verify="never"`` skips only the payload check (the header and the
        length are always checked): a damaged payload is returned as stored.
        diskcache sizes nothing up front, so ``capacity_bytes`` only decides
        ``exclusive``, whose lock also keeps several writers from growing sqlite's WAL
        far past its limit.

    Raises :class:`~tiercache.errors.MediumDamagedError` when ``cache.db`` is not a
    readable sqlite database of diskcache's (garbled, truncated), and
    :class:`~tiercache.errors.StoreError` when the folder cannot be opened or is
    locked by another process.
    """

    backend = "diskcache"
    zero_copy = True
    identity_file = str(diskcache.core.DBNAME)

    def __init__(self, path: str | os.PathLike[str], *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> None:
        super().__init__(path, verify=verify, capacity_bytes=capacity_bytes,
                         exclusive=exclusive)
        self._cache: diskcache.Cache | None = None
        #: Value files whose payload checksum was verified by get_view (by identity).
        self._verified_files: dict[tuple[int, int, int, int], None] = {}
        #: key -> (value file, its identity when mapped, view): a repeated get_view of an
        #: unchanged file is one stat
        self._views: dict[str, tuple[str, tuple[int, int, int, int], np.ndarray]] = {}
        self._close_lock = threading.Lock()
        #: Set by :meth:`close`: from then on every operation raises CacheClosedError.
        self._closing = False
        self._open()

    @property
    def _db_file(self) -> Path:
        return self.path / self.identity_file

    def _damaged(self, what: str, exc: BaseException) -> MediumDamagedError:
        """The error for a database that cannot be read, naming the file."""
        return MediumDamagedError(f"diskcache index {self._db_file} is damaged: {what} "
                                  f"({type(exc).__name__}: {exc}); `tiercache verify "
                                  "--repair` empties the tier")

    def _failure(self, exc: BaseException, what: str, where: str) -> StoreError:
        """:class:`MediumDamagedError` if ``exc`` says the index is damaged, else a
        :class:`StoreError` for ``where``: ``what`` failed."""
        if _is_damage(exc):
            return self._damaged(f"{what} ({where})", exc)
        return StoreError(f"{where}: {what} failed ({exc})")

    def _medium_closed(self) -> bool:
        return self._cache is None

    def _open_medium(self) -> None:
        """Open (or reopen) the diskcache directory at :attr:`path`."""
        try:
            cache = diskcache.Cache(
                str(self.path), disk=_ShardDisk, eviction_policy="none", cull_limit=0,
                size_limit=2**62, statistics=False, tag_index=False,
                sqlite_wal_autocheckpoint=WAL_AUTOCHECKPOINT_PAGES,
                sqlite_journal_size_limit=WAL_SIZE_LIMIT_BYTES)
            st = os.stat(self._db_file)
        except (OSError, sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            # (diskcache reads its Settings table at open: garbled rows give bad values)
            if _is_damage(exc):
                raise self._damaged("cannot open it", exc) from exc
            raise StoreError(f"diskcache store {self.path}: cannot open ({exc}); check the "
                             "path is a writable directory") from exc
        self._remember_identity(st)
        self._cache = cache

    def _cache_or_raise(self) -> diskcache.Cache:
        cache = self._cache
        if cache is None:
            if self._closing:
                raise CacheClosedError(f"diskcache store {self.path}: the store was closed")
            raise StoreError(f"diskcache store {self.path} is not open (its last reopen "
                             "failed)")
        return cache

    def _fetch(self, key: str) -> Any:
        """The raw value: ``bytes`` (inline), an unbuffered file, or ``None``."""
        try:
            return self._cache_or_raise().get(codec.key_bytes(key), read=True, retry=True)
        except (sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            raise self._failure(exc, "read", self._where(key)) from exc
        except OSError as exc:
            raise StoreError(f"{self._where(key)}: read failed ({exc})") from exc

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """:meth:`get` that always verifies the payload (``verify`` ignored)."""
        return self._get(key, out, True)

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Return the shard under ``key`` (into ``out`` if given) or ``None``.

        Without ``out`` the result is a new writable, page-aligned array owned by
        the caller. O(n) for an n-byte payload: the file is read straight into
        the result and hashed on the fly. Thread-safe.
        """
        return self._get(key, out, self.verify == "always")

    def _get(self, key: str, out: np.ndarray | None, verify: bool) -> np.ndarray | None:
        value = self._fetch(key)
        if value is None:
            return None
        where = self._where(key)
        if isinstance(value, bytes):
            return codec.decode(value, key, out, verify=verify, where=where)
        try:
            with value:
                header = self._read_header(value, key, where)
                result = codec.prepare_out(header, out, key)
                codec.readinto_verified(
                    value, codec.byte_view(result),
                    header.payload_checksum if verify else None, where=where)
                return result
        except OSError as exc:
            raise StoreError(f"{where}: read failed ({exc})") from exc

    def get_view(self, key: str) -> np.ndarray | None:
        """A zero-copy, read-only view of ``key``'s payload, memory-mapped from its file.

        diskcache never rewrites a value file in place (a new value goes to a new
        file, the old one is unlinked), so the mapping is an immutable snapshot,
        valid as long as the array is referenced. The address is page-aligned
        plus the 64-byte-multiple header, so frameworks needing 64-byte alignment
        can wrap it without a copy. With ``verify="always"`` the payload checksum
        is verified the first time each value file is mapped in this process
        (that first pass also pulls the file into the page cache); later views of
        the same file are not re-hashed. The mapping is private copy-on-write:
        the array is returned read-only, and a caller that re-enables writing
        can never change the file. Inline (small) values are decoded into a copy.
        Views are cached per key: a repeated call costs one ``stat`` of the value
        file instead of a sqlite query and a new mapping. The stat compares the
        file's identity, size and modification time with those it had when it was
        mapped and verified: a new value (diskcache writes a new file and unlinks
        the old one) or bytes changed in place by another program (the mapping
        shows them: it is a view of the page cache) maps and verifies the file
        again, so a changed payload raises :class:`CorruptShardError` here instead
        of being served. A view handed out before the change shows the change; the
        next call catches it. O(n) the first time a file is seen or after it
        changed, O(1) (plus page faults) afterwards. Thread-safe.
        """
        cached = self._views.get(key)
        if cached is not None:
            try:
                st = os.stat(cached[0])
                if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == cached[1]:
                    return cached[2]
            except OSError:
                pass
            self._views.pop(key, None)
        value = self._fetch(key)
        if value is None:
            return None
        where = self._where(key)
        verify = self.verify == "always"
        if isinstance(value, bytes):
            array = codec.decode(value, key, None, verify=verify, where=where)
            array.flags.writeable = False
            return array
        try:
            with value:
                header = self._read_header(value, key, where)
                st = os.fstat(value.fileno())
                identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                mapped = mmap.mmap(value.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{where}: cannot map the value file ({exc})") from exc
        if verify and identity not in self._verified_files:
            start = header.header_nbytes
            payload = memoryview(mapped)[start:start + header.payload_nbytes]
            try:
                if codec.payload_checksum(payload) != header.payload_checksum:
                    raise CorruptShardError(f"{where}: payload checksum mismatch")
            finally:
                payload.release()
            if len(self._verified_files) >= 1 << 16:
                self._verified_files.clear()
            self._verified_files[identity] = None
        view: np.ndarray = np.ndarray(header.shape, dtype=header.dtype, buffer=mapped,
                                      offset=header.header_nbytes)
        view.flags.writeable = False
        self._views[key] = (value.name, identity, view)
        return view

    def value_file(self, key: str) -> Path | None:
        """The file holding ``key``'s value, or ``None`` when the value is inline in
        ``cache.db`` (smaller than ``min_file_size``) or absent: for tools measuring the
        layout's reads and tests damaging a value. One sqlite lookup. Raises as
        :meth:`get`."""
        value = self._fetch(key)
        if value is None or isinstance(value, bytes):
            return None
        with value:
            return Path(value.name)

    def needs_check(self, key: str) -> bool:
        """Whether :meth:`get_view` would map (and with ``verify="always"`` verify)
        ``key``'s file first: not viewed yet in this process. O(1)."""
        return key not in self._views

    def viewed(self, key: str) -> bool:
        """Mapped (and verified) by :meth:`get_view` before. O(1)."""
        return key in self._views

    def advise(self, key: str) -> int:
        """Advise the kernel to read ``key``'s value file ahead (``madvise(WILLNEED)``:
        one read-ahead window). Maps the file first if needed, which verifies it the
        first time (the prefetcher does that on its own thread: :meth:`needs_check`).
        Only a file not mapped before is advised: that first mapping read it whole, and
        re-advising cached pages costs the loop ~20 us a shard for nothing (after an
        eviction, the page-fault read-ahead reads the file in order, as for ``packed``).
        Returns the payload bytes, 0 if absent. Thread-safe."""
        fresh = key not in self._views
        view = self.get_view(key)
        if view is None:
            return 0
        base = view.base
        if fresh and isinstance(base, mmap.mmap):
            with contextlib.suppress(OSError):
                base.madvise(mmap.MADV_WILLNEED)
        return int(view.nbytes)

    def _read_header(self, fileobj: Any, key: str | None, where: str) -> codec.ShardHeader:
        """Read and check the header of an open value file; leave it at the payload."""
        prefix = _read_exact(fileobj, 64, where)
        length = codec.fixed_header_length(prefix, where=where)
        header = codec.decode_header(prefix + _read_exact(fileobj, length - 64, where), key,
                                     where=where)
        size = os.fstat(fileobj.fileno()).st_size
        if size != header.total_nbytes:
            raise CorruptShardError(f"{where}: value file has {size} bytes, the header says "
                                    f"{header.total_nbytes}")
        return header

    def put(self, key: str, array: np.ndarray) -> int:
        """Store a copy of ``array`` under ``key`` (atomically replacing any old value).

        Returns :meth:`stored_size` of the array. O(n): one hash pass and one
        write of the payload from the array's own buffer when C-contiguous.
        """
        payload = codec.contiguous_payload(array)
        header = codec.encode_header(key, array, codec.payload_checksum(payload))
        try:
            self._views.pop(key, None)
            self._cache_or_raise().set(codec.key_bytes(key), _Encoded(header, payload),
                                       retry=True)
        except (sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            if _is_damage(exc):
                raise self._damaged(f"writing key {key!r}", exc) from exc
            raise StoreError(f"{self._where(key)}: write failed ({exc}); is the disk "
                             "full?") from exc
        except OSError as exc:
            raise StoreError(f"{self._where(key)}: write failed ({exc}); is the disk "
                             "full?") from exc
        return codec.stored_nbytes(array)

    def delete(self, key: str) -> bool:
        """Remove ``key`` (row and file); return whether it was present. O(log n)."""
        try:
            self._views.pop(key, None)
            return bool(self._cache_or_raise().delete(codec.key_bytes(key), retry=True))
        except (OSError, sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            raise self._failure(exc, "delete", self._where(key)) from exc

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` from its header (payload not read).

        Raises :class:`~tiercache.errors.CorruptShardError` for a damaged header.
        O(header) plus opening the file.
        """
        value = self._fetch(key)
        if value is None:
            return None
        where = self._where(key)
        if isinstance(value, bytes):
            header = codec.decode_header(value, key, where=where)
        else:
            try:
                with value:
                    header = self._read_header(value, key, where)
            except OSError as exc:
                raise StoreError(f"{where}: read failed ({exc})") from exc
        return ShardInfo.from_header(header)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry (damaged or not). One sqlite lookup."""
        if not isinstance(key, str):
            return False
        try:
            return codec.key_bytes(key) in self._cache_or_raise()
        except (OSError, sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            raise self._failure(exc, "lookup", self._where(key)) from exc

    def keys(self) -> Iterator[str]:
        """Snapshot of all keys (sqlite key order). O(number of shards).

        Raises :class:`~tiercache.errors.MediumDamagedError` naming ``cache.db`` if
        the index cannot be read or holds a key tiercache never writes: not valid
        UTF-8 (a flipped bit), pickled, or TEXT. Such a row is not skipped: sqlite
        keeps no checksums, so the rest of the index cannot be trusted either; the
        engine opens the tier degraded and ``verify --repair`` empties it.
        """
        cache = self._cache_or_raise()
        found: list[str] = []
        try:
            for raw in cache.iterkeys():
                try:
                    found.append(codec.key_from_bytes(raw))
                except UnicodeDecodeError as exc:
                    raise self._damaged(f"stored key {raw[:80]!r} is not valid UTF-8",
                                        exc) from None
        except CorruptShardError as exc:  # a pickled or TEXT key row
            raise self._damaged("a key row tiercache did not write", exc) from exc
        except (OSError, sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            raise self._failure(exc, "listing the keys", f"diskcache store {self.path}") \
                from exc
        return iter(found)

    # -- reopening, orphans ----------------------------------------------------------------

    def _close_medium(self) -> None:
        """Drop the current handle for a reopen (:meth:`DiskStore.reopen`; a replaced
        ``cache.db``: sqlite would go on using the unlinked file). Threads' old sqlite
        connections close with the old handle."""
        with self._close_lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()

    def sweep_orphans(self, *, remove: bool = False, min_age_s: float = 60.0) -> int:
        """Count (with ``remove``: delete) ``.val`` files no row refers to, older than
        ``min_age_s`` (a younger one may be a put in flight in another thread or
        process). O(files + rows). Raises StoreError if the index cannot be read."""
        cache = self._cache_or_raise()
        try:
            rows = cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")
            referenced = {os.path.normpath(name) for (name,) in rows.fetchall()}
        except (OSError, sqlite3.Error, *_GARBLED_ROW_ERRORS) as exc:
            raise self._failure(exc, "listing the value files",
                                f"diskcache store {self.path}") from exc
        now = time.time()
        found = 0
        for folder, _dirs, files in os.walk(self.path):
            for name in files:
                if not name.endswith(".val"):
                    continue
                full = os.path.join(folder, name)
                if os.path.normpath(os.path.relpath(full, self.path)) in referenced:
                    continue
                try:
                    if now - os.stat(full).st_mtime < min_age_s:
                        continue
                    found += 1
                    if remove:
                        cache._disk.remove(os.path.relpath(full, self.path))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        """Close the store; later operations raise
        :class:`~tiercache.errors.CacheClosedError`. Idempotent."""
        with self._close_lock:
            self._closing = True
            cache, self._cache = self._cache, None
        self._views.clear()
        try:
            if cache is not None:
                cache.close()
        finally:
            self._release_folder()


def _read_exact(fileobj: Any, n: int, where: str) -> bytes:
    """Read exactly ``n`` bytes or raise :class:`CorruptShardError` (file too short)."""
    data = fileobj.read(n)
    while len(data) < n:
        more = fileobj.read(n - len(data))
        if not more:
            raise CorruptShardError(f"{where}: value file {getattr(fileobj, 'name', '?')} "
                                    f"ends inside the shard header ({len(data)} of {n} bytes)")
        data += more
    return bytes(data)
