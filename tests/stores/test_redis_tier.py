"""A Redis tier inside TieredCache, against real redis-server processes: TOML config,
eviction by Redis itself (maxmemory), a server killed, restarted or paused mid-run, two
processes sharing the tier (standalone and cluster), and the engine's repair of an index
entry whose shard the medium lost (any persistent tier)."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import shard
from redis_fixtures import RedisServer, free_port

import tiercache
from tiercache.origins import NpyDirOrigin
from tiercache.stores.redis import RedisStore

pytestmark = pytest.mark.redis

KEYS = [f"blk.{i}.weight" for i in range(30)]


def _arrays(n: int = len(KEYS), nbytes: int = 16 * 1024) -> dict[str, np.ndarray]:
    return {KEYS[i] if i < len(KEYS) else f"k{i}": shard(i, nbytes) for i in range(n)}


def _redis_tier(location: dict[str, Any], namespace: str, *, capacity: str = "1GiB",
                **extra: Any) -> dict[str, Any]:
    return {"name": "redis", "backend": "redis", "capacity": capacity, "namespace": namespace,
            "chunk_size": "4KiB", **location, **extra}


def _config(tiers: list[dict[str, Any]], origin: Path | None = None,
            mode: str = "exclusive") -> dict[str, Any]:
    cfg: dict[str, Any] = {"mode": mode, "tiers": tiers}
    if origin is not None:
        cfg["origin"] = {"kind": "npy", "path": str(origin)}
    return cfg


def _same(a: Any, b: np.ndarray) -> bool:
    return isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and \
        np.array_equal(a, b)


# -- configuration ----------------------------------------------------------------------


def test_redis_tier_from_toml(redis_standalone: RedisServer, redis_namespace: str,
                              tmp_path: Path) -> None:
    toml = tmp_path / "tiers.toml"
    toml.write_text(f"""
mode = "inclusive"
[[tiers]]
name = "ram"
backend = "memory"
capacity = "64KiB"
[[tiers]]
name = "shared"
backend = "redis"
url = "{redis_standalone.url}"
namespace = "{redis_namespace}"
timeout = 2.5
chunk_size = "8KiB"
capacity = "64MiB"
""")
    arrays = _arrays(8)
    with tiercache.open(toml) as cache:
        tier = cache.tier("shared")
        assert isinstance(tier.store, RedisStore)
        assert (tier.store.namespace, tier.store.timeout_s, tier.store.chunk_bytes) == \
            (redis_namespace, 2.5, 8192)
        for key, array in arrays.items():
            cache.put(key, array, tier="shared")
        assert cache.stats()["tiers"]["shared"]["backend"] == "redis"
    with tiercache.open(toml) as again:  # a new process would see the same: indexed at start
        assert sorted(again.tier("shared").keys()) == sorted(arrays)
        for key, array in arrays.items():
            assert _same(again.get(key), array)
        for key in arrays:
            again.delete(key)


# -- Redis evicts on its own ---------------------------------------------------------------


@pytest.mark.parametrize("with_origin", [False, True], ids=["no-origin", "origin"])
def test_maxmemory_eviction_is_a_miss_and_accounting_stays_honest(
        redis_factory: Callable[..., RedisServer], redis_namespace: str, tmp_path: Path,
        with_origin: bool) -> None:
    server = redis_factory("--maxmemory", "6mb", "--maxmemory-policy", "allkeys-lru",
                           "--maxmemory-samples", "3")
    arrays = {f"k{i}": shard(i, 256 * 1024) for i in range(48)}  # 12 MiB: twice maxmemory
    origin = tmp_path / "origin" if with_origin else None
    if origin is not None:
        NpyDirOrigin.write(origin, arrays)
    cfg = _config([_redis_tier({"url": server.url}, redis_namespace, chunk_size="64KiB")],
                  origin)
    with tiercache.open(cfg) as cache:
        for key, array in arrays.items():
            cache.put(key, array)
        tier = cache.tier("redis")
        assert len(tier) == len(arrays)  # the tier's own capacity never evicted anything
        assert int(server.info("stats")["evicted_keys"]) > 0  # but Redis did
        served = {key: cache.get(key, default=None) for key in arrays}
        for key, got in served.items():
            assert got is None or _same(got, arrays[key]), f"wrong bytes for {key}"
        stats = cache.stats()["tiers"]["redis"]
        assert stats["lost"] > 0, "maxmemory should have evicted some shards"
        if with_origin:
            assert all(got is not None for got in served.values())
            assert cache.stats()["origin"]["hits"] == stats["lost"] > 0
        else:
            assert sum(got is None for got in served.values()) == stats["lost"] > 0
        store = tier.store
        if not with_origin:  # no writes since the pass: the index is exactly what is left
            for key in tier.keys():
                info = store.info(key)
                assert info is not None and info.stored_nbytes == tier.size_of(key)
                assert _same(store.get(key), arrays[key])
        else:  # re-admissions made Redis evict more: each loss is learnt on the next read
            gone = [k for k in tier.keys() if k not in store]
            for key in gone:
                assert _same(cache.get(key), arrays[key])
            assert cache.stats()["tiers"]["redis"]["lost"] == stats["lost"] + len(gone)
        assert tier.used_bytes == sum(tier.size_of(k) for k in tier.keys())
        stats = cache.stats()["tiers"]["redis"]
        assert stats["resident_bytes"] == tier.used_bytes
        cache.check_invariants()


# -- the server goes away ----------------------------------------------------------------------


def _three_level(server: RedisServer, namespace: str, origin: Path,
                 timeout: float = 0.5) -> dict[str, Any]:
    return _config([
        {"name": "ram", "backend": "memory", "capacity": "64KiB"},
        _redis_tier({"url": server.url}, namespace, capacity="64MiB", timeout=timeout),
    ], origin)


def test_killed_server_cache_serves_from_origin_then_reconnects(
        redis_factory: Callable[..., RedisServer], redis_namespace: str,
        tmp_path: Path) -> None:
    server = redis_factory()
    arrays = _arrays()
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    with tiercache.open(_three_level(server, redis_namespace, tmp_path / "origin")) as cache:
        for key in arrays:  # RAM holds 4 shards; the rest is demoted into Redis
            cache.get(key)
        redis_tier = cache.tier("redis")
        # the tier's own write-retry back-off (degraded state, up to 60 s by default) would
        # outlast this test; the store's reconnect back-off (<= 2 s) is what is tested here
        redis_tier.retry_backoff_max_s = 0.5
        assert len(redis_tier) > 10
        server.kill()
        slowest = 0.0
        for _ in range(2):
            for key, array in arrays.items():
                started = time.monotonic()
                assert _same(cache.get(key), array)
                slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.5 + 0.5  # never waits much past the timeout
        errors = cache.stats()["tiers"]["redis"]["errors"]
        assert errors > 0
        cache.check_invariants()

        server.start()  # same port, empty: the index's entries are now stale
        hits_before = cache.stats()["tiers"]["redis"]["hits"]
        deadline = time.monotonic() + 10
        while cache.stats()["tiers"]["redis"]["hits"] == hits_before:
            assert time.monotonic() < deadline, "the Redis tier never served again"
            for key, array in arrays.items():
                assert _same(cache.get(key), array)
        for key, array in arrays.items():  # one more pass reads every stale entry once
            assert _same(cache.get(key), array)
        cache.check_invariants()
        assert cache.stats()["tiers"]["redis"]["lost"] > 0  # stale entries were forgotten
        for key in redis_tier.keys():  # what the index lists is really there again
            assert key in redis_tier.store


def test_paused_server_get_is_served_below_within_the_timeout(
        redis_factory: Callable[..., RedisServer], redis_namespace: str,
        tmp_path: Path) -> None:
    server = redis_factory()
    arrays = _arrays()
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    with tiercache.open(_three_level(server, redis_namespace, tmp_path / "origin",
                                     timeout=0.4)) as cache:
        for key in arrays:
            cache.get(key)
        in_redis = [k for k in arrays if cache.where(k) == ["redis"]]
        assert in_redis
        server.pause()
        try:
            started = time.monotonic()
            assert _same(cache.get(in_redis[0]), arrays[in_redis[0]])
            assert time.monotonic() - started < 0.4 + 0.4
            for key in in_redis[1:5]:  # back-off: the next ones do not wait at all
                started = time.monotonic()
                assert _same(cache.get(key), arrays[key])
                assert time.monotonic() - started < 0.2
            assert cache.stats()["tiers"]["redis"]["errors"] >= 2
        finally:
            server.resume()


def test_server_down_when_the_cache_opens(redis_namespace: str, tmp_path: Path) -> None:
    arrays = _arrays(5)
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    dead = RedisServer(tmp_path / "never-started", port=free_port())
    with tiercache.open(_three_level(dead, redis_namespace, tmp_path / "origin")) as cache:
        assert cache.stats()["tiers"]["redis"]["errors"] >= 1  # listing failed, not fatal
        for key, array in arrays.items():
            assert _same(cache.get(key), array)


def test_a_wrong_password_degrades_the_tier_with_the_auth_error(
        redis_factory: Callable[..., RedisServer], redis_namespace: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A wrong password is said at open (listing the shared store fails with it) and is
    the tier's degraded reason -- not an outage, not a put that 'fits no tier'."""
    server = redis_factory()
    server.client().config_set("requirepass", "sekret")
    arrays = _arrays(4)
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    cfg = _config([
        {"name": "ram", "backend": "memory", "capacity": "64KiB"},
        _redis_tier({"url": url}, redis_namespace, capacity="64MiB"),
        {"name": "disk", "backend": "diskcache", "path": str(tmp_path / "disk"),
         "capacity": "64MiB"}], tmp_path / "origin")
    with caplog.at_level(logging.WARNING, logger="tiercache"), tiercache.open(cfg) as cache:
        assert "refused: authentication failed (invalid username-password pair" in caplog.text
        for key, array in arrays.items():
            cache.put(key, array, tier="redis")  # lands on the disk tier below
            assert _same(cache.get(key), array)
        redis_stats = cache.stats()["tiers"]["redis"]
        assert redis_stats["degraded"]
        reason = redis_stats["degraded_reason"]
        assert "authentication failed" in reason and "check the user name and password" in \
            reason, reason
        assert "unavailable" not in reason and "wrong" not in reason, reason


# -- sharing between processes ----------------------------------------------------------------


def _reader_process(cfg: dict[str, Any], keys: list[str], ready: Any, go: Any,
                    results: Any) -> None:
    """Open the cache *before* the writer puts anything, then read every key."""
    with tiercache.open(cfg) as cache:
        ready.set()
        if not go.wait(60):
            results.put(("error", "no go"))
            return
        found = {}
        for key in keys:
            got = cache.get(key, default=None)
            found[key] = None if got is None else got.tobytes()
        results.put(("ok", found, cache.stats()["tiers"]["redis"]["hits"]))


def _writer_process(cfg: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    with tiercache.open(cfg) as cache:
        for key, array in arrays.items():
            cache.put(key, array, tier="redis")


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_two_processes_share_the_redis_tier(request: pytest.FixtureRequest, topology: str,
                                            redis_namespace: str) -> None:
    if topology == "cluster":
        nodes: list[RedisServer] = request.getfixturevalue("redis_cluster")
        location: dict[str, Any] = {"cluster_nodes": [n.node for n in nodes]}
    else:
        server: RedisServer = request.getfixturevalue("redis_standalone")
        location = {"url": server.url}
    cfg = _config([{"name": "ram", "backend": "memory", "capacity": "1MiB"},
                   _redis_tier(location, redis_namespace, capacity="64MiB")],
                  mode="inclusive")
    arrays = {f"layer.{i}.w": shard(100 + i, 20_000) for i in range(24)}
    spawn = multiprocessing.get_context("spawn")
    ready, go, results = spawn.Event(), spawn.Event(), spawn.Queue()
    reader = spawn.Process(target=_reader_process,
                           args=(cfg, list(arrays), ready, go, results))
    reader.start()
    try:
        assert ready.wait(60), "the reader process did not open its cache"
        writer = spawn.Process(target=_writer_process, args=(cfg, arrays))
        writer.start()
        writer.join(60)
        assert writer.exitcode == 0
        go.set()
        outcome = results.get(timeout=60)
    finally:
        reader.join(30)
        if reader.is_alive():
            reader.kill()
    assert outcome[0] == "ok", outcome
    _status, found, redis_hits = outcome
    for key, array in arrays.items():
        assert found[key] == array.tobytes(), f"{key} not served to the other process"
    assert redis_hits == len(arrays)  # all from Redis (there is no origin)
    with RedisStore(**location, namespace=redis_namespace) as store:
        if topology == "cluster":  # the shards really live in several slots and nodes
            client: Any = store.client  # get_node_from_key is untyped in redis-py
            nodes_used = {client.get_node_from_key(store.names(k).head).port for k in arrays}
            assert len(nodes_used) >= 2
        for key in arrays:
            store.delete(key)


def test_shared_tier_found_on_index_miss_in_one_process(
        redis_standalone: RedisServer, redis_namespace: str) -> None:
    def config(capacity: str) -> dict[str, Any]:
        return _config([{"name": "ram", "backend": "memory", "capacity": "64KiB"},
                        _redis_tier({"url": redis_standalone.url}, redis_namespace,
                                    capacity=capacity)], mode="inclusive")

    cfg = config("40KiB")
    arrays = _arrays(6)  # 16 KiB each: the second cache's tier indexes only two
    with tiercache.open(config("1GiB")) as first, tiercache.open(cfg) as second:
        for key, array in arrays.items():
            first.put(key, array, tier="redis")
        assert len(second.tier("redis")) == 0
        for key, array in arrays.items():
            assert _same(second.get(key), array)
        tier = second.tier("redis")
        assert len(tier) == 2 and tier.used_bytes <= tier.capacity_bytes
        assert second.stats()["tiers"]["redis"]["hits"] == len(arrays)
        second.check_invariants()
    with tiercache.open(cfg) as third:  # indexing at start never deletes others' shards
        assert len(third.tier("redis")) == 2
        assert sorted(third.tier("redis").store.keys()) == sorted(arrays)
        for key in arrays:
            third.tier("redis").store.delete(key)


# -- the engine repairs an index entry the medium lost (any persistent tier) ---------------------


def test_lost_shard_is_dropped_from_the_index(tmp_path: Path) -> None:
    cfg = _config([{"name": "ram", "backend": "memory", "capacity": "64KiB"},
                   {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"),
                    "capacity": "1MiB"}])
    with tiercache.open(cfg) as cache:
        cache.put("a", shard(1), tier="ssd")
        cache.put("b", shard(2), tier="ssd")
        ssd = cache.tier("ssd")
        assert ssd.store.delete("a")  # gone behind the engine's back (like a Redis eviction)
        assert cache.get("a", default=None) is None
        assert "a" not in ssd and ssd.used_bytes == ssd.size_of("b")
        assert cache.stats()["tiers"]["ssd"]["lost"] == 1
        assert _same(cache.get("b"), shard(2))
        cache.check_invariants()
