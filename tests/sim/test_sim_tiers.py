"""Multi-tier simulation: the engine's own decisions on metadata-only stores and a
virtual clock. The strongest check: a real three-tier cache (memory / lmdb /
diskcache, on disk) and the simulation of its recorded trace end with the same
counters and residency in every tier, in both modes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.errors import ConfigError, SimulationError
from tiercache.origins import NpyDirOrigin
from tiercache.sim import TierModel, Trace, read_trace, simulate_tiers
from tiercache.sim.tiers import SimStore, phantom, sim_store_class

COUNTERS = ("hits", "misses", "evictions", "promotions_in", "promotions_out", "demotions_in",
            "demotions_out", "dropped", "skipped_too_large", "bytes_read", "bytes_written",
            "resident_count", "resident_bytes")


def make_origin(root: Path, n: int = 40, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    sizes = {f"blk.{i}.w": rng.choice([1, 2, 3, 5, 8, 13]) * 1024 for i in range(n)}
    sizes["huge"] = 300 * 1024  # larger than RAM and SSD: skips them
    NpyDirOrigin.write(root, {k: np.full(s, i % 251, np.uint8)
                              for i, (k, s) in enumerate(sizes.items())})
    return sizes


def layout(root: Path, mode: str, origin: Path) -> dict[str, Any]:
    return {
        "mode": mode,
        "tiers": [
            {"name": "ram", "backend": "memory", "capacity": "24KiB", "policy": "arc"},
            {"name": "ssd", "backend": "lmdb", "path": str(root / "ssd"), "capacity": "64KiB",
             "policy": "lru", "promote_after": 2},
            {"name": "hdd", "backend": "diskcache", "path": str(root / "hdd"),
             "capacity": "400KiB", "policy": "lfu", "promote_after": 3},
        ],
        "origin": {"kind": "npy", "path": str(origin)},
    }


def workload(keys: list[str], n: int, seed: int) -> list[str]:
    """Layer-by-layer passes with a skewed hot set mixed in."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        if rng.random() < 0.5:
            out.extend(keys[: rng.randrange(5, len(keys))])
        else:
            hot = rng.sample(keys, 6)
            out.extend(rng.choice(hot) for _ in range(rng.randrange(10, 60)))
    return out[:n]


@pytest.mark.parametrize("mode", ["exclusive", "inclusive"])
@pytest.mark.slow
def test_simulation_equals_a_real_run(tmp_path: Path, mode: str) -> None:
    origin = tmp_path / "origin"
    sizes = make_origin(origin)
    real_root = tmp_path / "real"
    cfg = layout(real_root, mode, origin)
    cfg["record_trace"] = str(tmp_path / "run.csv")
    requests = workload(list(sizes), 1200, seed=1)
    with tiercache.open(cfg) as cache:
        for key in requests:
            cache.get(key)
        real = cache.stats()
        cache.check_invariants()
    trace = read_trace(tmp_path / "run.csv")
    assert len(trace) == len(requests)
    sim_root = tmp_path / "sim"
    result = simulate_tiers(trace, layout(sim_root, mode, origin))
    assert not sim_root.exists(), "the simulation created folders"
    for name in ("ram", "ssd", "hdd"):
        want = {k: real["tiers"][name][k] for k in COUNTERS}
        got = {k: getattr(result.tier(name), k) for k in COUNTERS}
        assert got == want, name
    assert result.origin.hits == real["origin"]["hits"]
    assert sum(t.hits for t in result.tiers) + result.origin.hits == len(requests)
    # the workload exercised every mechanism
    assert all(real["tiers"][t]["hits"] > 0 for t in ("ram", "ssd", "hdd"))
    assert real["tiers"]["ssd"]["promotions_out"] > 0 and real["tiers"]["ram"]["evictions"] > 0
    assert real["tiers"]["ram"]["skipped_too_large"] > 0


def test_virtual_time_follows_the_model(tmp_path: Path) -> None:
    mib = 2**20
    trace = Trace.from_keys(["a", "a", "b", "a"], [mib, mib, 2 * mib, mib])
    models = {
        "memory": TierModel(read_latency_s=1e-6, read_bytes_per_s=1e10, write_latency_s=2e-6,
                            write_bytes_per_s=1e9, zero_copy_reads=True),
        "origin": {"read_latency_s": "1ms", "read_bytes_per_s": "1GiB"},
    }
    # room for b (2 MiB plus the RAM tier's per-shard overhead), not for a and b
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": 2 * mib + 8192}]}
    r = simulate_tiers(trace, cfg, models=models, overhead_s=1e-7)
    origin_read = 1e-3 + mib / 2**30
    # a: origin read + adopted at the top (no copy: write latency only)
    # a: RAM hit, zero-copy: read latency only
    # b (2 MiB): evicts a (no tier below: dropped), origin read, adopted
    # a: origin again
    want = [origin_read + 2e-6, 1e-6, 1e-3 + 2 * mib / 2**30 + 2e-6, origin_read + 2e-6]
    assert r.request_s.tolist() == pytest.approx([w + 1e-7 for w in want])
    assert r.total_s == pytest.approx(sum(want) + 4e-7)
    assert (r.tier("ram").hits, r.origin.hits, r.tier("ram").dropped) == (1, 3, 2)
    assert r.tier("ram").share == 0.25 and r.origin.share == 0.75


def test_disk_tier_costs_and_overrides_by_tier_name(tmp_path: Path) -> None:
    trace = Trace.from_keys(["x", "y", "x", "x"], [1000, 1000, 1000, 1000])
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": 1000},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "1MiB",
         "promote_after": "never"}]}
    slow = simulate_tiers(trace, cfg, models={"ssd": {"read_latency_s": 0.5}})
    fast = simulate_tiers(trace, cfg)
    # x is demoted to the SSD by y; the third request reads it there (never promoted)
    assert slow.tier("ssd").hits == fast.tier("ssd").hits == 2
    assert slow.total_s - fast.total_s == pytest.approx(2 * (0.5 - 100e-6))
    assert slow.tier("ssd").busy_s > 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        simulate_tiers(trace, cfg, models={"ssd": {"latency": 1}})
    with pytest.raises(ConfigError, match="time must be >= 0"):
        simulate_tiers(trace, cfg, models={"lmdb": {"read_latency_s": -1}})


def test_needs_sizes_or_an_object_size() -> None:
    trace = Trace(np.array([1, 2, 1]))
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}]}
    with pytest.raises(SimulationError, match="no sizes"):
        simulate_tiers(trace, cfg)
    r = simulate_tiers(trace, cfg, object_size="256KiB")
    assert r.tier("ram").hits == 1 and r.tier("ram").bytes_read == 256 * 1024


def test_stand_in_store_and_phantom_arrays() -> None:
    a = phantom(10 * 2**30)  # 10 GiB that take no memory
    assert a.nbytes == 10 * 2**30 and not a.flags.writeable
    assert phantom(64, np.dtype(np.float32), (4, 4)).shape == (4, 4)
    cls = sim_store_class("lmdb")
    assert issubclass(cls, SimStore) and cls.persistent and cls.backend == "lmdb"
    assert not sim_store_class("memory").persistent
    from tiercache.codec import stored_nbytes
    from tiercache.sim.tiers import DEFAULT_MODELS, VirtualClock

    store = cls("ssd", DEFAULT_MODELS["lmdb"], VirtualClock())
    arr = phantom(5000)
    assert store.put("k", arr) == stored_nbytes(arr) == store.stored_size(arr)
    info = store.info("k")
    assert info is not None and info.stored_nbytes == stored_nbytes(arr)
    got = store.get("k")
    assert got is not None and got.nbytes == 5000
    assert store.delete("k") and store.get("k") is None
