"""Page-cache helpers of the packed store: is a shard resident (``mincore``:
:func:`tiercache.buffers.resident`, re-exported here), read it ahead
(``posix_fadvise(WILLNEED)`` in the device's read-ahead-sized pieces), drop it
(``madvise`` + ``posix_fadvise(DONTNEED)``).

Thread-safety: pure functions; the system calls release the GIL.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

from ...buffers import PAGE_BYTES, resident

__all__ = ["DEFAULT_ADVICE_BYTES", "MAX_ADVICE_BYTES", "advice_bytes", "advise_range",
           "drop_range", "resident"]

#: Read-ahead request size used when the block device's limits cannot be read.
DEFAULT_ADVICE_BYTES = 128 * 1024
#: Upper bound on one read-ahead request (Linux splits them into 2 MiB pieces anyway).
MAX_ADVICE_BYTES = 16 << 20


def advise_range(fd: int, offset: int, length: int, step: int) -> None:
    """Start reading bytes ``[offset, offset + length)`` of file ``fd`` into the page cache
    without waiting: ``posix_fadvise(WILLNEED)`` per ``step`` bytes (errors ignored).
    O(length / step) system calls."""
    end = offset + length
    with contextlib.suppress(OSError):
        for start in range(offset, end, step):
            os.posix_fadvise(fd, start, min(step, end - start), os.POSIX_FADV_WILLNEED)


def drop_range(mapping: mmap.mmap | None, fd: int, offset: int, length: int) -> int:
    """Drop the whole pages inside bytes ``[offset, offset + length)`` of file ``fd``
    from ``mapping`` (a map of the file from its start: ``madvise(MADV_DONTNEED)``,
    so this process no longer maps them; ``None``: nothing mapped them, a ``pread``
    read them) and then from the page cache
    (``posix_fadvise(POSIX_FADV_DONTNEED)``: clean pages nobody maps go; pages
    another process maps stay). The bytes stay right: a later touch reads the file.
    Errors ignored (a hint). Returns the bytes of the pages dropped. O(pages)."""
    start = -(-offset // PAGE_BYTES) * PAGE_BYTES
    stop = (offset + length) // PAGE_BYTES * PAGE_BYTES
    if stop <= start:
        return 0
    if mapping is not None:
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_DONTNEED)
    return stop - start


def advice_bytes(fd: int) -> int:
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
