"""``record_trace`` never truncates: a trace grows across runs, and a file that is not
a trace is refused rather than overwritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tiercache
from tiercache.core.recording import TRACE_HEADER, TraceRecorder
from tiercache.errors import TierCacheError
from tiercache.origins import NpyDirOrigin
from tiercache.sim import read_trace


def _names(path: Path) -> list[str]:
    trace = read_trace(path)
    return [trace.key_name(k) for k in trace.keys.tolist()]


def test_two_recording_sessions_make_one_trace(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "trace.csv"
    with TraceRecorder(path) as first:
        first.record("a", 10)
        first.record('quoted,"key"', 20)
    with TraceRecorder(path, buffer_rows=1) as second:
        second.record("b", 30)
        assert second.rows_written == 1
    assert path.read_text().count(TRACE_HEADER) == 1
    trace = read_trace(path)
    assert _names(path) == ["a", 'quoted,"key"', "b"]
    assert trace.sizes is not None and trace.sizes.tolist() == [10, 20, 30]


def test_two_cache_runs_append_to_one_trace(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    NpyDirOrigin.write(origin, {"x": np.zeros(8, np.uint8), "y": np.zeros(16, np.uint8)})
    cfg = {"record_trace": str(tmp_path / "run.csv"), "origin": {"kind": "npy",
                                                                 "path": str(origin)},
           "tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}]}
    with tiercache.open(cfg) as cache:
        cache.get("x")
        cache.get("y")
    with tiercache.open(cfg) as cache:
        cache.get("y")
    trace = read_trace(tmp_path / "run.csv")
    assert _names(tmp_path / "run.csv") == ["x", "y", "y"]
    assert trace.sizes is not None and trace.sizes.tolist() == [8, 16, 16]


def test_an_empty_file_gets_the_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.touch()
    with TraceRecorder(path) as recorder:
        recorder.record("k", 1)
    assert path.read_text() == f"{TRACE_HEADER}\nk,1\n"


@pytest.mark.parametrize("content", [b"key,size", b"key,size\nk,1", b"key,size\r\nk,1\r\n"],
                         ids=["bare-header", "no-final-newline", "crlf"])
def test_an_unterminated_or_crlf_trace_is_continued_on_a_new_line(tmp_path: Path,
                                                                  content: bytes) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with TraceRecorder(path) as recorder:
        recorder.record("n", 2)
    assert path.read_bytes().startswith(content)
    assert _names(path)[-1] == "n"
    assert len(read_trace(path)) == content.count(b"k,1") + 1


@pytest.mark.parametrize("content", [b"id,bytes\n1,2\n", b"\n", b"key,sizes\n", b"\x00" * 100,
                                     b"keysize" * 10000, "kéy,size\n".encode()],
                         ids=["other-csv", "blank-line", "longer-header", "binary",
                              "no-newline", "non-ascii"])
def test_a_file_that_is_not_a_trace_is_refused_and_left_alone(tmp_path: Path,
                                                              content: bytes) -> None:
    path = tmp_path / "important.csv"
    path.write_bytes(content)
    with pytest.raises(TierCacheError, match=r"important\.csv is not a tiercache trace.*"
                                             r"refusing to append"):
        TraceRecorder(path)
    assert path.read_bytes() == content


def test_a_cache_refuses_to_record_over_another_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.csv"
    notes.write_text("name,phone\nalice,123\n")
    cfg = {"record_trace": str(notes),
           "tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}]}
    with pytest.raises(TierCacheError, match="not a tiercache trace"):
        tiercache.open(cfg)
    assert notes.read_text() == "name,phone\nalice,123\n"


def test_rows_are_flushed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    recorder = TraceRecorder(path)
    recorder.record("a", 1)
    assert path.read_text() == f"{TRACE_HEADER}\n"  # buffered
    recorder.close()
    recorder.close()  # idempotent
    assert path.read_text() == f"{TRACE_HEADER}\na,1\n"
    assert recorder.closed and recorder.rows_written == 1


def test_a_path_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(TierCacheError, match=r"record_trace: cannot open .*dir\.csv"):
        TraceRecorder(tmp_path / "dir.csv")
