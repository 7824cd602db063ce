"""Hostile configurations: each is one ConfigError naming the file and key, never a
traceback (issue 12.12), and the record_trace file can never be one the cache reads
(issue 12.3).

Every load of a hostile value runs in a forked child under ``RLIMIT_AS``
(``memcap.run_capped``), so a regression that recurses or allocates without bound fails
its test instead of taking the machine down.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memcap import run_capped

import tiercache
from tiercache import ConfigError, load_config
from tiercache.errors import PolicyError
from tiercache.sim.policy_specs import load_policy

#: Address space a child may add to what it inherits from the test process.
HEADROOM_BYTES = 512 << 20
TIMEOUT_S = 60.0
DEPTH = 50_000
TIER = '[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "ssd"\n'


def _cap() -> int:
    """This process's address space plus :data:`HEADROOM_BYTES` (RLIMIT_AS is absolute)."""
    with open("/proc/self/status") as fh:
        vm_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kib * 1024 + HEADROOM_BYTES
    return cap if soft == resource.RLIM_INFINITY else min(cap, soft)


def _load(source: Any, base_dir: str | None = None) -> tuple[str, str | None, str]:
    """In the child: ``("ok", None, "")`` or ``(error type, key, message)``."""
    try:
        load_config(source, base_dir=base_dir)
    except ConfigError as exc:
        return "ConfigError", exc.key, str(exc)
    return "ok", None, ""


def _capped(source: Any, base_dir: str | None = None) -> tuple[str, str | None, str]:
    result = run_capped(_load, source, base_dir, limit_bytes=_cap(), timeout_s=TIMEOUT_S)
    assert result.ok, f"load_config did not raise one ConfigError: {result.describe()}"
    return tuple(result.value)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "b.toml"
    path.write_text(text)
    return path


# -- numbers no size can be ---------------------------------------------------------------

HUGE = "1" + "0" * 400
CAPACITIES = [
    pytest.param(f'"{HUGE}"', "1 PiB", id="string-of-400-zeros"),
    pytest.param(HUGE, "1 PiB", id="int-of-400-zeros"),
    pytest.param("1" * 5000, "invalid TOML", id="int-of-5000-digits"),
    pytest.param(f'"{"9" * 5000}"', "1 PiB", id="string-of-5000-digits"),
    pytest.param(f'"{HUGE}.5 TiB"', "1 PiB", id="string-400-zeros-fraction"),
    pytest.param(str(2**60 + 1), "1 PiB", id="int-over-2**60"),
    pytest.param('"2000TiB"', "1 PiB", id="2000TiB"),
    pytest.param("1e400", "whole number", id="float-1e400"),
    pytest.param("inf", "whole number", id="inf"),
    pytest.param("-inf", "whole number", id="minus-inf"),
    pytest.param("nan", "whole number", id="nan"),
    pytest.param('"nan"', "not a size", id="string-nan"),
    pytest.param('"1e400"', "not a size", id="string-1e400"),
    pytest.param("-5", "negative", id="negative"),
    pytest.param(f"-{HUGE}", "negative", id="negative-400-zeros"),
    pytest.param("0", "greater than zero", id="zero"),
    pytest.param('"0.0000001KiB"', "greater than zero", id="rounds-to-zero"),
]


@pytest.mark.parametrize(("value", "words"), CAPACITIES)
def test_capacity_that_no_size_can_be(tmp_path: Path, value: str, words: str) -> None:
    path = _toml(tmp_path, f"{TIER}capacity = {value}\n")
    kind, key, message = _capped(path)
    assert kind == "ConfigError", message
    assert key == "tiers[0] (ssd).capacity" or words == "invalid TOML", (key, message)
    assert message.startswith(str(path)) and words in message, message
    assert len(message) < 400, message  # the value is shown cut, not 5000 digits


@pytest.mark.parametrize("value", [f'"{HUGE}%"', f'"{"9" * 5000}%"', '"1e400%"', '"nan%"'])
def test_percentage_that_no_share_can_be(tmp_path: Path, value: str) -> None:
    path = _toml(tmp_path, f'[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = {value}\n')
    kind, key, message = _capped(path)
    assert (kind, key) == ("ConfigError", "tiers[0] (ram).capacity"), message


@pytest.mark.parametrize(("key", "value"), [
    ("chunk_size", f'"{HUGE}"'), ("chunk_size", "1e400"), ("timeout", "nan"),
    ("timeout", "inf"), ("timeout", HUGE), ("namespace", f'"{"n" * 100_000}"'),
    ("cluster_nodes", f'["h:{"1" * 5000}"]'),
])
def test_redis_numbers_and_strings(tmp_path: Path, key: str, value: str) -> None:
    settings = {"url": '"redis://127.0.0.1:6379/0"', "namespace": '"m"'}
    settings.pop("url" if key == "cluster_nodes" else key, None)
    settings[key] = value
    path = _toml(tmp_path, '[[tiers]]\nname = "r"\nbackend = "redis"\ncapacity = "1GiB"\n'
                 + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    kind, got, message = _capped(path)
    assert (kind, got) == ("ConfigError", f"tiers[0] (r).{key}"), message
    assert len(message) < 600, message


# -- nesting ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    pytest.param(f"{TIER}capacity = {'[' * DEPTH}{']' * DEPTH}\n", id="array"),
    pytest.param(f"{TIER}capacity = \"1MiB\"\npolicy_options = {'{a = ' * DEPTH}1{'}' * DEPTH}\n",
                 id="inline-table"),
])
def test_toml_nested_50000_deep(tmp_path: Path, text: str) -> None:
    path = _toml(tmp_path, text)
    kind, key, message = _capped(path)
    assert kind == "ConfigError" and key is None, message
    assert message.startswith(f"{path}: invalid TOML") and "nested too deeply" in message


def _deep(depth: int = DEPTH) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):  # built without recursion
        value = [value]
    return value


def _deep_config(key: str, where: str) -> dict[str, Any]:
    """A valid config with one value replaced by a list nested 50,000 deep."""
    tier: dict[str, Any] = {"name": "r", "backend": "redis", "capacity": "1GiB",
                            "url": "redis://h", "namespace": "m", "policy": "2q"}
    cfg: dict[str, Any] = {"tiers": [tier], "origin": {"kind": "npy", "path": "."}}
    if where == "tier":
        tier[key] = _deep()
        if key == "cluster_nodes":
            del tier["url"]
    elif where == "options":
        tier["policy_options"] = {key: _deep()}
    elif where == "origin":
        cfg["origin"][key] = _deep()
    else:
        cfg[key] = _deep()
    return cfg


DEEP_KEYS = [("tier", k) for k in ("name", "backend", "capacity", "policy", "path",
                                   "promote_after", "verify", "zero_copy", "url",
                                   "cluster_nodes", "namespace", "timeout", "chunk_size")] + [
    ("options", "a_in_size_ratio"), ("options", "a_in_size_ratoi"), ("origin", "kind"),
    ("origin", "path"), ("top", "mode"), ("top", "flush_on_close"), ("top", "record_trace"),
    ("top", "tiers"), ("top", "origin")]


def _load_deep(key: str, where: str, base_dir: str) -> tuple[str, str | None, str]:
    return _load(_deep_config(key, where), base_dir)


@pytest.mark.parametrize(("where", "key"), DEEP_KEYS, ids=[f"{w}-{k}" for w, k in DEEP_KEYS])
@pytest.mark.slow  # 22 cases, ~5 s together
def test_value_nested_50000_deep_in_a_dict(tmp_path: Path, where: str, key: str) -> None:
    """No validation step recurses into a value (messages show it cut by reprlib)."""
    result = run_capped(_load_deep, key, where, str(tmp_path), limit_bytes=_cap(),
                        timeout_s=TIMEOUT_S)
    assert result.ok, result.describe()
    kind, got, message = result.value
    named = "policy_options" if where == "options" else key  # the policy's own check
    assert kind == "ConfigError" and got is not None and named in got, message
    assert len(message) < 800, message


# -- symlink loops, dangling links, names the OS refuses ------------------------------------

def _links(root: Path) -> None:
    (root / "loop").symlink_to(root / "loop")
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "weights").mkdir()
    np.save(root / "weights" / "w.npy", np.ones(3, np.float32))


PATHS = [
    ("loop", "symlink loop"), ("loop/sub", "symlink loop"), ("ping", "symlink loop"),
    ("dangling", "dangling symlink"), ("dangling/sub/tier", "dangling symlink"),
    ("x" * 5000, "cannot be looked up"), ("afile/sub", "not a folder"),
]


@pytest.mark.parametrize(("value", "words"), PATHS, ids=[p[0][:20] for p in PATHS])
def test_tier_path_that_cannot_be_created(tmp_path: Path, value: str, words: str) -> None:
    _links(tmp_path)
    (tmp_path / "afile").write_text("x")
    cfg = {"tiers": [{"name": "ssd", "backend": "lmdb", "path": value, "capacity": "1MiB"}]}
    before = sorted(tmp_path.rglob("*"))
    kind, key, message = _capped(cfg, str(tmp_path))
    assert (kind, key) == ("ConfigError", "tiers[0] (ssd).path"), message
    assert words in message, message
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(("value", "words"), [
    ("loop", "symlink loop"), ("ping", "symlink loop"), ("dangling", "dangling symlink"),
    ("loop/w.npy", "symlink loop"), ("x" * 5000, "cannot be looked up")])
def test_origin_path_that_cannot_be_read(tmp_path: Path, value: str, words: str) -> None:
    _links(tmp_path)
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}],
           "origin": {"kind": "npy", "path": value}}
    kind, key, message = _capped(cfg, str(tmp_path))
    assert (kind, key) == ("ConfigError", "origin.path"), message
    assert words in message, message


def test_dangling_tier_path_fails_validation_not_open(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: a dangling symlink as a tier folder passed validation and the
    cache failed at open with ``[Errno 17] File exists``."""
    _links(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"tiers\[0\] \(ssd\)\.path: .*dangling symlink"):
        tiercache.open({"tiers": [{"name": "ssd", "backend": "diskcache", "path": "dangling",
                                   "capacity": "1MiB"}]})


# -- record_trace may not overwrite what the cache reads ----------------------------------

def test_record_trace_may_not_be_the_config_file(tmp_path: Path) -> None:
    toml = _toml(tmp_path, f'record_trace = "b.toml"\n{TIER}capacity = "1MiB"\n')
    with pytest.raises(ConfigError) as err:
        load_config(toml)
    assert str(err.value).startswith(f"{toml}:record_trace: ") and "configuration file" in \
        str(err.value)
    (tmp_path / "alias.toml").symlink_to(toml)  # through a symlink, and from the symlink
    toml.write_text(f'record_trace = "alias.toml"\n{TIER}capacity = "1MiB"\n')
    with pytest.raises(ConfigError, match=r"record_trace: .*configuration file"):
        load_config(toml)
    toml.write_text(f'record_trace = "b.toml"\n{TIER}capacity = "1MiB"\n')
    with pytest.raises(ConfigError, match=r"record_trace: .*configuration file"):
        load_config(tmp_path / "alias.toml")
    assert "b.toml" in toml.read_text()  # untouched


def test_record_trace_may_not_be_the_origin_file(tmp_path: Path) -> None:
    origin = tmp_path / "model.safetensors"
    origin.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    toml = _toml(tmp_path, 'record_trace = "model.safetensors"\n'
                 '[origin]\nkind = "safetensors"\npath = "model.safetensors"\n'
                 f'{TIER}capacity = "1MiB"\n')
    with pytest.raises(ConfigError, match=r"b\.toml:record_trace: .*is the origin"):
        load_config(toml)
    toml.write_text(toml.read_text().replace('record_trace = "model.safetensors"',
                                             'record_trace = "ssd/../model.safetensors"'))
    with pytest.raises(ConfigError, match=r"record_trace: .*is the origin"):
        load_config(toml)


def test_record_trace_elsewhere_is_fine(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    cfg = {"record_trace": "traces/run.csv", "origin": {"kind": "npy", "path": "weights"},
           "tiers": [{"name": "ssd", "backend": "lmdb", "path": "ssd", "capacity": "1MiB"}]}
    assert load_config(cfg, base_dir=tmp_path).record_trace == tmp_path / "traces" / "run.csv"


# -- the policy loader's hint reaches every caller ------------------------------------------

def test_missing_policy_module_hint_in_simulate_once() -> None:
    with pytest.raises(PolicyError) as err:
        load_policy("tc_no_such_mod_h:MyPolicy")
    message = str(err.value)
    assert "no module named 'tc_no_such_mod_h'" in message
    assert message.count("PYTHONPATH") == 1 and message.count("'") % 2 == 0, message


def test_option_of_a_policy_without_options_kwargs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A user policy whose constructor has no ``**options``: Python's own TypeError would say
    'unexpected keyword argument'; the config says which option and the closest one."""
    (tmp_path / "tc_user_policy_h1.py").write_text(
        "from tiercache.policies import LRUPolicy\n\n"
        "class Windowed(LRUPolicy):\n"
        "    def __init__(self, capacity, *, window=4):\n"
        "        super().__init__(capacity)\n"
        "        self.window = window\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tier = {"name": "ram", "backend": "memory", "capacity": "1MiB",
            "policy": "tc_user_policy_h1:Windowed", "policy_options": {"windw": 8}}
    with pytest.raises(ConfigError) as err:
        load_config({"tiers": [tier]})
    assert err.value.key == "tiers[0] (ram).policy_options.windw"
    assert "unknown option 'windw' for Windowed; did you mean 'window'?" in str(err.value)
    tier["policy_options"] = {"window": 8}
    assert load_config({"tiers": [tier]}).tiers[0].policy_options == {"window": 8}


# -- fuzz: any value under any key -------------------------------------------------------

LEAVES = (st.none() | st.booleans() | st.integers() | st.integers(-(10**500), 10**500)
          | st.floats(allow_nan=True, allow_infinity=True)
          | st.text(max_size=12) | st.sampled_from(
              ["64MiB", "64M", "1.5GB", "25%", "150%", "lru", "2q", "redis://h", "h:1",
               "memory", "lmdb", "packed", "redis", "always", "never", ".", "loop",
               "dangling", "x" * 300, "1" + "0" * 400]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
TIER_KEYS = ["name", "backend", "capacity", "policy", "policy_options", "path",
             "promote_after", "verify", "zero_copy", "url", "cluster_nodes", "namespace",
             "timeout", "chunk_size", "bogus"]


def _fuzz(base_dir: str) -> int:
    tried = 0

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(backend=st.sampled_from(["memory", "lmdb", "packed", "redis"]),
           changes=st.dictionaries(st.sampled_from(TIER_KEYS), VALUES, max_size=3),
           top=st.dictionaries(st.sampled_from(["mode", "record_trace", "origin",
                                                "flush_on_close"]), VALUES, max_size=2))
    def prop(backend: str, changes: dict[str, Any], top: dict[str, Any]) -> None:
        nonlocal tried
        tier: dict[str, Any] = {"name": "t", "backend": backend, "capacity": "1MiB"}
        if backend in ("lmdb", "packed"):
            tier["path"] = "tier"
        if backend == "redis":
            tier.update(url="redis://h", namespace="m")
        tier.update(changes)
        tried += 1
        try:
            load_config({"tiers": [tier], **top}, base_dir=base_dir)
        except ConfigError as exc:
            assert exc.key is not None or exc.file is not None

    prop()
    return tried


@pytest.mark.slow
def test_fuzz_any_value_under_any_key_is_one_config_error(tmp_path: Path) -> None:
    _links(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = run_capped(_fuzz, str(tmp_path), limit_bytes=_cap(), timeout_s=300)
    assert result.ok, result.describe()
    assert result.value >= 300
    assert sorted(tmp_path.rglob("*")) == before  # validation created nothing
