"""Validation of the redis tier keys (no server needed: nothing connects at load time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tiercache import config as config_module
from tiercache.config import load_config
from tiercache.errors import ConfigError
from tiercache.stores import redis_store


def _cfg(**redis: Any) -> dict[str, Any]:
    tier = {"name": "shared", "backend": "redis", "capacity": "1GiB", **redis}
    return {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}, tier]}


def test_valid_redis_tier_becomes_store_options() -> None:
    cfg = load_config(_cfg(url="redis://127.0.0.1:6379/2", namespace="llama:7b",
                           timeout=0.25, chunk_size="1MiB"))
    tier = cfg.tiers[1]
    assert tier.path is None
    assert dict(tier.options) == {"url": "redis://127.0.0.1:6379/2", "namespace": "llama:7b",
                                  "timeout_s": 0.25, "chunk_bytes": 1 << 20}
    assert cfg.tiers[0].options == {}


def test_defaults_and_cluster_nodes(tmp_path: Path) -> None:
    cfg = load_config(_cfg(cluster_nodes=["127.0.0.1:7000", "[::1]:7001"]))
    assert dict(cfg.tiers[1].options) == {
        "cluster_nodes": ("127.0.0.1:7000", "[::1]:7001"), "namespace": "tiercache:shared",
        "timeout_s": 5.0, "chunk_bytes": 8 << 20}
    (tmp_path / "my model").mkdir()
    with_origin = {**_cfg(url="redis://localhost"),
                   "origin": {"kind": "npy", "path": str(tmp_path / "my model")}}
    assert load_config(with_origin).tiers[1].options["namespace"] == \
        "tiercache:my_model:shared"  # workers of one model share it, other models do not


def test_toml_error_names_file_and_key(tmp_path: Path) -> None:
    toml = tmp_path / "tiers.toml"
    toml.write_text('[[tiers]]\nname = "r"\nbackend = "redis"\ncapacity = "1GiB"\n'
                    'url = "redis://127.0.0.1:6379/0"\npath = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(toml)
    assert str(err.value).startswith(f"{toml}:tiers[0] (r).path: a redis tier has no path")


@pytest.mark.parametrize(("redis", "key", "message"), [
    ({}, "url", "exactly one of url"),
    ({"url": "redis://h:1/0", "cluster_nodes": ["h:1"]}, "url", "exactly one of url"),
    ({"url": "http://h:1/0"}, "url", "scheme 'http'"),
    ({"url": "redis://:6379/0"}, "url", "needs a host"),
    ({"url": "redis://h:99999/0"}, "url", "not a valid URL"),
    ({"url": "redis://h:1/zero"}, "url", "database number"),
    ({"url": 6379}, "url", "must be a URL"),
    ({"cluster_nodes": []}, "cluster_nodes", "non-empty list"),
    ({"cluster_nodes": ["h"]}, "cluster_nodes", "not \"host:port\""),
    ({"cluster_nodes": "h:1"}, "cluster_nodes", "non-empty list"),
    ({"url": "redis://h", "namespace": "a{b}"}, "namespace", "no braces"),
    ({"url": "redis://h", "namespace": ""}, "namespace", "1-128 characters"),
    ({"url": "redis://h", "timeout": 0}, "timeout", "> 0"),
    ({"url": "redis://h", "timeout": True}, "timeout", "number of seconds"),
    ({"url": "redis://h", "timeout": "5s"}, "timeout", "number of seconds"),
    ({"url": "redis://h", "chunk_size": "100B"}, "chunk_size", "between 1KiB and 256MiB"),
    ({"url": "redis://h", "chunk_size": "1GiB"}, "chunk_size", "between 1KiB and 256MiB"),
    ({"url": "redis://h", "chunk_size": "lots"}, "chunk_size", "is not a size"),
    ({"url": "redis://h", "capacity": "10%"}, "capacity", "percentage"),
])
def test_bad_redis_keys(redis: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(_cfg(**redis))
    assert err.value.key == f"tiers[1] (shared).{key}"


@pytest.mark.parametrize("key", ["url", "cluster_nodes", "namespace", "timeout", "chunk_size"])
def test_redis_keys_are_refused_on_other_backends(tmp_path: Path, key: str) -> None:
    cfg = {"tiers": [{"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"),
                      "capacity": "1MiB", key: "redis://h"}]}
    with pytest.raises(ConfigError, match="only a redis tier") as err:
        load_config(cfg)
    assert err.value.key == f"tiers[0] (ssd).{key}"


def test_two_redis_tiers_may_not_share_a_namespace() -> None:
    cfg = _cfg(url="redis://h/0", namespace="n")
    cfg["tiers"].append({"name": "again", "backend": "redis", "capacity": "1GiB",
                         "url": "redis://h/0", "namespace": "n"})
    with pytest.raises(ConfigError, match="same server and namespace") as err:
        load_config(cfg)
    assert err.value.key == "tiers[2] (again).namespace"
    cfg["tiers"][2]["namespace"] = "other"
    load_config(cfg)


def test_missing_driver_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = config_module.importlib.util.find_spec
    monkeypatch.setattr(config_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'tiercache\[redis\]'"):
        load_config(_cfg(url="redis://h"))


def test_limits_match_the_store() -> None:
    assert config_module._REDIS_CHUNK_RANGE == (redis_store.MIN_CHUNK_BYTES,
                                                redis_store.MAX_CHUNK_BYTES)
    assert config_module._REDIS_DEFAULT_CHUNK == redis_store.DEFAULT_CHUNK_BYTES
    assert config_module._REDIS_DEFAULT_TIMEOUT_S == redis_store.DEFAULT_TIMEOUT_S
    assert config_module._REDIS_NAMESPACE_RE.pattern == redis_store.NAMESPACE_RE.pattern
