"""Trace readers: CSV, the ARC paper's ``.lis`` and ``.npy``, optionally ``.zst``/``.gz``.

A :class:`Trace` is the request sequence as numpy arrays: ``keys`` (int64, one
per request) and optionally ``sizes`` (int64 bytes, one per request). Text keys
are *interned*: each distinct string gets a dense id (in order of first
appearance) and ``names[id]`` gives the string back.

Formats (chosen from the extension after stripping ``.zst``/``.gz``, or forced
with ``fmt=``):

``csv`` (``.csv``)
    A header row naming a key column ``key`` or ``obj_id`` and, optionally, a
    size column ``size`` or ``obj_size`` (other columns are ignored). Keys are
    strings, always interned (``"007"`` and ``"7"`` are different keys). This is
    what :class:`tiercache.TieredCache` writes with ``record_trace``.
``arc`` (``.lis``)
    The ARC paper's traces: four integers per line, ``start_block n_blocks
    ignored request_no``; a line stands for ``n_blocks`` one-block requests for
    ``start_block, start_block + 1, ...``. No sizes (every block is one page).
    Parsed and expanded with numpy: ~0.3 s for the 13M requests of P12.
``npy`` (``.npy``)
    A 1-D integer array of keys, a 1-D string array (interned), an ``(n, 2)``
    integer array of ``(key, size)`` rows, or a structured array with the CSV's
    field names. Loaded with ``allow_pickle=False``.

Every problem -- missing file, unknown format, truncated or corrupt
compression, a malformed line -- raises :class:`~tiercache.errors.TraceError`
naming the file and, for text formats, the 1-based line.

Memory is bounded by what the trace holds, never by what the file claims: files
are decompressed and parsed in blocks (a zstd or gzip "bomb" is never inflated
whole), a text line may be at most :data:`MAX_LINE_BYTES` long, and a trace may
hold at most ``max_requests`` requests (default :data:`DEFAULT_MAX_REQUESTS`,
512 MiB of keys) -- an ARC line ``0 268435456 0 0`` or an ``.npy`` header
promising 2**40 rows is refused with the file and line before anything is
allocated. ``limit=N`` reads only the first ``N`` requests of a longer trace
(reading stops there).

Modules: :mod:`.core` (:class:`Trace`, limits, :func:`detect_format`),
:mod:`.streams` (decompression, stream errors), one reader per format family --
:mod:`.csvfile` (and :func:`write_trace_csv`), :mod:`.arcfile` (``.lis``), :mod:`.npyfile` --
and :mod:`.reader` (:func:`read_trace`, which picks one). This package re-exports
the public names.

Thread-safety: readers share no state; a :class:`Trace` is immutable (its
arrays are read-only) and may be shared between threads.
"""

from __future__ import annotations

from .core import (
    COMPRESSIONS,
    DEFAULT_MAX_REQUESTS,
    FORMATS,
    MAX_LINE_BYTES,
    Trace,
    TraceFormat,
    detect_format,
)
from .csvfile import write_trace_csv
from .reader import read_trace

__all__ = ["COMPRESSIONS", "DEFAULT_MAX_REQUESTS", "FORMATS", "MAX_LINE_BYTES", "Trace",
           "TraceFormat", "detect_format", "read_trace", "write_trace_csv"]
