"""A pool of page-aligned buffers recycled once nobody references them.

Fresh memory is expensive on this class of machine: the first touch of each
4 KiB page costs a fault (about 3 µs here), so filling a newly allocated
64 MiB array runs at half the speed of filling one that was used before. The
engine allocates many same-sized buffers (every plain ``get`` from a disk
tier, every promotion into RAM) and drops them again (evictions), so
recycling pays: :class:`BufferPool` hands out page-aligned views of pooled
raw buffers and takes a buffer back automatically when the last array that
views it is gone (detected by reference count: numpy collapses view chains
onto the owning array, and anything that exports the buffer -- memoryview,
DLPack -- holds a reference too).

Buffers below :data:`MIN_POOLED_BYTES` are not pooled (allocation is cheap).
The pool tracks at most ``max_bytes`` of raw memory (in use or free); free
buffers beyond that are released on the next acquire, and when the budget
is full of buffers still in use, new buffers are simply not tracked. Free
buffers are memory nobody uses, so the pool also keeps at most
``max_free_bytes`` of them: whenever it has to allocate, it first releases
free buffers beyond that bound (largest first). Without that bound a burst
of one size class (a 100 MiB shard read once) would stay allocated for good,
which under a memory limit that counts the page cache (a cgroup) squeezes
the page cache.

Complexity: ``acquire`` is O(buffers of the same size class) (a refcount check
each). Thread-safety: safe from any thread (one lock).
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

PAGE_BYTES = 4096
#: Buffers smaller than this are allocated directly.
MIN_POOLED_BYTES = 256 * 1024
#: Size classes are multiples of this.
CLASS_GRANULE_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 1 << 30
#: Free (recyclable) buffers the pool keeps at most.
DEFAULT_MAX_FREE_BYTES = 64 << 20


def _allocate(nbytes: int) -> tuple[npt.NDArray[np.uint8], int]:
    raw = np.empty(nbytes + PAGE_BYTES - 1, dtype=np.uint8)
    return raw, -raw.ctypes.data % PAGE_BYTES


class _Slot:
    __slots__ = ("offset", "raw")

    def __init__(self, raw: npt.NDArray[np.uint8], offset: int) -> None:
        self.raw = raw
        self.offset = offset

    def is_free(self) -> bool:
        # references: this slot's attribute + getrefcount's own argument
        return sys.getrefcount(self.raw) <= 2


class BufferPool:
    """Recycles page-aligned uint8 buffers by size class. See the module docstring."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_free_bytes: int = DEFAULT_MAX_FREE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_free_bytes = max_free_bytes
        self._classes: dict[int, list[_Slot]] = {}
        self._tracked_bytes = 0
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    @staticmethod
    def size_class(nbytes: int) -> int:
        """``nbytes`` rounded up to a multiple of :data:`CLASS_GRANULE_BYTES`. O(1)."""
        return -(-nbytes // CLASS_GRANULE_BYTES) * CLASS_GRANULE_BYTES

    @classmethod
    def allocated_nbytes(cls, nbytes: int) -> int:
        """Bytes of the raw buffer behind an :meth:`acquire` of ``nbytes``: the size
        class (or ``nbytes`` below :data:`MIN_POOLED_BYTES`) plus the page of slack
        that aligns it. What a buffer kept for long really costs. O(1)."""
        if nbytes < MIN_POOLED_BYTES:
            return max(nbytes, 1) + PAGE_BYTES - 1
        return cls.size_class(nbytes) + PAGE_BYTES - 1

    def acquire(self, nbytes: int) -> npt.NDArray[np.uint8]:
        """An uninitialised, writable, page-aligned uint8 array of ``nbytes`` bytes."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if nbytes < MIN_POOLED_BYTES:
            raw, offset = _allocate(max(nbytes, 1))
            # slice through a 1-byte view so an empty result keeps the aligned address
            return raw[offset:offset + max(nbytes, 1)][:nbytes]
        cls = self.size_class(nbytes)
        with self._lock:
            slots = self._classes.setdefault(cls, [])
            for slot in slots:
                if slot.is_free():
                    self.reused += 1
                    return slot.raw[slot.offset:slot.offset + nbytes]
            self.allocated += 1
            free = self._free_bytes()
            if free > self.max_free_bytes:
                self._release_free(free - self.max_free_bytes)
            raw, offset = _allocate(cls)
            if self._tracked_bytes + cls > self.max_bytes:
                self._release_free(self._tracked_bytes + cls - self.max_bytes)
            if self._tracked_bytes + cls <= self.max_bytes and cls <= self.max_free_bytes:
                slots.append(_Slot(raw, offset))
                self._tracked_bytes += cls
            return raw[offset:offset + nbytes]

    def _free_bytes(self) -> int:
        """Bytes of tracked buffers nobody references. O(tracked buffers). Lock held."""
        return sum(cls for cls, slots in self._classes.items() for s in slots if s.is_free())

    def _release_free(self, want_bytes: int) -> None:
        """Stop tracking free buffers (largest classes first) until ``want_bytes`` are freed."""
        freed = 0
        for cls in sorted(self._classes, reverse=True):
            kept = []
            for slot in self._classes[cls]:
                if freed < want_bytes and slot.is_free():
                    freed += cls
                    self._tracked_bytes -= cls
                else:
                    kept.append(slot)
            self._classes[cls] = kept
            if freed >= want_bytes:
                break

    def clear(self) -> None:
        """Forget every tracked buffer (those in use stay valid; memory returns as they die)."""
        with self._lock:
            self._classes.clear()
            self._tracked_bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            free = self._free_bytes()
            return {"tracked_bytes": self._tracked_bytes, "free_bytes": free,
                    "reused": self.reused, "allocated": self.allocated}


#: The pool behind :func:`tiercache.codec.empty_aligned`.
default_pool = BufferPool()



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
    """Whether every page of bytes ``[offset, offset + length)`` of the memory starting at
    ``mapping_address`` is in memory now (``mincore``: for a mapped file, in the page
    cache); ``None`` where that cannot be asked (not Linux, or the call failed).
    O(pages), one system call. Thread-safe."""
    if _mincore is None:
        return None
    first = offset // PAGE_BYTES * PAGE_BYTES
    span = offset + length - first
    if span <= 0:
        return True
    pages = -(-span // PAGE_BYTES)
    vector = bytearray(pages)
    holder = (ctypes.c_ubyte * pages).from_buffer(vector)
    try:
        if _mincore(mapping_address + first, span, holder) != 0:
            return None
    finally:
        del holder
    return (min(vector) & 1) == 1


def pages_resident(array: np.ndarray) -> bool:
    """Whether every page under ``array``'s bytes is in memory now: for a view of a
    mapped file, that reading it will not wait for the disk. ``False`` where ``mincore``
    cannot say. A snapshot: the kernel may evict a page right after. O(pages).
    Thread-safe."""
    if array.nbytes == 0:
        return True
    start = array.ctypes.data
    base = start - start % PAGE_BYTES
    return resident(base, start - base, array.nbytes) is True
