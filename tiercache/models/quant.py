"""ggml block formats: the one module that knows how quantized shards are laid out.

A GGUF tensor of a block type (Q4_1, Q8_0, Q4_K, ...) is stored as a shard
holding its ggml blocks byte for byte, as a C-contiguous ``uint8`` array of
shape ``(rows, blocks_per_row, block_bytes)``: ``rows`` is the product of all
numpy dimensions but the last (GGUF's ``ne[1..]``, reversed), and
``blocks_per_row * block_elems`` is the logical number of columns. Every
supported block type has its own ``block_bytes`` (:data:`GGML_TYPES`), so the
shard's ordinary header (dtype ``uint8`` + a 3-D shape) tells the type and the
logical shape without any side channel: :func:`encoding_of`,
:func:`logical_shape`. F16 shards are plain ``float16`` arrays, BF16 shards
``uint16`` arrays of the bf16 bit patterns, F32 shards ``float32``; all of
the logical shape.

:func:`dequantize` turns a shard back into float32 with the formulas of
gguf-py's reference dequantization (the same float32 operations in the same
order, so the result is equal bit for bit; tests/models/test_quant.py checks every
type against it). It works on row chunks of about :data:`CHUNK_ELEMS` output
values (256 KiB, L2-sized) with scratch arrays of one chunk, writing into the
caller's ``out``: the only full-size array is the output. Every numpy call
releases the GIL, so several threads dequantizing different shards run in
parallel. :func:`quantize` makes Q8_0 (and F16/BF16) shards from float
arrays; ``python bench/bench_quant.py`` prints the throughput (:func:`bench`).

Complexity: O(elements) time, O(chunk) extra memory. Thread-safety: the
functions are pure (module-level tables are read-only); callers must not
share one ``out`` between concurrent calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFormatError

__all__ = [
    "BLOCK_TYPES",
    "CHUNK_ELEMS",
    "COMPUTED_AS_STORED",
    "GGML_TYPES",
    "GGMLType",
    "decode_for_compute",
    "dequantize",
    "encoding_of",
    "logical_shape",
    "q8_0_error_bound",
    "quantize",
    "storage_dtype",
    "stored_shape",
]

F32 = np.dtype(np.float32)
#: Output values dequantized per chunk: 64 Ki float32 = 256 KiB, so a chunk's
#: output and scratch stay in a core's L2 (1 MiB on the 2-core VM).
CHUNK_ELEMS = 1 << 16


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: its name, GGUF type id and block geometry.

    ``block_elems`` values are stored in ``block_bytes`` bytes; plain types
    (F32, F16, BF16) have ``block_elems == 1``.
    """

    name: str
    type_id: int
    block_elems: int
    block_bytes: int

    @property
    def blocked(self) -> bool:
        """True for block-quantized types (stored as 3-D uint8 shards)."""
        return self.block_elems > 1


#: The supported types by name (block sizes as in ggml / gguf.constants.GGML_QUANT_SIZES).
GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("F32", 0, 1, 4), GGMLType("F16", 1, 1, 2), GGMLType("BF16", 30, 1, 2),
    GGMLType("Q4_0", 2, 32, 18), GGMLType("Q4_1", 3, 32, 20),
    GGMLType("Q5_0", 6, 32, 22), GGMLType("Q5_1", 7, 32, 24), GGMLType("Q8_0", 8, 32, 34),
    GGMLType("Q2_K", 10, 256, 84), GGMLType("Q3_K", 11, 256, 110),
    GGMLType("Q4_K", 12, 256, 144), GGMLType("Q5_K", 13, 256, 176),
    GGMLType("Q6_K", 14, 256, 210))}
#: Block types the compiled decoder multiplies by as stored, without a float32 copy
#: (:mod:`tiercache.models.runtime.qlinear`); the others it dequantizes first.
COMPUTED_AS_STORED = frozenset({"Q4_0", "Q4_1", "Q8_0"})
#: Block types by ``block_bytes`` (unique among the supported types).
BLOCK_TYPES: dict[int, GGMLType] = {t.block_bytes: t for t in GGML_TYPES.values() if t.blocked}
assert len(BLOCK_TYPES) == sum(t.blocked for t in GGML_TYPES.values())


def storage_dtype(ggml_type: GGMLType) -> np.dtype[Any]:
    """The numpy dtype of a shard of this type (uint8 for block types). O(1)."""
    plain = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
    return np.dtype(plain.get(ggml_type.name, np.uint8))


def stored_shape(ggml_type: GGMLType, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shard shape holding a tensor of logical ``shape`` in ``ggml_type``. O(ndim).

    ``ValueError`` when the last dimension is not a whole number of blocks.
    """
    if not ggml_type.blocked:
        return tuple(shape)
    if not shape or shape[-1] % ggml_type.block_elems:
        raise ValueError(f"a {ggml_type.name} tensor needs rows of a multiple of "
                         f"{ggml_type.block_elems} values, got shape {list(shape)}")
    return (math.prod(shape[:-1]), shape[-1] // ggml_type.block_elems, ggml_type.block_bytes)


def encoding_of(array: np.ndarray) -> GGMLType | None:
    """The ggml type a shard needs decoding from, or None for a plain float shard.

    ``uint8`` 3-D with a known last dimension: that block type; ``uint16``:
    BF16; any float dtype (float32, float16, float64, either byte order): None.
    Any other array raises
    :class:`~tiercache.errors.ModelFormatError` (a ``ValueError``). O(1).
    """
    dt = array.dtype
    if dt.kind == "f":
        return None
    if dt == np.uint16:
        return GGML_TYPES["BF16"]
    if dt == np.uint8:
        if array.ndim != 3:
            raise ModelFormatError(f"a uint8 shard must be (rows, blocks, block_bytes), got "
                                   f"shape {list(array.shape)}")
        found = BLOCK_TYPES.get(int(array.shape[2]))
        if found is None:
            raise ModelFormatError(f"a uint8 shard with blocks of {array.shape[2]} bytes is no "
                                   f"supported ggml type (known: {_known_blocks()})")
        return found
    raise ModelFormatError(f"a shard of dtype {dt} is neither floats nor a ggml encoding "
                           "(uint8 blocks, uint16 bf16)")


def _known_blocks() -> str:
    return ", ".join(f"{t.name} {b}" for b, t in sorted(BLOCK_TYPES.items()))


def logical_shape(array: np.ndarray) -> tuple[int, ...]:
    """The float shape a shard stands for: ``(rows, blocks * block_elems)`` for block
    types, the array's own shape otherwise. O(1)."""
    enc = encoding_of(array)
    if enc is None or not enc.blocked:
        return tuple(int(n) for n in array.shape)
    return (int(array.shape[0]), int(array.shape[1]) * enc.block_elems)


# --------------------------------------------------------------------------- kernels
# Each kernel decodes n blocks: ``blocks`` (n, block_bytes) uint8 -> ``out`` (n,
# block_elems) float32, with the float32 operations of gguf-py's dequantize_blocks in
# the same order (a product, then a sum: numpy never fuses them).

#: Shifts 0..7 along axis 1: ``(bytes[:, None, :] >> _SHIFT8) & 1`` is bit j of byte l
#: at [j, l] (1.2-1.3x np.unpackbits + a transpose, measured).
_SHIFT8 = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 field at byte ``at`` of every block, as float32, shape (n, 1)."""
    return blocks[:, at:at + 2].view(np.float16).astype(np.float32)


def _low_high(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low and high nibbles of every byte of the chunk, each (n, block_bytes) uint8.

    Done on the whole contiguous chunk (header bytes too): long inner loops beat
    short strided ones by ~10x in numpy.
    """
    return blocks & np.uint8(15), blocks >> np.uint8(4)


def _as_signed(q: np.ndarray, offset: int) -> np.ndarray:
    """``q - offset`` for small unsigned ``q``, as int8 (in place, wrapping)."""
    q -= np.uint8(offset)
    return q.view(np.int8)


def _q4(blocks: np.ndarray, out: np.ndarray, at: int, offset: int) -> None:
    """out = the 32 nibbles from byte ``at`` (low ones first), minus ``offset``."""
    n = len(blocks)
    lo, hi = _low_high(blocks)
    o = out.reshape(n, 2, 16)
    o[:, 0] = _as_signed(lo, offset)[:, at:] if offset else lo[:, at:]
    o[:, 1] = _as_signed(hi, offset)[:, at:] if offset else hi[:, at:]


def _q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    _q4(blocks, out, 2, 8)
    out *= _f16(blocks, 0)


def _q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    _q4(blocks, out, 4, 0)
    out *= _f16(blocks, 0)
    out += _f16(blocks, 2)


def _q5_index(blocks: np.ndarray, at: int) -> np.ndarray:
    """The 5-bit values of a Q5_0/Q5_1 block (qh at ``at``, qs after it), (n, 32) uint8."""
    n = len(blocks)
    q = np.unpackbits(blocks[:, at:at + 4], axis=1, bitorder="little")
    q <<= 4
    lo, hi = _low_high(blocks)
    q2 = q.reshape(n, 2, 16)
    q2[:, 0] |= lo[:, at + 4:]
    q2[:, 1] |= hi[:, at + 4:]
    return q


def _q5_0(blocks: np.ndarray, out: np.ndarray) -> None:
    out[...] = _as_signed(_q5_index(blocks, 2), 16)
    out *= _f16(blocks, 0)


def _q5_1(blocks: np.ndarray, out: np.ndarray) -> None:
    out[...] = _q5_index(blocks, 4)
    out *= _f16(blocks, 0)
    out += _f16(blocks, 2)


def _q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    out[...] = blocks[:, 2:].view(np.int8)
    out *= _f16(blocks, 0)


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins of a Q4_K/Q5_K block, as float32 (n, 8)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _apply_k4(blocks: np.ndarray, out: np.ndarray) -> None:
    """out = (d * sc) * q - dmin * m per 32-value sub-block (Q4_K, Q5_K)."""
    n = len(blocks)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    o = out.reshape(n, 8, 32)
    o *= (_f16(blocks, 0) * sc)[:, :, None]
    o -= (_f16(blocks, 2) * mn)[:, :, None]


def _q4_k(blocks: np.ndarray, out: np.ndarray) -> None:
    n = len(blocks)
    lo, hi = _low_high(blocks)
    o = out.reshape(n, 4, 2, 32)
    o[:, :, 0] = lo[:, 16:].reshape(n, 4, 32)
    o[:, :, 1] = hi[:, 16:].reshape(n, 4, 32)
    _apply_k4(blocks, out)


def _q5_k(blocks: np.ndarray, out: np.ndarray) -> None:
    n = len(blocks)
    q = (blocks[:, 16:48].reshape(n, 1, 32) >> _SHIFT8) & np.uint8(1)  # (n, 8, 32):
    q <<= 4                                                             # bit j of qh[l]
    lo, hi = _low_high(blocks)
    q4 = q.reshape(n, 4, 2, 32)
    q4[:, :, 0] |= lo[:, 48:].reshape(n, 4, 32)
    q4[:, :, 1] |= hi[:, 48:].reshape(n, 4, 32)
    out.reshape(n, 8, 32)[...] = q
    _apply_k4(blocks, out)


def _q6_k(blocks: np.ndarray, out: np.ndarray) -> None:
    n = len(blocks)
    lo, hi = _low_high(blocks)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)       # [half, -, l]
    q = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    q <<= 4                                            # (n, 2, 4, 32): [half, group, l]
    q5 = q.reshape(n, 2, 2, 2, 32)                     # group = nibble * 2 + chunk
    q5[:, :, 0] |= lo[:, :128].reshape(n, 2, 2, 32)
    q5[:, :, 1] |= hi[:, :128].reshape(n, 2, 2, 32)
    out.reshape(n, 8, 32)[...] = _as_signed(q, 32).reshape(n, 8, 32)
    scale = blocks[:, 192:208].view(np.int8).astype(np.float32) * _f16(blocks, 208)
    o = out.reshape(n, 16, 16)
    o *= scale[:, :, None]


def _two_bits(qs: np.ndarray) -> np.ndarray:
    """(n, 64) bytes of 2-bit values -> (n, 8, 32) uint8: group h*4+k = bits 2k of
    bytes h*32 .. h*32+31."""
    n = len(qs)
    shifted = qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    shifted &= np.uint8(3)
    return shifted.reshape(n, 8, 32)


def _q2_k(blocks: np.ndarray, out: np.ndarray) -> None:
    n = len(blocks)
    sc = blocks[:, :16]
    out.reshape(n, 8, 32)[...] = _two_bits(blocks[:, 16:80])
    o = out.reshape(n, 16, 16)
    o *= (_f16(blocks, 80) * (sc & np.uint8(15)).astype(np.float32))[:, :, None]
    o -= (_f16(blocks, 82) * (sc >> np.uint8(4)).astype(np.float32))[:, :, None]


def _q3_k(blocks: np.ndarray, out: np.ndarray) -> None:
    n = len(blocks)
    q = _two_bits(blocks[:, 32:96])
    hbits = (blocks[:, :32].reshape(n, 1, 32) >> _SHIFT8) & np.uint8(1)  # (n, 8, 32)
    hbits ^= np.uint8(1)                               # the offset is 4 when the bit is 0
    hbits <<= 2
    q -= hbits                                         # wraps: read back as int8
    out.reshape(n, 8, 32)[...] = q.view(np.int8)
    s = blocks[:, 96:108]
    low = np.concatenate([s[:, :8] & 15, s[:, :8] >> 4], axis=1)
    high = (s[:, 8:12].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1))
    scales = (low | ((high.reshape(n, 16) & 3) << 4)).astype(np.float32) - 32
    o = out.reshape(n, 16, 16)
    o *= (_f16(blocks, 108) * scales)[:, :, None]


_KERNELS: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
assert set(_KERNELS) == {t.name for t in BLOCK_TYPES.values()}


_F16_TABLE: list[np.ndarray] = []


def _f16_table() -> np.ndarray:
    """float32 value of each of the 65536 float16 bit patterns (256 KiB, built once:
    numpy's own cast, so NaN payloads and subnormals come out the same)."""
    if not _F16_TABLE:  # two threads may both build it: same table, harmless
        _F16_TABLE.append(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
                          .view(np.float16).astype(np.float32))
    return _F16_TABLE[0]


def _check_out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.dtype != F32 or not out.flags.c_contiguous or not out.flags.writeable or \
            out.size != math.prod(shape):
        raise ValueError(f"out must be a writable C-contiguous float32 array of "
                         f"{math.prod(shape)} values (shape {list(shape)}), got "
                         f"{out.dtype} shape {list(out.shape)}")
    return out


def dequantize(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of a shard (any encoding), equal bit for bit to gguf-py's.

    ``array``: a block-type shard (see the module docstring), a float array
    (float32 is copied, float16 widened, float64 rounded), or a uint16 array of
    bf16 bit patterns. ``out``: where to
    write (a writable C-contiguous float32 array with as many values as the
    logical shape; any shape, e.g. the manifest's); a new array of the
    logical shape when None. Returns ``out``. Works in chunks of
    :data:`CHUNK_ELEMS` values: no temporary of the tensor's size.
    ``ModelFormatError``/``ValueError`` for an array that is no valid shard or
    an unfit ``out``. O(elements); thread-safe (distinct ``out`` per call).
    """
    enc = encoding_of(array)
    result = _check_out(out, logical_shape(array))
    flat_out = result.reshape(-1)
    if enc is None and array.dtype != np.float16:  # float32 (a memcpy), float64, ">f4"...
        np.copyto(flat_out, array.reshape(-1), casting="same_kind")
        return result
    if enc is None or enc.name == "BF16":
        flat_in = array.reshape(-1)
        half = array.dtype == np.float16
        if half:
            flat_in = flat_in.view(np.uint16)
        for start in range(0, flat_in.size, CHUNK_ELEMS):
            stop = start + CHUNK_ELEMS
            if half:  # a table lookup: ~1.7x numpy's float16 cast, same values
                np.take(_f16_table(), flat_in[start:stop], out=flat_out[start:stop],
                        mode="clip")
            else:  # bf16: the 16 bits on top of a float32
                words = flat_out[start:stop].view(np.uint32)
                words[...] = flat_in[start:stop]
                words <<= 16
        return result
    kernel = _KERNELS[enc.name]
    blocks = array.reshape(-1, enc.block_bytes)
    values = flat_out.reshape(-1, enc.block_elems)
    step = max(1, CHUNK_ELEMS // enc.block_elems)
    for start in range(0, len(blocks), step):
        kernel(blocks[start:start + step], values[start:start + step])
    return result


def decode_for_compute(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`dequantize`, except the blocks the compiled decoder multiplies by as stored
    (:data:`COMPUTED_AS_STORED`: Q4_0, Q4_1, Q8_0), which it refuses with
    :class:`ValueError` -- the default decoder of a decoded memory tier, which then
    keeps such a shard as stored (ready to compute, in a fifth of float32's bytes).
    O(elements) for a shard it decodes, O(1) for one it refuses."""
    enc = encoding_of(array)
    if enc is not None and enc.name in COMPUTED_AS_STORED:
        raise ValueError(f"{enc.name} blocks are computed on as stored, not decoded")
    return dequantize(array, out)


# --------------------------------------------------------------------------- quantize

def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (C's roundf), exactly."""
    a = np.abs(x)
    whole = np.floor(a)
    whole += (a - whole) >= 0.5
    rounded: np.ndarray = np.copysign(whole, x)
    return rounded


def _quantize_q8_0(rows: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_0_ref on (n, 32) float32 blocks -> (n, 34) uint8."""
    amax = np.abs(rows).max(axis=1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _round_half_away(rows * inv).astype(np.int8)
    out = np.empty((len(rows), 34), dtype=np.uint8)
    with np.errstate(over="ignore"):  # an overflow is reported by quantize()
        out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round to nearest even; NaN stays a (quiet) NaN."""
    bits = x.view(np.uint32).astype(np.uint64)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    quiet_nan = ((bits >> 16) | 0x40) & 0xFFFF
    return np.where(nan, quiet_nan, rounded).astype(np.uint16)


def quantize(array: np.ndarray, type_name: str) -> np.ndarray:
    """Encode a float array as a shard of ``type_name``: "Q8_0", "F16", "BF16" or "F32".

    F16 refuses finite values beyond float16's range; BF16 rounds to nearest
    even like ggml. Q8_0: each run of 32 values along the last axis (which must be a multiple
    of 32) becomes one block: ``d = max|x| / 127`` stored as float16 and
    ``q = round_half_away(x / d)`` as int8 -- ggml's reference, equal to
    ``gguf.quants.quantize`` byte for byte. Bound per block, with ``d16`` the
    stored scale: ``|x - dequantize(quantize(x))| <= d/2 + 127*|d - d16|``
    (:func:`q8_0_error_bound`; about 0.56 d for normal scales). Non-finite
    values, or a block whose scale overflows float16, raise ``ValueError``.
    Returns the layout of the module docstring (rows = all dimensions but the
    last). O(elements).
    """
    ggml_type = GGML_TYPES.get(type_name)
    x = np.asarray(array)
    if x.dtype.kind != "f":
        raise ValueError(f"quantize needs a float array, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if ggml_type is None or type_name not in ("Q8_0", "F16", "BF16", "F32"):
        raise ValueError(f"cannot quantize to {type_name!r}: choose Q8_0, F16, BF16 or F32")
    if type_name == "F32":
        return x.copy()
    if type_name == "F16":
        with np.errstate(over="ignore"):
            half = x.astype(np.float16)
        if np.isinf(half).sum() != np.isinf(x).sum():
            raise ValueError("F16 overflows: the array holds values beyond +-65504")
        return half
    if type_name == "BF16":
        return _to_bf16(np.ascontiguousarray(x))
    shape = stored_shape(ggml_type, tuple(x.shape))
    if not np.isfinite(x).all():
        raise ValueError("Q8_0 needs finite values: the array holds NaN or infinity")
    blocks = np.ascontiguousarray(x).reshape(-1, 32)
    out = np.empty((len(blocks), 34), dtype=np.uint8)
    step = CHUNK_ELEMS // 32
    for start in range(0, len(blocks), step):
        out[start:start + step] = _quantize_q8_0(blocks[start:start + step])
    if not np.isfinite(out[:, :2].copy().view(np.float16)).all():
        raise ValueError("Q8_0 scale overflows float16 (|x| above 127 * 65504)")
    return out.reshape(shape)


def q8_0_error_bound(array: np.ndarray) -> np.ndarray:
    """Per-block bound of ``|x - dequantize(quantize(x, "Q8_0"))|``, shape (rows, blocks).

    ``d/2 + 127 * |d - d16| + 2**-24 * max|x|``: half a step of the exact scale
    ``d = max|x|/127``, plus what storing ``d`` as float16 (``d16``) moves the
    largest level, plus float32 rounding of ``x/d``. O(elements).
    """
    x = np.asarray(array, dtype=np.float32)
    amax = np.abs(x.reshape(-1, x.shape[-1] // 32, 32)).max(axis=2).astype(np.float64)
    d = amax / 127
    d16 = (amax.astype(np.float32) / np.float32(127)).astype(np.float16).astype(np.float64)
    result: np.ndarray = d / 2 + 127 * np.abs(d - d16) + amax * 2.0 ** -24
    return result


# --------------------------------------------------------------------------- bench

def random_shard(ggml_type: GGMLType, rows: int, cols: int,
                 rng: np.random.Generator) -> np.ndarray:
    """A ``rows`` x ``cols`` shard of random valid blocks of ``ggml_type`` (random bytes
    with every float16 field set to a finite value): test and benchmark input.
    O(rows * cols)."""
    if not ggml_type.blocked:
        x = rng.standard_normal((rows, cols), dtype=np.float32)
        return quantize(x, ggml_type.name)
    shard = rng.integers(0, 256, stored_shape(ggml_type, (rows, cols)), dtype=np.uint8)
    for at in _F16_FIELDS[ggml_type.name]:
        field = rng.standard_normal(shard.shape[:2]).astype(np.float16) / 16
        shard[:, :, at:at + 2] = field.view(np.uint8).reshape(*shard.shape[:2], 2)
    return shard


#: Byte offsets of the float16 fields of each block type (scales, mins).
_F16_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def bench(rows: int = 1024, cols: int = 1024, repeat: int = 5, threads: int = 1,
          reference: Callable[[np.ndarray, str], Any] | None = None,
          ) -> dict[str, tuple[float, float | None]]:
    """MB/s of float32 output of :func:`dequantize` per type, and of ``reference`` on
    the same shards (e.g. gguf-py's dequantize; None: not measured).

    Each figure is the median of ``repeat`` runs, each of ``threads`` threads
    decoding its own copy of a ``rows x cols`` shard (``cols`` a multiple of 256)
    into its own reused ``out``; it counts the output of all threads.
    O(repeat * threads * rows * cols). bench/bench_quant.py prints it.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    targets = [np.empty((rows, cols), dtype=np.float32) for _ in range(threads)]
    nbytes = threads * targets[0].nbytes
    result: dict[str, tuple[float, float | None]] = {}

    def median_mbps(run: Callable[[], object]) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return nbytes / sorted(times)[len(times) // 2] / 1e6

    with ThreadPoolExecutor(threads) as pool:
        for name, ggml_type in GGML_TYPES.items():
            shards = [random_shard(ggml_type, rows, cols, rng) for _ in range(threads)]

            def ours(shards: list[np.ndarray] = shards) -> object:
                return list(pool.map(dequantize, shards, targets))

            def theirs(shards: list[np.ndarray] = shards, name: str = name) -> object:
                assert reference is not None
                return list(pool.map(reference, shards, [name] * threads))

            result[name] = (median_mbps(ours),
                            median_mbps(theirs) if reference is not None else None)
    return result
