"""Record a cache's own access trace as ``key,size`` CSV rows.

:class:`TraceRecorder` is what ``record_trace = "path.csv"`` in a cache's TOML
turns on: :meth:`tiercache.TieredCache.get` calls :meth:`TraceRecorder.record`
with the key and the shard's ``nbytes`` for every get that returned a shard,
so an inference run can be captured and replayed later with
``tiercache simulate path.csv`` (see docs/experiments.md). The file is the CSV
format of :mod:`tiercache.sim.traces` (header ``key,size``; keys quoted where
CSV needs it).

A recorder never truncates: it appends to an existing trace (one file across
runs; the header is written only when the file is new or empty), and refuses
(:class:`~tiercache.errors.TierCacheError` naming the file) a file whose first
line is not the ``key,size`` header, so a mistyped path cannot wipe or corrupt
another file.

Rows are buffered in memory and written in blocks of ``buffer_rows``, and on
:meth:`flush`/:meth:`close`, so recording costs a lock and a list append per
get (~0.3 µs), not a write.

Thread-safety: every method may be called from several threads; one lock
serialises the buffer and the file.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import TierCacheError

__all__ = ["TRACE_HEADER", "TraceRecorder"]

#: The first line of every trace a recorder writes (and the only one it appends to).
TRACE_HEADER = "key,size"


class TraceRecorder:
    """Append ``key,size`` rows to a CSV file, buffered; thread-safe.

    Parameters
    ----------
    path:
        The CSV file to append to, created (with its folder) if missing. An
        existing file is never truncated: rows are appended after what it holds.
    buffer_rows:
        Rows kept in memory before they are written.

    Raises :class:`~tiercache.errors.TierCacheError` naming the path when the
    file cannot be created or opened, or when it exists, is not empty and its
    first line is not :data:`TRACE_HEADER` ("not a tiercache trace; refusing to
    append"). Opening reads at most a few bytes of an existing file. O(1).
    """

    def __init__(self, path: str | os.PathLike[str], *, buffer_rows: int = 8192) -> None:
        self.path = Path(path)
        self.buffer_rows = max(1, buffer_rows)
        self.rows_written = 0
        self._lock = threading.Lock()
        self._rows: list[tuple[str, int]] = []
        self._file: IO[str] | None = self._open_for_append(self.path)
        self._writer = csv.writer(self._file, lineterminator="\n")

    @staticmethod
    def _open_for_append(path: Path) -> IO[str]:
        """Open ``path`` for appending (O_APPEND, never truncated), checking that an
        existing file is a trace and ends with a whole line; write the header to a
        new or empty file. O(1): reads the first and last bytes only."""
        header = TRACE_HEADER.encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = path.open("a+b")
        except OSError as exc:
            raise TierCacheError(f"record_trace: cannot open {path} for appending: "
                                 f"{exc.strerror or exc}") from None
        try:
            raw.seek(0)
            head = raw.read(len(header) + 2)
            end = raw.seek(0, os.SEEK_END)
            if end == 0:
                raw.write(header + b"\n")  # a valid (empty) trace from the start
            else:
                first = head.split(b"\n", 1)[0].removesuffix(b"\r")
                if first != header:
                    raise TierCacheError(
                        f"record_trace: {path} is not a tiercache trace (its first line is "
                        f"not {TRACE_HEADER!r}); refusing to append. Name a new file, or "
                        "move this one away")
                raw.seek(end - 1)
                if raw.read(1) != b"\n":  # a row cut short (a crash) or a bare header
                    raw.write(b"\n")
            raw.flush()
        except OSError as exc:
            raw.close()
            raise TierCacheError(f"record_trace: cannot read or write {path}: "
                                 f"{exc.strerror or exc}") from None
        except BaseException:
            raw.close()
            raise
        return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogatepass", newline="")

    def record(self, key: str, size: int) -> None:
        """Buffer one access. O(1) amortised; writes a block every ``buffer_rows`` rows.
        Silently ignored after :meth:`close`."""
        with self._lock:
            if self._file is None:
                return
            self._rows.append((key, size))
            if len(self._rows) >= self.buffer_rows:
                self._write_locked()

    def _write_locked(self) -> None:
        if self._rows and self._file is not None:
            self._writer.writerows(self._rows)
            self.rows_written += len(self._rows)
            self._rows.clear()

    def flush(self) -> None:
        """Write the buffered rows and flush the file. O(buffered rows)."""
        with self._lock:
            self._write_locked()
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Write what is buffered, flush and close the file. Idempotent. O(buffered rows)."""
        with self._lock:
            if self._file is None:
                return
            try:
                self._write_locked()
                self._file.flush()
            finally:
                self._file.close()
                self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "open"
        return f"<TraceRecorder {self.path} {state} rows={self.rows_written + len(self._rows)}>"
