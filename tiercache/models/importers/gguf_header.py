"""The GGUF header parser: every count, length, type and offset checked before use.

:func:`read_gguf_header` maps a ``.gguf`` file and parses its header
(:class:`GGUFHeader`: metadata, :class:`GGUFTensor` infos, alignment) without
trusting it; :func:`read_gguf_metadata` returns the metadata alone.
:mod:`tiercache.models.importers.gguf` imports the tensors the header describes.

Hostile files. The header is untrusted: every count and length in it is
checked against the bytes left in the file and against a sane limit *before*
anything is allocated for it (``gguf.GGUFReader`` trusts them: an array that
declares 2^40 elements in a 72-byte file made it allocate until the machine
ran out of memory). Checked: the magic and version, the key/value and tensor
counts, every string length (keys at most 64 KiB, tensor names at most
:data:`MAX_TENSOR_NAME_BYTES`), every value type, array lengths (at most
:data:`MAX_ARRAY_LEN`, nesting at most :data:`MAX_ARRAY_DEPTH`), duplicate keys
and tensor names, tensor ranks (1..4), dimensions (>= 1, the row a multiple
of the quantization block), types (known, and dequantizable by ``gguf``),
offsets (aligned, inside the file), ``general.alignment`` (a power of two),
and (in :mod:`~tiercache.models.importers.gguf`, for llama files) the hyper-parameters
and every tensor's shape against them. All of it happens before the first
shard is written, so a bad file writes nothing. Every problem is one
:class:`~tiercache.errors.ModelFormatError` naming the file and the key
or tensor.

Complexity: O(header size); memory: the file is memory-mapped, nothing is
allocated from a declared size before it is checked. Thread-safety: a parse
uses only its own map; the cache of dequantizable types is filled idempotently.
"""

from __future__ import annotations

import importlib.util
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError

__all__ = ["DEFAULT_ALIGNMENT", "GGUF_MAGIC", "GGUF_VERSIONS", "MAX_ALIGNMENT", "MAX_ARRAY_DEPTH",
           "MAX_ARRAY_LEN", "MAX_DIMS", "MAX_KEY_BYTES", "MAX_KV_COUNT", "MAX_TENSOR_COUNT",
           "MAX_TENSOR_NAME_BYTES", "GGUFHeader", "GGUFTensor", "read_gguf_header",
           "read_gguf_metadata"]

GGUF_MAGIC = b"GGUF"
#: GGUF versions this reader understands (1 had 32-bit counts and is not supported).
GGUF_VERSIONS = (2, 3)

#: Limits on what a header may declare (each is also checked against the bytes left).
MAX_KEY_BYTES = 1 << 16
MAX_TENSOR_NAME_BYTES = 64  # the GGUF spec: "at most 64 bytes"
MAX_KV_COUNT = 1 << 20
MAX_TENSOR_COUNT = 1 << 20
#: 16x the largest vocabulary in use (~256k tokens).
MAX_ARRAY_LEN = 1 << 22
MAX_ARRAY_DEPTH = 4
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 20
DEFAULT_ALIGNMENT = 32

# GGUF value types: struct format of each scalar type (8 = string, 9 = array).
_STRING, _ARRAY = 8, 9
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "uint8"), 1: ("<b", "int8"), 2: ("<H", "uint16"), 3: ("<h", "int16"),
    4: ("<I", "uint32"), 5: ("<i", "int32"), 6: ("<f", "float32"), 7: ("<?", "bool"),
    10: ("<Q", "uint64"), 11: ("<q", "int64"), 12: ("<d", "float64"),
}
_TYPE_NAMES = {**{k: v[1] for k, v in _SCALARS.items()}, _STRING: "string", _ARRAY: "array"}
_MIN_VALUE_BYTES = {**{k: struct.calcsize(v[0]) for k, v in _SCALARS.items()},
                    _STRING: 8, _ARRAY: 12}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a checked GGUF header.

    ``shape`` is the numpy shape (GGUF's ``ne`` reversed); ``offset`` is
    absolute in the file; ``nbytes`` is what the tensor occupies there.
    """

    name: str
    shape: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF header after :func:`read_gguf_header` checked it."""

    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]
    alignment: int
    data_start: int
    file_size: int


class _Cursor:
    """Bounds-checked little-endian reads from a buffer (one header parse)."""

    def __init__(self, buf: Any, size: int, file: Path) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.file = file

    def fail(self, reason: str) -> ModelFormatError:
        return ModelFormatError(reason, file=self.file)

    def need(self, nbytes: int, what: str) -> None:
        left = self.size - self.pos
        if nbytes > left:
            raise self.fail(f"truncated: {what} needs {nbytes} bytes at byte {self.pos}, "
                            f"the file has {max(left, 0)} left")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str, limit: int | None = None) -> str:
        length = self.u64(f"the length of {what}")
        if limit is not None and length > limit:
            raise self.fail(f"{what} declares {length} bytes (at most {limit} allowed)")
        self.need(length, what)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def value(self, type_id: int, what: str, depth: int = 0) -> Any:
        """One metadata value of GGUF type ``type_id`` as plain Python."""
        scalar = _SCALARS.get(type_id)
        if scalar is not None:
            fmt = scalar[0]
            size = struct.calcsize(fmt)
            self.need(size, what)
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
            self.pos += size
            return value
        if type_id == _STRING:
            return self.string(what)
        if type_id != _ARRAY:
            raise self.fail(f"{what} has value type {type_id}, which GGUF does not define")
        if depth >= MAX_ARRAY_DEPTH:
            raise self.fail(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        item_type = self.u32(f"the item type of {what}")
        if item_type not in _MIN_VALUE_BYTES:
            raise self.fail(f"{what} is an array of value type {item_type}, which GGUF "
                            "does not define")
        count = self.u64(f"the length of {what}")
        if count > MAX_ARRAY_LEN:
            raise self.fail(f"{what} declares {count} items (at most {MAX_ARRAY_LEN} allowed)")
        self.need(count * _MIN_VALUE_BYTES[item_type],
                  f"{what} ({count} x {_TYPE_NAMES[item_type]})")
        scalar = _SCALARS.get(item_type)
        if scalar is not None:  # one numpy view for the whole array
            dtype = np.dtype(scalar[0])
            items = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * dtype.itemsize
            return items.tolist()
        return [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(count)]


def _dequantizable(type_id: int) -> str | None:
    """The GGML type name if ``gguf`` can dequantize it, else None (one tiny trial)."""
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        return None
    if qtype.name in _TRIED_TYPES:
        return qtype.name if _TRIED_TYPES[qtype.name] else None
    ok = True
    try:
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            probe = np.zeros(block, dtype=np.float32 if type_size == 4 else np.float16)
        else:
            probe = np.zeros((1, type_size), dtype=np.uint8)
        gguf.quants.dequantize(probe, qtype)
    except NotImplementedError:
        ok = False
    _TRIED_TYPES[qtype.name] = ok
    return qtype.name if ok else None


_TRIED_TYPES: dict[str, bool] = {}


def _parse_header(buf: Any, size: int, file: Path) -> GGUFHeader:
    import gguf

    cur = _Cursor(buf, size, file)
    cur.need(4, "the magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    cur.pos = 4
    version = cur.u32("the version")
    if version not in GGUF_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in GGUF_VERSIONS:
            raise cur.fail("a big-endian GGUF file: only little-endian files are supported")
        raise cur.fail(f"GGUF version {version} is not supported (only {GGUF_VERSIONS})")
    tensor_count = cur.u64("the tensor count")
    kv_count = cur.u64("the metadata count")
    if kv_count > MAX_KV_COUNT:
        raise cur.fail(f"the header declares {kv_count} metadata keys (at most "
                       f"{MAX_KV_COUNT} allowed)")
    if tensor_count > MAX_TENSOR_COUNT:
        raise cur.fail(f"the header declares {tensor_count} tensors (at most "
                       f"{MAX_TENSOR_COUNT} allowed)")
    cur.need(kv_count * 14, f"{kv_count} metadata keys")  # each: key length, a byte, type, value
    # the header's own fields, under the names gguf.GGUFReader gives them
    meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensor_count,
                            "GGUF.kv_count": kv_count}
    types: dict[str, int] = {}
    for index in range(kv_count):
        key = cur.string(f"metadata key #{index}", MAX_KEY_BYTES)
        if key in meta:
            raise cur.fail(f"metadata key {key!r} appears twice")
        type_id = cur.u32(f"the value type of metadata {key!r}")
        meta[key] = cur.value(type_id, f"metadata {key!r}")
        types[key] = type_id
    cur.need(tensor_count * 33, f"{tensor_count} tensor infos")  # each at least 33 bytes
    raw_tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for index in range(tensor_count):
        name = cur.string(f"the name of tensor #{index}", MAX_TENSOR_NAME_BYTES)
        if not name:
            raise cur.fail(f"tensor #{index} has an empty name")
        if name in names:
            raise cur.fail(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = cur.u32(f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        ne = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        type_id = cur.u32(f"the type of tensor {name!r}")
        offset = cur.u64(f"the data offset of tensor {name!r}")
        raw_tensors.append((name, ne, type_id, offset))
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in meta:
        alignment = meta["general.alignment"]
        if types["general.alignment"] != 4 or not 1 <= alignment <= MAX_ALIGNMENT or \
                alignment & (alignment - 1):
            raise cur.fail(f"metadata 'general.alignment' is {alignment!r}: expected a uint32 "
                           f"power of two up to {MAX_ALIGNMENT}")
    data_start = -(-cur.pos // alignment) * alignment
    data_bytes = size - data_start
    tensors: list[GGUFTensor] = []
    for name, ne, type_id, offset in raw_tensors:
        what = f"tensor {name!r}"
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise cur.fail(f"{what} has type {type_id}, which GGML does not define") from None
        if any(n < 1 for n in ne):
            raise cur.fail(f"{what} has shape {list(ne)} (GGUF order): every dimension must "
                           "be >= 1")
        if ne[0] % block:
            raise cur.fail(f"{what}: its rows of {ne[0]} values are not a whole number of "
                           f"{qtype.name} blocks of {block}")
        nbytes = math.prod(ne) // block * type_size
        if offset % alignment:
            raise cur.fail(f"{what}: data offset {offset} is not a multiple of the "
                           f"alignment {alignment}")
        if offset + nbytes > data_bytes:
            raise cur.fail(f"truncated: {what} ({qtype.name} {list(ne)}, {nbytes} bytes) ends "
                           f"at byte {data_start + offset + nbytes} of {size}")
        if _dequantizable(type_id) is None:
            raise cur.fail(f"{what} uses quantization {qtype.name}, which gguf cannot "
                           "dequantize")
        tensors.append(GGUFTensor(name, tuple(reversed(ne)), type_id, qtype.name,
                                  data_start + offset, nbytes))
    return GGUFHeader(version, meta, tensors, alignment, data_start, size)


def _map_file(file: Path) -> tuple[mmap.mmap | bytes, int]:
    """The file's bytes, memory-mapped (an empty file: ``b""``)."""
    try:
        with file.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return b"", 0
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), size
    except FileNotFoundError:
        raise ModelFormatError("no such file", file=file) from None
    except IsADirectoryError:
        raise ModelFormatError("is a directory, expected a .gguf file", file=file) from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read: {getattr(exc, 'strerror', None) or exc}",
                               file=file) from None


def _require_gguf(file: Path) -> None:
    if importlib.util.find_spec("gguf") is None:  # pragma: no cover - environment
        raise ModelFormatError("reading GGUF needs the gguf package: "
                               "pip install 'tiercache[models]'", file=file)


def read_gguf_header(path: str | os.PathLike[str]) -> tuple[GGUFHeader, Any]:
    """Parse and check the header of the GGUF file ``path`` (see the module docstring).

    Returns the :class:`GGUFHeader` and the file's read-only memory map (the
    tensors' bytes are views into it). Raises :class:`ModelFormatError`
    naming the file and the key or tensor on any problem; nothing is
    allocated from a declared size before it is checked. O(header size).
    """
    file = Path(path)
    _require_gguf(file)
    buf, size = _map_file(file)
    return _parse_header(buf, size, file), buf


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every metadata key/value of a GGUF file as plain Python values (no tensors read).

    The header is checked as by :func:`read_gguf_header`. O(header size).
    """
    header, _ = read_gguf_header(path)
    return header.metadata
