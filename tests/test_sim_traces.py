"""Trace readers: CSV / ARC .lis / .npy, plain, zstd and gzip; clear errors naming file and line."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from tiercache.errors import TierCacheError, TraceError
from tiercache.sim.traces import Trace, detect_format, read_trace, write_trace_csv

LIS = b"10 1 0 0\n20 3 0 1\n10 2 0 2\n"
LIS_KEYS = [10, 20, 21, 22, 10, 11]


def compress(data: bytes, how: str) -> bytes:
    if how == "zst":
        return zstandard.ZstdCompressor().compress(data)
    if how == "gz":
        return gzip.compress(data)
    return data


def write(tmp_path: Path, name: str, data: bytes, how: str = "") -> Path:
    path = tmp_path / (name + (f".{how}" if how else ""))
    path.write_bytes(compress(data, how))
    return path


@pytest.mark.parametrize("how", ["", "zst", "gz"])
def test_lis_expands_blocks(tmp_path: Path, how: str) -> None:
    trace = read_trace(write(tmp_path, "t.lis", LIS, how))
    assert trace.keys.tolist() == LIS_KEYS
    assert trace.sizes is None and trace.names is None
    assert trace.distinct_objects == 5
    assert not trace.keys.flags.writeable


@pytest.mark.parametrize("how", ["", "zst", "gz"])
def test_csv_with_string_keys_and_sizes(tmp_path: Path, how: str) -> None:
    data = b'key,size,extra\nblk.0.w,100,x\n"a,b",7,y\nblk.0.w,100,z\n007,1,q\n7,2,q\n\n'
    trace = read_trace(write(tmp_path, "t.csv", data, how))
    assert trace.keys.tolist() == [0, 1, 0, 2, 3]
    assert trace.names == ["blk.0.w", "a,b", "007", "7"]  # "007" and "7" are different keys
    assert trace.sizes is not None and trace.sizes.tolist() == [100, 7, 100, 1, 2]
    assert trace.distinct_bytes == 110 and trace.total_bytes == 210


def test_csv_obj_id_columns_and_no_size(tmp_path: Path) -> None:
    trace = read_trace(write(tmp_path, "t.csv", b"time,obj_id\n0,5\n1,6\n2,5\n"))
    assert trace.keys.tolist() == [0, 1, 0] and trace.sizes is None
    trace = read_trace(write(tmp_path, "u.csv", b"obj_id,obj_size\n5,10\n6,20\n"))
    assert trace.sizes is not None and trace.sizes.tolist() == [10, 20]


@pytest.mark.parametrize("how", ["", "zst", "gz"])
def test_npy_variants(tmp_path: Path, how: str) -> None:
    def save(name: str, arr: np.ndarray) -> Path:
        import io

        buf = io.BytesIO()
        np.save(buf, arr)
        return write(tmp_path, name, buf.getvalue(), how)

    assert read_trace(save("a.npy", np.array([3, 1, 3], np.uint32))).keys.tolist() == [3, 1, 3]
    pairs = read_trace(save("b.npy", np.array([[3, 10], [1, 20]], np.int64)))
    assert pairs.keys.tolist() == [3, 1] and pairs.sizes is not None
    assert pairs.sizes.tolist() == [10, 20]
    strings = read_trace(save("c.npy", np.array(["x", "y", "x"])))
    assert strings.keys.tolist() == [0, 1, 0] and strings.names == ["x", "y"]
    rec = np.zeros(2, dtype=[("obj_id", "<i8"), ("obj_size", "<i4")])
    rec["obj_id"], rec["obj_size"] = [9, 8], [1, 2]
    structured = read_trace(save("d.npy", rec))
    assert structured.keys.tolist() == [9, 8] and structured.sizes is not None


def test_format_detection_and_override(tmp_path: Path) -> None:
    assert detect_format("x/OLTP.lis.zst") == ("arc", "zst")
    assert detect_format("run.CSV.gz") == ("csv", "gz")
    assert detect_format("keys.npy") == ("npy", None)
    assert detect_format("trace.txt", "arc") == ("arc", None)
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        detect_format("trace.txt")
    with pytest.raises(TraceError, match="unknown trace format"):
        detect_format("trace.csv", "parquet")
    path = write(tmp_path, "oltp.txt", LIS)
    assert read_trace(path, "arc").keys.tolist() == LIS_KEYS


def test_write_and_read_back(tmp_path: Path) -> None:
    trace = Trace.from_keys(["a", "b,c", "a", 'q"uote'], [1, 2, 3, 4])
    for name in ("t.csv", "t.csv.gz", "t.csv.zst"):
        back = read_trace(write_trace_csv(trace, tmp_path / name))
        assert back.keys.tolist() == trace.keys.tolist() and back.names == trace.names
        assert back.sizes is not None and back.sizes.tolist() == [1, 2, 3, 4]


# --- errors: the file, the line, the reason ------------------------------------------------


@pytest.mark.parametrize(("name", "data", "line", "match"), [
    ("t.lis", b"1 1 0 0\n2 1 0 1\n3 1 0\n", 3, "expected 4 integers"),
    ("t.lis", b"1 1 0 0\n\n2 x 0 1\n", 3, "'x' is not an integer"),
    ("t.lis", b"1 1 0 0\n2 0 0 1\n", 2, "n_blocks must be >= 1"),
    ("t.csv", b"key,size\na,1\nb\n", 3, "expected 2 fields"),
    ("t.csv", b"key,size\na,1\nb,-4\n", 3, "size '-4' is not a whole number"),
    ("t.csv", b"key,size\na,1\nb,1.5\n", 3, "size '1.5'"),
    ("t.csv", b"name,size\na,1\n", 1, "no key column"),
    ("t.csv", b"", 1, "empty file"),
    ("t.csv", b"key\n\xff\xfe\n", 2, "not UTF-8"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, name: str, data: bytes, line: int,
                                            match: str) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(TraceError, match=match) as info:
        read_trace(path)
    assert info.value.file == str(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("name", ["t.lis", "t.csv"])
@pytest.mark.parametrize("how", ["zst", "gz"])
def test_truncated_compressed_file_is_an_error(tmp_path: Path, name: str, how: str) -> None:
    """A file cut short is an error even when the cut falls on a line boundary
    (zstandard's stream reader alone would return the shorter stream silently)."""
    rows = b"".join(b"%d 1 0 %d\n" % (i * 7919 % 100003, i) for i in range(40000))
    data = rows if name.endswith(".lis") else b"key\n" + rows.replace(b" 1 0 ", b"_")
    full = write(tmp_path, name, data, how)
    assert len(read_trace(full)) == 40000
    blob = full.read_bytes()
    cut = tmp_path / f"cut-{full.name}"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TraceError, match="truncated") as info:
        read_trace(cut)
    assert info.value.file == str(cut)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lis.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 20)
    with pytest.raises(TraceError, match="zstd"):
        read_trace(bad)
    with pytest.raises(TraceError, match="file not found"):
        read_trace(tmp_path / "nope.csv")
    npy = tmp_path / "bad.npy"
    npy.write_bytes(b"not numpy")
    with pytest.raises(TraceError, match=r"not a readable \.npy"):
        read_trace(npy)
    with pytest.raises(TraceError, match="no requests"):
        read_trace(write(tmp_path, "empty.csv", b"key,size\n"))
    floats = tmp_path / "f.npy"
    np.save(floats, np.array([1.5, 2.5]))
    with pytest.raises(TraceError, match="must be integers"):
        read_trace(floats)
    assert issubclass(TraceError, TierCacheError) and issubclass(TraceError, ValueError)


def test_cli_reports_a_bad_trace_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.lis", b"1 1 0 0\n2 1 0\n")
    proc = subprocess.run([sys.executable, "-m", "tiercache", "simulate", str(path),
                           "--capacity", "10"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"tiercache: error: {path}:2: expected 4 integers "
                                   "(start_block n_blocks ignored request_no), got 3 field(s): "
                                   "b'2 1 0' (a truncated line?)")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# --- the ARC traces ship with the repository --------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
IN_REPO_TRACES = ROOT / "data" / "traces" / "arc"
#: Where tests, docs, benchmarks and examples may not look: a fresh clone has nothing beside it.
OUTSIDE_THE_REPO = ("../shared", "..\\shared", '"shared" / "traces"')


def test_arc_traces_are_in_the_repository() -> None:
    for name, requests in (("OLTP", 914_145),):
        assert len(read_trace(IN_REPO_TRACES / f"{name}.lis.zst")) == requests
    for name in ("P6", "P12"):
        path = IN_REPO_TRACES / f"{name}.lis.zst"
        assert path.stat().st_size > 1_000_000, f"{path} missing or truncated"
    assert "Megiddo" in (IN_REPO_TRACES / "README.md").read_text(encoding="utf-8")


def test_nothing_refers_to_files_beside_the_repository() -> None:
    """A user's clone has no ``../shared``: tests, docs, benchmarks, examples and the
    package must use the in-repo copies (data/traces/arc)."""
    found = []
    files = [ROOT / "README.md", ROOT / "Makefile"]
    for folder in ("tests", "docs", "bench", "examples", "tiercache", "policies"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml")]
    for path in files:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            found += [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                      for needle in OUTSIDE_THE_REPO if needle in line]
    assert not found, "files outside the repository referenced:\n" + "\n".join(found)
