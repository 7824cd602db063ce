"""Record a cache's own access trace as ``key,size`` CSV rows.

:class:`TraceRecorder` is what ``record_trace = "path.csv"`` in a cache's TOML
turns on: :meth:`tiercache.TieredCache.get` calls :meth:`TraceRecorder.record`
with the key and the shard's ``nbytes`` for every get that returned a shard,
so an inference run can be captured and replayed later with
``tiercache simulate path.csv`` (see docs/experiments.md). The file is the CSV
format of :mod:`tiercache.sim.traces` (header ``key,size``; keys quoted where
CSV needs it).

Rows are buffered in memory and written in blocks of ``buffer_rows``, and on
:meth:`flush`/:meth:`close`, so recording costs a lock and a list append per
get (~0.3 µs), not a write.

Thread-safety: every method may be called from several threads; one lock
serialises the buffer and the file.
"""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO

from .errors import TierCacheError

__all__ = ["TraceRecorder"]


class TraceRecorder:
    """Append ``key,size`` rows to a CSV file, buffered; thread-safe.

    Parameters
    ----------
    path:
        The CSV file to create (its folder is created if missing; an existing
        file is replaced).
    buffer_rows:
        Rows kept in memory before they are written.

    Raises :class:`~tiercache.errors.TierCacheError` naming the path when the
    file cannot be created.
    """

    def __init__(self, path: str | os.PathLike[str], *, buffer_rows: int = 8192) -> None:
        self.path = Path(path)
        self.buffer_rows = max(1, buffer_rows)
        self.rows_written = 0
        self._lock = threading.Lock()
        self._rows: list[tuple[str, int]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] | None = self.path.open(
                "w", encoding="utf-8", errors="surrogatepass", newline="")
        except OSError as exc:
            raise TierCacheError(f"record_trace: cannot create {self.path}: "
                                 f"{exc.strerror or exc}") from None
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(("key", "size"))
        self._file.flush()  # a valid (empty) trace from the start

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
        """Write what is buffered and close the file. Idempotent."""
        with self._lock:
            if self._file is None:
                return
            try:
                self._write_locked()
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
