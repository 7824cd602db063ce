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

Representation (``representation = "stored" | "decoded"`` on a memory tier, see
docs/configuration.md): a *stored* store (the default) keeps each shard as put.
A *decoded* store keeps what the model computes with: ``put`` runs the shard
through a decoder (``decoder = "package.module:function"``, default
:data:`DEFAULT_DECODER`, ggml blocks / float16 / bfloat16 -> float32 except the
Q4_0/Q4_1/Q8_0 blocks the compiled decoder multiplies by as stored, imported on
first use so this module never imports :mod:`tiercache.models`) straight into
the store's aligned buffer, ``stored_size`` charges the decoded form (the tier
asks before each put, so its capacity counts the bytes actually held) and
``get``/``info`` answer the decoded array. A shard the decoder refuses (a plain
float32 array, or anything it does not know) is kept as is. See
:class:`ShardDecoding` for the decoder's contract. Decoding happens inside
``put``, so the engine runs it under its lock, like the copy it replaces
(SmolLM2's Q4_1 blocks decode at ~2.4 GB/s of float32 on the 2-core VM).

Thread-safety: dict operations are atomic under the GIL; safe from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np

from ..buffers import MIN_POOLED_BYTES, BufferPool
from ..codec import check_storable, empty_aligned
from ..errors import CacheClosedError
from ..loading import import_target
from .base import ShardInfo, Store

Representation = Literal["stored", "decoded"]
#: What a decoded memory tier runs each shard through unless its ``decoder`` option says.
DEFAULT_DECODER = "tiercache.models.quant:decode_for_compute"

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


Decoder = Callable[..., np.ndarray]
#: Bound on :class:`ShardDecoding`'s memo of decoded forms (distinct dtype/row shapes).
_FORMS_MEMO_MAX = 4096


class ShardDecoding:
    """The decoder of a decoded memory store, and what it makes of each shard.

    ``target`` names ``function(array, out=None) -> ndarray`` with the contract of
    :func:`tiercache.models.quant.dequantize`: it decodes ``array`` row for row (the
    result keeps ``array``'s first dimension), writes into ``out`` when given (a
    C-contiguous array of the decoded dtype and shape) and returns it, and raises
    :class:`ValueError` / :class:`TypeError` for an array it does not decode (that
    shard is then kept as stored). The function is imported on first use.

    :meth:`form` learns a shard's decoded dtype and row shape by decoding zero rows
    of it once per (dtype, row shape), so sizing a shard costs a dict lookup, not a
    decode. Thread-safety: the memo is a dict (atomic under the GIL); two threads
    may both probe a new form, with the same result. O(1) per call but
    :meth:`decode_into` (the decoder's cost).
    """

    def __init__(self, target: str = DEFAULT_DECODER) -> None:
        self.target = target
        self._function: Decoder | None = None
        #: (dtype str, shape[1:]) -> (decoded dtype, decoded shape[1:]), or None: kept as is.
        self._forms: dict[tuple[str, tuple[int, ...]],
                          tuple[np.dtype[Any], tuple[int, ...]] | None] = {}

    def function(self) -> Decoder:
        """The decoding function, imported on first use (:class:`ImportError` naming the
        target when it cannot be, :class:`TypeError` when it is not callable)."""
        if self._function is None:
            self._function = load_decoder(self.target)
        return self._function

    def form(self, array: np.ndarray) -> tuple[np.dtype[Any], tuple[int, ...]] | None:
        """The dtype and shape ``array`` takes once decoded, or ``None`` when it is kept
        as is: a native float32 array (ready to compute), a 0-d one, or one the decoder
        refuses. O(1) after the first shard of its dtype and row shape."""
        if array.ndim == 0 or array.dtype == np.dtype(np.float32):
            return None
        memo = (array.dtype.str, tuple(int(n) for n in array.shape[1:]))
        if memo in self._forms:
            found = self._forms[memo]
        else:
            try:
                probe = self.function()(array[:0])
            except (ValueError, TypeError):
                found = None
            else:
                if not isinstance(probe, np.ndarray) or probe.ndim == 0 or probe.shape[0] != 0:
                    raise TypeError(f"decoder {self.target}: returned {type(probe).__name__} "
                                    f"{getattr(probe, 'shape', '')} for 0 rows; it must decode "
                                    "row for row (see tiercache.stores.memory.ShardDecoding)")
                found = (probe.dtype, tuple(int(n) for n in probe.shape[1:]))
            if len(self._forms) >= _FORMS_MEMO_MAX:
                self._forms.clear()
            self._forms[memo] = found
        if found is None:
            return None
        return found[0], (int(array.shape[0]), *found[1])

    def decode_into(self, array: np.ndarray, out: np.ndarray) -> None:
        """Decode ``array`` into ``out`` (of :meth:`form`'s dtype and shape). O(elements)."""
        result = self.function()(array, out=out)
        if result is not out:
            np.copyto(out, result, casting="no")


def load_decoder(target: str) -> Decoder:
    """Import the decoding function ``"package.module:function"`` (see
    :class:`ShardDecoding`). :class:`ImportError` naming it when it cannot be
    imported, :class:`TypeError` when it is not callable. O(import)."""
    function = import_target(target, f"decoder {target!r}")
    if not callable(function):
        raise TypeError(f"decoder {target!r} is {type(function).__name__}, not a function")
    decoder: Decoder = function
    return decoder


#: The TOML keys of a memory tier besides the common ones.
OPTION_KEYS = frozenset({"representation", "decoder"})


def parse_options(table: Mapping[str, Any], fail: Callable[[str, str], Exception]
                  ) -> dict[str, Any]:
    """A memory tier's ``representation`` / ``decoder`` keys as :class:`MemoryStore`
    keyword arguments (``{}`` for the default, stored). ``fail(key, reason)`` builds the
    error raised for a bad value; a decoder that cannot be imported is one. O(import of
    the decoder)."""
    representation = table.get("representation", "stored")
    if representation not in ("stored", "decoded"):
        raise fail("representation", 'must be "stored" (shards as imported, compact) or '
                   '"decoded" (ready to compute), got ' + repr(representation)[:80])
    decoder = table.get("decoder")
    if decoder is None:
        return {} if representation == "stored" else {"representation": "decoded"}
    if representation != "decoded":
        raise fail("decoder", 'only a tier with representation = "decoded" runs a decoder; '
                   "set that or remove this key")
    if not isinstance(decoder, str) or ":" not in decoder:
        raise fail("decoder", 'must name a function as "package.module:function", got '
                   + repr(decoder)[:80])
    try:
        load_decoder(decoder)
    except (ImportError, TypeError) as exc:
        raise fail("decoder", str(exc)) from None
    return {"representation": "decoded", "decoder": decoder}


class MemoryStore(Store):
    """Volatile RAM store. Capacity counts each shard's buffer as allocated plus
    :data:`ENTRY_OVERHEAD_BYTES` (see the module docstring).

    ``representation="decoded"`` keeps each shard in the form ``decoder`` (a
    ``"package.module:function"``, see :class:`ShardDecoding`) makes of it, and
    charges that form's size; ``"stored"`` (default) keeps shards as put.
    """

    backend = "memory"
    persistent = False

    def __init__(self, *, representation: Representation = "stored",
                 decoder: str = DEFAULT_DECODER) -> None:
        if representation not in ("stored", "decoded"):
            raise ValueError(f"representation must be 'stored' or 'decoded', got "
                             f"{representation!r}")
        self.representation: Representation = representation
        #: The decoder of a decoded store; ``None`` for a stored one.
        self.decoding = ShardDecoding(decoder) if representation == "decoded" else None
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
        """Copy ``array`` -- in a decoded store, its decoded form -- into a fresh
        buffer (64-byte aligned below 256 KiB, a pooled page-aligned one above) and
        keep it read-only. O(n) (plus the decoder's work)."""
        check_storable(array)
        self._absent()
        form = self.decoding.form(array) if self.decoding is not None else None
        dtype, shape = form if form is not None else (array.dtype, array.shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes >= MIN_POOLED_BYTES:
            buffer = empty_aligned(nbytes)
            owner = buffer.base
            assert isinstance(owner, np.ndarray)  # a pooled buffer views its raw array
            offset = buffer.ctypes.data - owner.ctypes.data
        else:
            owner = np.empty(allocated_nbytes(nbytes), dtype=np.uint8)
            offset = -owner.ctypes.data % SMALL_ALIGN_BYTES
        dest = owner[offset:offset + nbytes].view(dtype).reshape(shape)
        if self.decoding is not None and form is not None:
            self.decoding.decode_into(array, dest)
        else:
            np.copyto(dest, array, casting="no")
        self._arrays[key] = _frozen(owner, offset, dest)
        return shard_cost_nbytes(nbytes)

    def adopt(self, key: str, array: np.ndarray) -> int:
        """Keep ``array``'s buffer itself (no copy) when that costs no more than
        :meth:`put` would; otherwise (a view into a larger buffer, a memory map, a
        non-contiguous array, a small buffer padded to a page) copy it like
        :meth:`put`. The caller must not write to ``array`` afterwards; it is
        marked read-only, and the store keeps its own read-only array over the
        buffer (hand *that* out: ``get(key)``). Used by the engine when it
        promotes a freshly read, private buffer. A decoded store decodes ``array``
        into a buffer of its own (:meth:`put`) unless it keeps it as is. O(1), or
        O(n) when it copies or decodes.
        """
        check_storable(array)
        self._absent()
        if self.decoding is not None and self.decoding.form(array) is not None:
            return self.put(key, array)
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
        process once put (its buffer plus :data:`ENTRY_OVERHEAD_BYTES`); in a decoded
        store, the payload of its decoded form. O(1) (a decoded store's first shard
        of a new dtype and row shape decodes zero rows of it once)."""
        if self.decoding is not None:
            form = self.decoding.form(array)
            if form is not None:
                return shard_cost_nbytes(math.prod(form[1]) * form[0].itemsize)
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
