"""The bad-config table: configs that must fail with one clear ConfigError naming the key
(used by tests/core/test_config.py and tests/cli/test_cli.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
