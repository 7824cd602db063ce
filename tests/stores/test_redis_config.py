"""Validation of the redis tier keys (no server needed: nothing connects at load time)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from tiercache.config import digest as digest_module
from tiercache.config import load_config
from tiercache.errors import ConfigError
from tiercache.stores.redis import options as redis_options
from tiercache.stores.registry import backend_spec


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
    cfg = load_config(_cfg(cluster_nodes=["127.0.0.1:7000", "[::1]:7001"], namespace="m"))
    assert dict(cfg.tiers[1].options) == {
        "cluster_nodes": ("127.0.0.1:7000", "[::1]:7001"), "namespace": "m",
        "timeout_s": 5.0, "chunk_bytes": 8 << 20}
    (tmp_path / "my model").mkdir()
    np.save(tmp_path / "my model" / "w.npy", np.ones(4, np.float32))
    with_origin = {**_cfg(url="redis://localhost"),
                   "origin": {"kind": "npy", "path": str(tmp_path / "my model")}}
    namespace = load_config(with_origin).tiers[1].options["namespace"]
    assert redis_options.NAMESPACE_RE.fullmatch(namespace)
    assert namespace.startswith("tiercache:") and namespace.endswith(":shared")


def _model(folder: Path, value: float) -> Path:
    """A Hugging Face style ``<folder>/model.safetensors``: the same name, keys and shapes
    for every value."""
    folder.mkdir(parents=True)
    path = folder / "model.safetensors"
    save_file({"w": np.full((4, 4), value, np.float32), "b": np.full(4, value, np.float32)},
              str(path))
    return path


def _namespace(origin: dict[str, Any]) -> str:
    cfg = {**_cfg(url="redis://127.0.0.1:6379/0"), "origin": origin}
    return str(load_config(cfg).tiers[1].options["namespace"])


def test_default_namespace_tells_models_with_the_same_file_name_apart(tmp_path: Path) -> None:
    """Issue 12.1: modelA/model.safetensors (all 1.0) and modelB/model.safetensors (all
    2.0) have identical headers; B must not read A's weights from a shared Redis."""
    a = _model(tmp_path / "modelA", 1.0)
    b = _model(tmp_path / "modelB", 2.0)
    assert a.name == b.name and a.stat().st_size == b.stat().st_size
    ns_a = _namespace({"kind": "safetensors", "path": str(a)})
    ns_b = _namespace({"kind": "safetensors", "path": str(b)})
    assert ns_a != ns_b
    # the same bytes elsewhere (another worker's copy) share: the namespace is the content
    copy = tmp_path / "worker2" / "weights.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    assert _namespace({"kind": "safetensors", "path": str(copy)}) == ns_a


def test_default_namespace_of_npy_folders(tmp_path: Path) -> None:
    def folder(name: str, arrays: dict[str, float]) -> str:
        path = tmp_path / name
        path.mkdir()
        for key, value in arrays.items():
            np.save(path / f"{key}.npy", np.full((3, 3), value, np.float32))
        return str(path)

    one = _namespace({"kind": "npy", "path": folder("a", {"w": 1.0, "b": 1.0})})
    assert _namespace({"kind": "npy", "path": folder("b", {"w": 2.0, "b": 1.0})}) != one
    assert _namespace({"kind": "npy", "path": folder("c", {"w": 1.0, "b": 1.0})}) == one
    assert _namespace({"kind": "npy", "path": folder("d", {"w": 1.0, "x": 1.0})}) != one
    (tmp_path / "c" / "README.txt").write_text("not a shard")  # other files do not count
    assert _namespace({"kind": "npy", "path": str(tmp_path / "c")}) == one


def test_default_namespace_is_memoised_and_follows_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _model(tmp_path / "m", 1.0)
    origin = {"kind": "safetensors", "path": str(path)}
    first = _namespace(origin)
    opened: list[str] = []
    real_open = open

    def spy(f: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(f))
        return real_open(f, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    assert _namespace(origin) == first and opened == []  # a stat, no read
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one byte of one value changes; size and name stay
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1, 1))  # another mtime: the memo key (path, size, mtime, inode) changes
    assert _namespace(origin) != first
    assert opened == [os.path.realpath(path)]


def test_no_origin_needs_a_namespace(tmp_path: Path) -> None:
    toml = tmp_path / "tiers.toml"
    toml.write_text('[[tiers]]\nname = "shared"\nbackend = "redis"\ncapacity = "1GiB"\n'
                    'url = "redis://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError) as err:
        load_config(toml)
    message = str(err.value)
    assert message.startswith(f"{toml}:tiers[0] (shared).namespace: required")
    assert "sharing must be chosen" in message and "same model" in message
    toml.write_text(toml.read_text() + 'namespace = "llama-7b"\n')
    assert load_config(toml).tiers[0].options["namespace"] == "llama-7b"


def test_class_origin_needs_a_namespace(tmp_path: Path) -> None:
    cfg = {**_cfg(url="redis://h"),
           "origin": {"kind": "tiercache.origins:NpyDirOrigin", "path": str(tmp_path)}}
    with pytest.raises(ConfigError, match="cannot digest its content") as err:
        load_config(cfg)
    assert err.value.key == "tiers[1] (shared).namespace"
    cfg["tiers"][1]["namespace"] = "mine"
    assert load_config(cfg).tiers[1].options["namespace"] == "mine"


def test_unreadable_origin_is_a_config_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _model(tmp_path / "m", 3.0)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(digest_module, "open", refuse, raising=False)
    with pytest.raises(ConfigError, match="give that tier a namespace") as err:
        load_config({**_cfg(url="redis://h"), "origin": {"kind": "safetensors",
                                                          "path": str(path)}})
    assert err.value.key == "origin.path" and "Permission denied" in str(err.value)


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
    ({"url": "redis://h", "namespace": "model\n"}, "namespace", "1-128 characters"),
    ({"url": "redis://h/\u00b2"}, "url", "database number"),
    ({"cluster_nodes": ["h:" + "1" * 5000]}, "cluster_nodes", "not \"host:port\""),
    ({"cluster_nodes": ["h:\u00b2"]}, "cluster_nodes", "not \"host:port\""),
    ({"url": "redis://h", "namespaces": "m"}, "namespaces", "did you mean 'namespace'?"),
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


def test_unknown_key_lists_only_the_keys_of_that_backend(tmp_path: Path) -> None:
    lmdb = {"tiers": [{"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"),
                       "capacity": "1MiB", "capasity": "1MiB"}]}
    with pytest.raises(ConfigError) as err:
        load_config(lmdb)
    message = str(err.value)
    assert err.value.key == "tiers[0] (ssd).capasity" and "did you mean 'capacity'?" in message
    assert "path" in message and "namespace" not in message and "url" not in message
    assert "zero_copy" not in message  # lmdb serves no views
    with pytest.raises(ConfigError) as err:
        load_config(_cfg(url="redis://h", namespace="n", chunksize="1MiB"))
    message = str(err.value)
    assert "did you mean 'chunk_size'?" in message and "namespace" in message
    assert "path" not in message.split("(keys")[1]


@pytest.mark.parametrize("key", ["url", "cluster_nodes", "namespace", "timeout", "chunk_size"])
def test_redis_keys_are_refused_on_other_backends(tmp_path: Path, key: str) -> None:
    cfg = {"tiers": [{"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"),
                      "capacity": "1MiB", key: "redis://h"}]}
    with pytest.raises(ConfigError, match="only a redis tier") as err:
        load_config(cfg)
    assert err.value.key == f"tiers[0] (ssd).{key}"


def test_two_redis_tiers_may_not_share_a_namespace(tmp_path: Path) -> None:
    cfg = _cfg(url="redis://h/0", namespace="n")
    cfg["tiers"].append({"name": "again", "backend": "redis", "capacity": "1GiB",
                         "url": "redis://h/0", "namespace": "n"})
    with pytest.raises(ConfigError, match="same server and namespace") as err:
        load_config(cfg)
    assert err.value.key == "tiers[2] (again).namespace"
    cfg["tiers"][2]["namespace"] = "other"
    load_config(cfg)


def test_missing_driver_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'tiercache\[redis\]'"):
        load_config(_cfg(url="redis://h"))


def test_the_registry_validates_the_redis_keys() -> None:
    """Config asks the registry: the redis spec takes exactly the keys its options module
    validates, and that parser is the one the configuration runs."""
    spec = backend_spec("redis")
    assert spec.kind == "remote" and not spec.zero_copy
    assert spec.option_keys == redis_options.OPTION_KEYS
    assert spec.parse_options is redis_options.parse_options
