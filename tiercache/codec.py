"""The shard format: a small self-describing header followed by raw array bytes.

Disk stores keep every shard as ``header + payload``, where the payload is the
array's C-order bytes (no pickle, ever) and the header says how to read them
back and how to check them. Layout (all integers little-endian)::

    offset size  field
    0      8     magic            b"TCSHARD\\x00"
    8      2     format version   1
    10     2     flags            bit 0: the full key follows the dtype;
                                  bit 1: the write sequence is set
    12     4     header length    total header bytes, a multiple of 64
    16     8     payload length   bytes
    24     8     payload checksum xxh3_64 of the payload
    32     8     key hash         xxh3_64 of the key (UTF-8, ``surrogatepass``)
    40     8     header checksum  xxh3_64 of the whole header with this field zeroed
    48     1     ndim             0..32
    49     1     dtype length     bytes of ``dtype.str`` (ASCII)
    50     2     reserved         0
    52     4     key length       bytes of the stored key (0 unless flag bit 0)
    56     8     write sequence   when flag bit 1: see :func:`next_write_sequence`
    64     8*n   shape            one u64 per dimension
    ..     ..    dtype.str        e.g. ``<f4``, ``>i8``, ``|b1``
    ..     ..    key              optional (stores whose native keys are digests)
    ..     ..    zero padding     up to the header length

:func:`decode_header` checks every field and raises
:class:`~tiercache.errors.CorruptShardError` naming what is wrong; the copy
helpers (:func:`copy_verified`, :func:`readinto_verified`) move the payload in
256 KiB chunks and hash each chunk while it is hot in the CPU cache, so checking
costs a fraction of the copy instead of a second pass over memory. Wrong bytes
are never returned: a mismatch raises after the copy, and the caller's buffer
must then be treated as garbage.

Thread-safety: every function is pure or works only on its arguments; the
header memo behind :func:`decode_header` relies on GIL-atomic dict operations.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import xxhash

from .buffers import MIN_POOLED_BYTES, PAGE_BYTES, default_pool
from .errors import CorruptShardError, ShardFormatError

MAGIC = b"TCSHARD\x00"
FORMAT_VERSION = 1
#: Headers are padded to a multiple of this, so the payload stays 64-byte aligned.
HEADER_ALIGN_BYTES = 64
#: Most dimensions a shard may have.
MAX_NDIM = 32
#: Largest header accepted when decoding (guards against absurd lengths).
MAX_HEADER_BYTES = 1 << 20
#: Copy/verify granularity: fits in L2, large enough to amortise per-chunk overhead.
CHUNK_BYTES = 256 * 1024
#: Up to this payload size :func:`copy_verified` hashes each source chunk before
#: copying it (the hash pulls the chunk into L2 and the copy then reads it from
#: there); above it, it hashes each destination chunk right after copying (the
#: copy overlaps the DRAM read and write streams). Measured in docs/performance.md.
HASH_SOURCE_FIRST_MAX_BYTES = 32 * 1024 * 1024

FLAG_HAS_KEY = 0x1
FLAG_HAS_SEQUENCE = 0x2
_KNOWN_FLAGS = FLAG_HAS_KEY | FLAG_HAS_SEQUENCE
_FIXED = struct.Struct("<8sHHIQQQQBBHIQ")
_CHECKSUM_OFFSET = 40
_STORABLE_KINDS = frozenset("biufc")
# decode_header is a pure function of (header bytes, key): remember recent successes, so a
# hot shard's header is validated once (bounded; cleared when full; GIL-atomic dict ops).
_HEADER_MEMO: dict[tuple[bytes, str | None], ShardHeader] = {}
_HEADER_MEMO_MAX = 4096

assert _FIXED.size == HEADER_ALIGN_BYTES


class Readable(Protocol):
    """A binary file opened for reading (what :func:`readinto_verified` needs)."""

    def readinto(self, buffer: Any, /) -> int | None: ...


@dataclass(frozen=True)
class ShardHeader:
    """A decoded, validated shard header.

    Attributes
    ----------
    dtype, shape:
        Of the stored array.
    payload_nbytes:
        Length of the payload, equal to ``prod(shape) * dtype.itemsize``.
    payload_checksum:
        xxh3_64 of the payload.
    key_hash:
        xxh3_64 of the key the shard was stored under.
    key:
        The full key when the header carries it, else ``None``.
    header_nbytes:
        Length of the header (payload starts at this offset).
    sequence:
        When the shard was written (:func:`next_write_sequence`); 0 for shards
        written before headers carried one. Of two copies of a key with
        different payloads, the one with the higher sequence is the newer value.
    """

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    payload_nbytes: int
    payload_checksum: int
    key_hash: int
    key: str | None
    header_nbytes: int
    sequence: int = 0

    @property
    def total_nbytes(self) -> int:
        """Length of the encoded shard: this header plus the payload."""
        return self.header_nbytes + self.payload_nbytes

    @property
    def accounted_nbytes(self) -> int:
        """What a tier's capacity counts for this shard: see :func:`stored_nbytes`."""
        return header_nbytes(len(self.shape), self.dtype) + self.payload_nbytes


def check_storable(array: object) -> None:
    """Raise :class:`~tiercache.errors.ShardFormatError` unless ``array`` can be a shard.

    Accepted: any :class:`numpy.ndarray` of a bool, integer, float or complex
    dtype (any byte order, including float16), any shape with at most
    :data:`MAX_NDIM` dimensions (0-d and empty included), contiguous or not.
    Refused: object, structured, void, string, datetime dtypes, non-arrays, and
    ndarray subclasses whose extra state a shard would lose (a masked array's
    mask, np.matrix, any other subclass); :class:`numpy.memmap` is a plain buffer
    and is accepted. O(1).
    """
    if not isinstance(array, np.ndarray):
        raise ShardFormatError(f"a shard must be a numpy.ndarray, got {type(array).__name__}")
    if type(array) is not np.ndarray and not isinstance(array, np.memmap):
        if isinstance(array, np.ma.MaskedArray):
            raise ShardFormatError(
                "a numpy.ma.MaskedArray cannot be stored as one shard: its mask would be "
                "lost silently. Store .data and .mask as two shards (np.ma.getmaskarray(a) "
                "for a full mask), or .filled(value) if the masked values do not matter")
        kind = f"{type(array).__module__}.{type(array).__qualname__}"
        raise ShardFormatError(
            f"a {kind} (a numpy.ndarray subclass) cannot be stored as a shard: a shard "
            "keeps only dtype, shape and bytes, so what the subclass adds would be lost. "
            "Store np.asarray(a) if that is all you need")
    dtype = array.dtype
    if dtype.kind not in _STORABLE_KINDS or dtype.fields is not None or dtype.subdtype:
        raise ShardFormatError(
            f"dtype {dtype!s} cannot be stored as a shard: only bool, integer, float and "
            "complex dtypes have a fixed raw layout (convert with array.astype(...))")
    if array.ndim > MAX_NDIM:
        raise ShardFormatError(f"array has {array.ndim} dimensions; a shard has at most "
                               f"{MAX_NDIM}")


def empty_aligned(nbytes: int) -> npt.NDArray[np.uint8]:
    """Return an uninitialised, writable uint8 buffer whose address is page-aligned.

    Page alignment keeps reads into it at full speed (the machine-facts lab note: a read into a
    destination misaligned by 1..31 bytes ran 4-7x slower here). ``nbytes``
    may be 0. Buffers of 256 KiB and more come from
    :data:`tiercache.buffers.default_pool`, which recycles a buffer once no
    array references it (fresh pages cost a fault each on first touch). O(1)
    plus the allocator's cost. Thread-safe.
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    if nbytes >= MIN_POOLED_BYTES:
        return default_pool.acquire(nbytes)
    raw = np.empty(nbytes + PAGE_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE_BYTES
    # slice through a 1-byte view so an empty result keeps the aligned address
    return raw[start:start + max(nbytes, 1)][:nbytes]


_sequence_lock = threading.Lock()
_last_sequence = 0


def next_write_sequence() -> int:
    """A number larger than every one returned before in this process, and larger
    than the wall clock in nanoseconds: the write sequence stamped in each header.

    Copies of one key left in several tiers by a failure are told apart by it
    (the newest write wins). Across restarts it keeps growing because it follows
    the clock, and :func:`observe_write_sequence` raises the floor past every
    sequence found on open, so a clock set back cannot make a new write look
    older. O(1). Thread-safe.
    """
    global _last_sequence
    with _sequence_lock:
        _last_sequence = max(_last_sequence + 1, time.time_ns())
        return _last_sequence


def observe_write_sequence(sequence: int) -> None:
    """Make every later :func:`next_write_sequence` exceed ``sequence`` (one found on
    disk). O(1). Thread-safe."""
    global _last_sequence
    with _sequence_lock:
        _last_sequence = max(_last_sequence, int(sequence))


def key_bytes(key: str) -> bytes:
    """Encode any str key (lone surrogates included) reversibly to bytes."""
    return key.encode("utf-8", "surrogatepass")


def key_from_bytes(data: bytes) -> str:
    """Inverse of :func:`key_bytes`."""
    return data.decode("utf-8", "surrogatepass")


def key_hash(key: str) -> int:
    """xxh3_64 of the key's :func:`key_bytes` (what the header records)."""
    return int(xxhash.xxh3_64_intdigest(key_bytes(key)))


def payload_checksum(payload: Any) -> int:
    """xxh3_64 of a bytes-like payload; O(n), releases the GIL while hashing."""
    return int(xxhash.xxh3_64_intdigest(payload))


def header_nbytes(ndim: int, dtype: np.dtype[Any], key: str | None = None) -> int:
    """Length of the header for a shard of this rank and dtype (and stored key). O(1)."""
    raw = _FIXED.size + 8 * ndim + len(dtype.str)
    if key is not None:
        raw += len(key_bytes(key))
    return -(-raw // HEADER_ALIGN_BYTES) * HEADER_ALIGN_BYTES


def stored_nbytes(array: np.ndarray) -> int:
    """Bytes a tier's capacity counts for ``array``: header (without a stored key) + payload.

    Independent of the key, so a tier can size a shard before knowing where it
    goes. A key carried in the header, like the medium's own per-entry overhead
    (lmdb pages, diskcache rows and file blocks), is not counted. O(1).
    """
    return header_nbytes(array.ndim, array.dtype) + int(array.nbytes)


def contiguous_payload(array: np.ndarray) -> memoryview:
    """The array's C-order bytes as a flat read-only memoryview.

    No copy when ``array`` is C-contiguous; one copy otherwise. O(n) at worst.
    """
    check_storable(array)
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return flat.data.toreadonly()


def encode_header(key: str, array: np.ndarray, checksum: int, *, store_key: bool = False,
                  sequence: int | None = None) -> bytes:
    """Build the header for ``array`` stored under ``key``, stamped with ``sequence``
    (default: :func:`next_write_sequence`).

    ``checksum`` is :func:`payload_checksum` of :func:`contiguous_payload`
    (computed by the caller, who already holds the payload). With
    ``store_key`` the header carries the full key, so a store that files long
    keys under a digest can check and list them. O(ndim + len(key)).
    """
    check_storable(array)
    dtype_str = array.dtype.str.encode("ascii")
    kb = key_bytes(key)
    stored_key = kb if store_key else b""
    length = header_nbytes(array.ndim, array.dtype, key if store_key else None)
    if length > MAX_HEADER_BYTES:
        raise ShardFormatError(f"key of {len(kb)} bytes is too long to store in a shard header")
    if sequence is None:
        sequence = next_write_sequence()
    if not 0 < sequence < 1 << 64:
        raise ValueError(f"write sequence must be in 1..2**64-1, got {sequence}")
    flags = FLAG_HAS_SEQUENCE | (FLAG_HAS_KEY if store_key else 0)
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, flags, length,
                        int(array.nbytes), checksum, int(xxhash.xxh3_64_intdigest(kb)), 0,
                        array.ndim, len(dtype_str), 0, len(stored_key), sequence)
    body = fixed + struct.pack(f"<{array.ndim}Q", *array.shape) + dtype_str + stored_key
    header = bytearray(body.ljust(length, b"\x00"))
    struct.pack_into("<Q", header, _CHECKSUM_OFFSET, xxhash.xxh3_64_intdigest(header))
    return bytes(header)


def encode(key: str, array: np.ndarray, *, store_key: bool = False) -> bytes:
    """The whole shard (header + payload) as one bytes object. O(n), copies.

    Convenient for small shards and tests; stores stream the two parts instead.
    """
    payload = contiguous_payload(array)
    return encode_header(key, array, payload_checksum(payload), store_key=store_key) + payload


def fixed_header_length(prefix: Any, *, where: str = "") -> int:
    """Header length announced by the first 64 bytes of a shard, after basic checks.

    Lets a reader of a file fetch exactly the rest of the header. Raises
    :class:`~tiercache.errors.CorruptShardError` for a short prefix, bad magic,
    an unknown version or an impossible length. O(1).
    """
    view = memoryview(prefix)
    if view.nbytes < _FIXED.size:
        raise _corrupt(where, f"truncated header: {view.nbytes} bytes, need at least "
                              f"{_FIXED.size}")
    magic, version, _flags, length = struct.unpack_from("<8sHHI", view)
    if magic != MAGIC:
        raise _corrupt(where, f"bad magic {bytes(magic)!r} (not a tiercache shard)")
    if version != FORMAT_VERSION:
        raise _corrupt(where, f"unsupported shard format version {version}; this tiercache "
                              f"reads version {FORMAT_VERSION}")
    if length % HEADER_ALIGN_BYTES or not _FIXED.size <= length <= MAX_HEADER_BYTES:
        raise _corrupt(where, f"impossible header length {length}")
    return int(length)


def decode_header(data: Any, key: str | None = None, *, where: str = "") -> ShardHeader:
    """Parse and validate the header at the start of ``data`` (any bytes-like).

    ``data`` must hold at least the whole header; bytes after it are ignored.
    With ``key``, also check the shard was stored under that key (hash, and the
    full key when the header carries one). ``where`` (e.g. the store and path)
    prefixes error messages. Raises
    :class:`~tiercache.errors.CorruptShardError` naming the first problem found.
    O(header length); a header seen before (same bytes, same key) is looked up
    in a small memo instead of re-validated, since the result cannot differ.
    """
    view = memoryview(data).cast("B")
    length = fixed_header_length(view, where=where)
    if view.nbytes < length:
        raise _corrupt(where, f"truncated header: {view.nbytes} of {length} bytes")
    raw = bytes(view[:length])
    memo_key = (raw, key)
    cached = _HEADER_MEMO.get(memo_key)
    if cached is not None:
        return cached
    decoded = _decode_header(raw, length, key, where)
    if len(_HEADER_MEMO) >= _HEADER_MEMO_MAX:
        _HEADER_MEMO.clear()
    _HEADER_MEMO[memo_key] = decoded
    return decoded


def _decode_header(raw: bytes, length: int, key: str | None, where: str) -> ShardHeader:
    """Validate the ``length``-byte header ``raw``; see :func:`decode_header`."""
    header = bytearray(raw)
    (_m, _v, flags, _l, payload_len, checksum, khash, hchecksum, ndim, dtype_len, reserved1,
     key_len, reserved2) = _FIXED.unpack_from(header)
    header[_CHECKSUM_OFFSET:_CHECKSUM_OFFSET + 8] = bytes(8)
    if xxhash.xxh3_64_intdigest(header) != hchecksum:
        raise _corrupt(where, "header checksum mismatch (header bytes damaged)")
    if not flags & FLAG_HAS_SEQUENCE and reserved2:
        raise _corrupt(where, "write sequence set without the sequence flag")
    if flags & ~_KNOWN_FLAGS or reserved1:
        raise _corrupt(where, f"unknown flags {flags:#x} or non-zero reserved fields")
    if ndim > MAX_NDIM:
        raise _corrupt(where, f"{ndim} dimensions (at most {MAX_NDIM})")
    if not flags & FLAG_HAS_KEY and key_len:
        raise _corrupt(where, "key length set without the key flag")
    end = _FIXED.size + 8 * ndim + dtype_len + key_len
    if end > length:
        raise _corrupt(where, f"header fields need {end} bytes but the header has {length}")
    shape = struct.unpack_from(f"<{ndim}Q", header, _FIXED.size)
    offset = _FIXED.size + 8 * ndim
    dtype = _parse_dtype(bytes(header[offset:offset + dtype_len]), where)
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != payload_len:
        raise _corrupt(where, f"payload length {payload_len} does not match shape {shape} of "
                              f"{dtype.str}")
    if any(header[end:]):
        raise _corrupt(where, "non-zero header padding")
    stored_key: str | None = None
    if flags & FLAG_HAS_KEY:
        try:
            stored_key = key_from_bytes(bytes(header[offset + dtype_len:end]))
        except UnicodeDecodeError:
            raise _corrupt(where, "stored key is not valid UTF-8") from None
        if xxhash.xxh3_64_intdigest(key_bytes(stored_key)) != khash:
            raise _corrupt(where, "stored key does not match the key hash")
    if key is not None:
        if stored_key is not None and stored_key != key:
            raise _corrupt(where, f"shard belongs to key {stored_key!r}, not {key!r}")
        if key_hash(key) != khash:
            raise _corrupt(where, f"shard was stored under another key than {key!r}")
    return ShardHeader(dtype, tuple(int(d) for d in shape), int(payload_len), int(checksum),
                       int(khash), stored_key, length, int(reserved2))


def _parse_dtype(raw: bytes, where: str) -> np.dtype[Any]:
    try:
        text = raw.decode("ascii")
        dtype = np.dtype(text)
    except (UnicodeDecodeError, TypeError, ValueError):
        raise _corrupt(where, f"unreadable dtype {raw!r}") from None
    if dtype.str != text or dtype.kind not in _STORABLE_KINDS:
        raise _corrupt(where, f"dtype {text!r} is not a storable numeric dtype")
    return dtype


def prepare_out(header: ShardHeader, out: np.ndarray | None, key: str) -> np.ndarray:
    """Return ``out`` checked against ``header``, or a new page-aligned writable array.

    Raises :class:`ValueError` when ``out`` has another dtype or shape, or is
    not C-contiguous and writable. O(1) (plus the allocation).
    """
    if out is None:
        return empty_aligned(header.payload_nbytes).view(header.dtype).reshape(header.shape)
    if out.dtype != header.dtype or out.shape != header.shape:
        raise ValueError(f"out has dtype {out.dtype} shape {out.shape}; shard {key!r} is "
                         f"{header.dtype} {header.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out for shard {key!r} must be C-contiguous and writable")
    return out


def byte_view(array: np.ndarray) -> npt.NDArray[np.uint8]:
    """Flat uint8 view of a C-contiguous array (no copy; 0-d and empty included)."""
    return array.reshape(-1).view(np.uint8)


def copy_verified(dst: npt.NDArray[np.uint8], src: Any, expected: int | None, *,
                  where: str = "") -> None:
    """Copy the bytes-like ``src`` into the flat uint8 array ``dst``, checking xxh3_64.

    Works chunk by chunk (:data:`CHUNK_BYTES`) so each chunk is hashed while it
    sits in the CPU cache. For payloads up to
    :data:`HASH_SOURCE_FIRST_MAX_BYTES` a chunk is hashed in the source and
    then copied, otherwise copied and then hashed in the destination: the
    source must therefore not change during the call (an lmdb view inside its
    read transaction, an immutable bytes object). ``expected=None`` copies
    without checking. Raises :class:`~tiercache.errors.CorruptShardError` on a
    length or checksum mismatch (``dst`` then holds garbage). O(n); the copy
    and the hash release the GIL.
    """
    source = np.frombuffer(src, dtype=np.uint8)
    n = source.nbytes
    if dst.nbytes != n:
        raise _corrupt(where, f"payload has {n} bytes, the header says {dst.nbytes}")
    if expected is None:
        np.copyto(dst, source)
        return
    hasher = xxhash.xxh3_64()
    update: Callable[[Any], None] = hasher.update
    copyto = np.copyto
    if n <= HASH_SOURCE_FIRST_MAX_BYTES:
        for start in range(0, n, CHUNK_BYTES):
            chunk = source[start:start + CHUNK_BYTES]
            update(chunk)
            copyto(dst[start:start + CHUNK_BYTES], chunk)
    else:
        for start in range(0, n, CHUNK_BYTES):
            target = dst[start:start + CHUNK_BYTES]
            copyto(target, source[start:start + CHUNK_BYTES])
            update(target)
    if hasher.intdigest() != expected:
        raise _corrupt(where, "payload checksum mismatch (payload bytes damaged)")


def readinto_verified(fileobj: Readable, dst: npt.NDArray[np.uint8], expected: int | None, *,
                      where: str = "") -> None:
    """Fill the flat uint8 array ``dst`` from ``fileobj`` and check its xxh3_64.

    Reads :data:`CHUNK_BYTES` at a time straight into ``dst`` (no intermediate
    buffer) and hashes each chunk right after it lands, while it is in cache.
    ``expected=None`` skips the hash. Raises
    :class:`~tiercache.errors.CorruptShardError` if the file ends early or the
    checksum differs. O(n); reads and hashing release the GIL.
    """
    n = dst.nbytes
    hasher = xxhash.xxh3_64() if expected is not None else None
    mv = dst.data
    pos = 0
    while pos < n:
        target = mv[pos:pos + CHUNK_BYTES]
        got = fileobj.readinto(target)
        if not got:
            raise _corrupt(where, f"payload truncated: {pos} of {n} bytes")
        if hasher is not None:
            hasher.update(target[:got])
        pos += got
    if hasher is not None and hasher.intdigest() != expected:
        raise _corrupt(where, "payload checksum mismatch (payload bytes damaged)")


def decode(data: Any, key: str | None = None, out: np.ndarray | None = None, *,
           verify: bool = True, where: str = "") -> np.ndarray:
    """Decode a whole shard held in one bytes-like object into ``out`` or a new array.

    Checks the header, the total length and (with ``verify``) the payload
    checksum; raises :class:`~tiercache.errors.CorruptShardError` otherwise.
    O(n): the payload is copied, so the result does not depend on ``data``.
    """
    view = memoryview(data).cast("B")
    header = decode_header(view, key, where=where)
    if view.nbytes != header.total_nbytes:
        raise _corrupt(where, f"shard has {view.nbytes} bytes, the header says "
                              f"{header.total_nbytes}")
    result = prepare_out(header, out, key if key is not None else "<unknown>")
    copy_verified(byte_view(result), view[header.header_nbytes:],
                  header.payload_checksum if verify else None, where=where)
    return result


def _corrupt(where: str, reason: str) -> CorruptShardError:
    return CorruptShardError(f"{where}: {reason}" if where else reason)
