"""Page-cache helpers of the packed store: is a shard resident (``mincore``), read it ahead
(``posix_fadvise(WILLNEED)`` in the device's read-ahead-sized pieces).

Thread-safety: pure functions; the system calls release the GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

__all__ = ["DEFAULT_ADVICE_BYTES", "MAX_ADVICE_BYTES", "advice_bytes", "advise_range", "resident"]

#: Read-ahead request size used when the block device's limits cannot be read.
DEFAULT_ADVICE_BYTES = 128 * 1024
#: Upper bound on one read-ahead request (Linux splits them into 2 MiB pieces anyway).
MAX_ADVICE_BYTES = 16 << 20
_PAGE = mmap.PAGESIZE


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


def resident(mapping_address: int, offset: int, length: int) -> bool | None:
    """Whether every page of bytes ``[offset, offset + length)`` of the mapping starting at
    ``mapping_address`` is in the page cache (``mincore``); ``None`` where that cannot be
    asked. O(pages), one system call."""
    if _mincore is None:
        return None
    first = offset // _PAGE * _PAGE
    span = offset + length - first
    pages = -(-span // _PAGE)
    vector = bytearray(pages)
    holder = (ctypes.c_ubyte * pages).from_buffer(vector)
    try:
        if _mincore(mapping_address + first, span, holder) != 0:
            return None
    finally:
        del holder
    return (min(vector) & 1) == 1


def advise_range(fd: int, offset: int, length: int, step: int) -> None:
    """Start reading bytes ``[offset, offset + length)`` of file ``fd`` into the page cache
    without waiting: ``posix_fadvise(WILLNEED)`` per ``step`` bytes (errors ignored).
    O(length / step) system calls."""
    end = offset + length
    with contextlib.suppress(OSError):
        for start in range(offset, end, step):
            os.posix_fadvise(fd, start, min(step, end - start), os.POSIX_FADV_WILLNEED)


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
