"""ARC ``.lis`` traces: ``start_block n_blocks ignored request_no`` per line.

:func:`read_arc` parses blocks of whole lines with numpy and expands each line
into ``n_blocks`` one-block requests; errors name the exact line even when
blocks split the file anywhere.

Thread-safety: no shared state.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from ...errors import TraceError
from .core import INT64_MAX, MAX_LINE_BYTES, Bounds, Compression, Trace
from .streams import STREAM_ERRORS, open_binary, stream_error

__all__ = ["BLOCK_BYTES", "read_arc"]

#: Decompressed text per block of the .lis parser.
BLOCK_BYTES = 4 << 20
#: Requests expanded per numpy step of the .lis expansion (bounds its temporaries).
_EXPAND_CHUNK = 1 << 20


def _lis_bad_line(data: bytes) -> tuple[int, str] | None:
    """The first malformed line of a ``.lis`` text, as (1-based line, reason). O(n), slow path."""
    for number, text in enumerate(data.splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 4:
            return number, (f"expected 4 integers (start_block n_blocks ignored request_no), "
                            f"got {len(fields)} field(s): {text[:80]!r} (a truncated line?)")
        for f in fields:
            try:
                value = int(f)
            except ValueError:
                return number, f"{f.decode(errors='replace')!r} is not an integer"
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                return number, f"{value} does not fit in 64 bits"
    return None


def _lis_line_of_row(data: bytes, row: int) -> int:
    """The 1-based line of the ``row``-th (0-based) non-blank line. O(n), slow path."""
    seen = -1
    for number, text in enumerate(data.splitlines(), start=1):
        if text.strip():
            seen += 1
            if seen == row:
                return number
    return row + 1


def _lis_blocks(raw: IO[bytes], path: Path) -> Iterator[tuple[bytes, int]]:
    """Whole-line blocks of about :data:`BLOCK_BYTES` and the number of lines
    before each. Memory O(block); a line over :data:`MAX_LINE_BYTES` is an error."""
    lines_before = 0
    tail = b""
    while True:
        chunk = raw.read(BLOCK_BYTES)
        data = tail + chunk
        if chunk:
            cut = data.rfind(b"\n") + 1
            if len(data) - cut > MAX_LINE_BYTES:
                raise TraceError(f"line longer than {MAX_LINE_BYTES:,} bytes (not a .lis "
                                 "trace, or its newlines are missing)", file=path,
                                 line=lines_before + data.count(b"\n", 0, cut) + 1)
            block, tail = data[:cut], data[cut:]
        else:
            block, tail = data, b""
        if block:
            yield block, lines_before
            lines_before += block.count(b"\n")
        if not chunk:
            return


def _lis_table(block: bytes, path: Path, lines_before: int) -> npt.NDArray[np.int64]:
    """The ``(start_block, n_blocks)`` columns of one block of whole lines."""
    try:
        with warnings.catch_warnings():  # "input contained no data": handled by the caller
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(io.BytesIO(block), dtype=np.int64, ndmin=2, comments=None)
    except ValueError as exc:
        bad = _lis_bad_line(block)
        if bad is None:
            raise TraceError(f"not an ARC .lis trace: {exc}", file=path) from None
        raise TraceError(bad[1], file=path, line=lines_before + bad[0]) from None
    if table.shape[1] != 4:
        bad = _lis_bad_line(block)
        raise TraceError(bad[1] if bad else "expected 4 integers per line (start_block "
                         "n_blocks ignored request_no)", file=path,
                         line=lines_before + (bad[0] if bad else 1))
    return table[:, :2]


def read_arc(path: Path, compression: Compression | None, bounds: Bounds) -> Trace:
    """The trace of a ``.lis`` file. O(file size); memory O(requests kept)."""
    starts: list[npt.NDArray[np.int64]] = []
    counts: list[npt.NDArray[np.int64] | None] = []  # None: every line of the block is 1
    total = 0
    try:
        with open_binary(path, compression) as raw:
            for block, lines_before in _lis_blocks(raw, path):
                if not block.strip():
                    continue
                table = _lis_table(block, path, lines_before)
                start, count = table[:, 0], table[:, 1]

                def line_of(row: int, block: bytes = block, before: int = lines_before) -> int:
                    return before + _lis_line_of_row(block, row)

                if int(count.min()) < 1:
                    row = int(np.argmax(count < 1))
                    raise TraceError(f"n_blocks must be >= 1, got {int(count[row])}",
                                     file=path, line=line_of(row))
                # each term <= cap + 1 <= 2**40 + 1: the running sum cannot overflow
                running = total + np.cumsum(np.minimum(count, bounds.cap + 1))
                if bounds.limit is not None and int(running[-1]) >= bounds.limit:
                    keep = int(np.searchsorted(running, bounds.limit)) + 1  # 1st row >= limit
                    before = total if keep == 1 else int(running[keep - 2])
                    start, count = start[:keep], count[:keep].copy()
                    count[-1] = bounds.limit - before  # cut the last line to fit
                    running = running[:keep].copy()
                    running[-1] = bounds.limit
                if int(running[-1]) > bounds.cap:
                    row = int(np.argmax(running > bounds.cap))
                    raise TraceError(bounds.too_many(f"n_blocks {int(count[row]):,} makes the "
                                                     "trace expand to"),
                                     file=path, line=line_of(row))
                last = start + (count - 1)  # count <= cap here: no overflow unless start is
                if bool(np.any((start > 0) & (last < start))):
                    row = int(np.argmax((start > 0) & (last < start)))
                    raise TraceError(f"blocks {int(start[row])} + {int(count[row])} run past "
                                     "the largest 64-bit block number", file=path,
                                     line=line_of(row))
                starts.append(start.copy())
                counts.append(None if int(count.max()) == 1 else count.copy())
                total = int(running[-1])
                if bounds.limit is not None and total >= bounds.limit:
                    break
    except STREAM_ERRORS as exc:
        raise stream_error(exc, path) from None
    if not total:
        return Trace(np.empty(0, np.int64), source=str(path))
    start = np.concatenate(starts)
    if all(c is None for c in counts):  # one request a line (OLTP): the starts are the keys
        return Trace(start, source=str(path))
    count = np.concatenate([np.ones(s.size, np.int64) if c is None else c
                            for s, c in zip(starts, counts, strict=True)])
    del starts, counts
    # keys[i] = start of i's line + (i - first request of i's line), built in place:
    # one array of `total` int64 plus O(_EXPAND_CHUNK) temporaries.
    first = np.cumsum(count) - count
    keys = np.repeat(start - first, count)
    del start, first, count
    for lo in range(0, total, _EXPAND_CHUNK):
        hi = min(total, lo + _EXPAND_CHUNK)
        keys[lo:hi] += np.arange(lo, hi, dtype=np.int64)
    return Trace(keys, source=str(path))

