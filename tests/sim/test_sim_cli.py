"""``tiercache simulate``: JSON, table, CSV, plot, tier layouts, errors, clean stdout."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pytest

from tiercache.cli import main
from tiercache.sim import Trace, progress_bar, simulate


@runtime_checkable
class RunProgress(Protocol):
    """The callback :func:`progress_bar` yields: ``advance(n)``, and ``start_run`` that
    announces the next run of a sweep."""

    def __call__(self, n: int) -> None: ...

    def start_run(self, policy: str, capacity: str, trace: str, requests: int) -> None: ...

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"policy", "capacity", "unit", "requests", "hits", "hit_ratio", "byte_hit_ratio"}


@pytest.fixture
def lis(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    starts = rng.zipf(1.3, 3000) % 500
    path = tmp_path / "t.lis"
    path.write_text("".join(f"{s} {1 + i % 3} 0 {i}\n" for i, s in enumerate(starts)))
    return path


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tiercache", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_json_one_object_or_a_list(lis: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(lis), "--policy", "arc", "--capacity", "100", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert set(one) == FIELDS and one["policy"] == "arc" and one["capacity"] == 100
    assert one["unit"] == "objects" and one["requests"] > 3000
    assert 0 < one["hit_ratio"] < 1 and one["byte_hit_ratio"] == one["hit_ratio"]
    assert main(["simulate", str(lis), "--policy", "lru,arc", "--capacity", "1%,50", "--json"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert [(r["policy"], r["unit"]) for r in many] == [("lru", "objects")] * 2 + [
        ("arc", "objects")] * 2
    assert many[1]["capacity"] == many[3]["capacity"] == 50


def test_table_csv_and_plot(lis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_csv, png = tmp_path / "r.csv", tmp_path / "mrc.png"
    assert main(["simulate", str(lis), "--policy", "lru,lfu,arc", "--capacity",
                 "1%,5%,10%,25%", "--csv", str(out_csv), "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert "lfu" in captured.out and "hit ratio" in captured.out and "(25%)" in captured.out
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 12 and set(rows[0]) >= FIELDS and rows[3]["capacity_spec"] == "25%"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_stdout_is_pure_json_even_with_a_forced_progress_bar(lis: Path) -> None:
    proc = run_cli("simulate", str(lis), "--capacity", "64", "--json", "--progress")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == FIELDS


def test_user_policy_from_a_checkout(lis: Path) -> None:
    proc = run_cli("simulate", str(lis), "--policy", "lru,examples.my_policy:MRUPolicy",
                   "--capacity", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["policy"] for r in json.loads(proc.stdout)] == [
        "lru", "examples.my_policy:MRUPolicy"]


def test_tier_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "run.csv"
    trace.write_text("key,size\n" + "".join(f"k{i % 7},{1000 * (1 + i % 3)}\n"
                                            for i in range(200)))
    toml = tmp_path / "tiers.toml"
    toml.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "4KiB"\n'
                    '[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "ssd"\n'
                    'capacity = "1MiB"\n')
    model = tmp_path / "costs.toml"
    model.write_text('[ssd]\nread_latency_s = "50us"\nread_bytes_per_s = "2GB/s"\n')
    assert main(["simulate", str(trace), "--config", str(toml), "--model", str(model),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in result["tiers"]] == ["ram", "ssd"]
    assert sum(t["hits"] for t in result["tiers"]) + result["origin"]["hits"] == 200
    assert result["mean_s"] > 0 and not (tmp_path / "ssd").exists()
    assert main(["simulate", str(trace), "--config", str(toml)]) == 0
    assert "virtual time" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--capacity", "lots"], "capacity 'lots' is not a count"),
    (["--capacity", "64MiB", "--unit", "objects"], "needs --unit bytes"),
    (["--capacity", "64MiB"], "has no sizes"),
    (["--capacity", "10", "--policy", "nope"], "unknown policy 'nope'"),
    ([], "give --capacity"),
])
def test_errors_are_one_line(lis: Path, args: list[str], message: str) -> None:
    proc = run_cli("simulate", str(lis), *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("tiercache: error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_matplotlib_is_imported_only_for_a_plot() -> None:
    code = ("import sys, tiercache.cli, tiercache.sim; "
            "tiercache.cli.build_parser(); assert 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- per-policy options and readable progress ---------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_policy_options_in_the_policy_list(lis: Path) -> None:
    proc = run_cli("simulate", str(lis), "--policy", "lru,2q(a_in_size_ratio=0.3, "
                   "a_out_size_ratio=0.5),2q", "--capacity", "50", "--json")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [r["policy"] for r in records] == [
        "lru", "2q(a_in_size_ratio=0.3, a_out_size_ratio=0.5)", "2q"]
    assert records[1]["hits"] != records[2]["hits"]


@pytest.mark.parametrize(("policy", "message"), [
    ("lru,2q(a_in_size_rati=0.3)", "unknown option 'a_in_size_rati' for TwoQPolicy; did you "
                                   "mean 'a_in_size_ratio'?"),
    ("lru,2q(a_in_size_ratio=0.3", "a '(' is not closed"),
    ("2q(0.3)", "policy spec '2q(0.3)': '0.3' has no key"),
])
def test_bad_policy_options_are_one_line(lis: Path, policy: str, message: str) -> None:
    proc = run_cli("simulate", str(lis), "--policy", policy, "--capacity", "10")
    assert proc.returncode == 2
    assert proc.stderr.startswith("tiercache: error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_progress_on_a_pipe_is_plain_labelled_lines(lis: Path) -> None:
    """--progress into a pipe: whole lines naming run, policy, capacity and trace, counts
    with thousands separators, no escape codes or carriage returns, <= 100 columns."""
    long_policy = "examples.my_policy:MRUPolicy"
    proc = run_cli("simulate", str(lis), "--policy", f"lru,{long_policy}", "--capacity",
                   "1000,1%", "--progress", "--json")
    assert proc.returncode == 0, proc.stderr
    requests = json.loads(proc.stdout)[0]["requests"]
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert all(len(line) <= 100 for line in lines), lines
    assert lines[0] == f"[1/4] lru, capacity 1,000, t.lis: {requests:,} requests"
    assert lines[2].startswith(f"[3/4] {long_policy}, capacity 1,000, t.lis: ")
    assert "capacity 5 (1%)" in lines[1] or "(1%)" in lines[1], lines
    assert lines[-1].startswith(f"2 policies x 2 capacities: done, {4 * requests:,} requests")


def test_plain_progress_lines_are_occasional_and_short() -> None:
    trace_name = "a-very-long-trace-name" * 6 + ".csv"
    out = io.StringIO()
    with progress_bar(6000, enabled=True, runs=2, file=out, interval_s=0.0) as advance:
        assert isinstance(advance, RunProgress)
        advance.start_run("lru", "70 (10%)", trace_name, 3000)
        for _ in range(3):
            advance(1024)
        advance.start_run("x" * 150, "1,000", "t.csv", 3000)
        advance(3000)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 100 for line in lines), lines
    assert lines[0].startswith("[1/2] lru, capacity 70 (10%), a-very-long-trace-n")
    assert "..." in lines[0] and lines[0].endswith(".csv: 3,000 requests")
    assert lines[1].endswith(": 1,024 of 3,000 (34%)") and lines[2].endswith("2,048 of 3,000 "
                                                                               "(68%)")
    assert lines[3].startswith("[2/2] xxxx") and lines[3].endswith(", capacity 1,000, t.csv: "
                                                                   "3,000 requests")
    assert lines[4].startswith("replaying: done, 6,072 requests in ")
    assert len(lines) == 5
    out = io.StringIO()
    trace = Trace(np.arange(3000) % 700, source="t.csv")
    with progress_bar(2 * len(trace), enabled=True, runs=2, file=out,
                      interval_s=3600) as advance:
        simulate(trace, ["lru", "arc"], ["10%"], progress=advance)
    assert out.getvalue().splitlines()[:2] == ["[1/2] lru, capacity 70 (10%), t.csv: 3,000 "
                                               "requests", "[2/2] arc, capacity 70 (10%), "
                                               "t.csv: 3,000 requests"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_labels_each_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    trace = Trace(np.arange(5000) % 900, source="OLTP.lis.zst")
    out = FakeTerminal()
    with progress_bar(2 * len(trace), runs=2, file=out) as advance:
        assert advance is not None
        simulate(trace, ["lru", "arc"], [1000], progress=advance)
    text = ANSI.sub("", out.getvalue())
    assert "[2/2] arc, capacity 1,000, OLTP.lis.zst" in text
    assert "5,000/5,000" in text
    assert all(len(line) <= 100 for line in text.replace("\r", "\n").splitlines())
    with progress_bar(10, file=io.StringIO()) as nothing:  # not a terminal: off by default
        assert nothing is None
