"""Decompressed byte streams of trace files, and their failures as :class:`TraceError`.

:func:`open_binary` opens a file for its decompressed bytes (``.zst`` through
:class:`ZstdReader`, which notices truncation and never inflates more than
16 MiB per call; ``.gz`` through :mod:`gzip`); :func:`stream_error` turns a
decompression or decoding failure (one of :data:`STREAM_ERRORS`) into a
:class:`TraceError` naming the file and line.

Thread-safety: a stream belongs to one reader; nothing is shared.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

from ...errors import TraceError
from .core import READ_CHUNK_BYTES, Compression

__all__ = ["STREAM_ERRORS", "ZstdReader", "open_binary", "stream_error"]

#: Compressed bytes per zstd decompress call: an RLE block turns 4 bytes into 128 KiB,
#: so 512 bytes decompress to 16 MiB at most.
_ZSTD_FEED_BYTES = 512


class ZstdReader(io.RawIOBase):
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
                self._input = memoryview(self._raw.read(READ_CHUNK_BYTES))
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
def open_binary(path: Path, compression: Compression | None) -> Iterator[IO[bytes]]:
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
                reader = ZstdReader(raw, str(path))
            except ImportError:
                raise TraceError("reading .zst needs the zstandard package "
                                 "(pip install 'tiercache[sim]')", file=path) from None
            yield cast(IO[bytes], io.BufferedReader(reader, READ_CHUNK_BYTES))
        elif compression == "gz":
            yield cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
        else:
            yield raw


def stream_error(exc: BaseException, path: Path, line: int | None = None) -> TraceError:
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


STREAM_ERRORS = (TraceError, EOFError, OSError, zlib.error, UnicodeDecodeError)

