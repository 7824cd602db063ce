"""Redis store: shards in a Redis server or Redis Cluster shared by many processes.

A tier on this backend outlives the process (``persistent``) and is *shared*:
other workers, on this machine or others, read and write the same shards, and
Redis itself may evict any key at any time (``maxmemory``). Whatever happens,
a read returns the right bytes, nothing (a miss), or raises
:class:`~tiercache.errors.StoreError`; never wrong bytes. The key names, head
prefix and chunking are described in :mod:`.layout`.

Writes
    A put writes the chunks under a fresh generation first (one pipeline), then
    swaps the head in a MULTI/EXEC that also returns the old head's prefix, and
    finally deletes the old generation's chunks. The head is written last, so a
    reader never sees a half-written shard: it sees the old head (whose chunks
    are intact until the swap) or the new one (whose chunks are all there).
Reads
    One round trip for the head (with the payload when inline), then one
    pipeline of chunk GETs, by default over the raw RESP2 reader of
    :mod:`.resp` (received straight into the destination buffer); TLS, Unix
    sockets, credential providers and Cluster redirections go through
    redis-py instead (``raw_reads=False`` forces that everywhere). A chunk
    that is missing means the shard was replaced meanwhile (the head changed:
    read again, at most three times) or Redis evicted part of it (the head is
    unchanged: its remains are removed with a compare-and-delete script, and
    the read is a miss).
Integrity
    The codec header carries an xxh3_64 of the whole payload, checked on every
    read unless ``verify="never"``; the prefix has its own checksum; lengths of
    the head and of every chunk are checked. Values are raw bytes, never pickle.
    Checksums catch corruption and partial eviction, not malice: anyone who can
    write to the Redis database can store a well-formed shard of their own.
Failures
    Outages and refusals raise :class:`~tiercache.errors.StoreError` and start
    the store's fail-fast back-off (:mod:`.health`, which also says why it
    exists beside the tier's). A refusal is reported on the first call
    (``keys()`` when a cache opens, so the tier is degraded with that reason).
    After :meth:`RedisStore.close` (and for a call that ran into it) every
    method raises :class:`~tiercache.errors.CacheClosedError`. A
    :meth:`RedisStore.get` never takes longer than ``timeout_s`` on the raw
    path (one deadline for the whole read); redis-py calls are bounded by
    ``timeout_s`` per round trip and are never retried.
Capacity
    :meth:`RedisStore.stored_size` counts the codec header (without the stored
    key) plus the payload, like the other stores; the 64-byte prefix and Redis's
    own per-key overhead are not counted.

Thread-safety: every method may be called from any thread. The redis-py client
and the pool of raw connections are thread-safe; a raw connection is used by
one thread at a time; the back-off state is guarded by a lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
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

from ... import codec
from ...errors import CacheClosedError, CorruptShardError, ShardFormatError
from ..base import ShardInfo, Store, VerifyMode, check_verify_mode
from .health import SERVER_ERRORS, UNAVAILABLE, Backoff
from .layout import (
    MIN_HEAD_BYTES,
    PEEK_BYTES,
    PREFIX_BYTES,
    Head,
    Names,
    corrupt,
    decode_head,
    encode_prefix,
    head_nbytes,
    head_re,
    names_of,
    parse_prefix,
    scan_pattern,
)
from .options import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT_S,
    MAX_CHUNK_BYTES,
    MAX_TIMEOUT_S,
    MIN_CHUNK_BYTES,
    NAMESPACE_RE,
)
from .resp import RawPool, Redirect, RespConnection, read_raw

__all__ = ["RedisStore", "parse_node"]

log = logging.getLogger("tiercache")

_READ_ATTEMPTS = 3
_KEYS_BATCH = 512
_DELETE_BATCH = 1024

# Delete a shard's keys if its head still starts with ARGV[1] (the prefix a reader saw):
# removes the remains of a partly evicted shard without touching a newer one.
_COMPARE_AND_DELETE = """
if redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1) ~= ARGV[1] then return 0 end
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""


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
        if isinstance(timeout_s, bool) or not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout_s must be > 0 and <= {MAX_TIMEOUT_S} seconds, "
                             f"got {timeout_s!r}")
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
        self._pool = RawPool(self._connect_raw)
        self._pattern = scan_pattern(namespace)
        self._head_re = head_re(namespace)
        self._backoff = Backoff(self._where(),
                                has_password=self._raw_auth.get("password") is not None,
                                on_down=self._pool.clear)
        self._closed = False
        self._cad: Any = None

    @property
    def failures(self) -> int:
        """Operations that failed for want of a server (connection, timeout, loading) or
        because it refused us (authentication, permissions, no such database)."""
        return self._backoff.failures

    # -- plumbing -----------------------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        """The store (and key) for messages; the url's password is redacted."""
        where = f"redis store {self.location} namespace {self.namespace!r}"
        return f"{where}, key {key!r}" if key is not None else where

    def names(self, key: str) -> Names:
        """The Redis key names of ``key``'s shard (see :mod:`.layout`). O(len(key))."""
        return names_of(self.namespace, key)

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

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The redis-py client (created, and connected, on first use for a cluster)."""
        return self._client()

    def _connect_raw(self, address: tuple[str, int], deadline: float) -> RespConnection:
        """A new raw connection with the url's credentials and database."""
        return RespConnection(address, deadline, **self._raw_auth)

    def _closed_error(self) -> CacheClosedError:
        """The error of a call made after (or running into) :meth:`close`."""
        return CacheClosedError(f"{self._where()}: the store was closed")

    @contextmanager
    def _guard(self, what: str, key: str | None = None) -> Iterator[None]:
        """Fail fast in back-off; map driver and socket errors to StoreError (refusals
        with their reason, see the module docstring), and any error of a call that ran
        into :meth:`close` to CacheClosedError."""
        if self._closed:
            raise self._closed_error()
        self._backoff.check()
        try:
            yield
        except (CorruptShardError, ShardFormatError, ValueError, TypeError, CacheClosedError):
            raise
        except SERVER_ERRORS as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise self._backoff.error(exc, what, self._where(key)) from exc
        self._backoff.mark_up()

    def _compare_and_delete(self, names: Names, head: Head) -> bool:
        """Delete the shard's keys if its head still has ``head``'s prefix. One round trip."""
        client = self._client()
        if self._cad is None:
            self._cad = client.register_script(_COMPARE_AND_DELETE)
        keys = [names.head, *names.chunks(head.generation, head.chunk_count)]
        return bool(self._cad(keys=keys, args=[head.prefix], client=client))

    def _delete_chunks(self, names: Names, old_prefix: bytes | None, keep: str = "") -> None:
        """Delete the chunks named by an old head prefix (unless its generation is ``keep``)."""
        if not old_prefix:
            return
        try:
            generation, count, _size = parse_prefix(old_prefix, "")
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
        names = self.names(key)
        where = self._where(key)
        deadline = time.monotonic() + self.timeout_s
        verify = self.verify == "always"
        with self._guard("get", key):
            for _attempt in range(_READ_ATTEMPTS):
                result: np.ndarray | None
                lost: Head | None
                if self.raw_reads:
                    try:
                        result, lost = self._read_raw(names, key, out, deadline, where)
                    except Redirect:
                        result, lost = _read_redis_py(self._client(), names, key, out,
                                                      where, verify=verify)
                else:
                    result, lost = _read_redis_py(self._client(), names, key, out, where,
                                                  verify=verify)
                if lost is None:
                    return result
                if self._compare_and_delete(names, lost):
                    log.info("%s: part of the shard was evicted; removed the rest", where)
                    return None
                # the head changed meanwhile (a concurrent put): read the new one
        return None

    def _read_raw(self, names: Names, key: str, out: np.ndarray | None, deadline: float,
                  where: str) -> tuple[np.ndarray | None, Head | None]:
        """One read over a raw connection (:func:`.resp.read_raw`) from the node of the
        shard's slot."""
        if self._raw_address is not None:
            address = self._raw_address
        else:
            cluster: Any = self._client()  # get_node_from_key is untyped in redis-py
            node = cluster.get_node_from_key(names.head)
            address = (str(node.host), int(node.port))
        return read_raw(self._pool, address, names, key, out, deadline, where,
                        verify=self.verify == "always")

    def _fetch_head(self, names: Names, key: str | None, where: str,
                    peek: bytes | None = None) -> Head | None:
        """The decoded head of a shard (two GETRANGEs at most), or None if absent."""
        client = self._client()
        raw = peek if peek is not None else \
            cast(bytes, client.getrange(names.head, 0, PEEK_BYTES - 1))
        if not raw:
            return None
        if len(raw) < MIN_HEAD_BYTES:
            raise corrupt(where, f"head of {len(raw)} bytes is too short")
        need = head_nbytes(raw, where)
        if need > len(raw):
            raw = cast(bytes, client.getrange(names.head, 0, need - 1))
            if len(raw) < need:
                raise corrupt(where, f"head of {len(raw)} bytes, its header needs {need}")
        return decode_head(raw, key, where)

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` from its head (one GETRANGE, payload
        untouched). Raises :class:`~tiercache.errors.CorruptShardError` for a damaged
        head. O(header)."""
        names = self.names(key)
        where = self._where(key)
        with self._guard("info", key):
            head = self._fetch_head(names, key, where)
        if head is None:
            return None
        header = head.header
        return ShardInfo.from_header(header)

    def head(self, key: str) -> Head | None:
        """The decoded head of ``key``'s shard (generation, chunk layout, codec header;
        chunks unchecked), or ``None`` if absent: what tests and tools inspect. One or
        two GETRANGEs, O(header)."""
        with self._guard("head", key):
            return self._fetch_head(self.names(key), key, self._where(key))

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a head (damaged or not, chunks not checked). One EXISTS."""
        if not isinstance(key, str):
            return False
        with self._guard("exists", key):
            return bool(self._client().exists(self.names(key).head))

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
                    pipe.getrange(head_key, 0, PEEK_BYTES - 1)
                peeks = cast("list[bytes]", pipe.execute())
                for head_key, peek in zip(batch, peeks, strict=True):
                    names = Names(head_key[:-2].decode("ascii"))
                    try:
                        head = self._fetch_head(names, None, where, peek)
                    except CorruptShardError:
                        continue
                    stored = head.header.key if head is not None else None
                    if stored is not None and names == self.names(stored):
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
        names = self.names(key)
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
                except UNAVAILABLE:
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

    def _forget_chunks(self, names: Names, generation: str, count: int) -> None:
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
        names = self.names(key)
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


def _read_redis_py(client: redis.Redis | RedisCluster, names: Names, key: str,
                   out: np.ndarray | None, where: str, *,
                   verify: bool) -> tuple[np.ndarray | None, Head | None]:
    """:func:`.resp.read_raw` through redis-py (TLS, unix sockets, cluster redirections):
    the same results, with the chunks copied out of redis-py's bytes. Two round trips at
    most, O(n); thread-safe (redis-py's client is)."""
    value = cast("bytes | None", client.get(names.head))
    if value is None:
        return None, None
    if len(value) < MIN_HEAD_BYTES:
        raise corrupt(where, f"head of {len(value)} bytes is too short")
    head = decode_head(value, key, where)
    if len(value) != head.value_nbytes:
        raise corrupt(where, f"head value has {len(value)} bytes, expected "
                              f"{head.value_nbytes}")
    result = codec.prepare_out(head.header, out, key)
    dst = codec.byte_view(result)
    expected = head.header.payload_checksum if verify else None
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
            raise corrupt(where, f"chunk {index} has {len(chunk)} bytes, expected {size}")
        np.copyto(dst[pos:pos + size], np.frombuffer(chunk, np.uint8))
        if expected is not None:
            hasher.update(chunk)
        pos += size
    if expected is not None and hasher.intdigest() != expected:
        raise corrupt(where, "payload checksum mismatch (payload bytes damaged)")
    return result, None
