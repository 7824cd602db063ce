"""The common core of the trace readers: :class:`Trace`, the format names, the limits.

:class:`Trace` is the request sequence every reader returns;
:func:`detect_format` tells a file's format and compression from its name;
:class:`Bounds` carries ``limit`` and ``max_requests`` into a reader. The
constants are the limits every reader enforces (see :mod:`tiercache.sim.traces`).
Names without a leading underscore here are shared by the reader modules of
this package; :mod:`tiercache.sim.traces` re-exports the public ones.

Thread-safety: no mutable state; a :class:`Trace` is immutable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from ...errors import TraceError

__all__ = ["COMPRESSIONS", "DEFAULT_MAX_REQUESTS", "FORMATS", "INT64_MAX", "KEY_COLUMNS",
           "MAX_LINE_BYTES", "MAX_MAX_REQUESTS", "READ_CHUNK_BYTES", "SIZE_COLUMNS", "Bounds",
           "Compression", "Trace", "TraceFormat", "detect_format"]

TraceFormat = Literal["csv", "arc", "npy"]
Compression = Literal["zst", "gz"]

#: Format name -> file extension it is detected from.
FORMATS: dict[str, str] = {"csv": ".csv", "arc": ".lis", "npy": ".npy"}
#: Compression suffixes understood on top of any format.
COMPRESSIONS: dict[str, str] = {".zst": "zst", ".gz": "gz"}

KEY_COLUMNS = ("key", "obj_id")
SIZE_COLUMNS = ("size", "obj_size")
#: Bytes read from a file per call.
READ_CHUNK_BYTES = 1 << 20
#: Largest int64: keys and sizes above it are refused.
INT64_MAX = np.iinfo(np.int64).max
#: Most requests :func:`read_trace` holds unless told otherwise (``max_requests``):
#: 2**26 requests are 512 MiB of int64 keys (1 GiB with sizes). P12, the largest ARC
#: trace, has 13.2M. A damaged ``n_blocks`` field or ``.npy`` header must not ask for
#: terabytes.
DEFAULT_MAX_REQUESTS = 1 << 26
#: Largest ``max_requests`` accepted (keeps the running sums far from int64 overflow).
MAX_MAX_REQUESTS = 1 << 40
#: Longest line (bytes, newline included) of a text trace: a "line" of gigabytes
#: without a newline is refused instead of read whole.
MAX_LINE_BYTES = 1 << 20


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


# --- format detection ------------------------------------------------------------------


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


@dataclass(frozen=True)
class Bounds:
    """How many requests to read (``limit``) and the most a trace may hold (``cap``)."""

    limit: int | None
    cap: int

    def too_many(self, what: str) -> str:
        """The reason of a trace refused for holding more than ``cap`` requests."""
        return (f"{what} more than max_requests={self.cap:,} requests, the most a trace "
                f"may hold in memory (8 bytes each, 16 with sizes); a damaged file? To "
                "replay a prefix pass limit=N (tiercache simulate --limit N); to hold more, "
                "raise max_requests (--max-requests N)")

