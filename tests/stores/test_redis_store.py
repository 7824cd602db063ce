"""RedisStore against real redis-server processes: the shared store contract, the key
layout and chunking, integrity checks, concurrent overwrites, timeouts, outages and
Redis Cluster slots. No mocks: every test talks to a server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from redis_fixtures import RedisServer, free_port

from tiercache import codec
from tiercache.errors import CacheClosedError, CorruptShardError, StoreError
from tiercache.stores import open_store
from tiercache.stores.base import Store, VerifyMode
from tiercache.stores.redis import (
    PREFIX_BYTES,
    RedisStore,
    key_digest,
    pack_command,
)
from tiercache.stores.redis import options as redis_options
from tiercache.stores.redis.options import parse_options
from tiercache.testing import StoreContract, assert_same

pytestmark = pytest.mark.redis

SMALL_CHUNK = 4096


def _namespace_keys(client: redis.Redis, namespace: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{namespace}:*", count=1000))


def _raw(value: object) -> bytes:
    """A reply of the test clients (``decode_responses`` off): bytes, ``None`` read as
    ``b""``. redis-py types replies as ``bytes | str``. O(1)."""
    if value is None:
        return b""
    assert isinstance(value, bytes), value
    return value


# -- the contract -------------------------------------------------------------------------


class TestRedisContract(StoreContract):
    """Every store's contract, on a standalone server (raw reader and redis-py reader,
    inline and chunked shards) and on a three-node cluster."""

    @pytest.fixture(params=["raw-inline", "raw-chunked", "redis-py-chunked", "cluster-chunked"])
    def variant(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def store_dir(self) -> None:
        return None  # nothing is written to the local file system

    @pytest.fixture
    def make_store(self, variant: str, request: pytest.FixtureRequest,
                   redis_namespace: str) -> Iterator[Callable[..., Store]]:
        location: dict[str, Any]
        if variant.startswith("cluster"):
            nodes: list[RedisServer] = request.getfixturevalue("redis_cluster")
            location = {"cluster_nodes": [nodes[0].node]}
        else:
            server: RedisServer = request.getfixturevalue("redis_standalone")
            location = {"url": server.url}
        chunk = SMALL_CHUNK if variant.endswith("chunked") else 8 << 20
        opened: list[RedisStore] = []

        def make(verify: VerifyMode = "always") -> Store:
            store = RedisStore(**location, namespace=redis_namespace, chunk_bytes=chunk,
                               verify=verify, raw_reads=not variant.startswith("redis-py"))
            opened.append(store)
            return store

        yield make
        with RedisStore(**location, namespace=redis_namespace) as cleaner:
            for key in list(cleaner.keys()):
                cleaner.delete(key)
        for store in opened:
            store.close()


# -- layout and chunking -------------------------------------------------------------------


@pytest.fixture
def store(redis_standalone: RedisServer, redis_namespace: str) -> Iterator[RedisStore]:
    with RedisStore(redis_standalone.url, namespace=redis_namespace,
                    chunk_bytes=SMALL_CHUNK) as opened:
        yield opened


def test_chunked_layout_and_overwrite(store: RedisStore, redis_standalone: RedisServer,
                                      redis_namespace: str) -> None:
    client = redis_standalone.client()
    array = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)  # 40,000 B
    store.put("w", array)
    keys = _namespace_keys(client, redis_namespace)
    digest = key_digest("w")
    head = f"{redis_namespace}:{{{digest}}}:h".encode()
    assert head in keys and len(keys) == 1 + 10  # head + ceil(40000 / 4096) chunks
    assert all(f"{{{digest}}}".encode() in k for k in keys)  # one hash tag: one cluster slot
    assert len({redis.crc.key_slot(k) for k in keys}) == 1
    chunks = [k for k in keys if k != head]
    sizes = sorted((int(client.strlen(k)) for k in chunks), reverse=True)
    assert sizes == [SMALL_CHUNK] * 9 + [40_000 - 9 * SMALL_CHUNK]
    header = codec.decode_header(client.getrange(head, PREFIX_BYTES, -1), "w")
    assert client.strlen(head) == PREFIX_BYTES + header.header_nbytes  # payload not inline
    out = np.empty_like(array)
    assert store.get("w", out=out) is out
    assert_same(out, array)
    # the payload is the raw array bytes, chunk after chunk: never pickled
    by_index = sorted(chunks, key=lambda k: int(k.rsplit(b":", 1)[1]))
    assert b"".join(_raw(client.get(k)) for k in by_index) == array.tobytes()

    smaller = np.arange(3000, dtype=np.int32)  # 12,000 B: 3 chunks, old chunks deleted
    store.put("w", smaller)
    assert len(_namespace_keys(client, redis_namespace)) == 1 + 3
    assert_same(store.get("w"), smaller)
    store.put("w", np.arange(5))  # inline: only the head remains
    assert _namespace_keys(client, redis_namespace) == [head]
    assert store.delete("w")
    assert _namespace_keys(client, redis_namespace) == []


def test_inline_value_is_prefix_header_raw_payload(store: RedisStore,
                                                  redis_standalone: RedisServer) -> None:
    array = np.arange(100, dtype=">i4").reshape(10, 10)
    store.put("small", array)
    value = redis_standalone.client().get(store.names("small").head)
    assert isinstance(value, bytes)
    assert value.startswith(b"TCREDIS1")
    assert value[PREFIX_BYTES:PREFIX_BYTES + 8] == codec.MAGIC
    assert value.endswith(array.tobytes())


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "redis-py"])
def test_many_chunks_pipelined(redis_standalone: RedisServer, redis_namespace: str,
                               raw: bool) -> None:
    big = np.random.default_rng(2).integers(0, 1 << 62, 3 << 17, dtype=np.int64)  # 3 MiB
    with RedisStore(redis_standalone.url, namespace=redis_namespace, chunk_bytes=64 << 10,
                    raw_reads=raw) as s:
        s.put("big", big)
        assert len(_namespace_keys(redis_standalone.client(), redis_namespace)) == 1 + 48
        assert_same(s.get("big"), big)
        out = np.zeros_like(big)
        assert s.get("big", out=out) is out
        assert_same(out, big)
        s.delete("big")


def test_open_store_builds_a_redis_store(redis_standalone: RedisServer,
                                         redis_namespace: str) -> None:
    with open_store("redis", None, verify="never", options={
            "url": redis_standalone.url, "namespace": redis_namespace,
            "timeout_s": 1.5, "chunk_bytes": 1 << 20}) as opened:
        assert isinstance(opened, RedisStore)
        assert (opened.verify, opened.timeout_s, opened.chunk_bytes) == ("never", 1.5, 1 << 20)
        assert opened.persistent and opened.shared


@pytest.mark.parametrize("kwargs", [
    {}, {"url": "redis://127.0.0.1:1/0", "cluster_nodes": ["127.0.0.1:2"]},
    {"url": "redis://127.0.0.1:1/0", "namespace": "a{b}"},
    {"url": "redis://127.0.0.1:1/0", "namespace": ""},
    {"url": "redis://127.0.0.1:1/0", "timeout_s": 0},
    {"url": "redis://127.0.0.1:1/0", "chunk_bytes": 100},
    {"url": "redis://127.0.0.1:1/0", "verify": "sometimes"},
    {"url": "http://127.0.0.1:1/0"},
    {"cluster_nodes": ["127.0.0.1"]},
])
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RedisStore(**kwargs)


def test_pack_command() -> None:
    assert pack_command(b"GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert pack_command(b"SET", b"", b"\r\n") == b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$2\r\n\r\n\r\n"


# -- the tier options (no server) -----------------------------------------------------------


class _Refused(Exception):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key


def test_parse_options_fills_defaults_and_names_the_key_at_fault() -> None:
    assert parse_options({"url": "redis://127.0.0.1:6379/2", "name": "ignored"}, _Refused) == {
        "url": "redis://127.0.0.1:6379/2", "timeout_s": redis_options.DEFAULT_TIMEOUT_S,
        "chunk_bytes": redis_options.DEFAULT_CHUNK_BYTES}
    assert parse_options({"cluster_nodes": ["[::1]:7000"], "namespace": "m", "timeout": 1,
                          "chunk_size": "1KiB"}, _Refused) == {
        "cluster_nodes": ("[::1]:7000",), "namespace": "m", "timeout_s": 1.0,
        "chunk_bytes": redis_options.MIN_CHUNK_BYTES}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "url", "give exactly one of url"),
        ({"url": "http://h"}, "url", "scheme 'http'"),
        ({"cluster_nodes": ["h"]}, "cluster_nodes", "is not \"host:port\""),
        ({"url": "redis://h", "namespace": "a{b}"}, "namespace", "no braces"),
        ({"url": "redis://h", "timeout": 3601}, "timeout", "<= 3600"),
        ({"url": "redis://h", "chunk_size": "512MiB"}, "chunk_size", "between 1KiB")]
    for table, key, reason in cases:
        with pytest.raises(_Refused, match=reason) as err:
            parse_options(table, _Refused)
        assert err.value.key == key, table


def test_the_store_and_its_options_share_one_set_of_limits() -> None:
    """The constructor refuses exactly what parse_options refuses at the edges."""
    url = "redis://127.0.0.1:1/0"
    for chunk in (redis_options.MIN_CHUNK_BYTES, redis_options.MAX_CHUNK_BYTES):
        RedisStore(url, chunk_bytes=chunk).close()
    for chunk in (redis_options.MIN_CHUNK_BYTES - 1, redis_options.MAX_CHUNK_BYTES + 1):
        with pytest.raises(ValueError, match="chunk_bytes"):
            RedisStore(url, chunk_bytes=chunk)
    with pytest.raises(ValueError, match="timeout_s"):
        RedisStore(url, timeout_s=redis_options.MAX_TIMEOUT_S + 1)
    assert RedisStore(url).namespace == redis_options.DEFAULT_NAMESPACE


def test_options_import_without_the_redis_driver() -> None:
    """A configuration is validated (and told the driver is missing) without redis-py:
    neither the package nor its options module may import it."""
    code = ("import sys; sys.modules['redis'] = None\n"
            "import tiercache.stores.redis as pkg\n"
            "from tiercache.stores.redis.options import parse_options\n"
            "class E(Exception): pass\n"
            "try:\n"
            "    parse_options({'url': 'redis://h'}, lambda k, r: E(k + ': ' + r))\n"
            "except E as e: print(e)\n"
            "try:\n"
            "    pkg.RedisStore\n"
            "except ImportError: print('store needs the driver')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "backend: the redis backend needs the redis package: pip install 'tiercache[redis]'",
        "store needs the driver"]


# -- integrity: corruption and partial eviction are detected ------------------------------

PAYLOAD = np.random.default_rng(3).standard_normal(5000).astype(np.float32)  # 20,000 B


@pytest.fixture(params=[True, False], ids=["raw", "redis-py"])
def damaged(request: pytest.FixtureRequest, redis_standalone: RedisServer,
            redis_namespace: str) -> Iterator[tuple[RedisStore, redis.Redis]]:
    with RedisStore(redis_standalone.url, namespace=redis_namespace, chunk_bytes=SMALL_CHUNK,
                    raw_reads=request.param) as s:
        s.put("k", PAYLOAD)
        s.put("small", np.arange(30, dtype=np.int16))
        yield s, redis_standalone.client()


def _chunk_key(s: RedisStore, key: str, index: int) -> bytes:
    head = s.head(key)
    assert head is not None
    return s.names(key).chunk(head.generation, index)


def test_flipped_payload_byte_is_detected(damaged: tuple[RedisStore, redis.Redis]) -> None:
    s, client = damaged
    chunk = _chunk_key(s, "k", 2)
    value = bytearray(_raw(client.get(chunk)))
    value[100] ^= 0x01
    client.set(chunk, bytes(value))
    with pytest.raises(CorruptShardError, match="checksum"):
        s.get("k")
    s.verify = "never"  # without the payload check the damaged bytes come back
    got = s.get("k")
    assert got is not None
    diff = np.flatnonzero(got.view(np.uint8) != PAYLOAD.view(np.uint8))
    assert diff.tolist() == [2 * SMALL_CHUNK + 100]


def test_flipped_inline_payload_byte_is_detected(damaged: tuple[RedisStore, redis.Redis]
                                                 ) -> None:
    s, client = damaged
    head = s.names("small").head
    client.setrange(head, int(client.strlen(head)) - 1, b"\x7f")
    with pytest.raises(CorruptShardError, match="checksum"):
        s.get("small")


@pytest.mark.parametrize("offset", [0, 9, 30, 63, PREFIX_BYTES + 17])
def test_damaged_head_is_detected(damaged: tuple[RedisStore, redis.Redis], offset: int) -> None:
    s, client = damaged
    head = s.names("k").head
    byte = _raw(client.getrange(head, offset, offset))
    client.setrange(head, offset, bytes([byte[0] ^ 0x20]))
    with pytest.raises(CorruptShardError):
        s.get("k")
    with pytest.raises(CorruptShardError):
        s.info("k")
    assert "k" not in list(s.keys())  # a head that cannot name its key is not listed
    assert s.delete("k")  # but can be deleted


@pytest.mark.parametrize("edit", ["short chunk", "long chunk", "foreign head", "other key",
                                  "short head"])
def test_wrong_lengths_and_foreign_values_are_detected(
        damaged: tuple[RedisStore, redis.Redis], edit: str) -> None:
    s, client = damaged
    head = s.names("k").head
    if edit == "short chunk":
        client.set(_chunk_key(s, "k", 1), b"\x00" * 100)
    elif edit == "long chunk":
        client.append(_chunk_key(s, "k", 4), b"\x00")
    elif edit == "foreign head":
        client.set(head, b"x" * 500)
    elif edit == "other key":
        client.set(head, client.get(s.names("small").head) or b"")
    else:
        client.set(head, (client.get(head) or b"")[:100])
    with pytest.raises(CorruptShardError):
        s.get("k")


def test_foreign_redis_type_is_corrupt_and_deletable(damaged: tuple[RedisStore, redis.Redis]
                                                    ) -> None:
    s, client = damaged
    head = s.names("k").head
    client.delete(head)
    client.rpush(head, b"not a shard")
    with pytest.raises(CorruptShardError, match="not a string"):
        s.get("k")
    with pytest.raises(CorruptShardError, match="not a string"):
        s.info("k")
    assert s.delete("k")
    assert s.get("k") is None


def test_evicted_chunk_is_a_miss_and_the_remains_are_removed(
        damaged: tuple[RedisStore, redis.Redis], redis_namespace: str) -> None:
    s, client = damaged
    client.delete(_chunk_key(s, "k", 3))  # what maxmemory eviction does to one chunk
    assert "k" in s
    assert s.get("k") is None
    assert "k" not in s and s.info("k") is None
    assert sorted(s.keys()) == ["small"]
    assert _namespace_keys(client, redis_namespace) == [s.names("small").head]


def test_evicted_head_is_a_miss(damaged: tuple[RedisStore, redis.Redis]) -> None:
    s, client = damaged
    client.delete(s.names("k").head)
    assert s.get("k") is None
    assert s.info("k") is None and "k" not in s
    assert sorted(s.keys()) == ["small"]


def test_concurrent_overwrites_never_mix_values(redis_standalone: RedisServer,
                                                redis_namespace: str) -> None:
    """Readers racing writers of differently chunked values see one whole value or a
    miss, never a mix; afterwards no chunk of a replaced value is left behind."""
    rng = np.random.default_rng(4)
    values = [rng.standard_normal(n).astype(np.float32) for n in (2500, 5000, 100)]
    errors: list[BaseException] = []
    reads = {"hit": 0, "miss": 0}
    stop = threading.Event()
    with RedisStore(redis_standalone.url, namespace=redis_namespace,
                    chunk_bytes=SMALL_CHUNK) as s:
        s.put("k", values[0])

        def writer(seed: int) -> None:
            pick = np.random.default_rng(seed)
            try:
                while not stop.is_set():
                    s.put("k", values[int(pick.integers(len(values)))])
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                while not stop.is_set():
                    got = s.get("k")
                    if got is None:
                        reads["miss"] += 1
                        continue
                    assert any(got.shape == v.shape and np.array_equal(got, v) for v in values)
                    reads["hit"] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        threads += [threading.Thread(target=reader) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert reads["hit"] > 10
        final = s.get("k")
        assert final is not None
        head = s.head("k")
        assert head is not None
        expected = 1 + head.chunk_count
        assert len(_namespace_keys(redis_standalone.client(), redis_namespace)) == expected


# -- timeouts and outages -------------------------------------------------------------------


def test_paused_server_get_returns_within_the_timeout(
        redis_factory: Callable[..., RedisServer], redis_namespace: str) -> None:
    server = redis_factory()
    value = np.random.default_rng(5).standard_normal(40_000).astype(np.float32)
    with RedisStore(server.url, namespace=redis_namespace, timeout_s=0.5,
                    chunk_bytes=SMALL_CHUNK) as s:
        s.put("k", value)
        assert_same(s.get("k"), value)  # leaves a pooled raw connection behind
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"timed out|Timeout"):
                s.get("k")
            assert time.monotonic() - started < 0.5 + 0.3
            started = time.monotonic()
            with pytest.raises(StoreError, match="unavailable"):  # back-off: fail at once
                s.get("k")
            assert time.monotonic() - started < 0.1
            time.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(StoreError):  # a put is bounded too (one redis-py round trip)
                s.put("other", value)
            assert time.monotonic() - started < 0.5 + 0.3
        finally:
            server.resume()
        assert s.failures >= 2
        assert_same(_eventually(lambda: s.get("k")), value)


def _eventually(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Call ``fn`` until it stops raising StoreError (back-off expiring), or fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_killed_and_restarted_server(redis_factory: Callable[..., RedisServer],
                                     redis_namespace: str) -> None:
    server = redis_factory()
    value = np.arange(50_000, dtype=np.int32)
    with RedisStore(server.url, namespace=redis_namespace, timeout_s=1.0,
                    chunk_bytes=SMALL_CHUNK) as s:
        s.put("k", value)
        assert_same(s.get("k"), value)
        server.kill()
        for op in (lambda: s.get("k"), lambda: s.info("k"), lambda: s.put("k", value),
                   lambda: s.delete("k"), lambda: list(s.keys()), lambda: "k" in s):
            started = time.monotonic()
            with pytest.raises(StoreError):
                op()
            assert time.monotonic() - started < 1.0
        server.start()  # same port, empty (no persistence)
        assert _eventually(lambda: s.get("k")) is None  # stale pooled connection replaced
        s.put("k", value)
        assert_same(s.get("k"), value)
        assert list(s.keys()) == ["k"]


def test_server_down_at_open_is_not_fatal(redis_namespace: str) -> None:
    port = free_port()
    with RedisStore(f"redis://127.0.0.1:{port}/0", namespace=redis_namespace,
                    timeout_s=0.5) as s, \
            pytest.raises(StoreError, match=rf"127\.0\.0\.1:{port}"):
        s.get("k")  # the constructor connected to nothing: only the first use fails


def test_closed_store_raises_cache_closed_error(redis_standalone: RedisServer,
                                                redis_namespace: str) -> None:
    s = RedisStore(redis_standalone.url, namespace=redis_namespace)
    s.put("k", np.array(1))
    s.close()
    for op in (lambda: s.get("k"), lambda: s.put("k", np.array(1)), lambda: s.delete("k"),
               lambda: s.info("k"), lambda: "k" in s, lambda: list(s.keys())):
        with pytest.raises(CacheClosedError, match="closed"):
            op()
    with RedisStore(redis_standalone.url, namespace=redis_namespace) as cleaner:
        cleaner.delete("k")


@pytest.mark.parametrize("raw_reads", [True, False])
def test_reads_racing_close_raise_cache_closed_never_a_miss(
        redis_standalone: RedisServer, redis_namespace: str, raw_reads: bool) -> None:
    value = np.arange(20_000, dtype=np.int32)
    s = RedisStore(redis_standalone.url, namespace=redis_namespace, chunk_bytes=SMALL_CHUNK,
                   raw_reads=raw_reads)
    s.put("k", value)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def reader() -> None:
        start.wait()
        for _ in range(2000):
            try:
                got = s.get("k")
                outcomes.append("right" if got is not None and np.array_equal(got, value)
                                else "WRONG OR MISS")
            except CacheClosedError:
                outcomes.append("closed")
                return
            except StoreError as exc:
                outcomes.append(f"StoreError: {exc}")
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(0.01)
    s.close()
    for t in threads:
        t.join(30)
    assert set(outcomes) <= {"right", "closed"}, [o for o in outcomes if o != "right"][:3]
    assert outcomes.count("closed") == 3
    with RedisStore(redis_standalone.url, namespace=redis_namespace) as cleaner:
        cleaner.delete("k")


# -- a server that refuses us: authentication, permissions, no such database ------------------


def _with_password(server: RedisServer, password: str) -> str:
    server.client().config_set("requirepass", password)
    return f"redis://:{password}@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("raw_reads", [True, False])
@pytest.mark.parametrize("case", ["wrong-password", "no-password", "no-such-db", "no-permission"])
def test_a_refusing_server_is_a_store_error_with_the_real_reason(
        redis_factory: Callable[..., RedisServer], redis_namespace: str, case: str,
        raw_reads: bool) -> None:
    """Every first call -- keys() at open, a get, a put -- says why the server refused us
    (it used to report an outage, or a put that fit no tier)."""
    server = redis_factory()
    good = _with_password(server, "sekret")
    url, reason = {
        "wrong-password": (good.replace("sekret", "wrong"),
                           "authentication failed .*check the user name and password"),
        "no-password": (f"redis://127.0.0.1:{server.port}/0",
                        "authentication failed .*requires a password and the url gives none"),
        "no-such-db": (good[:-1] + "99", "no such database .*DB index is out of range"),
        "no-permission": (f"redis://reader:pw@127.0.0.1:{server.port}/0",
                          "permission denied .*(NOPERM|no permissions)"),
    }[case]
    admin = redis.Redis(host="127.0.0.1", port=server.port, password="sekret")
    admin.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["other:*"],
                      commands=["+@all"])
    value = np.arange(100, dtype=np.int32)
    with RedisStore(good, namespace=redis_namespace) as writer:
        writer.put("k", value)  # so that keys() has a head to read
    for op in (lambda s: list(s.keys()), lambda s: s.get("k"), lambda s: s.put("k", value),
               lambda s: "k" in s):
        with RedisStore(url, namespace=redis_namespace, raw_reads=raw_reads) as s, \
                pytest.raises(StoreError, match="refused: " + reason) as info:
            op(s)
        assert "sekret" not in str(info.value)  # the password never reaches a message
        assert not isinstance(info.value, CorruptShardError)
    with RedisStore(url, namespace=redis_namespace, raw_reads=raw_reads) as s:
        with pytest.raises(StoreError, match="refused: " + reason):
            s.get("k")
        with pytest.raises(StoreError, match="refused: " + reason + ".*next try in"):
            s.get("k")  # in back-off: fails at once, still with the reason
    admin.close()


def test_a_refused_store_recovers_once_the_password_is_fixed(
        redis_factory: Callable[..., RedisServer], redis_namespace: str) -> None:
    server = redis_factory()
    url = _with_password(server, "sekret")
    admin = redis.Redis(host="127.0.0.1", port=server.port, password="sekret")
    admin.config_set("requirepass", "other")
    value = np.arange(100, dtype=np.int32)
    with RedisStore(url, namespace=redis_namespace) as s:
        with pytest.raises(StoreError, match="authentication failed"):
            s.put("k", value)
        redis.Redis(host="127.0.0.1", port=server.port, password="other").config_set(
            "requirepass", "sekret")
        assert _eventually(lambda: s.put("k", value)) == s.stored_size(value)
        assert_same(s.get("k"), value)
        assert list(s.keys()) == ["k"]
    admin.close()


# -- cluster ----------------------------------------------------------------------------------


def test_cluster_spreads_shards_and_keeps_each_in_one_slot(
        redis_cluster: list[RedisServer], redis_namespace: str) -> None:
    rng = np.random.default_rng(6)
    arrays = {f"layer.{i}.weight": rng.standard_normal(int(rng.integers(10, 4000)))
              .astype(np.float32) for i in range(40)}
    nodes = [n.node for n in redis_cluster]
    with RedisStore(cluster_nodes=nodes[:1], namespace=redis_namespace,
                    chunk_bytes=SMALL_CHUNK) as writer:
        for key, array in arrays.items():
            writer.put(key, array)
    per_node = []
    for node in redis_cluster:
        keys = _namespace_keys(node.client(), redis_namespace)
        per_node.append(keys)
        tags = {k.split(b"}")[0] for k in keys}
        heads = {k.split(b"}")[0] for k in keys if k.endswith(b":h")}
        assert tags == heads  # every chunk lives on the node of its head
    assert sum(1 for keys in per_node if keys) == 3  # the shards spread over all nodes
    with RedisStore(cluster_nodes=nodes[2:], namespace=redis_namespace) as reader:
        assert sorted(reader.keys()) == sorted(arrays)
        for key, array in arrays.items():
            assert_same(reader.get(key), array)
        for key in arrays:
            assert reader.delete(key)
    assert all(_namespace_keys(n.client(), redis_namespace) == [] for n in redis_cluster)


def test_cluster_redirect_falls_back_to_redis_py(redis_cluster: list[RedisServer],
                                                 redis_namespace: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw read sent to the wrong node gets MOVED; redis-py then serves it."""
    value = np.arange(20_000, dtype=np.float64)
    with RedisStore(cluster_nodes=[redis_cluster[0].node], namespace=redis_namespace,
                    chunk_bytes=SMALL_CHUNK) as s:
        s.put("k", value)
        client: Any = s.client
        right = client.get_node_from_key(s.names("k").head)
        wrong = next(n for n in client.get_primaries() if n.port != right.port)
        monkeypatch.setattr(client, "get_node_from_key", lambda *_a, **_k: wrong)
        assert_same(s.get("k"), value)
        s.delete("k")
