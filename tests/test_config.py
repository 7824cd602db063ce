"""Config validation: every mistake is one ConfigError naming file, key and reason,
raised before anything is created on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

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


def _tiers(**override: Any) -> dict[str, Any]:
    tier = {"name": "ssd", "backend": "lmdb", "path": "ssd", "capacity": "1MiB"}
    tier.update(override)
    return {"tiers": [tier]}


def _drop(key: str) -> dict[str, Any]:
    cfg = _tiers()
    del cfg["tiers"][0][key]
    return cfg


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, config, key that must be named, words that must appear)
    ("unknown-top-key", {"tierz": [], "tiers": _tiers()["tiers"]}, "tierz", "unknown key"),
    ("unknown-tier-key", _tiers(colour="red"), "colour", "unknown key"),
    ("no-tiers", {"mode": "exclusive"}, "tiers", "missing"),
    ("empty-tiers", {"tiers": []}, "tiers", "empty"),
    ("tiers-not-list", {"tiers": {"name": "x"}}, "tiers", "array of tables"),
    ("bad-mode", {"mode": "both", "tiers": _tiers()["tiers"]}, "mode", "exclusive"),
    ("no-name", _drop("name"), "name", "required"),
    ("bad-name", _tiers(name="my tier!"), "name", "short name"),
    ("no-backend", _drop("backend"), "backend", "unknown backend"),
    ("unknown-backend", _tiers(backend="s3"), "backend", "lmdb"),
    ("no-capacity", _drop("capacity"), "capacity", "required"),
    ("zero-capacity", _tiers(capacity=0), "capacity", "greater than zero"),
    ("negative-capacity", _tiers(capacity=-5), "capacity", "negative"),
    ("absurd-capacity", _tiers(capacity="9000PiB"), "capacity", "unit"),
    ("huge-capacity", _tiers(capacity="5000TiB"), "capacity", "1 PiB"),
    ("float-capacity", _tiers(capacity=1.5), "capacity", "whole number"),
    ("bool-capacity", _tiers(capacity=True), "capacity", "boolean"),
    ("garbage-capacity", _tiers(capacity="lots"), "capacity", "not a size"),
    ("bad-unit", _tiers(capacity="5 parsecs"), "capacity", "unknown unit"),
    ("percent-on-disk", _tiers(capacity="25%"), "capacity", "only allowed for memory"),
    ("percent-over-100", {"tiers": [{"name": "r", "backend": "memory", "capacity": "150%"}]},
     "capacity", "percentage"),
    ("percent-zero", {"tiers": [{"name": "r", "backend": "memory", "capacity": "0%"}]},
     "capacity", "percentage"),
    ("unknown-policy", _tiers(policy="fifoo"), "policy", "known policies"),
    ("policy-not-string", _tiers(policy=3), "policy", "policy name"),
    ("policy-bad-module", _tiers(policy="no_such_module_xyz:Cls"), "policy", "no_such_module"),
    ("policy-not-a-policy", _tiers(policy="collections:OrderedDict"), "policy", "not a subclass"),
    ("policy-options-not-table", _tiers(policy_options=3), "policy_options", "table"),
    ("disk-without-path", _drop("path"), "path", "required"),
    ("memory-with-path", {"tiers": [{"name": "r", "backend": "memory", "capacity": "1MiB",
                                     "path": "x"}]}, "path", "no path"),
    ("empty-path", _tiers(path="  "), "path", "folder path"),
    ("path-not-string", _tiers(path=5), "path", "folder path"),
    ("promote-zero", _tiers(promote_after=0), "promote_after", ">= 1"),
    ("promote-negative", _tiers(promote_after=-1), "promote_after", ">= 1"),
    ("promote-word", _tiers(promote_after="sometimes"), "promote_after", "never"),
    ("verify-bad", _tiers(verify="maybe"), "verify", "always"),
    ("flush-not-bool", {"flush_on_close": "yes", "tiers": _tiers()["tiers"]}, "flush_on_close",
     "true or false"),
    ("duplicate-names", {"tiers": [
        {"name": "a", "backend": "memory", "capacity": "1MiB"},
        {"name": "a", "backend": "memory", "capacity": "1MiB"}]}, "name", "duplicate"),
    ("shared-path", {"tiers": [
        {"name": "a", "backend": "lmdb", "path": "same", "capacity": "1MiB"},
        {"name": "b", "backend": "diskcache", "path": "same", "capacity": "1MiB"}]},
     "path", "overlaps"),
    ("nested-path", {"tiers": [
        {"name": "a", "backend": "lmdb", "path": "outer", "capacity": "1MiB"},
        {"name": "b", "backend": "diskcache", "path": "outer/inner", "capacity": "1MiB"}]},
     "path", "overlaps"),
    ("origin-not-table", {"origin": "x", "tiers": _tiers()["tiers"]}, "origin", "table"),
    ("origin-unknown-kind", {"origin": {"kind": "ftp", "path": "."}, "tiers": _tiers()["tiers"]},
     "origin.kind", "unknown origin"),
    ("origin-missing-path", {"origin": {"kind": "npy", "path": "nowhere"},
                             "tiers": _tiers()["tiers"]}, "origin.path", "does not exist"),
    ("origin-unknown-key", {"origin": {"kind": "npy", "path": ".", "x": 1},
                            "tiers": _tiers()["tiers"]}, "origin.x", "unknown key"),
    # -- more kinds: wrong types everywhere, odd values, unsafe paths ---------------------
    ("mode-not-string", {"mode": 1, "tiers": _tiers()["tiers"]}, "mode", "exclusive"),
    ("tiers-of-strings", {"tiers": ["ram", "ssd"]}, "tiers", "array of tables"),
    ("name-not-string", _tiers(name=3), "name", "short name"),
    ("name-empty", _tiers(name=""), "name", "short name"),
    ("name-too-long", _tiers(name="n" * 65), "name", "short name"),
    ("name-with-slash", _tiers(name="../ssd"), "name", "short name"),
    ("backend-not-string", _tiers(backend=["lmdb"]), "backend", "unknown backend"),
    ("capacity-list", _tiers(capacity=[1, 2]), "capacity", "size"),
    ("capacity-negative-string", _tiers(capacity="-1GiB"), "capacity", "not a size"),
    ("capacity-nan", _tiers(capacity="nan"), "capacity", "not a size"),
    ("capacity-exponent", _tiers(capacity="1e400"), "capacity", "not a size"),
    ("capacity-2**80", _tiers(capacity=2**62), "capacity", "1 PiB"),
    ("capacity-fraction-of-a-byte", _tiers(capacity="0.5B"), "capacity", "greater than zero"),
    ("capacity-blank", _tiers(capacity="  "), "capacity", "not a size"),
    ("capacity-pib", _tiers(capacity="2PiB"), "capacity", "unknown unit"),
    ("percent-on-diskcache", _tiers(backend="diskcache", capacity="10%"), "capacity",
     "only allowed for memory"),
    ("percent-on-packed", _tiers(backend="packed", capacity="10%"), "capacity",
     "only allowed for memory"),
    ("packed-without-path", {"tiers": [{"name": "p", "backend": "packed", "capacity": "1MiB"}]},
     "path", "required"),
    ("packed-zero-copy-not-bool", _tiers(backend="packed", zero_copy=1), "zero_copy",
     "true or false"),
    ("packed-shares-a-path", {"tiers": [
        {"name": "a", "backend": "packed", "path": "same", "capacity": "1MiB"},
        {"name": "b", "backend": "diskcache", "path": "same", "capacity": "1MiB"}]},
     "path", "overlaps"),
    ("zero-copy-on-lmdb-names-packed", _tiers(zero_copy=True), "zero_copy", "diskcache, packed"),
    ("percent-negative", {"tiers": [{"name": "r", "backend": "memory", "capacity": "-5%"}]},
     "capacity", "not a size"),
    ("promote-float", _tiers(promote_after=1.5), "promote_after", ">= 1"),
    ("promote-bool", _tiers(promote_after=True), "promote_after", ">= 1"),
    ("verify-bool", _tiers(verify=True), "verify", "always"),
    ("policy-empty", _tiers(policy=""), "policy", "policy name"),
    ("policy-bare-colon", _tiers(policy=":"), "policy", "package.module:ClassName"),
    ("policy-options-unknown-kw", _tiers(policy_options={"bogus": 1}), "policy_options.bogus",
     "unknown option 'bogus' for LRUPolicy: it takes no options"),
    ("policy-options-list", _tiers(policy_options=[1]), "policy_options", "table"),
    ("path-nul-byte", _tiers(path="a\x00b"), "path", "NUL"),
    ("path-root", _tiers(path="/"), "path", "root of the file system"),
    ("path-under-a-file", _tiers(path="afile/sub"), "path", "not a folder"),
    ("path-dotdot-same", {"tiers": [
        {"name": "a", "backend": "lmdb", "path": "x", "capacity": "1MiB"},
        {"name": "b", "backend": "diskcache", "path": "y/../x", "capacity": "1MiB"}]},
     "path", "overlaps"),
    ("path-symlink-same", {"tiers": [
        {"name": "a", "backend": "lmdb", "path": "real", "capacity": "1MiB"},
        {"name": "b", "backend": "diskcache", "path": "link", "capacity": "1MiB"}]},
     "path", "overlaps"),
    ("duplicate-names-3", {"tiers": [
        {"name": "a", "backend": "memory", "capacity": "1MiB"},
        {"name": "b", "backend": "memory", "capacity": "1MiB"},
        {"name": "a", "backend": "lmdb", "path": "p", "capacity": "1MiB"}]}, "name", "duplicate"),
    ("origin-kind-not-string", {"origin": {"kind": 3, "path": "."}, "tiers": _tiers()["tiers"]},
     "origin.kind", "unknown origin"),
    ("origin-path-not-string", {"origin": {"kind": "npy", "path": 3},
                                "tiers": _tiers()["tiers"]}, "origin.path", "required"),
    ("origin-npy-is-a-file", {"origin": {"kind": "npy", "path": "afile"},
                              "tiers": _tiers()["tiers"]}, "origin.path", "folder of .npy"),
    ("origin-safetensors-is-a-folder", {"origin": {"kind": "safetensors", "path": "real"},
                                        "tiers": _tiers()["tiers"]}, "origin.path",
     ".safetensors file"),
    ("origin-class-missing", {"origin": {"kind": "no_such_module_q:Cls", "path": "."},
                              "tiers": _tiers()["tiers"]}, "origin.kind", "no_such_module_q"),
    ("origin-class-not-an-origin", {"origin": {"kind": "collections:OrderedDict", "path": "."},
                                    "tiers": _tiers()["tiers"]}, "origin.kind", "not a"),
    ("origin-inside-a-tier", {"origin": {"kind": "npy", "path": "real/weights"},
                              "tiers": _tiers(path="real")["tiers"]}, "origin.path",
     "inside the folder"),
    ("record-trace-not-string", {"record_trace": 5, "tiers": _tiers()["tiers"]},
     "record_trace", "CSV file"),
    ("record-trace-is-a-folder", {"record_trace": "real", "tiers": _tiers()["tiers"]},
     "record_trace", "is a folder"),
    ("flush-not-bool-int", {"flush_on_close": 1, "tiers": _tiers()["tiers"]},
     "flush_on_close", "true or false"),
]

#: Issues 11.7, 12.3 and 12.12: messages that name the closest valid choice, quotes that
#: close, the PYTHONPATH hint, units that are not ambiguous, record_trace that cannot
#: overwrite what the cache reads. Checked like BAD (the CLI test runs BAD only).
MESSAGES: list[tuple[str, dict[str, Any], str, str]] = [
    ("origin-class-missing-hint", {"origin": {"kind": "no_such_module_q:Cls", "path": "."},
                                   "tiers": _tiers()["tiers"]}, "origin.kind",
     "no module named 'no_such_module_q' (from a checkout, run with PYTHONPATH=."),
    ("policy-options-misspelled", _tiers(policy="2q", policy_options={"a_in_size_ratoi": 0.3}),
     "policy_options.a_in_size_ratoi", "did you mean 'a_in_size_ratio'?"),
    ("policy-options-bad-value", _tiers(policy="2q", policy_options={"a_in_size_ratio": 7}),
     "policy_options", "refuses these options"),
    ("capacity-ambiguous-M", _tiers(capacity="64M"), "capacity",
     'write "64MiB" (2^20) or "64MB" (10^6)'),
    ("capacity-ambiguous-g", _tiers(capacity="1.5g"), "capacity",
     'write "1.5GiB" (2^30) or "1.5GB" (10^9)'),
    ("capacity-ambiguous-K", _tiers(capacity="512 K"), "capacity", '"512KiB" (2^10)'),
    ("capacity-ambiguous-t", _tiers(capacity="1t"), "capacity", "ambiguous"),
    ("unknown-tier-key-suggested", _tiers(capcity="1MiB"), "capcity",
     "did you mean 'capacity'?"),
    ("unknown-top-key-suggested", {"record_trase": "t.csv", "tiers": _tiers()["tiers"]},
     "record_trase", "did you mean 'record_trace'?"),
    ("unknown-backend-suggested", _tiers(backend="lmbd"), "backend", "did you mean 'lmdb'?"),
    ("unknown-policy-suggested", _tiers(policy="lfru"), "policy", "did you mean"),
    ("unknown-policy-quote-closes", _tiers(policy="fifoo"), "policy",
     ", or 'package.module:ClassName'"),
    ("policy-module-missing-hint", _tiers(policy="tc_no_such_mod_q:MyPolicy"), "policy",
     "no module named 'tc_no_such_mod_q' (from a checkout, run with PYTHONPATH=."),
    ("policy-attribute-typo", _tiers(policy="collections:OrderedDic"), "policy",
     "has no attribute 'OrderedDic'; did you mean 'OrderedDict'?"),
    ("name-with-newline", _tiers(name="ssd\n"), "name", "short name"),
    ("origin-class-attribute", {"origin": {"kind": "collections:Nope", "path": "."},
                                "tiers": _tiers()["tiers"]}, "origin.kind",
     "has no attribute 'Nope'"),
    ("record-trace-is-the-origin", {"record_trace": "model.safetensors",
                                    "origin": {"kind": "safetensors", "path": "model.safetensors"},
                                    "tiers": _tiers()["tiers"]}, "record_trace", "is the origin"),
    ("record-trace-links-to-the-origin", {"record_trace": "model-link",
                                          "origin": {"kind": "safetensors",
                                                     "path": "model.safetensors"},
                                          "tiers": _tiers()["tiers"]},
     "record_trace", "is the origin"),
    ("record-trace-hard-link-to-the-origin", {"record_trace": "model-hard",
                                              "origin": {"kind": "safetensors",
                                                         "path": "model.safetensors"},
                                              "tiers": _tiers()["tiers"]},
     "record_trace", "is the origin"),
    ("record-trace-in-the-origin-folder", {"record_trace": "real/weights/trace.csv",
                                           "origin": {"kind": "npy", "path": "real/weights"},
                                           "tiers": _tiers()["tiers"]},
     "record_trace", "inside the origin folder"),
    ("record-trace-via-link-in-a-tier", {"record_trace": "link/trace.csv",
                                         "tiers": _tiers(path="real")["tiers"]},
     "record_trace", "inside the folder of tier 'ssd'"),
    ("record-trace-dangling-link", {"record_trace": "dangling/trace.csv",
                                    "tiers": _tiers()["tiers"]}, "record_trace", "dangling"),
]


def _furnish(root: Path) -> None:
    """What some BAD cases refer to: a file, a folder, a symlink to it, an origin in it,
    an origin file with a symbolic and a hard link to it, a dangling symlink."""
    (root / "afile").write_text("x")
    (root / "real" / "weights").mkdir(parents=True)
    (root / "link").symlink_to(root / "real")
    (root / "model.safetensors").write_bytes(b"not read by validation")
    (root / "model-link").symlink_to(root / "model.safetensors")
    os.link(root / "model.safetensors", root / "model-hard")
    (root / "dangling").symlink_to(root / "nowhere")


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
