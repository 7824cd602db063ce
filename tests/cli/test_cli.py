"""The `tiercache` command: tables, JSON, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_configs import BAD, _furnish

import tiercache
from tiercache.cli import main

TOML = """
[[tiers]]
name = "ram"
backend = "memory"
capacity = "1MiB"
policy = "arc"
[[tiers]]
name = "ssd"
backend = "lmdb"
path = "data/ssd"
capacity = "4MiB"
"""


def test_stats_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiers.toml"
    cfg.write_text(TOML)
    with tiercache.open(cfg) as cache:
        cache.put("w", np.ones(1000, np.float32), tier="ssd")
    assert main(["stats", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "ssd" in out and "lmdb" in out and "arc" in out
    assert main(["stats", "--json", str(cfg)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tiers"]["ssd"]["resident_count"] == 1
    assert stats["tiers"]["ram"]["resident_count"] == 0


def test_policies_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"lru", "lfu", "arc"} <= names


@pytest.mark.parametrize("content", [
    'tiers = "oops"',
    '[[tiers]]\nname = "r"\nbackend = "memory"\ncapacity = "-1GiB"\n',
    "not toml at all [[[",
])
def test_bad_config_one_line_no_traceback(tmp_path: Path, content: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "tiercache", "stats", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiercache: error: ")
    assert "bad.toml" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert "none.toml" in err and "not found" in err


# -- every malformed config through the real command --------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string (\\uXXXX escapes included)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)


def to_toml(cfg: dict[str, Any]) -> str:
    """A TOML document for a config dict (nested tables inline; enough for the BAD cases)."""
    text = "\n".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in cfg.items()) + "\n"
    assert tomllib.loads(text) == cfg, text  # the file says exactly what the dict says
    return text


@pytest.mark.parametrize(("cfg", "key", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.slow  # ~90 cases, a minute
def test_every_bad_config_is_one_line_exit_2_and_creates_nothing(
        tmp_path: Path, cfg: dict[str, Any], key: str, words: str) -> None:
    _furnish(tmp_path)
    toml = tmp_path / "bad.toml"
    toml.write_text(to_toml(cfg))
    before = sorted(tmp_path.rglob("*"))
    command = "verify" if len(key) % 2 else "stats"  # both commands, spread over the cases
    proc = subprocess.run([sys.executable, "-m", "tiercache", command, str(toml)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"tiercache: error: {toml}:"), lines[0]
    assert key in lines[0] and words.lower() in lines[0].lower(), lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing created on disk


# -- the stats table: degraded tiers, 100 columns (issue 11.7, 11.8) ------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # a port nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_stats_shows_a_redis_tier_that_is_down_and_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiers.toml"
    cfg.write_text(TOML + f'[[tiers]]\nname = "shared"\nbackend = "redis"\n'
                   f'url = "redis://127.0.0.1:{_closed_port()}/0"\ncapacity = "1GiB"\n'
                   'timeout = 0.5\nnamespace = "cli-test"\n')
    assert main(["stats", str(cfg)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("shared"))
    assert "redis" in row and "DEGRADED" in row
    assert "tier shared degraded: open: " in out and "Connection refused" in out
    healthy = next(line for line in out.splitlines() if line.startswith("ram "))
    assert " ok " in healthy
    assert main(["stats", "--json", str(cfg)]) == 1  # JSON too: the status says it


def test_stats_exits_0_when_every_tier_is_healthy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiers.toml"
    cfg.write_text(TOML)
    assert main(["stats", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "DEGRADED" not in out and "degraded" not in out
    assert "loop:" not in out  # no schedule was declared


def _busy_tier(backend: str, policy: str, *, degraded: bool = False) -> dict[str, Any]:
    big = 987_654_321
    return {"backend": backend, "policy": policy, "capacity_bytes": 1023 << 30,
            "resident_bytes": 1000 << 30, "resident_count": 123_456, "degraded": degraded,
            "degraded_reason": "put: [Errno 28] No space left on device" if degraded else None,
            "errors": 3 if degraded else 0, "hits": big, "misses": big, "promotions_in": big,
            "promotions_out": big, "demotions_in": big, "demotions_out": big,
            "evictions": big, "bytes_read": 999 << 40, "bytes_written": 1000 << 30,
            "get_latency_p50_s": 0.000_123_4, "get_latency_p99_s": 0.9876}


def test_stats_table_fits_100_columns_with_large_numbers() -> None:
    import io

    from tiercache.commands.stats import render_stats

    stats: dict[str, Any] = {"mode": "exclusive", "tiers": {
        "ram": _busy_tier("memory", "opt"), "ssd": _busy_tier("packed", "s3fifo"),
        "hdd": _busy_tier("diskcache", "wtinylfu", degraded=True),
        "shared": _busy_tier("redis", "arc")},
        "origin": {"kind": "SafetensorsOrigin", "hits": 12_345_678, "bytes_read": 1 << 40,
                   "get_latency_p50_s": 1.5, "get_latency_p99_s": 12.0},
        "loop": {"gets": 10, "stalls": 2, "stall_s": 0.1, "prefetched": 3}}
    buf = io.StringIO()
    render_stats(stats, file=buf)
    lines = buf.getvalue().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100, buf.getvalue()
    assert "…" not in buf.getvalue()  # nothing cut off to make it fit
    assert "origin (SafetensorsOrigin): 12345678 gets served, 1.0T read, p50/p99 1.5s/12s" in lines
    for name in ("ram", "ssd", "hdd", "shared"):
        assert any(line.startswith(name + " ") for line in lines)
    hdd = next(line for line in lines if line.startswith("hdd "))
    assert "wtinylfu" in hdd and "DEGRADED" in hdd and "988M/988M" in hdd
    assert "123µs/988ms" in hdd and "1.0T/1.0T" in hdd and "999T/1.0T" in hdd
    assert "tier hdd degraded: put: [Errno 28] No space left on device" in lines
    assert any(line.startswith("loop: 10 scheduled gets") for line in lines)
    buf = io.StringIO()
    render_stats({**stats, "loop": {**stats["loop"], "gets": 0}}, file=buf)
    assert "loop:" not in buf.getvalue()  # no schedule declared: no loop line
