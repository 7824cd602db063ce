"""The `tiercache` command: tables, JSON, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
