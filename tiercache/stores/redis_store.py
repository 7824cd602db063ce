"""Redis store: shards in a Redis server or Redis Cluster shared by many processes.

A tier on this backend outlives the process (``persistent``) and is *shared*:
other workers, on this machine or others, read and write the same shards, and
Redis itself may evict any key at any time (``maxmemory``). Whatever happens,
a read returns the right bytes, nothing (a miss), or raises
:class:`~tiercache.errors.StoreError`; never wrong bytes.

Layout (``ns`` is the namespace, ``d`` the 32 hex digits of the BLAKE2b-128
digest of the key's UTF-8 bytes, ``g`` a random 64-bit generation in hex)::

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

Writes
    A put writes the chunks under a fresh generation first (one pipeline), then
    swaps the head in a MULTI/EXEC that also returns the old head's prefix, and
    finally deletes the old generation's chunks. The head is written last, so a
    reader never sees a half-written shard: it sees the old head (whose chunks
    are intact until the swap) or the new one (whose chunks are all there).
Reads
    One round trip for the head (with the payload when inline), then one
    pipeline of chunk GETs. By default the bulk replies are parsed by a small
    RESP2 reader (:class:`_RespConnection`) that ``recv_into``-s them straight
    into the destination buffer and hashes each piece as it lands (one copy,
    kernel to destination, instead of redis-py's socket -> bytes -> array).
    TLS, Unix sockets, credential providers and Cluster redirections
    (``MOVED``/``ASK``) go through redis-py instead (``raw_reads=False`` forces
    that everywhere). A chunk that is missing means the shard was replaced
    meanwhile (the head changed: read again, at most three times) or Redis
    evicted part of it (the head is unchanged: its remains are removed with a
    compare-and-delete script, and the read is a miss).
Integrity
    The codec header carries an xxh3_64 of the whole payload, checked on every
    read unless ``verify="never"``; the prefix has its own checksum; lengths of
    the head and of every chunk are checked. Values are raw bytes, never pickle.
    Checksums catch corruption and partial eviction, not malice: anyone who can
    write to the Redis database can store a well-formed shard of their own.
Failures
    Connection errors, timeouts and a server that is loading or down raise
    :class:`~tiercache.errors.StoreError` and put the store in back-off: for
    the next 50 ms (doubling per failure, at most 2 s) every call fails at
    once instead of waiting for a dead server, then one call tries again; a
    success clears the back-off (redis-py and the raw reader reconnect by
    themselves). A server that *refuses* us -- a wrong or missing password
    (``WRONGPASS``, ``NOAUTH``), an ACL without the permission (``NOPERM``), a
    database number the server does not have -- is not an outage: the
    StoreError says ``refused:`` and the server's own reason with what to fix,
    on the first call (``keys()`` when a cache opens, so the tier is degraded
    with that reason), and the back-off applies too, since a retry only helps
    once someone fixed the credentials. After :meth:`RedisStore.close` (and
    for a call that ran into it) every method raises
    :class:`~tiercache.errors.CacheClosedError`. A :meth:`RedisStore.get` never takes longer than
    ``timeout_s`` on the raw path (one deadline for the whole read, enforced on
    every socket operation); redis-py calls are bounded by ``timeout_s`` per
    round trip and are never retried.
Capacity
    :meth:`RedisStore.stored_size` counts the codec header (without the stored
    key) plus the payload, like the other stores; the 64-byte prefix and Redis's
    own per-key overhead are not counted.

Thread-safety: every method may be called from any thread. The redis-py client
and the pool of raw connections are thread-safe; a raw connection is used by
one thread at a time; the back-off state is guarded by a lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
import redis.exceptions as rexc
import xxhash
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection as _PlainTcpConnection
from redis.connection import SSLConnection
from redis.retry import Retry

from .. import codec
from ..errors import (
    CacheClosedError,
    CorruptShardError,
    ShardFormatError,
    StoreError,
    TierCacheError,
)
from .base import ShardInfo, Store, VerifyMode, check_verify_mode

log = logging.getLogger("tiercache")

PREFIX_MAGIC = b"TCREDIS1"
PREFIX_BYTES = 64
DEFAULT_CHUNK_BYTES = 8 << 20
MIN_CHUNK_BYTES = 1 << 10
#: Redis's default ``proto-max-bulk-len`` is 512 MB; a chunk (plus a head) stays far below it.
MAX_CHUNK_BYTES = 256 << 20
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_NAMESPACE = "tiercache"
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
#: Characters a namespace may use (no braces: the key digest must be the hash tag).
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")

_PREFIX = struct.Struct("<8s16s8s8s16sQ")
_PREFIX_CHECKED = 56
#: Bytes of a head fetched by info() and keys(): prefix + header of any ordinary key.
_PEEK_BYTES = 4096
#: Smallest possible head: prefix + the fixed part of a codec header.
_MIN_HEAD_BYTES = PREFIX_BYTES + codec.HEADER_ALIGN_BYTES
_READ_ATTEMPTS = 3
_KEYS_BATCH = 512
_DELETE_BATCH = 1024
_RECV_MAX_BYTES = 1 << 20
_LINE_BUFFER_BYTES = 64 * 1024
_MAX_IDLE_PER_NODE = 8
_REDIRECT_PREFIXES = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
_UNAVAILABLE_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN")
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError, rexc.TimeoutError, rexc.ClusterDownError, rexc.RedisClusterException,
    OSError)

# Delete a shard's keys if its head still starts with ARGV[1] (the prefix a reader saw):
# removes the remains of a partly evicted shard without touching a newer one.
_COMPARE_AND_DELETE = """
if redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1) ~= ARGV[1] then return 0 end
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""


class _ProtocolError(Exception):
    """The server sent something the raw reader does not expect."""


class _ErrorReply(Exception):
    """The server answered a command with a RESP error (``-ERR ...``)."""


class _Redirect(Exception):
    """A Cluster redirection or transient cluster state: let redis-py handle the read."""


class _Unavailable(Exception):
    """The server answered but cannot serve (loading, busy, master down)."""


#: Failures that mean "no server to talk to": they start the back-off.
_UNAVAILABLE: tuple[type[BaseException], ...] = (*_UNAVAILABLE_ERRORS, _ProtocolError,
                                                  _Unavailable)
#: Everything a call to the server may raise that the store turns into its own errors.
_SERVER_ERRORS: tuple[type[BaseException], ...] = (*_UNAVAILABLE, rexc.RedisError, _ErrorReply,
                                                   _Redirect)
#: Reply prefixes of a server that refuses this client for good (until someone fixes
#: the credentials or the server's configuration).
_AUTH_PREFIXES = ("WRONGPASS", "NOAUTH", "invalid username-password pair",
                  "Authentication required", "AUTH <password> called without any password")
_DB_MESSAGES = ("DB index is out of range", "invalid DB index")


def _refusal(exc: BaseException, *, has_password: bool) -> str | None:
    """What to tell the user when ``exc`` means the server refuses this client for good
    (authentication, permissions, no such database); ``None`` for anything else. O(1)."""
    text = str(exc).removeprefix("ERR ")
    if text.startswith("HELLO must be called"):  # redis-py's handshake without a password
        text = "NOAUTH: the server requires authentication"
    if isinstance(exc, rexc.AuthenticationError) or text.startswith(_AUTH_PREFIXES):
        hint = "check the user name and password in the url" if has_password else \
            "the server requires a password and the url gives none"
        return f"authentication failed ({text}): {hint}"
    if isinstance(exc, rexc.NoPermissionError) or text.startswith("NOPERM"):
        return (f"permission denied ({text}): the user's ACL must allow GET, SET, DEL, "
                "GETRANGE, EXISTS, SCAN, EVALSHA and MULTI on the namespace's keys")
    if any(m in text for m in _DB_MESSAGES):
        return (f"no such database ({text}): the url's /db number must be below the "
                "server's `databases` setting")
    return None


# -- the head --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
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


def _parse_prefix(raw: Any, where: str) -> tuple[str, int, int]:
    """Generation, chunk count and chunk size from a prefix; CorruptShardError if damaged."""
    view = memoryview(raw).cast("B")
    if view.nbytes < PREFIX_BYTES:
        raise _corrupt(where, f"truncated head: {view.nbytes} bytes")
    magic, gen, count, size, reserved, checksum = _PREFIX.unpack_from(view)
    if magic != PREFIX_MAGIC:
        raise _corrupt(where, f"bad magic {bytes(magic)!r} (not a tiercache redis shard)")
    if xxhash.xxh3_64_intdigest(bytes(view[:_PREFIX_CHECKED])) != checksum:
        raise _corrupt(where, "head prefix checksum mismatch")
    try:
        generation = gen.decode("ascii")
        chunk_count, chunk_bytes = int(count, 16), int(size, 16)
        int(generation, 16)
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(where, "unreadable head prefix fields") from None
    if any(reserved):
        raise _corrupt(where, "non-zero reserved prefix bytes")
    return generation, chunk_count, chunk_bytes


def _head_nbytes(raw: Any, where: str) -> int:
    """Length of the head that starts ``raw`` (which holds at least 128 bytes)."""
    view = memoryview(raw).cast("B")
    _parse_prefix(view, where)
    return PREFIX_BYTES + codec.fixed_header_length(view[PREFIX_BYTES:], where=where)


def _decode_head(raw: Any, key: str | None, where: str) -> _Head:
    """Validate a whole head (``raw`` may hold more bytes after it). O(header)."""
    view = memoryview(raw).cast("B")
    generation, count, size = _parse_prefix(view, where)
    header = codec.decode_header(view[PREFIX_BYTES:], key, where=where)
    payload = header.payload_nbytes
    if count == 0:
        if size != 0:
            raise _corrupt(where, "inline shard with a chunk size")
    elif not size or count != -(-payload // size) or payload <= size:
        raise _corrupt(where, f"{count} chunks of {size} bytes cannot hold {payload} bytes")
    if header.key is None:
        raise _corrupt(where, "head without the full key")
    return _Head(bytes(view[:PREFIX_BYTES]), generation, count, size, header)


def _corrupt(where: str, reason: str) -> CorruptShardError:
    return CorruptShardError(f"{where}: {reason}" if where else reason)


# -- names -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Names:
    """Redis key names of one shard."""

    base: str  # "ns:{digest}"

    @property
    def head(self) -> bytes:
        return f"{self.base}:h".encode("ascii")

    def chunk(self, generation: str, index: int) -> bytes:
        return f"{self.base}:{generation}:{index}".encode("ascii")

    def chunks(self, generation: str, count: int) -> list[bytes]:
        return [self.chunk(generation, i) for i in range(count)]


def key_digest(key: str) -> str:
    """32 hex digits naming ``key`` in Redis (BLAKE2b-128 of its UTF-8 bytes). O(len(key))."""
    return hashlib.blake2b(codec.key_bytes(key), digest_size=16).hexdigest()


# -- the raw RESP reader ---------------------------------------------------------------


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def pack_command(*args: bytes) -> bytes:
    """One RESP2 command (an array of bulk strings). O(total length)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(b"\r\n")
    return b"".join(parts)


class _RespConnection:
    """A TCP connection speaking just enough RESP2 to pipeline GETs into caller buffers.

    Replies are parsed from a 64 KiB line buffer; a bulk payload is copied out
    of that buffer as far as it already holds it and ``recv_into``-ed straight
    into the destination for the rest. Every socket operation gets the time
    left until the caller's deadline. Not thread-safe: one thread at a time
    (the pool hands a connection to one caller). Any exception leaves the
    stream mid-reply: the caller must then :meth:`close` it.
    """

    def __init__(self, address: tuple[str, int], deadline: float, *, db: int = 0,
                 username: str | None = None, password: str | None = None) -> None:
        self.address = address
        self.sock = socket.create_connection(address, timeout=_remaining(deadline))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray(_LINE_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        try:
            setup: list[bytes] = []
            if password is not None:
                auth = (b"AUTH", username.encode(), password.encode()) if username else \
                    (b"AUTH", password.encode())
                setup.append(pack_command(*auth))
            if db:
                setup.append(pack_command(b"SELECT", str(db).encode()))
            if setup:
                self.send(b"".join(setup), deadline)
                for _ in setup:
                    line = self.read_line(deadline)
                    if line[:1] == b"-":
                        raise _ErrorReply(line[1:].decode("utf-8", "replace"))
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(_remaining(deadline))
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        """Receive more bytes into the line buffer (moving what is left to its front)."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            left = self._end - self._start
            self._buf[:left] = self._buf[self._start:self._end]
            self._start, self._end = 0, left
        self.sock.settimeout(_remaining(deadline))
        got = self.sock.recv_into(self._view[self._end:])
        if not got:
            raise ConnectionError(f"redis {self.address[0]}:{self.address[1]} closed the "
                                  "connection")
        self._end += got

    def read_line(self, deadline: float) -> bytes:
        """The next CRLF-terminated line, without the CRLF."""
        while True:
            end = self._buf.find(b"\r\n", self._start, self._end)
            if end >= 0:
                line = bytes(self._view[self._start:end])
                self._start = end + 2
                return line
            if self._end - self._start >= len(self._buf) - 2:
                raise _ProtocolError("reply line longer than the line buffer")
            self._fill(deadline)

    def read_bulk_len(self, deadline: float) -> int:
        """Length of the next bulk-string reply, -1 for nil. Error replies raise."""
        line = self.read_line(deadline)
        kind = line[:1]
        if kind == b"$":
            try:
                return int(line[1:])
            except ValueError:
                raise _ProtocolError(f"bad bulk length {line[:40]!r}") from None
        if kind == b"-":
            message = line[1:].decode("utf-8", "replace")
            if message.startswith(_REDIRECT_PREFIXES):
                raise _Redirect(message)
            if message.startswith(_UNAVAILABLE_PREFIXES):
                raise _Unavailable(message)
            raise _ErrorReply(message)
        raise _ProtocolError(f"unexpected reply {line[:40]!r}")

    def read_into(self, dst: memoryview, deadline: float,
                  hasher: xxhash.xxh3_64 | None) -> None:
        """Fill ``dst`` (a flat byte view) with the next ``len(dst)`` bytes of the stream.

        Bytes already buffered are copied; the rest is received straight into
        ``dst``. Each piece is hashed into ``hasher`` right after it lands. O(n).
        """
        total = dst.nbytes
        pos = min(self._end - self._start, total)
        if pos:
            dst[:pos] = self._view[self._start:self._start + pos]
            self._start += pos
            if hasher is not None:
                hasher.update(dst[:pos])
        sock = self.sock
        while pos < total:
            sock.settimeout(_remaining(deadline))
            got = sock.recv_into(dst[pos:], min(total - pos, _RECV_MAX_BYTES))
            if not got:
                raise ConnectionError(f"redis {self.address[0]}:{self.address[1]} closed the "
                                      "connection mid-reply")
            if hasher is not None:
                hasher.update(dst[pos:pos + got])
            pos += got

    def expect_crlf(self, deadline: float) -> None:
        while self._end - self._start < 2:
            self._fill(deadline)
        if self._buf[self._start:self._start + 2] != b"\r\n":
            raise _ProtocolError("bulk reply not terminated by CRLF")
        self._start += 2

    def is_reusable(self) -> bool:
        """Whether the idle connection is still open and has nothing unread. One syscall."""
        if self._start != self._end:
            return False
        try:
            self.sock.settimeout(0.0)  # non-blocking: a timeout would make recv wait for data
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # EOF (server gone or restarted) or unsolicited bytes

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


class _RawPool:
    """Idle raw connections per node address. Thread-safe (one lock); O(1) per call."""

    def __init__(self, connect: Callable[[tuple[str, int], float], _RespConnection]) -> None:
        self._connect = connect
        self._idle: dict[tuple[str, int], list[_RespConnection]] = {}
        self._lock = threading.Lock()
        #: Set by :meth:`clear` with ``close=True``: no new connections, none kept.
        self.closed = False

    def acquire(self, address: tuple[str, int], deadline: float) -> _RespConnection:
        while True:
            with self._lock:
                if self.closed:
                    raise ConnectionError("the store was closed")
                idle = self._idle.get(address)
                conn = idle.pop() if idle else None
            if conn is None:
                return self._connect(address, deadline)
            if conn.is_reusable():
                return conn
            conn.close()

    def release(self, conn: _RespConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.address, [])
            if not self.closed and len(idle) < _MAX_IDLE_PER_NODE:
                idle.append(conn)
                return
        conn.close()

    def clear(self, *, close: bool = False) -> None:
        """Close every idle connection; with ``close``, for good (the store closed)."""
        with self._lock:
            self.closed = self.closed or close
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


# -- the store -------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def parse_node(node: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as a (host, port) pair; ValueError otherwise."""
    host, sep, port = node.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster node {node!r} is not 'host:port'")
    return host, int(port)


class RedisStore(Store):
    """Shared store on one Redis server (``url``) or a Redis Cluster (``cluster_nodes``).

    Parameters
    ----------
    url:
        ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS) or
        ``unix:///path/redis.sock?db=0``.
    cluster_nodes:
        ``["host:port", ...]``: some nodes of a Redis Cluster (the others are
        discovered). Exactly one of ``url`` and ``cluster_nodes``.
    namespace:
        Prefix of every Redis key this store writes or lists (1-128 of
        ``A-Z a-z 0-9 _ . : / -``); stores with different namespaces share a
        database without seeing each other's shards.
    timeout_s:
        Bound on one get (raw path: the whole read) and on each redis-py round trip.
    chunk_bytes:
        Shards whose payload is larger are split into chunks of this size
        (1 KiB - 256 MiB); smaller ones are stored inline with their head.
    verify:
        ``"always"`` checks the payload checksum on every read; ``"never"`` only
        the head and the lengths.
    capacity_bytes:
        Unused (the tier keeps the accounts); accepted like the other stores.
    raw_reads:
        Read bulk replies with the built-in RESP reader (default) rather than redis-py.

    Nothing connects in the constructor, so opening a store for a server that
    is down succeeds; the first operation then raises :class:`StoreError`.
    """

    backend = "redis"
    persistent = True
    shared = True

    def __init__(self, url: str | None = None, *, cluster_nodes: Sequence[str] | None = None,
                 namespace: str = DEFAULT_NAMESPACE, timeout_s: float = DEFAULT_TIMEOUT_S,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, raw_reads: bool = True) -> None:
        check_verify_mode(verify)
        if (url is None) == (not cluster_nodes):
            raise ValueError("give exactly one of url and cluster_nodes")
        if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
            raise ValueError(f"namespace {namespace!r} must be 1-128 characters of "
                             "A-Z a-z 0-9 _ . : / -")
        if isinstance(timeout_s, bool) or not 0 < timeout_s <= 3600:
            raise ValueError(f"timeout_s must be > 0 and <= 3600 seconds, got {timeout_s!r}")
        if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}, "
                             f"got {chunk_bytes}")
        self.verify: VerifyMode = verify
        self.namespace = namespace
        self.timeout_s = float(timeout_s)
        self.chunk_bytes = int(chunk_bytes)
        self.url = url
        self.cluster_nodes = tuple(cluster_nodes or ())
        common: dict[str, Any] = {
            "socket_timeout": self.timeout_s, "socket_connect_timeout": self.timeout_s,
            "retry": Retry(NoBackoff(), 0), "health_check_interval": 0,
        }
        self._cluster_kwargs = common
        self._client_obj: redis.Redis | RedisCluster | None = None
        self._client_lock = threading.Lock()
        self._raw_auth: dict[str, Any] = {}
        self._raw_address: tuple[str, int] | None = None
        if url is not None:
            self.location = _redact(url)
            try:
                client = redis.Redis.from_url(url, **common)
            except (ValueError, rexc.RedisError) as exc:
                raise ValueError(f"redis url {self.location!r}: {exc}") from None
            self._client_obj = client
            pool = client.connection_pool
            kwargs = pool.connection_kwargs
            plain_tcp = (issubclass(pool.connection_class, _PlainTcpConnection)
                         and not issubclass(pool.connection_class, SSLConnection))
            raw_reads = raw_reads and plain_tcp and kwargs.get("credential_provider") is None
            self._raw_address = (str(kwargs.get("host", "localhost")),
                                 int(kwargs.get("port", 6379)))
            self._raw_auth = {"db": int(kwargs.get("db") or 0),
                              "username": kwargs.get("username"),
                              "password": kwargs.get("password")}
        else:
            node_class: Any = ClusterNode  # untyped constructor in redis-py
            self._nodes = [node_class(*parse_node(n)) for n in self.cluster_nodes]
            self.location = "cluster " + ",".join(self.cluster_nodes)
        self.raw_reads = raw_reads
        self._pool = _RawPool(self._connect_raw)
        self._pattern = re.sub(r"([*?\[\]\\])", r"\\\1", namespace).encode() + b":{*}:h"
        self._head_re = re.compile(re.escape(namespace).encode() + rb":\{([0-9a-f]{32})\}:h")
        self._state_lock = threading.Lock()
        self._down_until = 0.0
        self._backoff_s = 0.0
        self._last_error = ""
        self._refused = False  # whether the back-off is for a refusal, not an outage
        self._closed = False
        self._cad: Any = None
        #: Operations that failed for want of a server (connection, timeout, loading) or
        #: because it refused us (authentication, permissions, no such database).
        self.failures = 0

    # -- plumbing -----------------------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        where = f"redis store {self.location} namespace {self.namespace!r}"
        return f"{where}, key {key!r}" if key is not None else where

    def _names(self, key: str) -> _Names:
        return _Names(f"{self.namespace}:{{{key_digest(key)}}}")

    def _client(self) -> redis.Redis | RedisCluster:
        """The redis-py client, created on first use for a cluster (that connects)."""
        client = self._client_obj
        if client is not None:
            return client
        with self._client_lock:
            if self._closed:
                raise self._closed_error()
            if self._client_obj is None:
                self._client_obj = RedisCluster(startup_nodes=self._nodes,
                                                **self._cluster_kwargs)
            return self._client_obj

    def _connect_raw(self, address: tuple[str, int], deadline: float) -> _RespConnection:
        return _RespConnection(address, deadline, **self._raw_auth)

    def _closed_error(self) -> CacheClosedError:
        return CacheClosedError(f"{self._where()}: the store was closed")

    def _check_usable(self) -> None:
        if self._closed:
            raise self._closed_error()
        down_until = self._down_until
        if down_until and time.monotonic() < down_until:
            if self._refused:
                raise StoreError(f"{self._where()}: refused: {self._last_error}; next try in "
                                 f"{down_until - time.monotonic():.2f} s")
            raise StoreError(f"{self._where()}: unavailable ({self._last_error}); next try in "
                             f"{down_until - time.monotonic():.2f} s")

    def _mark_down(self, exc: BaseException, refusal: str | None = None) -> None:
        """Start (or lengthen) the back-off after ``exc``; ``refusal`` is the message when
        the server refused us rather than being unreachable."""
        with self._state_lock:
            first = not self._backoff_s
            self._backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, 2 * self._backoff_s))
            self._down_until = time.monotonic() + self._backoff_s
            self._last_error = refusal or f"{type(exc).__name__}: {exc}"
            self._refused = refusal is not None
            self.failures += 1
            backoff = self._backoff_s
        self._pool.clear()
        if first:
            log.warning("%s: %s (%s); retrying in %.2f s", self._where(),
                        "refused" if refusal else "unavailable", self._last_error, backoff)

    def _mark_up(self) -> None:
        if self._backoff_s:
            with self._state_lock:
                self._backoff_s = 0.0
                self._down_until = 0.0
            log.warning("%s: reachable again", self._where())

    @contextmanager
    def _guard(self, what: str, key: str | None = None) -> Iterator[None]:
        """Fail fast in back-off; map driver and socket errors to StoreError (refusals
        with their reason, see the module docstring), and any error of a call that ran
        into :meth:`close` to CacheClosedError."""
        self._check_usable()
        try:
            yield
        except (CorruptShardError, ShardFormatError, ValueError, TypeError, CacheClosedError):
            raise
        except _SERVER_ERRORS as exc:
            raise self._failure(exc, what, key) from exc
        self._mark_up()

    def _failure(self, exc: BaseException, what: str, key: str | None) -> TierCacheError:
        """The error to raise for ``exc`` from the server or the socket, after starting the
        back-off where it applies. O(1)."""
        if self._closed:
            return self._closed_error()
        where = self._where(key)
        refusal = _refusal(exc, has_password=self._raw_auth.get("password") is not None)
        if refusal is not None:
            self._mark_down(exc, refusal)
            return StoreError(f"{where}: {what} refused: {refusal}")
        if isinstance(exc, _UNAVAILABLE):
            self._mark_down(exc)
        elif str(exc).startswith("WRONGTYPE"):  # someone stored a list, hash... there
            return _corrupt(where, f"not a string value ({exc})")
        return StoreError(f"{where}: {what} failed: {type(exc).__name__}: {exc}")

    def _compare_and_delete(self, names: _Names, head: _Head) -> bool:
        """Delete the shard's keys if its head still has ``head``'s prefix. One round trip."""
        client = self._client()
        if self._cad is None:
            self._cad = client.register_script(_COMPARE_AND_DELETE)
        keys = [names.head, *names.chunks(head.generation, head.chunk_count)]
        return bool(self._cad(keys=keys, args=[head.prefix], client=client))

    def _delete_chunks(self, names: _Names, old_prefix: bytes | None, keep: str = "") -> None:
        """Delete the chunks named by an old head prefix (unless its generation is ``keep``)."""
        if not old_prefix:
            return
        try:
            generation, count, _size = _parse_prefix(old_prefix, "")
        except CorruptShardError:
            return  # not ours or damaged: nothing we can name
        if not count or generation == keep:
            return
        client = self._client()
        chunk_keys = names.chunks(generation, count)
        for start in range(0, len(chunk_keys), _DELETE_BATCH):
            client.delete(*chunk_keys[start:start + _DELETE_BATCH])

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Return the shard under ``key`` (into ``out`` if given) or ``None``.

        Without ``out`` the result is a new writable, page-aligned array. Two
        round trips for a chunked shard (head, then all chunks pipelined), one
        for an inline one; O(n) for an n-byte payload, received straight into
        the destination and hashed as it lands. Returns ``None`` also when Redis
        evicted part of the shard (the rest is then deleted). Raises
        :class:`StoreError` on connection errors and timeouts (at most
        ``timeout_s`` on the raw path). Thread-safe; reads run in parallel.
        """
        names = self._names(key)
        where = self._where(key)
        deadline = time.monotonic() + self.timeout_s
        with self._guard("get", key):
            for _attempt in range(_READ_ATTEMPTS):
                result: np.ndarray | None
                lost: _Head | None
                if self.raw_reads:
                    try:
                        result, lost = self._read_raw(names, key, out, deadline, where)
                    except _Redirect:
                        result, lost = self._read_redis_py(names, key, out, where)
                else:
                    result, lost = self._read_redis_py(names, key, out, where)
                if lost is None:
                    return result
                if self._compare_and_delete(names, lost):
                    log.info("%s: part of the shard was evicted; removed the rest", where)
                    return None
                # the head changed meanwhile (a concurrent put): read the new one
        return None

    def _read_raw(self, names: _Names, key: str, out: np.ndarray | None, deadline: float,
                  where: str) -> tuple[np.ndarray | None, _Head | None]:
        """One read over a raw connection: (array, None), (None, None) if absent, or
        (None, head) when a chunk of that head is missing."""
        if self._raw_address is not None:
            address = self._raw_address
        else:
            cluster: Any = self._client()  # get_node_from_key is untyped in redis-py
            node = cluster.get_node_from_key(names.head)
            address = (str(node.host), int(node.port))
        conn = self._pool.acquire(address, deadline)
        reusable = False
        try:
            conn.send(pack_command(b"GET", names.head), deadline)
            length = conn.read_bulk_len(deadline)
            if length < 0:  # nil: no such head
                reusable = True
                return None, None
            if length < _MIN_HEAD_BYTES:
                raise _corrupt(where, f"head of {length} bytes is too short")
            raw = bytearray(_MIN_HEAD_BYTES)
            conn.read_into(memoryview(raw), deadline, None)
            need = _head_nbytes(raw, where)
            if need > _MIN_HEAD_BYTES:
                if need > length:
                    raise _corrupt(where, f"head of {length} bytes, its header needs {need}")
                raw.extend(bytes(need - _MIN_HEAD_BYTES))
                conn.read_into(memoryview(raw)[_MIN_HEAD_BYTES:], deadline, None)
            head = _decode_head(raw, key, where)
            if length != head.value_nbytes:
                raise _corrupt(where, f"head value has {length} bytes, expected "
                                      f"{head.value_nbytes}")
            result = codec.prepare_out(head.header, out, key)
            dst = codec.byte_view(result).data
            hasher = xxhash.xxh3_64() if self.verify == "always" else None
            if head.inline:
                conn.read_into(dst, deadline, hasher)
                conn.expect_crlf(deadline)
                missing = False
            else:
                conn.expect_crlf(deadline)
                chunk_keys = names.chunks(head.generation, head.chunk_count)
                conn.send(b"".join(pack_command(b"GET", ck) for ck in chunk_keys), deadline)
                missing = False
                pos = 0
                for index, size in enumerate(head.chunk_lengths()):
                    got = conn.read_bulk_len(deadline)
                    if got < 0:
                        missing = True
                    elif got != size:
                        raise _corrupt(where, f"chunk {index} has {got} bytes, expected {size}")
                    else:
                        conn.read_into(dst[pos:pos + size], deadline, hasher)
                        conn.expect_crlf(deadline)
                    pos += size
            reusable = True
        finally:
            if reusable:
                self._pool.release(conn)
            else:
                conn.close()
        if missing:
            return None, head
        if hasher is not None and hasher.intdigest() != head.header.payload_checksum:
            raise _corrupt(where, "payload checksum mismatch (payload bytes damaged)")
        return result, None

    def _read_redis_py(self, names: _Names, key: str, out: np.ndarray | None,
                       where: str) -> tuple[np.ndarray | None, _Head | None]:
        """The same read through redis-py (TLS, unix sockets, cluster redirections)."""
        client = self._client()
        value = cast("bytes | None", client.get(names.head))
        if value is None:
            return None, None
        if len(value) < _MIN_HEAD_BYTES:
            raise _corrupt(where, f"head of {len(value)} bytes is too short")
        head = _decode_head(value, key, where)
        if len(value) != head.value_nbytes:
            raise _corrupt(where, f"head value has {len(value)} bytes, expected "
                                  f"{head.value_nbytes}")
        result = codec.prepare_out(head.header, out, key)
        dst = codec.byte_view(result)
        expected = head.header.payload_checksum if self.verify == "always" else None
        if head.inline:
            codec.copy_verified(dst, memoryview(value)[head.nbytes:], expected, where=where)
            return result, None
        pipe = client.pipeline(transaction=False)
        for chunk_key in names.chunks(head.generation, head.chunk_count):
            pipe.get(chunk_key)
        values = cast("list[bytes | None]", pipe.execute())
        if any(v is None for v in values):
            return None, head
        hasher = xxhash.xxh3_64()
        pos = 0
        for index, (chunk, size) in enumerate(zip(values, head.chunk_lengths(), strict=True)):
            assert chunk is not None
            if len(chunk) != size:
                raise _corrupt(where, f"chunk {index} has {len(chunk)} bytes, expected {size}")
            np.copyto(dst[pos:pos + size], np.frombuffer(chunk, np.uint8))
            if expected is not None:
                hasher.update(chunk)
            pos += size
        if expected is not None and hasher.intdigest() != expected:
            raise _corrupt(where, "payload checksum mismatch (payload bytes damaged)")
        return result, None

    def _fetch_head(self, names: _Names, key: str | None, where: str,
                    peek: bytes | None = None) -> _Head | None:
        """The decoded head of a shard (two GETRANGEs at most), or None if absent."""
        client = self._client()
        raw = peek if peek is not None else \
            cast(bytes, client.getrange(names.head, 0, _PEEK_BYTES - 1))
        if not raw:
            return None
        if len(raw) < _MIN_HEAD_BYTES:
            raise _corrupt(where, f"head of {len(raw)} bytes is too short")
        need = _head_nbytes(raw, where)
        if need > len(raw):
            raw = cast(bytes, client.getrange(names.head, 0, need - 1))
            if len(raw) < need:
                raise _corrupt(where, f"head of {len(raw)} bytes, its header needs {need}")
        return _decode_head(raw, key, where)

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` from its head (one GETRANGE, payload
        untouched). Raises :class:`~tiercache.errors.CorruptShardError` for a damaged
        head. O(header)."""
        names = self._names(key)
        where = self._where(key)
        with self._guard("info", key):
            head = self._fetch_head(names, key, where)
        if head is None:
            return None
        header = head.header
        return ShardInfo.from_header(header)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a head (damaged or not, chunks not checked). One EXISTS."""
        if not isinstance(key, str):
            return False
        with self._guard("exists", key):
            return bool(self._client().exists(self._names(key).head))

    def keys(self) -> Iterator[str]:
        """Snapshot of this namespace's keys: SCAN for heads, then their headers in
        pipelined batches. O(shards in the database / SCAN COUNT + shards here).

        A head too damaged to name its key is left out.
        """
        where = self._where()
        found: list[str] = []
        with self._guard("keys"):
            client = self._client()
            heads = [h for h in client.scan_iter(match=self._pattern, count=1000)
                     if self._head_re.fullmatch(h)]
            for start in range(0, len(heads), _KEYS_BATCH):
                batch = heads[start:start + _KEYS_BATCH]
                pipe = client.pipeline(transaction=False)
                for head_key in batch:
                    pipe.getrange(head_key, 0, _PEEK_BYTES - 1)
                peeks = cast("list[bytes]", pipe.execute())
                for head_key, peek in zip(batch, peeks, strict=True):
                    names = _Names(head_key[:-2].decode("ascii"))
                    try:
                        head = self._fetch_head(names, None, where, peek)
                    except CorruptShardError:
                        continue
                    stored = head.header.key if head is not None else None
                    if stored is not None and names == self._names(stored):
                        found.append(stored)
        return iter(found)

    # -- writes ---------------------------------------------------------------------------

    def put(self, key: str, array: np.ndarray) -> int:
        """Store a copy of ``array`` under ``key``: chunks first, then the head.

        Returns :meth:`stored_size`. O(n): one hash pass, the chunk pipeline
        (slices of the array's own buffer when C-contiguous), one MULTI/EXEC
        for the head, and a DEL of the replaced value's chunks. A concurrent or
        later reader sees the old value, the new one or nothing. Thread-safe.
        """
        payload = codec.contiguous_payload(array)
        header = codec.encode_header(key, array, codec.payload_checksum(payload), store_key=True)
        names = self._names(key)
        size = self.chunk_bytes
        total = payload.nbytes
        count = 0 if total <= size else -(-total // size)
        generation = os.urandom(8).hex()
        prefix = encode_prefix(generation, count, size if count else 0)
        with self._guard("put", key):
            client = self._client()
            if count:
                pipe = client.pipeline(transaction=False)
                for index in range(count):
                    pipe.set(names.chunk(generation, index),
                             payload[index * size:(index + 1) * size])
                try:
                    pipe.execute()
                except _UNAVAILABLE:
                    raise  # no server to clean up on: the chunks are unreachable garbage
                except BaseException:  # e.g. OOM from a noeviction server midway
                    self._forget_chunks(names, generation, count)
                    raise
                value = prefix + header
            else:
                value = b"".join((prefix, header, payload))
            swap = client.pipeline(transaction=True)
            swap.getrange(names.head, 0, PREFIX_BYTES - 1)
            swap.set(names.head, value)
            old_prefix, _ok = swap.execute()
            self._delete_chunks(names, cast("bytes | None", old_prefix), keep=generation)
        return codec.stored_nbytes(array)

    def _forget_chunks(self, names: _Names, generation: str, count: int) -> None:
        """Best effort: remove the chunks of a put that failed before its head was written."""
        try:
            keys = names.chunks(generation, count)
            client = self._client()
            for start in range(0, len(keys), _DELETE_BATCH):
                client.delete(*keys[start:start + _DELETE_BATCH])
        except Exception:  # the server is likely gone; the chunks are unreachable garbage
            pass

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether its head was present. Two round trips: a
        MULTI/EXEC that reads and deletes the head, then a DEL of its chunks."""
        names = self._names(key)
        with self._guard("delete", key):
            tx = self._client().pipeline(transaction=True)
            tx.getrange(names.head, 0, PREFIX_BYTES - 1)
            tx.delete(names.head)
            old_prefix, removed = tx.execute(raise_on_error=False)
            if isinstance(removed, Exception):
                raise removed
            if isinstance(old_prefix, bytes):  # else not a string: nothing to name chunks by
                self._delete_chunks(names, old_prefix)
        return bool(removed)

    def stored_size(self, array: np.ndarray) -> int:
        """Header plus payload bytes of ``array`` (what capacity counts). O(1)."""
        codec.check_storable(array)
        return codec.stored_nbytes(array)

    def close(self) -> None:
        """Close every connection; later calls, and calls that run into the close, raise
        :class:`~tiercache.errors.CacheClosedError`. Idempotent; the data stays in
        Redis."""
        with self._client_lock:
            if self._closed:
                return
            self._closed = True
            client, self._client_obj = self._client_obj, None
        self._pool.clear(close=True)
        if client is not None:
            with suppress(rexc.RedisError):
                client.close()
