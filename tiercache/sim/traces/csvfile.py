"""CSV traces: a header row naming the key (and size) columns; keys interned.

:func:`read_csv` reads one (see :mod:`tiercache.sim.traces` for the format);
:func:`write_trace_csv` writes any :class:`~.core.Trace` in it.

Thread-safety: no shared state.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ...errors import TraceError
from .core import INT64_MAX, KEY_COLUMNS, MAX_LINE_BYTES, SIZE_COLUMNS, Bounds, Compression, Trace
from .streams import STREAM_ERRORS, open_binary, stream_error

__all__ = ["read_csv", "write_trace_csv"]


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    cols = [h.strip().lower() for h in header]
    for name in names:
        if name in cols:
            return cols.index(name)
    return None


def _decoded_lines(raw: IO[bytes], path: Path, counter: list[int]) -> Iterator[str]:
    """Physical lines of ``raw`` as text, counting them in ``counter[0]`` so that a
    decoding or stream error names its exact line (a TextIOWrapper decodes blocks).
    A line longer than :data:`MAX_LINE_BYTES` is an error (it is never read whole)."""
    number = 0
    while True:
        line = raw.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        counter[0] = number
        if len(line) > MAX_LINE_BYTES:
            raise TraceError(f"line longer than {MAX_LINE_BYTES:,} bytes (not a text trace, "
                             "or its newlines are missing)", file=path, line=number)
        try:
            yield line.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise TraceError(f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)",
                             file=path, line=number) from None


def read_csv(path: Path, compression: Compression | None, bounds: Bounds) -> Trace:
    """The trace of a CSV file. O(file size); memory O(requests kept)."""
    reader: Any = None
    physical = [0]  # lines read so far
    try:
        with open_binary(path, compression) as raw:
            reader = csv.reader(_decoded_lines(raw, path, physical))
            header = next(reader, None)
            if header is None:
                raise TraceError("empty file: expected a header row naming a 'key' or "
                                 "'obj_id' column", file=path, line=1)
            key_col = _column(header, KEY_COLUMNS)
            size_col = _column(header, SIZE_COLUMNS)
            if key_col is None:
                raise TraceError(f"no key column: the header row must name a 'key' or 'obj_id' "
                                 f"column (it has {', '.join(map(repr, header))})",
                                 file=path, line=reader.line_num)
            need = max(key_col, -1 if size_col is None else size_col) + 1
            ids: dict[str, int] = {}
            keys = array("q")
            sizes = array("q")
            add_key, add_size = keys.append, sizes.append
            stop = bounds.cap if bounds.limit is None else min(bounds.limit, bounds.cap)
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(keys) >= stop:
                    if bounds.limit is not None and len(keys) >= bounds.limit:
                        break
                    raise TraceError(bounds.too_many("the trace holds"), file=path,
                                     line=reader.line_num)
                if len(row) < need:
                    raise TraceError(f"expected {need} fields, got {len(row)} (a truncated "
                                     "line?)", file=path, line=reader.line_num)
                k = row[key_col]
                kid = ids.get(k)
                if kid is None:
                    kid = ids[k] = len(ids)
                add_key(kid)
                if size_col is not None:
                    raw_size = row[size_col]
                    try:
                        size = int(raw_size)
                    except ValueError:
                        size = -1
                    if size < 0 or size > INT64_MAX:
                        raise TraceError(f"size {raw_size!r} is not a whole number of bytes "
                                         ">= 0", file=path, line=reader.line_num)
                    add_size(size)
    except csv.Error as exc:
        raise TraceError(f"malformed CSV: {exc}", file=path, line=physical[0]) from None
    except STREAM_ERRORS as exc:  # the stream failed while reading the next line
        raise stream_error(exc, path, physical[0] + 1) from None
    key_arr = np.frombuffer(keys, dtype=np.int64) if keys else np.empty(0, np.int64)
    size_arr = None
    if size_col is not None:
        size_arr = np.frombuffer(sizes, dtype=np.int64) if sizes else np.empty(0, np.int64)
    return Trace(key_arr, size_arr, names=list(ids), source=str(path))


def write_trace_csv(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write ``trace`` as a ``key,size`` CSV (``key`` only without sizes); ``.gz``/``.zst``
    suffixes compress. Interned keys are written as their strings. O(n)."""
    file = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "size"] if trace.sizes is not None else ["key"])
    names = trace.names
    keys = trace.keys.tolist()
    col = [names[k] for k in keys] if names is not None else keys
    if trace.sizes is not None:
        writer.writerows(zip(col, trace.sizes.tolist(), strict=True))
    else:
        writer.writerows([k] for k in col)
    data = buf.getvalue().encode("utf-8", errors="surrogatepass")
    name = file.name.lower()
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    file.write_bytes(data)
    return file
