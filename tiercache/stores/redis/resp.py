"""The raw RESP2 client of the redis store's fast read path.

By default a :meth:`RedisStore.get` on a plain TCP server does not go through
redis-py: :func:`read_raw` sends the GETs itself over a pooled
:class:`RespConnection` and parses the bulk replies with a small RESP2 reader
that ``recv_into``-s them straight into the destination buffer and hashes each
piece as it lands (one copy, kernel to destination, instead of redis-py's
socket -> bytes -> array). One deadline bounds the whole read and is enforced
on every socket operation. TLS, Unix sockets, credential providers and Cluster
redirections (``MOVED``/``ASK``, raised here as :class:`Redirect`) go through
redis-py instead.

This module does not import redis-py. Thread-safety: a :class:`RespConnection`
is used by one thread at a time; :class:`RawPool` is thread-safe.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress

import numpy as np
import xxhash

from ... import codec
from .layout import MIN_HEAD_BYTES, Head, Names, corrupt, decode_head, head_nbytes

__all__ = ["ErrorReply", "ProtocolError", "RawPool", "Redirect", "RespConnection",
           "Unavailable", "pack_command", "read_raw"]

_RECV_MAX_BYTES = 1 << 20
_LINE_BUFFER_BYTES = 64 * 1024
_MAX_IDLE_PER_NODE = 8
_REDIRECT_PREFIXES = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
_UNAVAILABLE_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN")


class ProtocolError(Exception):
    """The server sent something the raw reader does not expect."""


class ErrorReply(Exception):
    """The server answered a command with a RESP error (``-ERR ...``)."""


class Redirect(Exception):
    """A Cluster redirection or transient cluster state: let redis-py handle the read."""


class Unavailable(Exception):
    """The server answered but cannot serve (loading, busy, master down)."""


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (``time.monotonic()``); TimeoutError if none. O(1)."""
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


class RespConnection:
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
                        raise ErrorReply(line[1:].decode("utf-8", "replace"))
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes, deadline: float) -> None:
        """Send ``data`` (one or more packed commands) before ``deadline``. O(len(data))."""
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
                raise ProtocolError("reply line longer than the line buffer")
            self._fill(deadline)

    def read_bulk_len(self, deadline: float) -> int:
        """Length of the next bulk-string reply, -1 for nil. Error replies raise."""
        line = self.read_line(deadline)
        kind = line[:1]
        if kind == b"$":
            try:
                return int(line[1:])
            except ValueError:
                raise ProtocolError(f"bad bulk length {line[:40]!r}") from None
        if kind == b"-":
            message = line[1:].decode("utf-8", "replace")
            if message.startswith(_REDIRECT_PREFIXES):
                raise Redirect(message)
            if message.startswith(_UNAVAILABLE_PREFIXES):
                raise Unavailable(message)
            raise ErrorReply(message)
        raise ProtocolError(f"unexpected reply {line[:40]!r}")

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
        """Consume the CRLF that ends a bulk reply; ProtocolError if it is not there."""
        while self._end - self._start < 2:
            self._fill(deadline)
        if self._buf[self._start:self._start + 2] != b"\r\n":
            raise ProtocolError("bulk reply not terminated by CRLF")
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
        """Close the socket (idempotent, never raises)."""
        with suppress(OSError):
            self.sock.close()


class RawPool:
    """Idle raw connections per node address. Thread-safe (one lock); O(1) per call."""

    def __init__(self, connect: Callable[[tuple[str, int], float], RespConnection]) -> None:
        self._connect = connect
        self._idle: dict[tuple[str, int], list[RespConnection]] = {}
        self._lock = threading.Lock()
        #: Set by :meth:`clear` with ``close=True``: no new connections, none kept.
        self.closed = False

    def acquire(self, address: tuple[str, int], deadline: float) -> RespConnection:
        """An idle connection to ``address`` that is still usable, or a new one (which
        connects, authenticates and selects the database before ``deadline``)."""
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

    def release(self, conn: RespConnection) -> None:
        """Keep ``conn`` for reuse (at most 8 idle per node), or close it."""
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




def read_raw(pool: RawPool, address: tuple[str, int], names: Names, key: str,
             out: np.ndarray | None, deadline: float, where: str, *,
             verify: bool) -> tuple[np.ndarray | None, Head | None]:
    """Read one shard over a raw connection from ``pool`` to ``address``.

    Returns (array, None), (None, None) if the shard is absent, or (None, head)
    when a chunk of that head is missing (evicted, or replaced by a concurrent
    put: the caller tells which). One round trip for the head (with the
    payload when inline), then one pipeline of chunk GETs; O(n) for an n-byte
    payload, received straight into the destination and, with ``verify``,
    hashed as it lands. Raises :class:`Redirect` for a cluster redirection,
    :class:`~tiercache.errors.CorruptShardError` for damaged bytes, and socket
    or RESP errors otherwise (the connection is then closed, not pooled).
    Thread-safe (the connection is this call's alone).
    """
    conn = pool.acquire(address, deadline)
    reusable = False
    try:
        conn.send(pack_command(b"GET", names.head), deadline)
        length = conn.read_bulk_len(deadline)
        if length < 0:  # nil: no such head
            reusable = True
            return None, None
        if length < MIN_HEAD_BYTES:
            raise corrupt(where, f"head of {length} bytes is too short")
        raw = bytearray(MIN_HEAD_BYTES)
        conn.read_into(memoryview(raw), deadline, None)
        need = head_nbytes(raw, where)
        if need > MIN_HEAD_BYTES:
            if need > length:
                raise corrupt(where, f"head of {length} bytes, its header needs {need}")
            raw.extend(bytes(need - MIN_HEAD_BYTES))
            conn.read_into(memoryview(raw)[MIN_HEAD_BYTES:], deadline, None)
        head = decode_head(raw, key, where)
        if length != head.value_nbytes:
            raise corrupt(where, f"head value has {length} bytes, expected "
                                 f"{head.value_nbytes}")
        result = codec.prepare_out(head.header, out, key)
        dst = codec.byte_view(result).data
        hasher = xxhash.xxh3_64() if verify else None
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
                    raise corrupt(where, f"chunk {index} has {got} bytes, expected {size}")
                else:
                    conn.read_into(dst[pos:pos + size], deadline, hasher)
                    conn.expect_crlf(deadline)
                pos += size
        reusable = True
    finally:
        if reusable:
            pool.release(conn)
        else:
            conn.close()
    if missing:
        return None, head
    if hasher is not None and hasher.intdigest() != head.header.payload_checksum:
        raise corrupt(where, "payload checksum mismatch (payload bytes damaged)")
    return result, None
