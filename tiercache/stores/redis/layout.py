"""The wire layout of the redis store: key names, the head prefix and chunking.

``ns`` is the namespace, ``d`` the 32 hex digits of the BLAKE2b-128 digest of
the key's UTF-8 bytes, ``g`` a random 64-bit generation in hex::

    ns:{d}:h        head: 64-byte prefix + codec header (+ the payload itself, "inline",
                    when it fits in one chunk)
    ns:{d}:g:0 ...  the payload in chunks of ``chunk_bytes`` (shards larger than a chunk)

The ``{d}`` hash tag puts every key of one shard in the same Redis Cluster
slot, so a shard is read from one node over one connection, while different
shards spread over the cluster. The namespace may not contain braces, so the
digest is always the hash tag. Keys never reach Redis as given: any string
(empty, 2000 characters, lone surrogates) maps to a fixed-size name, and the
codec header carries the full key, which every read checks and
:meth:`RedisStore.keys` reports.

Head prefix (64 bytes)::

    0   8  magic b"TCREDIS1"
    8  16  generation, 16 lowercase hex digits (names the chunk keys)
    24  8  chunk count, 8 hex digits (0: the payload is inline)
    32  8  chunk size in bytes, 8 hex digits (0 when inline)
    40 16  reserved, zero
    56  8  xxh3_64 of bytes 0..56, little-endian

Everything here is pure (no I/O) and thread-safe.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

import xxhash

from ... import codec
from ...errors import CorruptShardError

__all__ = ["MIN_HEAD_BYTES", "PEEK_BYTES", "PREFIX_BYTES", "PREFIX_MAGIC", "Head", "Names",
           "corrupt", "decode_head", "encode_prefix", "head_nbytes", "head_re", "key_digest",
           "names_of", "parse_prefix", "scan_pattern"]

PREFIX_MAGIC = b"TCREDIS1"
PREFIX_BYTES = 64
_PREFIX = struct.Struct("<8s16s8s8s16sQ")
_PREFIX_CHECKED = 56
#: Bytes of a head fetched by info() and keys(): prefix + header of any ordinary key.
PEEK_BYTES = 4096
#: Smallest possible head: prefix + the fixed part of a codec header.
MIN_HEAD_BYTES = PREFIX_BYTES + codec.HEADER_ALIGN_BYTES


def corrupt(where: str, reason: str) -> CorruptShardError:
    """The error for a damaged shard at ``where`` (store, namespace and key). O(1)."""
    return CorruptShardError(f"{where}: {reason}" if where else reason)


@dataclass(frozen=True)
class Head:
    """A decoded and validated head (prefix + codec header)."""

    prefix: bytes
    generation: str
    chunk_count: int
    chunk_bytes: int
    header: codec.ShardHeader

    @property
    def nbytes(self) -> int:
        """Bytes of prefix and codec header: where an inline payload starts."""
        return PREFIX_BYTES + self.header.header_nbytes

    @property
    def inline(self) -> bool:
        """Whether the payload follows the header in the head (no chunk keys)."""
        return self.chunk_count == 0

    @property
    def value_nbytes(self) -> int:
        """Length the head value must have."""
        return self.nbytes + (self.header.payload_nbytes if self.inline else 0)

    def chunk_lengths(self) -> list[int]:
        """Payload bytes of each chunk, in order. O(chunks)."""
        size, count = self.chunk_bytes, self.chunk_count
        return [size] * (count - 1) + [self.header.payload_nbytes - size * (count - 1)]


def encode_prefix(generation: str, chunk_count: int, chunk_bytes: int) -> bytes:
    """The 64-byte head prefix (see the module docstring). O(1)."""
    body = _PREFIX.pack(PREFIX_MAGIC, generation.encode("ascii"), b"%08x" % chunk_count,
                        b"%08x" % chunk_bytes, b"\x00" * 16, 0)[:_PREFIX_CHECKED]
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def parse_prefix(raw: Any, where: str) -> tuple[str, int, int]:
    """Generation, chunk count and chunk size from a prefix; CorruptShardError if damaged.
    O(1)."""
    view = memoryview(raw).cast("B")
    if view.nbytes < PREFIX_BYTES:
        raise corrupt(where, f"truncated head: {view.nbytes} bytes")
    magic, gen, count, size, reserved, checksum = _PREFIX.unpack_from(view)
    if magic != PREFIX_MAGIC:
        raise corrupt(where, f"bad magic {bytes(magic)!r} (not a tiercache redis shard)")
    if xxhash.xxh3_64_intdigest(bytes(view[:_PREFIX_CHECKED])) != checksum:
        raise corrupt(where, "head prefix checksum mismatch")
    try:
        generation = gen.decode("ascii")
        chunk_count, chunk_bytes = int(count, 16), int(size, 16)
        int(generation, 16)
    except (UnicodeDecodeError, ValueError):
        raise corrupt(where, "unreadable head prefix fields") from None
    if any(reserved):
        raise corrupt(where, "non-zero reserved prefix bytes")
    return generation, chunk_count, chunk_bytes


def head_nbytes(raw: Any, where: str) -> int:
    """Length of the head that starts ``raw`` (which holds at least
    :data:`MIN_HEAD_BYTES`). O(1)."""
    view = memoryview(raw).cast("B")
    parse_prefix(view, where)
    return PREFIX_BYTES + codec.fixed_header_length(view[PREFIX_BYTES:], where=where)


def decode_head(raw: Any, key: str | None, where: str) -> Head:
    """Validate a whole head (``raw`` may hold more bytes after it). O(header)."""
    view = memoryview(raw).cast("B")
    generation, count, size = parse_prefix(view, where)
    header = codec.decode_header(view[PREFIX_BYTES:], key, where=where)
    payload = header.payload_nbytes
    if count == 0:
        if size != 0:
            raise corrupt(where, "inline shard with a chunk size")
    elif not size or count != -(-payload // size) or payload <= size:
        raise corrupt(where, f"{count} chunks of {size} bytes cannot hold {payload} bytes")
    if header.key is None:
        raise corrupt(where, "head without the full key")
    return Head(bytes(view[:PREFIX_BYTES]), generation, count, size, header)


@dataclass(frozen=True)
class Names:
    """Redis key names of one shard."""

    base: str  # "ns:{digest}"

    @property
    def head(self) -> bytes:
        """Name of the head key."""
        return f"{self.base}:h".encode("ascii")

    def chunk(self, generation: str, index: int) -> bytes:
        """Name of chunk ``index`` of ``generation``. O(1)."""
        return f"{self.base}:{generation}:{index}".encode("ascii")

    def chunks(self, generation: str, count: int) -> list[bytes]:
        """Names of the ``count`` chunks of ``generation``. O(count)."""
        return [self.chunk(generation, i) for i in range(count)]


def key_digest(key: str) -> str:
    """32 hex digits naming ``key`` in Redis (BLAKE2b-128 of its UTF-8 bytes). O(len(key))."""
    return hashlib.blake2b(codec.key_bytes(key), digest_size=16).hexdigest()


def names_of(namespace: str, key: str) -> Names:
    """The Redis key names of ``key``'s shard in ``namespace``. O(len(key))."""
    return Names(f"{namespace}:{{{key_digest(key)}}}")


def scan_pattern(namespace: str) -> bytes:
    """SCAN ``MATCH`` pattern of every head in ``namespace`` (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", namespace).encode() + b":{*}:h"


def head_re(namespace: str) -> re.Pattern[bytes]:
    """Regular expression a head key of ``namespace`` fully matches."""
    return re.compile(re.escape(namespace).encode() + rb":\{([0-9a-f]{32})\}:h")
