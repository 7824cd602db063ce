"""In-process store: shards held as read-only numpy arrays in a dict.

A hit costs one dict lookup and returns the stored array itself (no copy).
``put`` copies the caller's array into a fresh aligned buffer, so later writes
by the caller never change the cached value.

What the tier's capacity counts (:meth:`MemoryStore.stored_size`) is the
shard's real cost in this process, not its ``nbytes``: the buffer as allocated
(:func:`allocated_nbytes`: a shard below 256 KiB gets a 64-byte aligned buffer
of ``nbytes + 63`` bytes; a larger one a page-aligned, pooled buffer rounded up
to its 64 KiB size class plus a page) plus :data:`ENTRY_OVERHEAD_BYTES` of
bookkeeping per entry. So a tier of N bytes holds at most N /
:data:`ENTRY_OVERHEAD_BYTES` shards however small they are, and a zero-size
shard is not free.

Read-only, for real: the array a hit returns (and every view of it) lies over
a read-only :class:`memoryview`, so numpy refuses ``a.flags.writeable = True``
(``ValueError``) and no write through the numpy API can change the cached
value. What this does not stop is code that deliberately reaches the writable
buffer under the memoryview (its ``.obj``, or :func:`writable_view`, which the
TensorFlow adapter uses to hand a shard to TensorFlow without a copy) or
writes through raw pointers (``a.ctypes``, ``__array_interface__``, C
extensions): the cache trusts its own process.

Thread-safety: dict operations are atomic under the GIL; safe from any thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..buffers import MIN_POOLED_BYTES, BufferPool
from ..codec import check_storable, empty_aligned
from ..errors import CacheClosedError
from .base import ShardInfo, Store

#: Alignment of the buffers of shards below :data:`~tiercache.buffers.MIN_POOLED_BYTES`:
#: a cache line, which is also what TensorFlow needs to wrap a buffer without a copy.
#: Larger shards are page-aligned (pooled buffers).
SMALL_ALIGN_BYTES = 64

#: Bytes charged per entry on top of its buffer: the numpy objects that make the
#: shard (its buffer's array, the read-only memoryview and its managed buffer, the
#: array handed out, their shape/stride blocks), the store's dict slot and malloc's
#: per-block headers, plus the engine's per-entry bookkeeping in the tier index and
#: the eviction policy, and the key string.
#: Measured: RSS grew ~1,040 bytes per one-byte shard (64 of them its buffer) when
#: 100k shards with 27-character keys filled a memory tier through
#: :class:`~tiercache.TieredCache` (LRU and ARC alike), the store's own part being
#: ~700 bytes (tracemalloc); rounded up to 1 KiB. Longer keys cost more.
ENTRY_OVERHEAD_BYTES = 1024


def allocated_nbytes(nbytes: int) -> int:
    """Bytes of the buffer that :meth:`MemoryStore.put` allocates for a shard of
    ``nbytes`` payload bytes (without :data:`ENTRY_OVERHEAD_BYTES`). O(1)."""
    if nbytes >= MIN_POOLED_BYTES:
        return BufferPool.allocated_nbytes(nbytes)
    return nbytes + SMALL_ALIGN_BYTES - 1


def shard_cost_nbytes(nbytes: int) -> int:
    """What a memory tier's capacity is charged for a shard of ``nbytes`` payload
    bytes: :func:`allocated_nbytes` plus :data:`ENTRY_OVERHEAD_BYTES`. O(1)."""
    return allocated_nbytes(nbytes) + ENTRY_OVERHEAD_BYTES


def writable_view(array: np.ndarray) -> np.ndarray | None:
    """A writable array over the same bytes as ``array``, a read-only array a memory
    store handed out, or ``None`` if ``array`` does not lie over such a buffer.

    The deliberate way around the protection described in the module docstring,
    for trusted code that must pass the bytes to a consumer needing a writable
    export and that never writes through it: TensorFlow's DLPack import
    (:func:`tiercache.models.runtime.tensorflow.to_tensor`). Writing through the result
    changes the cached value. O(1). Thread-safe.
    """
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, memoryview) or not isinstance(base.obj, np.ndarray):
        return None
    owner = base.obj
    if not owner.flags.writeable:
        return None
    offset = array.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
    return np.ndarray(array.shape, array.dtype, buffer=owner, offset=offset,
                      strides=array.strides)


def _frozen(owner: np.ndarray, offset: int, like: np.ndarray) -> np.ndarray:
    """An array of ``like``'s dtype and shape over ``owner``'s bytes from ``offset``,
    through a read-only memoryview: numpy cannot make it (or any view of it)
    writable again. ``owner`` must be C-contiguous. O(1)."""
    readonly = owner.data.toreadonly()  # a memoryview numpy cannot write through
    flat = np.frombuffer(readonly, dtype=like.dtype, count=like.size, offset=offset)
    return flat if like.ndim == 1 else flat.reshape(like.shape)


class MemoryStore(Store):
    """Volatile RAM store. Capacity counts each shard's buffer as allocated plus
    :data:`ENTRY_OVERHEAD_BYTES` (see the module docstring)."""

    backend = "memory"
    persistent = False

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        #: Set by :meth:`close` (which empties the dict): then every operation raises
        #: CacheClosedError -- checked only where the dict says "absent", so a hit
        #: stays one dict lookup.
        self._closed = False

    def _absent(self) -> None:
        """What a lookup that found nothing returns: ``None``, or CacheClosedError once
        closed. O(1)."""
        if self._closed:
            raise CacheClosedError("memory store: the store was closed")

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """The stored read-only array itself (one dict lookup), or a copy into ``out``."""
        array = self._arrays.get(key)
        if array is None:
            self._absent()
            return None
        if out is None:
            return array
        if out.dtype != array.dtype or out.shape != array.shape:
            raise ValueError(f"out has dtype {out.dtype} shape {out.shape}; shard {key!r} is "
                             f"{array.dtype} {array.shape}")
        np.copyto(out, array)
        return out

    def put(self, key: str, array: np.ndarray) -> int:
        """Copy ``array`` into a fresh buffer (64-byte aligned below 256 KiB, a pooled
        page-aligned one above) and keep it read-only. O(n)."""
        check_storable(array)
        self._absent()
        nbytes = int(array.nbytes)
        if nbytes >= MIN_POOLED_BYTES:
            buffer = empty_aligned(nbytes)
            owner = buffer.base
            assert isinstance(owner, np.ndarray)  # a pooled buffer views its raw array
            offset = buffer.ctypes.data - owner.ctypes.data
        else:
            owner = np.empty(allocated_nbytes(nbytes), dtype=np.uint8)
            offset = -owner.ctypes.data % SMALL_ALIGN_BYTES
        dest = owner[offset:offset + nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(dest, array, casting="no")
        self._arrays[key] = _frozen(owner, offset, array)
        return self.stored_size(array)

    def adopt(self, key: str, array: np.ndarray) -> int:
        """Keep ``array``'s buffer itself (no copy) when that costs no more than
        :meth:`put` would; otherwise (a view into a larger buffer, a memory map, a
        non-contiguous array, a small buffer padded to a page) copy it like
        :meth:`put`. The caller must not write to ``array`` afterwards; it is
        marked read-only, and the store keeps its own read-only array over the
        buffer (hand *that* out: ``get(key)``). Used by the engine when it
        promotes a freshly read, private buffer. O(1), or O(n) when it copies.
        """
        check_storable(array)
        self._absent()
        owner = array if array.base is None else array.base
        if (isinstance(owner, np.ndarray) and owner.flags.owndata
                and owner.flags.c_contiguous and array.flags.c_contiguous
                and owner.nbytes <= allocated_nbytes(int(array.nbytes))):
            offset = array.ctypes.data - owner.ctypes.data
            array.flags.writeable = False
            self._arrays[key] = _frozen(owner, offset, array)
            return self.stored_size(array)
        return self.put(key, array)

    def delete(self, key: str) -> bool:
        if self._arrays.pop(key, None) is not None:
            return True
        self._absent()
        return False

    def info(self, key: str) -> ShardInfo | None:
        array = self._arrays.get(key)
        if array is None:
            self._absent()
            return None
        return ShardInfo(array.dtype, array.shape, self.stored_size(array))

    def keys(self) -> Iterator[str]:
        self._absent()
        return iter(list(self._arrays))

    def stored_size(self, array: np.ndarray) -> int:
        """:func:`shard_cost_nbytes` of the payload: what the shard costs this
        process once put (its buffer plus :data:`ENTRY_OVERHEAD_BYTES`). O(1)."""
        return shard_cost_nbytes(int(array.nbytes))

    def __contains__(self, key: object) -> bool:
        if key in self._arrays:
            return True
        self._absent()
        return False

    def close(self) -> None:
        """Drop every shard; later operations raise
        :class:`~tiercache.errors.CacheClosedError`. Idempotent. O(shards)."""
        self._closed = True
        self._arrays.clear()
