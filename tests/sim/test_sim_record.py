"""Recording a real cache's accesses (``record_trace``) and replaying them."""

from __future__ import annotations

import collections
import random
import threading
from pathlib import Path

import numpy as np
import pytest

import tiercache
from tiercache.config import load_config
from tiercache.core.recording import TraceRecorder
from tiercache.errors import ConfigError
from tiercache.origins import NpyDirOrigin
from tiercache.sim import Trace, read_trace, simulate
from tiercache.stores.memory import shard_cost_nbytes


def origin_with(root: Path, sizes: dict[str, int]) -> Path:
    NpyDirOrigin.write(root, {k: np.zeros(n, np.uint8) for k, n in sizes.items()})
    return root


def single_tier(tmp_path: Path, capacity: int | str, origin: Path) -> dict[str, object]:
    return {"record_trace": str(tmp_path / "trace.csv"),
            "tiers": [{"name": "ram", "backend": "memory", "capacity": capacity,
                       "policy": "lru"}],
            "origin": {"kind": "npy", "path": str(origin)}}


def zipf_requests(keys: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 0.8 for i in range(len(keys))]
    return rng.choices(keys, weights=weights, k=n)


def test_record_then_replay_gives_the_tiers_own_hits_in_bytes(tmp_path: Path) -> None:
    rng = random.Random(0)
    sizes = {f"layer.{i}/w,\"q\"é": rng.randrange(1, 20) * 1000 for i in range(60)}
    origin = origin_with(tmp_path / "origin", sizes)
    requests = zipf_requests(list(sizes), 3000, seed=1)
    with tiercache.open(single_tier(tmp_path, 150_000, origin)) as cache:
        for key in requests:
            cache.get(key)
        stats = cache.stats()["tiers"]["ram"]
    trace = read_trace(tmp_path / "trace.csv")
    assert [trace.key_name(k) for k in trace.keys.tolist()] == requests
    assert trace.sizes is not None
    assert trace.sizes.tolist() == [sizes[k] for k in requests]
    # the trace holds each shard's nbytes; the RAM tier charges what it really costs
    charged = Trace(trace.keys, np.array([shard_cost_nbytes(n) for n in trace.sizes.tolist()]),
                    trace.names)
    result = simulate(charged, "lru", 150_000, "bytes")[0]
    assert 0 < stats["hits"] < len(requests)
    assert result.hits == stats["hits"]
    assert result.requests - result.hits == stats["misses"]


def test_record_then_replay_in_count_mode(tmp_path: Path) -> None:
    sizes = {f"k{i}": 4096 for i in range(50)}
    origin = origin_with(tmp_path / "origin", sizes)
    with tiercache.open(single_tier(tmp_path, 12 * shard_cost_nbytes(4096), origin)) as cache:
        for key in zipf_requests(list(sizes), 2000, seed=2):
            cache.get(key)
        hits = cache.stats()["tiers"]["ram"]["hits"]
    assert simulate(tmp_path / "trace.csv", "lru", 12)[0].hits == hits > 0


def test_only_served_gets_are_recorded_and_rows_wait_for_close(tmp_path: Path) -> None:
    origin = origin_with(tmp_path / "origin", {"a": 10, "b": 20})
    cache = tiercache.open(single_tier(tmp_path, 1000, origin))
    try:
        cache.get("a")
        assert cache.get("missing", None) is None
        cache.get("b")
        cache.get("a", out=np.empty(10, np.uint8))
        assert (tmp_path / "trace.csv").read_text() == "key,size\n"  # buffered
    finally:
        cache.close()
    assert (tmp_path / "trace.csv").read_text() == "key,size\na,10\nb,20\na,10\n"


def test_recorder_is_thread_safe(tmp_path: Path) -> None:
    recorder = TraceRecorder(tmp_path / "t.csv", buffer_rows=7)
    per_thread = 2000

    def work(tid: int) -> None:
        for i in range(per_thread):
            recorder.record(f"t{tid}-{i % 13}", i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorder.close()
    recorder.record("after-close", 1)  # ignored
    trace = read_trace(tmp_path / "t.csv")
    assert len(trace) == 4 * per_thread
    counts = collections.Counter(trace.key_name(k) for k in trace.keys.tolist())
    assert counts == {f"t{t}-{j}": len(range(j, per_thread, 13)) for t in range(4)
                      for j in range(13)}


def test_concurrent_gets_are_all_recorded(tmp_path: Path) -> None:
    sizes = {f"k{i}": 100 for i in range(30)}
    origin = origin_with(tmp_path / "origin", sizes)
    with tiercache.open(single_tier(tmp_path, 10 * shard_cost_nbytes(100), origin)) as cache:
        def work(seed: int) -> None:
            for key in zipf_requests(list(sizes), 300, seed):
                cache.get(key)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = cache.stats()["tiers"]["ram"]
    assert len(read_trace(tmp_path / "trace.csv")) == 1200 == stats["hits"] + stats["misses"]
    assert stats["hits"] > 0


def test_record_trace_config(tmp_path: Path) -> None:
    tiers = [{"name": "ram", "backend": "memory", "capacity": "1MiB"}]
    toml = tmp_path / "conf" / "tiers.toml"
    toml.parent.mkdir()
    toml.write_text('record_trace = "runs/today.csv"\n[[tiers]]\nname = "ram"\n'
                    'backend = "memory"\ncapacity = "1MiB"\n')
    cfg = load_config(toml)
    assert cfg.record_trace == tmp_path / "conf" / "runs" / "today.csv"
    assert not (tmp_path / "conf" / "runs").exists()  # validation creates nothing
    assert load_config({"tiers": tiers}).record_trace is None
    for bad, match in ((3, "must be the path of a CSV file"), ("", "must be the path"),
                       (str(tmp_path), "is a folder")):
        with pytest.raises(ConfigError, match=match) as info:
            load_config({"tiers": tiers, "record_trace": bad})
        assert info.value.key == "record_trace"
    disk = [*tiers, {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"),
                     "capacity": "1MiB"}]
    with pytest.raises(ConfigError, match=r"inside the folder of tier.*ssd"):
        load_config({"tiers": disk, "record_trace": str(tmp_path / "ssd" / "t.csv")})
    with tiercache.open(toml) as cache:
        cache.put("x", np.ones(3, np.float32))
        cache.get("x")
    assert read_trace(tmp_path / "conf" / "runs" / "today.csv").names == ["x"]
