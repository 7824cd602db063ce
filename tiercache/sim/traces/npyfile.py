"""``.npy`` traces: keys, string keys (interned), ``(key, size)`` rows or a structured array.

:func:`read_npy` streams the array after checking its header against the
bounds, so a header promising 2**40 rows allocates nothing; never unpickles.

Thread-safety: no shared state.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from ...errors import TraceError
from .core import INT64_MAX, KEY_COLUMNS, READ_CHUNK_BYTES, SIZE_COLUMNS, Bounds, Compression, Trace
from .streams import STREAM_ERRORS, open_binary, stream_error

__all__ = ["read_npy"]

#: Bytes of ``.npy`` data allowed per request of ``max_requests`` (an ``(n, 2)`` int64
#: array is 16 bytes a request).
_NPY_BYTES_PER_REQUEST = 16


def _intern(values: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], list[str]]:
    ids: dict[str, int] = {}
    out = np.fromiter((ids.setdefault(str(v), len(ids)) for v in values.tolist()),
                      dtype=np.int64, count=values.size)
    return out, list(ids)


def _int_column(values: npt.NDArray[Any], path: Path, what: str) -> npt.NDArray[np.int64]:
    if values.dtype.kind not in "iu":
        raise TraceError(f"{what} must be integers, got dtype {values.dtype}", file=path)
    if values.dtype.kind == "u" and values.size and int(values.max()) > INT64_MAX:
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
                    bounds: Bounds) -> npt.NDArray[Any]:
    """The array of an ``.npy`` file, streamed: memory O(the array), checked against
    ``bounds`` from its header before a byte of data is read."""
    with open_binary(path, compression) as raw:
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
            chunk = raw.read(min(READ_CHUNK_BYTES, nbytes - len(data)))
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


def read_npy(path: Path, compression: Compression | None, bounds: Bounds) -> Trace:
    """The trace of an ``.npy`` file. O(file size); memory O(the array)."""
    try:
        arr = _read_npy_array(path, compression, bounds)
    except STREAM_ERRORS as exc:
        raise stream_error(exc, path) from None
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
