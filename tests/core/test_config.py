"""Config validation: every mistake is one ConfigError naming file, key and reason,
raised before anything is created on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest
from bad_configs import BAD, MESSAGES, _furnish, _tiers

import tiercache
from tiercache import ConfigError, load_config

GOOD_TOML = """
mode = "exclusive"
[[tiers]]
name = "ram"
backend = "memory"
capacity = "64MiB"
policy = "arc"
[[tiers]]
name = "ssd"
backend = "lmdb"
path = ".tiercache/ssd"
capacity = "256MiB"
policy = "lfu"
promote_after = 2
[[tiers]]
name = "hdd"
backend = "diskcache"
path = ".tiercache/hdd"
capacity = "4GiB"
policy = "lru"
"""


def test_issue_example_parses_and_resolves_paths(tmp_path: Path) -> None:
    f = tmp_path / "tiers.toml"
    f.write_text(GOOD_TOML)
    cfg = load_config(f)
    assert [t.name for t in cfg.tiers] == ["ram", "ssd", "hdd"]
    assert cfg.tiers[0].capacity_bytes == 64 * 2**20
    assert cfg.tiers[2].capacity_bytes == 4 * 2**30
    assert cfg.tiers[1].path == tmp_path / ".tiercache" / "ssd"
    assert cfg.tiers[1].promote_after == 2
    assert cfg.mode == "exclusive"
    assert not (tmp_path / ".tiercache").exists()  # validation creates nothing
    with pytest.raises(AttributeError):
        cast(Any, cfg.tiers[0]).capacity_bytes = 1  # frozen: refused at run time too


def test_the_config_file_is_config_path_and_source_is_its_deprecated_name(
        tmp_path: Path) -> None:
    f = tmp_path / "tiers.toml"
    f.write_text(GOOD_TOML)
    cfg = load_config(f)
    assert cfg.config_path == str(f)
    with pytest.warns(DeprecationWarning, match="config_path"):
        assert cfg.source == str(f)
    ram = {"name": "ram", "backend": "memory", "capacity": "1MiB"}
    assert load_config({"tiers": [ram]}).config_path == "<dict>"


def test_percentage_capacity_for_memory(tmp_path: Path) -> None:
    cfg = load_config({"tiers": [{"name": "ram", "backend": "memory", "capacity": "25%"}]})
    assert cfg.tiers[0].capacity_bytes > 0


@pytest.mark.parametrize(("cfg", "key", "words"), [b[1:] for b in BAD + MESSAGES],
                         ids=[b[0] for b in BAD + MESSAGES])
def test_bad_config_is_one_clear_error(tmp_path: Path, cfg: dict[str, Any], key: str,
                                       words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _furnish(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, base_dir=tmp_path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.key is not None and key in err.key, (err.key, str(err))
    assert words.lower() in str(err).lower(), str(err)
    with pytest.raises(ConfigError):
        tiercache.open(cfg)  # the library entry point validates before creating anything
    assert sorted(tmp_path.rglob("*")) == before  # nothing created


def test_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        load_config(_tiers(path="afile"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        load_config(_tiers(path="afile/sub"), base_dir=tmp_path)


def test_unwritable_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    # CI runs as root, for whom access() always allows writing: simulate the refusal
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ro else real_access(p, m))
    with pytest.raises(ConfigError, match="not writable"):
        load_config(_tiers(path="ro/tier"), base_dir=tmp_path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing\.toml: file not found"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("tiers = [[[")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[tiers]]\nname = "x"\nbackend = "memory"\ncapacity = "0"\n')
    with pytest.raises(ConfigError) as info:
        load_config(wrong)
    assert str(info.value).startswith(f"{wrong}:tiers[0] (x).capacity:")


def test_relative_paths_resolve_against_the_toml_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    f = sub / "tiers.toml"
    f.write_text('[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "data/ssd"\n'
                 'capacity = "1MiB"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(f).tiers[0].path == sub / "data" / "ssd"


def test_packed_is_a_disk_backend_that_serves_views(tmp_path: Path) -> None:
    cfg = load_config({"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "1MiB"},
        {"name": "ssd", "backend": "packed", "path": "ssd", "capacity": "8MiB",
         "zero_copy": True, "verify": "never"}]}, base_dir=tmp_path)
    ssd = cfg.tiers[1]
    assert (ssd.backend, ssd.zero_copy, ssd.verify) == ("packed", True, "never")
    assert ssd.path == tmp_path / "ssd" and ssd.capacity_bytes == 8 << 20
    assert not ssd.path.exists()  # validation creates nothing
    with tiercache.TieredCache.from_config(cfg) as cache:
        assert cache.tier("ssd").store.backend == "packed"
        assert cache.tier("ssd").zero_copy
    assert (tmp_path / "ssd" / "index.sqlite").is_file()


def test_unknown_policy_option_from_the_class_itself() -> None:
    """The message comes from the policy base class, so every caller (config, simulate,
    your own code) gets it: the option is *unknown*, with the closest one it takes."""
    from tiercache.policies import TwoQPolicy, UnknownPolicyOptionError, policy_option_names

    with pytest.raises(UnknownPolicyOptionError) as info:
        TwoQPolicy(100, a_in_size_ratoi=0.3)
    assert isinstance(info.value, TypeError) and info.value.options == ["a_in_size_ratoi"]
    assert str(info.value) == ("unknown option 'a_in_size_ratoi' for TwoQPolicy; did you mean "
                               "'a_in_size_ratio'? (its options: a_in_size_ratio, "
                               "a_out_size_ratio)")

    class Tuned(TwoQPolicy):  # options along the MRO: its own and its parent's
        def __init__(self, capacity: int, *, boost: int = 1, **options: Any) -> None:
            super().__init__(capacity, **options)
            self.boost = boost

    assert policy_option_names(Tuned) == ["a_in_size_ratio", "a_out_size_ratio", "boost"]
    with pytest.raises(TypeError, match="'bost' for Tuned; did you mean 'boost'"):
        Tuned(100, bost=2)
    assert Tuned(100, boost=2, a_in_size_ratio=0.5).boost == 2
