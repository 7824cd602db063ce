"""``read_trace``: read a trace file with the reader of its format.

Thread-safety: no shared state.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import TraceError
from .arcfile import read_arc
from .core import DEFAULT_MAX_REQUESTS, MAX_MAX_REQUESTS, Bounds, Trace, detect_format
from .csvfile import read_csv
from .npyfile import read_npy

__all__ = ["read_trace"]


def read_trace(path: str | os.PathLike[str], fmt: str | None = None, *,
               limit: int | None = None,
               max_requests: int | None = DEFAULT_MAX_REQUESTS) -> Trace:
    """Read a trace file (format from the extension unless ``fmt`` is given).

    Parameters
    ----------
    path:
        ``*.csv``, ``*.lis`` or ``*.npy``, each optionally ``.zst``/``.gz`` compressed.
    fmt:
        ``"csv"``, ``"arc"`` or ``"npy"`` to override the extension.
    limit:
        Read only the first ``limit`` requests; reading stops there (a ``.lis``
        line is cut to fit), so a prefix of a huge trace costs only the prefix.
    max_requests:
        Refuse a trace holding more requests than this (default
        :data:`DEFAULT_MAX_REQUESTS`), with a :class:`TraceError` naming the line
        (or the ``.npy`` header) that goes past it, *before* allocating for them.
        ``None`` removes the cap (the trace must then fit in memory).

    Raises :class:`TraceError` naming the file (and line) on any problem,
    including a trace with no requests or one over ``max_requests``.
    Complexity: O(file size) time; memory O(requests kept) -- the trace is held
    as int64 arrays (8 or 16 bytes per request) -- plus a few MiB of buffers,
    whatever the file's compression ratio. Thread-safe (no shared state).
    """
    file = Path(path)
    for name, value in (("limit", limit), ("max_requests", max_requests)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= MAX_MAX_REQUESTS):
            raise ValueError(f"read_trace({str(file)!r}): {name} must be a whole number from 1 "
                             f"to 2**40, got {value!r}")
    cap = MAX_MAX_REQUESTS if max_requests is None else max_requests
    bounds = Bounds(limit, cap)
    kind, compression = detect_format(file, fmt)
    if kind == "csv":
        trace = read_csv(file, compression, bounds)
    elif kind == "arc":
        trace = read_arc(file, compression, bounds)
    else:
        trace = read_npy(file, compression, bounds)
    if len(trace) == 0:
        raise TraceError("the trace contains no requests", file=file)
    return trace

