"""lmdb's on-disk format, read without lmdb: meta pages, node extents, named roots.

lmdb keeps no checksums of its own pages and maps ``data.mdb``: a page past the
end of a truncated file faults with SIGBUS when touched, and py-lmdb touches every
page of a value before returning it. So :class:`~tiercache.stores.lmdb_store.LmdbStore`
checks, with plain reads and pointer arithmetic, what lmdb would otherwise trust:

- :func:`check_data_file`: before mapping, both meta pages are valid and the file
  holds every page up to the newer one's ``mm_last_pg``;
- :func:`check_named_roots`: after opening, the named databases' records in the
  main tree are ``MDB_db`` records whose root lies within those pages;
- :meth:`ValueBounds.value`: before fetching a value, the node's extent lies within
  its leaf page or, on overflow pages, within the file.

It also holds :class:`RemapGuard`, the lock that keeps every read transaction and
zero-copy value out of the way of a remap (lmdb invalidates them all).

Each raises :class:`~tiercache.errors.MediumDamagedError` (the file) or
:class:`~tiercache.errors.CorruptShardError` (one entry) naming the file and what
is wrong. Layouts are those of lmdb 0.9 on a 64-bit little-endian build.

Thread-safety: the functions are pure reads; a :class:`ValueBounds` may be used by
many threads (its cached file size is a GIL-atomic int).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np

from ..errors import CorruptShardError, MediumDamagedError

__all__ = ["DAMAGE_ERRORS", "RemapGuard", "ValueBounds", "check_data_file", "check_named_roots",
           "round_up"]


#: lmdb errors that mean the file's structure is damaged (not an I/O or usage error).
DAMAGE_ERRORS: tuple[type[lmdb.Error], ...] = (
    lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError,
    lmdb.IncompatibleError)


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (map and page sizes). O(1)."""
    return -(-value // multiple) * multiple


class RemapGuard:
    """Shared/exclusive lock: map users hold it shared, a remap holds it exclusively.

    Writer-preferring (a waiting remap stops new shared holders) so a remap is
    not starved by a stream of reads. Not re-entrant. O(1) per acquisition.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    def acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1

    def release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if not self._shared:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the guard exclusively for the ``with`` body."""
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()


class ValueBounds:
    """Checks an lmdb node's value extent against ``data.mdb`` before py-lmdb reads it.

    Parameters
    ----------
    data_file:
        The environment's ``data.mdb`` (for messages).
    fd:
        The store's own read-only descriptor of that file, taken over by this object
        (closed by :meth:`close`): its size even once the file is unlinked. ``None``:
        no descriptor (a closed store).
    psize:
        lmdb's page size.

    Thread-safety: :meth:`value` may run in many threads at once. O(1) per call.
    """

    def __init__(self, data_file: Path, fd: int | None, psize: int) -> None:
        self.data_file = data_file
        self.psize = psize
        self._fd = fd
        self._file_bytes = os.fstat(fd).st_size if fd is not None else 0

    def close(self) -> None:
        """Close the descriptor (later checks use the last size seen). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def value(self, cursor: lmdb.Cursor, where: str, what: str) -> memoryview:
        """The value under ``cursor`` (positioned on an entry, zero-copy), after checking
        that the node lmdb found points inside ``data.mdb``.

        py-lmdb touches every page of a value before returning it, so a node whose
        overflow page number or length a flipped bit has damaged would fault with
        SIGBUS past the end of the file. The node's header sits just before its key
        (``MDB_node``: ``mn_lo``, ``mn_hi``, ``mn_flags``, ``mn_ksize``), and the key is
        handed out without touching the value: read the header from there, check the
        value's extent -- inline: within the leaf page; on overflow pages: within the
        file -- and only then fetch it. Raises
        :class:`~tiercache.errors.CorruptShardError`. O(1) (one ``stat`` when the file
        has grown since the last).
        """
        key = memoryview(cursor.key())
        start = int(np.frombuffer(key, np.uint8).__array_interface__["data"][0])
        lo, hi, flags, ksize = struct.unpack("<HHHH", ctypes.string_at(start - 8, 8))
        size = lo | hi << 16
        if ksize != key.nbytes:
            raise CorruptShardError(f"{where}: the lmdb node of its {what} is damaged (key "
                                    f"length {ksize}, found {key.nbytes})")
        if flags & _F_BIGDATA:
            pgno = int.from_bytes(ctypes.string_at(start + ksize, 8), "little")
            end = pgno * self.psize + _PAGE_HEADER_BYTES + size
            fd = self._fd
            if end > self._file_bytes and fd is not None:
                with contextlib.suppress(OSError):
                    self._file_bytes = os.fstat(fd).st_size
            if pgno < 2 or end > self._file_bytes:
                raise CorruptShardError(
                    f"{where}: the lmdb node of its {what} points at page {pgno} and "
                    f"{size} bytes, past the end of {self.data_file} "
                    f"({self._file_bytes} bytes): the entry is damaged")
        elif start % self.psize + ksize + size > self.psize:
            raise CorruptShardError(f"{where}: the lmdb node of its {what} claims {size} "
                                    "bytes, more than its page holds: the entry is damaged")
        return memoryview(cursor.value())


def check_named_roots(env: lmdb.Environment, bounds: ValueBounds) -> None:
    """Raise MediumDamagedError if a named database's record in the main tree is
    not a 48-byte ``MDB_db`` whose root page lies within the used pages. O(1)."""
    data_file = bounds.data_file
    last_pg = int(env.info()["last_pgno"])
    with env.begin(buffers=True) as txn:
        cursor = txn.cursor()
        for name in (b"hdr", b"data"):
            if not cursor.set_key(name):
                continue
            try:
                record = bytes(bounds.value(cursor, str(data_file), "database record"))
            except CorruptShardError as exc:
                raise MediumDamagedError(f"lmdb data file {data_file} is damaged: "
                                         f"{exc}") from None
            if len(record) != 48:
                raise MediumDamagedError(
                    f"lmdb data file {data_file} is damaged: the record of database "
                    f"{name.decode()!r} has {len(record)} bytes, not 48")
            root = int.from_bytes(record[40:48], "little")
            if root != _P_INVALID and not 2 <= root <= last_pg:
                raise MediumDamagedError(
                    f"lmdb data file {data_file} is damaged: database {name.decode()!r} "
                    f"has its root at page {root}, outside pages 2..{last_pg}")


# -- the data file's meta pages (read with plain file reads, before lmdb maps the file) ------

_MDB_MAGIC = 0xBEEFC0DE
_MDB_DATA_VERSION = 1
_P_META = 0x08
_P_INVALID = (1 << 64) - 1
#: ``MDB_node.mn_flags``: the value lives on overflow pages; the node holds their number.
_F_BIGDATA = 0x01
#: Bytes of an lmdb page header (``PAGEHDRSZ``): an overflow value starts after it.
_PAGE_HEADER_BYTES = 16
#: Bytes of a meta page that are read: page header (16) + MDB_meta (152 - 16).
_META_BYTES = 152
# MDB_meta of lmdb 0.9 on a 64-bit little-endian build, offsets within its page:
# 0 mp_pgno Q, 10 mp_flags H, 16 mm_magic I, 20 mm_version I, 40 mm_psize
# (= mm_dbs[FREE_DBI].md_pad) I, 80 free root Q, 128 main root Q, 136 mm_last_pg Q,
# 144 mm_txnid Q.
_META = struct.Struct("<Q2xH4xII16xI36xQ40xQQQ")


def _parse_meta(raw: bytes, index: int) -> tuple[int, int, int, int, int] | str:
    """``(psize, last_pg, txnid, free_root, main_root)`` of meta page ``index``, or why
    it is not a valid meta page. O(1)."""
    if len(raw) < _META_BYTES:
        return f"meta page {index} is cut short ({len(raw)} of {_META_BYTES} bytes)"
    pgno, flags, magic, version, psize, free_root, main_root, last_pg, txnid = \
        _META.unpack_from(raw)
    if magic != _MDB_MAGIC:
        return f"meta page {index} has no lmdb magic (0x{magic:08x})"
    if version != _MDB_DATA_VERSION:
        return f"meta page {index} has format version {version}, not {_MDB_DATA_VERSION}"
    if pgno != index or not flags & _P_META:
        return f"meta page {index} has page number {pgno} and flags 0x{flags:x}"
    if psize < 512 or psize > 1 << 16 or psize & (psize - 1):
        return f"meta page {index} records an impossible page size {psize}"
    if last_pg < 1 or last_pg >= _P_INVALID // psize:
        return f"meta page {index} records an impossible last page {last_pg}"
    for name, root in (("free-list", free_root), ("main", main_root)):
        if root != _P_INVALID and not 2 <= root <= last_pg:
            return (f"meta page {index}: the {name} tree's root page {root} is outside "
                    f"pages 2..{last_pg}")
    return psize, last_pg, txnid, free_root, main_root


def check_data_file(path: Path) -> int:
    """Check lmdb's ``data.mdb`` at ``path`` before it is mapped; return the file's size.

    Reads the two meta pages with plain reads (lmdb would fault with SIGBUS on a
    mapped page past the end of a truncated file): both must be valid -- magic,
    version, page number, page size, tree roots within the used pages -- and the
    file must hold every page up to ``mm_last_pg`` of the newer one (larger
    ``mm_txnid``, the one lmdb uses). A missing or empty file is fine (lmdb starts
    a new environment). Raises :class:`~tiercache.errors.MediumDamagedError`
    naming the file and what is wrong. O(1): two small reads. Thread-safe.
    """
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0
            first = _parse_meta(f.read(_META_BYTES), 0)
            if isinstance(first, str):
                raise MediumDamagedError(f"lmdb data file {path} is damaged: {first}")
            psize = first[0]
            f.seek(psize)
            second = _parse_meta(f.read(_META_BYTES), 1)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise MediumDamagedError(f"lmdb data file {path} cannot be read ({exc})") from exc
    if isinstance(second, str):
        raise MediumDamagedError(f"lmdb data file {path} is damaged: {second}")
    if second[0] != psize:
        raise MediumDamagedError(f"lmdb data file {path} is damaged: its meta pages disagree "
                                 f"on the page size ({psize} and {second[0]})")
    current = max((first, second), key=lambda meta: meta[2])
    need = (current[1] + 1) * psize
    if size < need:
        raise MediumDamagedError(
            f"lmdb data file {path} is truncated: {size} bytes, but its meta page "
            f"(transaction {current[2]}) uses pages 0..{current[1]} of {psize} bytes "
            f"= {need} bytes")
    return size
