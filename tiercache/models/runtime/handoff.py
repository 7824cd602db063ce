"""Handing numpy shards to TensorFlow without copying them, and decoding stored shards.

Handoff (numpy -> ``tf.Tensor``): ``tf.constant`` / ``tf.convert_to_tensor``
always copy (about 25 ms for 64 MiB here, into fresh memory). A C-contiguous
array whose address is 64-byte aligned is instead wrapped without a copy via
DLPack (``tf.experimental.dlpack.from_dlpack``, about 2 µs per shard). Two
traps, both handled in :func:`to_tensor`: numpy refuses to export a
read-only array through (pre-1.0) DLPack, so a read-only array -- what a
RAM-tier hit returns -- is exported through a writable *view* of the same
memory (TensorFlow never writes to it: the decoder only reads weights, and
the test suite checks the cache's arrays are unchanged after a run); and an
array that is not 64-byte aligned must never go through DLPack -- TensorFlow
accepts it, then aborts the process (``Check failed: IsAligned()``) in the
first kernel that reads it -- so those are copied into an aligned buffer
first. tiercache's stores return page-aligned arrays, so with a
:class:`~tiercache.TieredCache` every handoff is zero-copy. The
aliasing is safe: the tensor keeps the numpy array alive, and tiercache's
buffer pool reuses a buffer only when nothing references it.

Stored shards that are not float32 (a quantized ggml block array, float16,
bfloat16 stored as uint16) are decoded by :class:`ShardDecoder` into reused
64-byte-aligned float32 buffers, one per *slot* (a slot is a position in the
decoder's read order, so a buffer is never reused while TensorFlow may still
read it: the decoder finishes a block before it fetches that slot again), and
the float32 buffer is then handed over zero-copy like any shard.

``tensorflow`` is imported on first use (3-7 s), never at module import.

Thread-safety: the functions are thread-safe; a :class:`ShardDecoder` is not
(one per model, like the model itself).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from ...stores.memory import writable_view

#: Alignment TensorFlow's CPU kernels require of tensor memory (EIGEN_MAX_ALIGN_BYTES).
TF_ALIGN_BYTES = 64

_TF: Any = None


def tf_module() -> Any:
    """Import TensorFlow once (with ``TF_CPP_MIN_LOG_LEVEL=1`` unless set) and return it."""
    global _TF
    if _TF is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        try:
            import tensorflow
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModelFormatError("running models needs TensorFlow: "
                                   "pip install 'tiercache[tf]'") from None
        _TF = tensorflow
    return _TF


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary. O(1)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.empty(nbytes + TF_ALIGN_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % TF_ALIGN_BYTES
    out: np.ndarray = raw[start:start + nbytes].view(dt).reshape(shape)
    return out


def aligned_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """:func:`aligned_empty` filled with zeros. O(size)."""
    out = aligned_empty(shape, dtype)
    out.fill(0)
    return out


def _address(array: np.ndarray) -> int:
    """The data address (``__array_interface__``: cheaper than ``.ctypes`` on a new array)."""
    return int(array.__array_interface__["data"][0])


def _writable_alias(array: np.ndarray) -> np.ndarray | None:
    """A writable view of the read-only ``array``'s memory, or None if numpy refuses.
    A RAM-tier hit lies over a read-only memoryview (numpy refuses): its alias is
    taken from the buffer under it (:func:`tiercache.stores.memory.writable_view`)."""
    view = array.view()
    try:
        view.flags.writeable = True
    except ValueError:
        return writable_view(array)
    return view


def zero_copy_ok(array: np.ndarray) -> bool:
    """Whether :func:`to_tensor` can wrap ``array`` without copying it."""
    return (array.flags.c_contiguous and array.size > 0
            and _address(array) % TF_ALIGN_BYTES == 0
            and (array.flags.writeable or _writable_alias(array) is not None))


def to_tensor(array: np.ndarray) -> tuple[Any, bool]:
    """A ``tf.Tensor`` with the contents of ``array`` and whether it was zero-copy.

    Zero-copy (DLPack) when :func:`zero_copy_ok`, else one copy into a
    64-byte-aligned buffer that the tensor then owns. The tensor may alias
    ``array``: do not write to ``array`` while the tensor is alive. O(1) or
    O(nbytes).
    """
    tf = tf_module()
    if array.size and array.flags.c_contiguous and _address(array) % TF_ALIGN_BYTES == 0:
        view = array if array.flags.writeable else _writable_alias(array)
        if view is not None:
            return tf.experimental.dlpack.from_dlpack(view.__dlpack__()), True
    if array.size == 0:
        return tf.zeros(array.shape, dtype=array.dtype), False
    staged = aligned_empty(array.shape, array.dtype)
    np.copyto(staged, array)
    return tf.experimental.dlpack.from_dlpack(staged.__dlpack__()), False


def _quant_module() -> Any:
    """:mod:`tiercache.models.quant` (the ggml block formats), or None where it is absent."""
    try:
        from .. import quant
    except ImportError:  # pragma: no cover - an older tree without the quant module
        return None
    return quant


class ShardDecoder:
    """Turns any stored shard into a float32 array of its logical shape.

    A float32 shard is returned as is (no copy). A quantized ggml block array
    (``quant.encoding_of(array)`` is not None), a float16 shard or a bfloat16
    shard (uint16 bit patterns) is dequantized with ``quant.dequantize(array,
    out=buffer)`` into a 64-byte-aligned float32 buffer reused per *slot*: the
    caller names the slot (its position in a read order) and must not use a
    slot's previous result after asking for that slot again. ``seconds``
    accumulates the time spent dequantizing; ``bytes_decoded`` the float32
    bytes written. Cost O(elements) for a stored shard, O(1) for float32.
    """

    def __init__(self) -> None:
        self._buffers: dict[Any, np.ndarray] = {}
        self.seconds = 0.0
        self.bytes_decoded = 0

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the slot buffers. O(slots)."""
        return sum(int(b.nbytes) for b in self._buffers.values())

    @staticmethod
    def logical_shape(array: np.ndarray) -> tuple[int, ...]:
        """The float shape ``array`` stands for (its own shape unless quantized)."""
        if array.dtype == np.float32 or array.dtype.kind == "f":
            return tuple(array.shape)
        quant = _quant_module()
        if quant is None:
            return tuple(array.shape)
        return tuple(int(n) for n in quant.logical_shape(array))

    def decode(self, key: str, array: np.ndarray, slot: Any) -> np.ndarray:
        """``array`` (the shard ``key``) as float32, into ``slot``'s buffer unless it
        is float32 already. :class:`ModelFormatError` naming ``key`` for an array
        that is neither floats nor a known quantized layout."""
        if array.dtype == np.float32:
            return array
        started = time.perf_counter()
        shape = self.logical_shape(array)
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.shape != shape:
            buffer = aligned_empty(shape, np.float32)
            self._buffers[slot] = buffer
        self.dequantize_into(key, array, buffer)
        self.seconds += time.perf_counter() - started
        self.bytes_decoded += buffer.nbytes
        return buffer

    def rows(self, key: str, array: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Float32 rows ``ids`` of the 2-D table ``array`` (an embedding lookup): only
        those rows are dequantized. O(len(ids) * columns)."""
        started = time.perf_counter()
        picked = array[ids]  # quantized: [n, blocks, block bytes]; floats: [n, columns]
        if array.dtype == np.float32:
            return np.asarray(picked, dtype=np.float32)
        out = np.empty(self.logical_shape(picked), dtype=np.float32)
        self.dequantize_into(key, picked, out)
        self.seconds += time.perf_counter() - started
        return out

    @staticmethod
    def dequantize_into(key: str, array: np.ndarray, out: np.ndarray) -> None:
        """Write the float32 values of ``array`` into ``out`` (same logical shape)."""
        quant = _quant_module()
        if quant is not None:
            try:
                quant.dequantize(array, out=out)
            except (ValueError, TypeError) as err:
                raise ModelFormatError(f"shard {key!r} cannot be decoded: {err}") from None
            return
        if array.dtype.kind != "f":  # pragma: no cover - only without the quant module
            raise ModelFormatError(f"shard {key!r} has dtype {array.dtype}, expected floats")
        np.copyto(out, array)


class CacheTensors:
    """Zero-copy tensors of a KV cache's per-layer views, kept between passes.

    A :class:`~tiercache.models.runtime.kv.KVCache` is written in place (numpy)
    between the compiled calls that read it, and its arrays change only when it
    grows or sheds rows. So the DLPack tensors over a layer's keys and values
    are made once per (layer, rows) and reused while the cache holds the same two
    arrays: 2 handoffs per call instead of 2 per layer (60 for SmolLM2, ~5 us
    each). A view that had to be copied (unaligned) is never kept: its copy
    would not see the writes. Memory: what it keeps are views; the old arrays are
    let go at the first call with new ones. Not thread-safe (one per model).
    """

    def __init__(self) -> None:
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._kept: dict[tuple[int, int | None, int | None], tuple[Any, Any]] = {}

    def layer(self, keys: np.ndarray, values: np.ndarray, layer: int,
              rows: slice) -> tuple[Any, Any]:
        """Tensors of ``keys[layer, rows]`` and ``values[layer, rows]``. O(1) when kept."""
        held = self._arrays
        if held is None or held[0] is not keys or held[1] is not values:
            self._arrays, self._kept = (keys, values), {}
        index = (layer, rows.start, rows.stop)
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        (k, k_zero), (v, v_zero) = to_tensor(keys[layer, rows]), to_tensor(values[layer, rows])
        if k_zero and v_zero:
            self._kept[index] = (k, v)
        return k, v


class InputBuffers:
    """A step's small float32 inputs handed over through reused aligned buffers.

    :meth:`tensors` copies each array into its own buffer (kept per name while the
    shape stays) and wraps it zero-copy: right after a step has streamed the weights
    through the CPU caches, ``tf.constant`` of a few KiB took ~170 us (10 us
    otherwise) on the 2-core VM. A buffer is rewritten at the next call, so the
    tensors of one call must not be used after the next: the decoder's functions
    return new tensors, never their inputs. Not thread-safe (one per model).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def tensors(self, **arrays: np.ndarray) -> list[Any]:
        """One tensor per keyword argument, in order (values cast to float32). O(bytes)."""
        out = []
        for name, values in arrays.items():
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape != values.shape:
                buffer = self._buffers[name] = aligned_empty(values.shape, np.float32)
            np.copyto(buffer, values, casting="same_kind")
            out.append(to_tensor(buffer)[0])
        return out
