"""The packed store's files besides the index: data files, the epoch counter, the writers' flock.

``data.<generation>.bin``
    :class:`DataFile`: shards back to back, each a :mod:`~tiercache.codec` header and
    its payload at an offset aligned by :func:`align_for`; never rewritten in place
    (a compaction writes the next generation's file with :func:`copy_shards`).
``epoch``
    :class:`EpochCounter`: an 8-byte change counter mapped shared by every process
    that opens the store.
``lock``
    :class:`WriterLock`: the ``flock`` writers hold for each write.

Thread-safety: none of these objects locks; the store calls them under its own lock
(and, for writes, the writers' flock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ... import codec
from ...errors import CorruptShardError

__all__ = ["EPOCH_NAME", "LARGE_ALIGN_BYTES", "LARGE_SHARD_BYTES", "LOCK_NAME",
           "SMALL_ALIGN_BYTES", "DataFile", "EpochCounter", "WriterLock", "align_for",
           "copy_shards", "data_name", "fsync_dir", "pwrite_all", "read_header",
           "sweep_data_files"]

#: Shards of at least this many bytes start on a page boundary.
LARGE_SHARD_BYTES = 64 * 1024
#: Alignment of large shards in the data file (one page).
LARGE_ALIGN_BYTES = 4096
#: Alignment of small shards (keeps payloads 64-byte aligned; headers are 64-multiples).
SMALL_ALIGN_BYTES = 64
EPOCH_NAME = "epoch"
LOCK_NAME = "lock"
#: errnos meaning "copy_file_range cannot copy between these files": fall back to pread
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
_DATA_RE = re.compile(r"^data\.(\d+)\.bin$")


def data_name(generation: int) -> str:
    """File name of the data file of ``generation``."""
    return f"data.{generation}.bin"


def align_for(length: int) -> int:
    """The alignment of a shard of ``length`` bytes (header included) in a data file."""
    return LARGE_ALIGN_BYTES if length >= LARGE_SHARD_BYTES else SMALL_ALIGN_BYTES


class DataFile:
    """One generation's data file: a descriptor plus the largest mapping made of it.

    Raises :class:`OSError` (:class:`FileNotFoundError` for a missing file when not
    ``create``) from the constructor. O(1).
    """

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

    def size(self) -> int:
        """The file's size in bytes (one ``fstat``)."""
        return os.fstat(self.fd).st_size

    def stamp(self) -> tuple[int, int, int, int]:
        """``(generation, size, mtime_ns, ctime_ns)``: what changes when anything writes
        into the file (one ``fstat``; timestamps move by the file system's clock tick)."""
        st = os.fstat(self.fd)
        return self.generation, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def close(self) -> None:
        """Close the descriptor; views keep their own mapping alive. Idempotent."""
        self.mapping = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


class EpochCounter:
    """The ``epoch`` file: an 8-byte change counter, mapped shared (every process that
    opens the store sees every bump). :attr:`counter` is the mapped ``uint64``
    (``counter[0]``: a memory read -- the store reads it on every cached view).

    Raises :class:`OSError` from the constructor. O(1).
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8, access=mmap.ACCESS_WRITE)
        finally:
            os.close(fd)
        #: The counter; raises :class:`ValueError` once :meth:`close` released it.
        self.counter = memoryview(self._map).cast("Q")

    def bump(self) -> int:
        """Add one (wrapping at 2**64) and return the new value (writers' flock held)."""
        value = (self.counter[0] + 1) & ((1 << 64) - 1)
        self.counter[0] = value
        return value

    def close(self) -> None:
        """Release the counter and unmap it. Idempotent."""
        self.counter.release()
        with contextlib.suppress(BufferError):
            self._map.close()


class WriterLock:
    """The ``lock`` file: writers of every process hold an exclusive ``flock`` on it for
    each write (readers never take it). Raises :class:`OSError` from the constructor."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the flock (blocking until other writers are done) for the ``with`` body."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (dropping the flock if held). Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """``os.pwrite`` until every byte of ``data`` is written at ``offset``."""
    done, n = 0, data.nbytes
    flat = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while done < n:
        done += os.pwrite(fd, flat[done:], offset + done)


def copy_range(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
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
        pwrite_all(dst, memoryview(chunk), dst_offset + done)
        done += len(chunk)


def copy_shards(src: int, dst: int, rows: Sequence[tuple[bytes, int, int]]
                ) -> tuple[list[tuple[int, bytes]], int]:
    """Copy the shards ``(key bytes, offset, length)`` of file ``src`` back to back (each
    aligned by :func:`align_for`) into the empty file ``dst``, in that order, and fsync
    it. Returns ``[(new offset, key bytes)]`` and the bytes written. Raises
    :class:`OSError`. O(bytes), copied in the kernel."""
    moved: list[tuple[int, bytes]] = []
    position = 0
    for kb, offset, length in rows:
        align = align_for(length)
        position = -(-position // align) * align
        copy_range(src, dst, offset, position, length)
        moved.append((position, kb))
        position += length
    os.fsync(dst)
    return moved, position


def fsync_dir(path: Path) -> None:
    """fsync a folder's entries; errors ignored (not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep_data_files(folder: Path, current: int, *, remove: bool, min_age_s: float) -> int:
    """Count (with ``remove``: delete) the data files in ``folder`` of other generations
    than ``current`` older than ``min_age_s`` (left by a compaction a crash
    interrupted). Writers' flock held by the caller. O(files in the folder)."""
    found = 0
    now = time.time()
    for child in folder.iterdir():
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


def read_header(mapping: mmap.mmap, offset: int, length: int, key: str,
                where: str) -> codec.ShardHeader:
    """Decode and check the header of the shard of ``length`` bytes at ``offset`` of a
    data file's ``mapping``: it must name ``key`` and account for exactly ``length``
    bytes, else :class:`~tiercache.errors.CorruptShardError` naming ``where``.
    O(header)."""
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
    return header
