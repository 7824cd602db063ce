"""Import a ``.safetensors`` file: one shard per tensor, under its own name.

The format is simple enough to read directly -- an 8-byte little-endian header
length, a JSON header ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__":
{...}}``, then the raw little-endian tensor bytes -- so this reader memory-maps
the file and checks every entry itself -- the header length against the file
size, each dtype, shape (whole numbers, at most 32 of them) and data range,
with Python integers so nothing overflows -- all of them before the first
shard is written; a truncated or malformed file is one
:class:`~tiercache.errors.ModelFormatError` naming it and the tensor. ``BF16`` tensors
(numpy has no bfloat16) are widened to float32 exactly, or kept as bf16 bit
patterns with ``dtype="native"``; ``dtype`` can also make float16, bfloat16
or Q8_0 shards of float tensors
(:func:`~tiercache.models.importers.base.float_shard`). A Hugging Face
``config.json`` beside the file, if any, is kept in the manifest
(``metadata["hf_config"]``) and names the architecture (e.g. ``"bert"``).

Complexity: O(file size); one tensor in memory at a time. Thread-safety: an
import uses only its own memory map and sink.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from ..manifest import ModelManifest
from .base import PlannedShard, ShardSink, float_shard, float_target, write_shards

_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
#: The header limit of the reference implementation (the ``safetensors`` package).
_MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Most dimensions a tensor may have (numpy 1.x's limit).
MAX_DIMS = 32
#: numpy refuses a shape whose non-zero dimensions multiply to more than its index type
#: holds, even for an array of zero elements.
_MAX_SHAPE_BYTES = 1 << 62


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: a key given twice is an error, not "the last one wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of a safetensors file and the offset where data begins.

    The declared header length is checked against the file's size and a 100 MiB
    limit before it is read; a JSON key given twice, nesting too deep for the
    parser or anything but an object is a :class:`ModelFormatError` naming the
    file. O(header size).
    """
    file = Path(path)
    try:
        with file.open("rb") as fh:
            file_bytes = os.fstat(fh.fileno()).st_size
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ModelFormatError("truncated: shorter than the 8-byte header length",
                                       file=file)
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER_BYTES:
                raise ModelFormatError(f"not a safetensors file (header length {header_len})",
                                       file=file)
            if header_len > file_bytes - 8:
                raise ModelFormatError(f"truncated: the header needs {header_len} bytes, the "
                                       f"file has {file_bytes - 8}", file=file)
            raw = fh.read(header_len)
    except FileNotFoundError:
        raise ModelFormatError("no such file", file=file) from None
    except IsADirectoryError:
        raise ModelFormatError("is a directory, expected a .safetensors file",
                               file=file) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", file=file) from None
    if len(raw) < header_len:
        raise ModelFormatError(f"truncated: the header needs {header_len} bytes, the file has "
                               f"{len(raw)}", file=file)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ModelFormatError("malformed safetensors header (JSON nested too deep)",
                               file=file) from None
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ModelFormatError(f"malformed safetensors header ({exc})", file=file) from None
    if not isinstance(header, dict):
        raise ModelFormatError("malformed safetensors header (not an object)", file=file)
    return header, 8 + header_len


class _Entry:
    """One checked header entry: a tensor's dtype, shape and byte range in the data."""

    __slots__ = ("begin", "end", "kind", "shape", "stored")

    def __init__(self, kind: str, stored: np.dtype[Any], shape: tuple[int, ...], begin: int,
                 end: int) -> None:
        self.kind, self.stored, self.shape, self.begin, self.end = \
            kind, stored, shape, begin, end


def _whole(value: Any) -> bool:
    """A JSON whole number >= 0 (not a bool, not a float such as ``1e400``)."""
    return type(value) is int and value >= 0


def check_entry(name: str, entry: Any, data_bytes: int, data_start: int,
                file: Path) -> _Entry:
    """Check one header entry against the format and the ``data_bytes`` after the header.

    ``dtype`` must be a known name, ``shape`` a list of at most :data:`MAX_DIMS`
    whole numbers, ``data_offsets`` two whole numbers ``begin <= end`` inside
    the data, and ``end - begin`` the tensor's size (computed with Python
    integers: a shape of ``[2**32, 2**32]`` cannot wrap to zero); the
    non-zero dimensions must multiply to less than 2**62 bytes (numpy's limit,
    which holds for ``[0, 2**70]`` too). Raises
    :class:`ModelFormatError` naming the file and the tensor. O(rank).
    """
    what = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{what}: its header entry is {type(entry).__name__}, expected "
                               "an object with dtype, shape and data_offsets", file=file)
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise ModelFormatError(f"{what}: its header entry has no {', '.join(missing)}",
                               file=file)
    kind, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(kind, str):
        raise ModelFormatError(f"{what}: dtype is {kind!r}, expected a name such as 'F32'",
                               file=file)
    if kind == "BF16":
        stored = np.dtype("<u2")
    elif kind in _DTYPES:
        stored = np.dtype(_DTYPES[kind])
    else:
        raise ModelFormatError(f"{what} has dtype {kind[:40]}, which cannot be imported",
                               file=file)
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(_whole(n) for n in shape):
        shown = repr(shape)[:80]
        raise ModelFormatError(f"{what}: shape is {shown}, expected a list of at most "
                               f"{MAX_DIMS} whole numbers", file=file)
    if not isinstance(offsets, list) or len(offsets) != 2 or \
            not all(_whole(n) for n in offsets) or offsets[0] > offsets[1]:
        shown = repr(offsets)[:80]
        raise ModelFormatError(f"{what}: data_offsets is {shown}, expected [begin, end] with "
                               "0 <= begin <= end", file=file)
    if math.prod(max(n, 1) for n in shape) * stored.itemsize >= _MAX_SHAPE_BYTES:
        zeros = " (leaving out its zeros)" if 0 in shape else ""
        raise ModelFormatError(f"{what}: shape {repr(shape)[:80]} is too large: its "
                               f"dimensions{zeros} multiply to 2**62 bytes or more", file=file)
    begin, end = offsets
    if end > data_bytes:
        raise ModelFormatError(f"truncated: {what} ends at byte {data_start + end} of "
                               f"{data_start + data_bytes}", file=file)
    nbytes = math.prod(shape) * stored.itemsize
    if end - begin != nbytes:
        raise ModelFormatError(f"{what}: offsets {begin}..{end} do not match {kind} {shape} "
                               f"({nbytes} bytes)", file=file)
    return _Entry(kind, stored, tuple(shape), begin, end)


#: A ``config.json`` larger than this is ignored (a real one is a few KiB).
_MAX_HF_CONFIG_BYTES = 16 * 1024 * 1024


def _read_hf_config(config_file: Path) -> dict[str, Any] | None:
    """The Hugging Face ``config.json`` beside a model, if there is a readable one (a JSON
    object of at most 16 MiB); anything else is ignored. O(its size)."""
    try:
        if not config_file.is_file() or config_file.stat().st_size > _MAX_HF_CONFIG_BYTES:
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError
        return None
    return config if isinstance(config, dict) else None


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def import_safetensors(path: str | os.PathLike[str], sink: ShardSink, *,
                       dtype: str | np.dtype[Any] | None = None, key_prefix: str = "",
                       progress: bool = True) -> ModelManifest:
    """Write every tensor of a safetensors file into ``sink``; return the manifest.

    ``dtype`` converts floating-point tensors: ``None`` keeps each tensor's own
    dtype (``BF16`` becomes float32), ``"native"`` too but ``BF16`` stays
    bf16 (uint16 bit patterns), ``"float32"``/``"float16"`` cast,
    ``"bfloat16"`` rounds to bf16, ``"q8_0"`` quantizes the matrices to Q8_0
    (see :func:`~tiercache.models.importers.base.float_shard`). Integer and
    boolean tensors always keep theirs.
    """
    file = Path(path)
    target = float_target(dtype)
    header, data_start = read_safetensors_header(file)
    file_bytes = file.stat().st_size
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError("__metadata__ must be an object of strings", file=file)
    if not header:
        raise ModelFormatError("the file holds no tensors: nothing to import", file=file)
    entries = {name: check_entry(name, entry, file_bytes - data_start, data_start, file)
               for name, entry in header.items()}  # all of them, before the first write
    data = np.memmap(file, dtype=np.uint8, mode="r") if file_bytes > data_start else \
        np.zeros(0, np.uint8)
    plan: list[PlannedShard] = []
    for name, e in entries.items():
        natural = np.dtype(np.float32) if e.kind == "BF16" else e.stored.newbyteorder("=")

        def raw(e: _Entry = e) -> np.ndarray:
            return data[data_start + e.begin:data_start + e.end].view(e.stored).reshape(e.shape)

        def load(raw: Any = raw, e: _Entry = e, natural: np.dtype[Any] = natural
                 ) -> np.ndarray:
            array = _bf16_to_f32(raw()) if e.kind == "BF16" else raw()
            return np.asarray(array, dtype=natural).copy()

        def bits(raw: Any = raw) -> np.ndarray:
            return np.asarray(raw(), dtype=np.uint16).copy()

        plan.append(float_shard(key_prefix + name, e.shape, natural, load, target,
                                bf16_bits=bits if e.kind == "BF16" else None, file=file))
    hf_config = _read_hf_config(file.with_name("config.json"))
    infos = write_shards(sink, plan, progress=progress, description=f"importing {file.name}",
                         file=file)
    architecture = str((hf_config or {}).get("model_type") or "unknown")
    meta: dict[str, Any] = {"safetensors_metadata": metadata}
    if hf_config is not None:
        meta["hf_config"] = hf_config
    stat = file.stat()
    return ModelManifest(
        architecture=architecture, name=file.stem if file.stem != "model" else
        f"{file.parent.name}/{file.name}",
        dtype=target, key_prefix=key_prefix,
        source={"kind": "safetensors", "path": str(file.resolve()), "size_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns},
        tensors=infos, metadata=meta)
