"""A tier's share for KV blocks (``kv_capacity``, issue 15): parsed from the config, enforced
by the tier whatever its policy, counted in stats, restored on reopen, and honoured by the
policy lab when it replays a mixed weights + KV trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.cli import main
from tiercache.config import load_config
from tiercache.errors import ConfigError
from tiercache.keyspace import KV_PREFIX, is_kv_key

KIB = 1024


def _config(tmp_path: Path, kv_capacity: Any = "280KiB", policy: str = "lru") -> dict[str, Any]:
    ram: dict[str, Any] = {"name": "ram", "backend": "memory", "capacity": "1200KiB",
                           "policy": policy}
    if kv_capacity is not None:
        ram["kv_capacity"] = kv_capacity
    return {"tiers": [ram, {"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"),
                            "capacity": "16MiB"}]}


def test_kv_capacity_is_a_size_or_a_share_of_the_tier(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "30%")).tiers[0].kv_capacity_bytes == int(0.3 * 1200 * KIB)
    assert load_config(_config(tmp_path, "64KiB")).tiers[0].kv_capacity_bytes == 64 * KIB
    assert load_config(_config(tmp_path, 0)).tiers[0].kv_capacity_bytes == 0
    assert load_config(_config(tmp_path, None)).tiers[0].kv_capacity_bytes is None


@pytest.mark.parametrize(("value", "message"), [
    ("2MiB", "more than the tier's capacity"),
    ("-1", "tiers[0] (ram).kv_capacity"),
    ("lots", "tiers[0] (ram).kv_capacity"),
    ("150%", "percentage must be in (0%, 100%]"),
    (True, "tiers[0] (ram).kv_capacity"),
])
def test_bad_kv_capacity_names_the_key(tmp_path: Path, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, value))
    assert message in str(info.value) and "kv_capacity" in str(info.value)


def _shard(i: int, nbytes: int = 64 * KIB) -> np.ndarray:
    return np.full(nbytes // 4, i, dtype=np.float32)


@pytest.mark.parametrize("policy", ["lru", "lfu", "arc", "fifo"])
def test_kv_blocks_never_take_more_than_their_share(tmp_path: Path, policy: str) -> None:
    weights = [f"blk.{i}.weight" for i in range(12)]  # 768 KiB: fit the RAM tier
    kv = [f"{KV_PREFIX}model/{i:04x}" for i in range(10)]  # 640 KiB of blocks
    with tiercache.open(_config(tmp_path, policy=policy)) as cache:
        for i, key in enumerate(weights):
            cache.put(key, _shard(i))
        for i, key in enumerate(kv):
            cache.put(key, _shard(100 + i))
            ram = cache.tier("ram")
            assert ram.kv.bytes <= 280 * KIB
            ram.check_invariants()
        ram = cache.tier("ram")
        assert set(weights) <= set(ram.keys())  # the weights kept their share
        assert len(ram.kv) == 4 and {k for k in ram.keys() if is_kv_key(k)} == set(kv[-4:])
        assert all(np.array_equal(cache.get(k), _shard(100 + i)) for i, k in enumerate(kv))
        stats = cache.stats()["tiers"]
        assert stats["ram"]["kv_bytes"] <= stats["ram"]["kv_capacity_bytes"] == 280 * KIB
        assert stats["ssd"]["kv_blocks"] >= 6 and stats["ssd"]["kv_capacity_bytes"] is None
    with tiercache.open(_config(tmp_path, policy=policy)) as cache:  # reopened: counted again
        ssd = cache.tier("ssd")
        assert len(ssd.kv) >= 6 and ssd.kv.bytes >= len(ssd.kv) * 64 * KIB
        ssd.check_invariants()


def test_a_zero_share_keeps_kv_out_of_the_tier(tmp_path: Path) -> None:
    with tiercache.open(_config(tmp_path, kv_capacity=0)) as cache:
        cache.put("w", _shard(1))
        cache.put(f"{KV_PREFIX}m/1", _shard(2))
        for _ in range(3):  # hits below never promote a block into a tier it cannot enter
            assert np.array_equal(cache.get(f"{KV_PREFIX}m/1"), _shard(2))
        assert f"{KV_PREFIX}m/1" not in cache.tier("ram") and "w" in cache.tier("ram")
        assert f"{KV_PREFIX}m/1" in cache.tier("ssd")


def test_the_policy_lab_replays_a_mixed_trace_with_the_kv_share(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """8 weight shards read in a loop, and between them a stream of KV blocks read once:
    an LRU RAM tier of 10 shards (each costs 2,087 bytes in a memory tier) without a KV
    share lets the blocks push the weights out; with a share of 2 blocks the weights stay
    and hit."""
    lines = []
    for i in range(400):
        lines.append(f"w{i % 8},1000")
        lines.append(f"{KV_PREFIX}m/{i},1000")
    trace = tmp_path / "mixed.csv"
    trace.write_text("key,size\n" + "\n".join(lines) + "\n")
    results = {}
    for share in (None, "4200"):
        toml = tmp_path / f"tiers-{share}.toml"
        kv = f"kv_capacity = {share}\n" if share else ""
        toml.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "21000"\n'
                        f'policy = "lru"\n{kv}'
                        '[[tiers]]\nname = "ssd"\nbackend = "packed"\npath = "ssd"\n'
                        'capacity = "1MiB"\n')
        assert main(["simulate", str(trace), "--config", str(toml), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        results[share] = {t["name"]: t["hits"] for t in out["tiers"]}
    assert results[None]["ram"] < 100  # every block read pushed a weight shard out
    assert results["4200"]["ram"] >= 400 - 8  # the weights stayed: every loop read after the first


def test_a_lowered_kv_capacity_deletes_nothing_on_open(tmp_path: Path) -> None:
    """Reopened with a smaller share than it holds: the blocks stay, and the excess moves
    down as new blocks come in."""
    config = _config(tmp_path, kv_capacity=None)
    config["tiers"][1]["kv_capacity"] = "512KiB"
    with tiercache.open(config) as cache:
        for i in range(6):
            cache.put(f"{KV_PREFIX}m/{i}", _shard(i), tier="ssd")
    config["tiers"][1]["kv_capacity"] = "128KiB"
    with tiercache.open(config) as cache:
        ssd = cache.tier("ssd")
        assert len(ssd.kv) == 6 and ssd.kv.opened_over
        ssd.check_invariants()  # over its share, as opened: allowed
        cache.put(f"{KV_PREFIX}m/new", _shard(9), tier="ssd")
        assert ssd.kv.bytes <= 128 * KIB and not ssd.kv.opened_over
        ssd.check_invariants()
