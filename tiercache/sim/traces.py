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

Thread-safety: readers share no state; a :class:`Trace` is immutable (its
arrays are read-only) and may be shared between threads.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import warnings
import zlib
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal, cast

import numpy as np
import numpy.typing as npt

from ..errors import TraceError

__all__ = ["COMPRESSIONS", "DEFAULT_MAX_REQUESTS", "FORMATS", "MAX_LINE_BYTES", "Trace",
           "TraceFormat", "detect_format", "read_trace", "write_trace_csv"]

TraceFormat = Literal["csv", "arc", "npy"]
Compression = Literal["zst", "gz"]

#: Format name -> file extension it is detected from.
FORMATS: dict[str, str] = {"csv": ".csv", "arc": ".lis", "npy": ".npy"}
#: Compression suffixes understood on top of any format.
COMPRESSIONS: dict[str, str] = {".zst": "zst", ".gz": "gz"}

KEY_COLUMNS = ("key", "obj_id")
SIZE_COLUMNS = ("size", "obj_size")
_READ_CHUNK_BYTES = 1 << 20
_INT64_MAX = np.iinfo(np.int64).max
#: Most requests :func:`read_trace` holds unless told otherwise (``max_requests``):
#: 2**26 requests are 512 MiB of int64 keys (1 GiB with sizes). P12, the largest ARC
#: trace, has 13.2M. A damaged ``n_blocks`` field or ``.npy`` header must not ask for
#: terabytes.
DEFAULT_MAX_REQUESTS = 1 << 26
#: Largest ``max_requests`` accepted (keeps the running sums far from int64 overflow).
_MAX_MAX_REQUESTS = 1 << 40
#: Longest line (bytes, newline included) of a text trace: a "line" of gigabytes
#: without a newline is refused instead of read whole.
MAX_LINE_BYTES = 1 << 20
#: Bytes of ``.npy`` data allowed per request of ``max_requests`` (an ``(n, 2)`` int64
#: array is 16 bytes a request).
_NPY_BYTES_PER_REQUEST = 16
#: Compressed bytes per zstd decompress call: an RLE block turns 4 bytes into 128 KiB,
#: so 512 bytes decompress to 16 MiB at most.
_ZSTD_FEED_BYTES = 512
#: Decompressed text per block of the .lis parser.
_LIS_BLOCK_BYTES = 4 << 20
#: Requests expanded per numpy step of the .lis expansion (bounds its temporaries).
_EXPAND_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class Trace:
    """A request sequence: ``keys[i]`` (and ``sizes[i]`` bytes) for request ``i``.

    Parameters
    ----------
    keys:
        Object ids, one per request (converted to a read-only int64 array).
    sizes:
        Bytes per request, or ``None`` when the trace has no sizes (count mode
        only; byte mode then refuses it).
    names:
        For interned traces, ``names[id]`` is the original string key.
    source:
        Where it came from (a path), for messages and reports.

    Derived figures (:attr:`distinct_objects`, :attr:`distinct_bytes`) are
    computed once, O(n log n), and cached. Immutable; thread-safe.
    """

    keys: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64] | None = None
    names: Sequence[str] | None = field(default=None, repr=False)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        keys = np.ascontiguousarray(self.keys, dtype=np.int64)
        if keys.ndim != 1:
            raise ValueError(f"trace keys must be 1-D, got shape {keys.shape}")
        keys.flags.writeable = False
        object.__setattr__(self, "keys", keys)
        if self.sizes is not None:
            sizes = np.ascontiguousarray(self.sizes, dtype=np.int64)
            if sizes.shape != keys.shape:
                raise ValueError(f"trace has {keys.size} keys but sizes of shape {sizes.shape}")
            if sizes.size and int(sizes.min()) < 0:
                raise ValueError(f"trace sizes must be >= 0 (request {int(np.argmin(sizes))} "
                                 f"has {int(sizes.min())})")
            sizes.flags.writeable = False
            object.__setattr__(self, "sizes", sizes)

    @classmethod
    def from_keys(cls, keys: Sequence[Any] | npt.NDArray[Any],
                  sizes: npt.ArrayLike | None = None,
                  *, source: str = "<memory>") -> Trace:
        """A trace from Python keys: integers are kept, anything else is interned by ``str``.

        O(n). ``Trace.from_keys(["a", "b", "a"])`` has keys ``[0, 1, 0]``.
        """
        arr = np.asarray(keys)
        if arr.dtype.kind in "iu" and arr.ndim == 1:
            return cls(arr.astype(np.int64), None if sizes is None else np.asarray(sizes),
                       source=source)
        ids: dict[str, int] = {}
        items = keys.tolist() if isinstance(keys, np.ndarray) else keys
        out = np.fromiter((ids.setdefault(str(k), len(ids)) for k in items), dtype=np.int64)
        return cls(out, None if sizes is None else np.asarray(sizes), names=list(ids),
                   source=source)

    def __len__(self) -> int:
        return int(self.keys.size)

    def sizes_or_ones(self) -> npt.NDArray[np.int64]:
        """``sizes``, or an array of ones when the trace has none. O(n) for the latter."""
        return self.sizes if self.sizes is not None else np.ones(len(self), dtype=np.int64)

    @cached_property
    def _first_index(self) -> npt.NDArray[np.intp]:
        _, first = np.unique(self.keys, return_index=True)
        return first

    @cached_property
    def distinct_objects(self) -> int:
        """How many different keys the trace requests. O(n log n) once."""
        if self.names is not None:
            return len(self.names)
        return int(self._first_index.size)

    @cached_property
    def distinct_bytes(self) -> int:
        """Sum of the sizes of the distinct keys (each at its first request); the
        distinct object count when the trace has no sizes. O(n log n) once."""
        if self.sizes is None:
            return self.distinct_objects
        return int(self.sizes[self._first_index].sum())

    @cached_property
    def total_bytes(self) -> int:
        """Sum of every request's size (the request count without sizes). O(n) once."""
        return int(self.sizes.sum()) if self.sizes is not None else len(self)

    def key_name(self, key: int) -> str:
        """The original key of id ``key``: its string for interned traces, else ``str(key)``."""
        return self.names[key] if self.names is not None else str(key)

    def head(self, n: int) -> Trace:
        """The first ``n`` requests (a view, no copy). O(1)."""
        return Trace(self.keys[:n], None if self.sizes is None else self.sizes[:n],
                     names=self.names, source=self.source)

    def __repr__(self) -> str:
        sizes = "bytes" if self.sizes is not None else "no sizes"
        return f"<Trace {self.source} requests={len(self)} {sizes}>"


# --- format detection and decompression -----------------------------------------------


def detect_format(path: str | os.PathLike[str], fmt: str | None = None,
                  ) -> tuple[TraceFormat, Compression | None]:
    """The format and compression of ``path`` from its extension (``fmt`` forces the format).

    ``oltp.lis.zst`` -> ``("arc", "zst")``; ``run.csv`` -> ``("csv", None)``.
    Raises :class:`TraceError` for an unknown extension or format name. O(1).
    """
    name = Path(path).name.lower()
    compression: Compression | None = None
    for suffix, comp in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression = cast(Compression, comp)
            name = name[:-len(suffix)]
            break
    if fmt is not None:
        if fmt not in FORMATS:
            raise TraceError(f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})",
                             file=path)
        return cast(TraceFormat, fmt), compression
    for candidate, ext in FORMATS.items():
        if name.endswith(ext):
            return cast(TraceFormat, candidate), compression
    known = ", ".join(f"{ext} ({f})" for f, ext in FORMATS.items())
    raise TraceError(f"cannot tell the trace format from the file name (known: {known}, "
                     "optionally + .zst or .gz); pass the format explicitly (--format)",
                     file=path)


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression that notices truncation.

    ``zstandard``'s own ``stream_reader`` returns a short stream without error
    when the input stops inside a frame; this reader raises :class:`TraceError`
    instead. Concatenated frames are read one after the other. The decompressor
    is fed :data:`_ZSTD_FEED_BYTES` at a time, so one call never inflates more
    than 16 MiB however well the data compresses. Not thread-safe.
    """

    def __init__(self, raw: IO[bytes], path: str) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._path = path
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._input = memoryview(b"")
        self._in_pos = 0
        self._pending = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while self._pos >= len(self._pending) and not self._eof:
            if self._in_pos >= len(self._input):
                self._input = memoryview(self._raw.read(_READ_CHUNK_BYTES))
                self._in_pos = 0
                if not self._input:
                    if self._in_frame:
                        raise TraceError("zstd data is truncated (the stream ends inside a "
                                         "frame); the file was cut short -- copy it again",
                                         file=self._path)
                    self._eof = True
                    return
            chunk: Any = self._input[self._in_pos:self._in_pos + _ZSTD_FEED_BYTES]
            self._in_pos += len(chunk)
            out: list[bytes] = []
            while chunk:
                try:
                    out.append(self._obj.decompress(chunk))
                except self._zstd.ZstdError as exc:
                    raise TraceError(f"corrupt zstd data: {exc}", file=self._path) from None
                self._in_frame = True
                if self._obj.eof:  # a frame ended: the rest starts the next one
                    chunk = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    self._in_frame = False
                else:
                    chunk = b""
            self._pending = b"".join(out)
            self._pos = 0

    def readinto(self, buffer: Any) -> int:
        self._fill()
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending) - self._pos)
        view[:n] = self._pending[self._pos:self._pos + n]
        self._pos += n
        return n


@contextmanager
def _open_binary(path: Path, compression: Compression | None) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading its decompressed bytes; OS errors become TraceError."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise TraceError("file not found", file=path) from None
    except IsADirectoryError:
        raise TraceError("is a directory, expected a trace file", file=path) from None
    except PermissionError:
        raise TraceError("permission denied reading the file", file=path) from None
    with raw:
        if compression == "zst":
            try:
                reader = _ZstdReader(raw, str(path))
            except ImportError:
                raise TraceError("reading .zst needs the zstandard package "
                                 "(pip install 'tiercache[sim]')", file=path) from None
            yield cast(IO[bytes], io.BufferedReader(reader, _READ_CHUNK_BYTES))
        elif compression == "gz":
            yield cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
        else:
            yield raw


def _stream_error(exc: BaseException, path: Path, line: int | None = None) -> TraceError:
    """A decompression or decoding failure as a TraceError naming file (and line)."""
    if isinstance(exc, TraceError):
        if exc.line is None and line is not None:
            return TraceError(exc.reason, file=path, line=line)
        return exc
    if isinstance(exc, EOFError):
        reason = f"compressed data is truncated ({exc}); the file was cut short"
    elif isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        reason = f"corrupt gzip data: {exc}"
    elif isinstance(exc, UnicodeDecodeError):
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start} of a block)"
    else:
        reason = f"cannot read: {exc}"
    return TraceError(reason, file=path, line=line)


_STREAM_ERRORS = (TraceError, EOFError, OSError, zlib.error, UnicodeDecodeError)


# --- readers ---------------------------------------------------------------------------


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
                                  or not 1 <= value <= _MAX_MAX_REQUESTS):
            raise ValueError(f"read_trace({str(file)!r}): {name} must be a whole number from 1 "
                             f"to 2**40, got {value!r}")
    cap = _MAX_MAX_REQUESTS if max_requests is None else max_requests
    bounds = _Bounds(limit, cap)
    kind, compression = detect_format(file, fmt)
    if kind == "csv":
        trace = _read_csv(file, compression, bounds)
    elif kind == "arc":
        trace = _read_lis(file, compression, bounds)
    else:
        trace = _read_npy(file, compression, bounds)
    if len(trace) == 0:
        raise TraceError("the trace contains no requests", file=file)
    return trace


@dataclass(frozen=True)
class _Bounds:
    """How many requests to read (``limit``) and the most a trace may hold (``cap``)."""

    limit: int | None
    cap: int

    def too_many(self, what: str) -> str:
        """The reason of a trace refused for holding more than ``cap`` requests."""
        return (f"{what} more than max_requests={self.cap:,} requests, the most a trace "
                f"may hold in memory (8 bytes each, 16 with sizes); a damaged file? To "
                "replay a prefix pass limit=N (tiercache simulate --limit N); to hold more, "
                "raise max_requests (--max-requests N)")


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


def _read_csv(path: Path, compression: Compression | None, bounds: _Bounds) -> Trace:
    reader: Any = None
    physical = [0]  # lines read so far
    try:
        with _open_binary(path, compression) as raw:
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
                    if size < 0 or size > _INT64_MAX:
                        raise TraceError(f"size {raw_size!r} is not a whole number of bytes "
                                         ">= 0", file=path, line=reader.line_num)
                    add_size(size)
    except csv.Error as exc:
        raise TraceError(f"malformed CSV: {exc}", file=path, line=physical[0]) from None
    except _STREAM_ERRORS as exc:  # the stream failed while reading the next line
        raise _stream_error(exc, path, physical[0] + 1) from None
    key_arr = np.frombuffer(keys, dtype=np.int64) if keys else np.empty(0, np.int64)
    size_arr = None
    if size_col is not None:
        size_arr = np.frombuffer(sizes, dtype=np.int64) if sizes else np.empty(0, np.int64)
    return Trace(key_arr, size_arr, names=list(ids), source=str(path))


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
            if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
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
    """Whole-line blocks of about :data:`_LIS_BLOCK_BYTES` and the number of lines
    before each. Memory O(block); a line over :data:`MAX_LINE_BYTES` is an error."""
    lines_before = 0
    tail = b""
    while True:
        chunk = raw.read(_LIS_BLOCK_BYTES)
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


def _read_lis(path: Path, compression: Compression | None, bounds: _Bounds) -> Trace:
    starts: list[npt.NDArray[np.int64]] = []
    counts: list[npt.NDArray[np.int64] | None] = []  # None: every line of the block is 1
    total = 0
    try:
        with _open_binary(path, compression) as raw:
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
    except _STREAM_ERRORS as exc:
        raise _stream_error(exc, path) from None
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


def _intern(values: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], list[str]]:
    ids: dict[str, int] = {}
    out = np.fromiter((ids.setdefault(str(v), len(ids)) for v in values.tolist()),
                      dtype=np.int64, count=values.size)
    return out, list(ids)


def _int_column(values: npt.NDArray[Any], path: Path, what: str) -> npt.NDArray[np.int64]:
    if values.dtype.kind not in "iu":
        raise TraceError(f"{what} must be integers, got dtype {values.dtype}", file=path)
    if values.dtype.kind == "u" and values.size and int(values.max()) > _INT64_MAX:
        raise TraceError(f"{what} do not fit in int64", file=path)
    return values.astype(np.int64, copy=False)


def _npy_header(raw: IO[bytes], path: Path) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` from an ``.npy`` header, read from ``raw``."""
    from numpy.lib import format as npy_format

    magic = raw.read(npy_format.MAGIC_LEN)
    if magic.startswith(b"PK\x03\x04"):
        raise TraceError("expected a single .npy array, got an .npz archive", file=path)
    try:
        version = npy_format.read_magic(io.BytesIO(magic))
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(raw)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(raw)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]} "
                             "(1.0 and 2.0 are read)")
    except TraceError:
        raise
    except Exception as exc:  # numpy's header parser also raises SyntaxError, TokenError...
        raise TraceError(f"not a readable .npy array: {type(exc).__name__}: {exc}",
                         file=path) from None
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


def _read_npy_array(path: Path, compression: Compression | None,
                    bounds: _Bounds) -> npt.NDArray[Any]:
    """The array of an ``.npy`` file, streamed: memory O(the array), checked against
    ``bounds`` from its header before a byte of data is read."""
    with _open_binary(path, compression) as raw:
        shape, fortran, dtype = _npy_header(raw, path)
        if dtype.hasobject:
            raise TraceError("object arrays are not supported (they would need pickle)",
                             file=path)
        rows = shape[0] if shape else 1
        row_items = math.prod(shape[1:])
        if len(shape) > 1 and not dtype.names and shape[1:] != (2,):
            raise TraceError(f"expected a 1-D array of keys or an (n, 2) array of (key, size) "
                             f"rows, got shape {shape}", file=path)
        if dtype.names:  # structured: every element is a request
            rows, row_items = math.prod(shape), 1
        if bounds.limit is not None and not fortran:
            rows = min(rows, bounds.limit)
        if rows > bounds.cap:
            raise TraceError(bounds.too_many(f"the header's shape {shape} holds"), file=path)
        nbytes = rows * row_items * dtype.itemsize
        max_bytes = bounds.cap * _NPY_BYTES_PER_REQUEST
        if nbytes > max_bytes:
            raise TraceError(f"the array's data would take {nbytes:,} bytes, more than the "
                             f"{max_bytes:,} allowed for max_requests={bounds.cap:,} "
                             f"({_NPY_BYTES_PER_REQUEST} bytes a request); raise max_requests "
                             "(--max-requests N) if the file is right", file=path)
        data = bytearray()  # grows with what the file really holds, not with the header
        while len(data) < nbytes:
            chunk = raw.read(min(_READ_CHUNK_BYTES, nbytes - len(data)))
            if not chunk:
                raise TraceError(f"the file ends after {len(data):,} of the {nbytes:,} data "
                                 f"bytes its header promises (shape {shape}, dtype {dtype}); "
                                 "it was cut short", file=path)
            data += chunk
    flat = np.frombuffer(data, dtype=dtype, count=rows * row_items) if nbytes else \
        np.empty(rows * row_items, dtype)
    if dtype.names:
        return flat
    out_shape = (rows, *shape[1:]) if shape else ()
    if fortran and len(shape) > 1:
        return flat.reshape(out_shape[::-1]).T
    return flat.reshape(out_shape)


def _read_npy(path: Path, compression: Compression | None, bounds: _Bounds) -> Trace:
    try:
        arr = _read_npy_array(path, compression, bounds)
    except _STREAM_ERRORS as exc:
        raise _stream_error(exc, path) from None
    names: list[str] | None = None
    sizes: npt.NDArray[np.int64] | None = None
    if arr.dtype.names:
        fields = [n.lower() for n in arr.dtype.names]
        key_field = next((arr.dtype.names[fields.index(n)] for n in KEY_COLUMNS
                          if n in fields), None)
        if key_field is None:
            raise TraceError(f"structured array without a 'key' or 'obj_id' field "
                             f"(fields: {', '.join(arr.dtype.names)})", file=path)
        size_field = next((arr.dtype.names[fields.index(n)] for n in SIZE_COLUMNS
                           if n in fields), None)
        key_values = np.asarray(arr[key_field]).reshape(-1)
        if size_field is not None:
            sizes = _int_column(np.asarray(arr[size_field]).reshape(-1), path, "sizes")
    elif arr.ndim == 2 and arr.shape[1] == 2:
        key_values = arr[:, 0]
        sizes = _int_column(arr[:, 1], path, "sizes")
    elif arr.ndim == 1:
        key_values = arr
    else:
        raise TraceError(f"expected a 1-D array of keys or an (n, 2) array of (key, size) "
                         f"rows, got shape {arr.shape}", file=path)
    if bounds.limit is not None:  # a Fortran-order file is read whole, then cut
        key_values = key_values[:bounds.limit]
        sizes = None if sizes is None else sizes[:bounds.limit]
    if key_values.dtype.kind in "USO":
        if key_values.dtype.kind == "O":
            raise TraceError("object arrays are not supported", file=path)
        keys, names = _intern(key_values)
    else:
        keys = _int_column(key_values, path, "keys")
    if sizes is not None and sizes.size and int(sizes.min()) < 0:
        raise TraceError(f"sizes must be >= 0 (request {int(np.argmin(sizes))} has "
                         f"{int(sizes.min())})", file=path)
    return Trace(keys, sizes, names=names, source=str(path))


# --- writing ---------------------------------------------------------------------------


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
