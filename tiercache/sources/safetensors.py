"""Import a ``.safetensors`` file: one shard per tensor, under its own name.

The format is simple enough to read directly -- an 8-byte little-endian header
length, a JSON header ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__":
{...}}``, then the raw little-endian tensor bytes -- so this reader memory-maps
the file and validates every offset itself; a truncated or malformed file is a
:class:`~tiercache.sources.base.ModelFormatError` naming it. ``BF16`` tensors
(numpy has no bfloat16) are widened to float32 exactly. A Hugging Face
``config.json`` beside the file, if any, is kept in the manifest
(``metadata["hf_config"]``) and names the architecture (e.g. ``"bert"``).

Complexity: O(file size); one tensor in memory at a time. Thread-safety: an
import uses only its own memory map and sink.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelFormatError, PlannedShard, ShardSink, write_shards
from .manifest import ModelManifest

_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of a safetensors file and the offset where data begins."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ModelFormatError("truncated: shorter than the 8-byte header length",
                                       file=file)
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER_BYTES:
                raise ModelFormatError(f"not a safetensors file (header length {header_len})",
                                       file=file)
            raw = fh.read(header_len)
    except FileNotFoundError:
        raise ModelFormatError("no such file", file=file) from None
    except IsADirectoryError:
        raise ModelFormatError("is a directory, expected a .safetensors file",
                               file=file) from None
    if len(raw) < header_len:
        raise ModelFormatError(f"truncated: the header needs {header_len} bytes, the file has "
                               f"{len(raw)}", file=file)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"malformed safetensors header ({exc})", file=file) from None
    if not isinstance(header, dict):
        raise ModelFormatError("malformed safetensors header (not an object)", file=file)
    return header, 8 + header_len


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def import_safetensors(path: str | os.PathLike[str], sink: ShardSink, *,
                       dtype: str | np.dtype[Any] | None = None, key_prefix: str = "",
                       progress: bool = True) -> ModelManifest:
    """Write every tensor of a safetensors file into ``sink``; return the manifest.

    ``dtype`` (``float32``/``float16``) converts floating-point tensors;
    ``None`` keeps each tensor's own dtype (``BF16`` becomes float32). Integer
    and boolean tensors always keep theirs.
    """
    file = Path(path)
    target = np.dtype(dtype) if dtype is not None else None
    if target is not None and target not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {target}")
    header, data_start = read_safetensors_header(file)
    file_bytes = file.stat().st_size
    metadata = header.pop("__metadata__", None) or {}
    data = np.memmap(file, dtype=np.uint8, mode="r") if file_bytes > data_start else \
        np.zeros(0, np.uint8)
    plan: list[PlannedShard] = []
    for name, entry in header.items():
        try:
            kind = str(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"malformed header entry for {name!r}: {entry!r}",
                                   file=file) from None
        if kind == "BF16":
            stored = np.dtype("<u2")
        elif kind in _DTYPES:
            stored = np.dtype(_DTYPES[kind])
        else:
            raise ModelFormatError(f"tensor {name!r} has dtype {kind}, which cannot be imported",
                                   file=file)
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * stored.itemsize or begin < 0:
            raise ModelFormatError(f"tensor {name!r}: offsets {begin}..{end} do not match "
                                   f"{kind} {list(shape)}", file=file)
        if data_start + end > file_bytes:
            raise ModelFormatError(f"truncated: tensor {name!r} ends at byte {data_start + end} "
                                   f"of {file_bytes}", file=file)
        natural = np.dtype(np.float32) if kind == "BF16" else stored.newbyteorder("=")
        final = target if target is not None and natural.kind == "f" else natural

        def load(begin: int = begin, end: int = end, stored: np.dtype[Any] = stored,
                 shape: tuple[int, ...] = shape, bf16: bool = kind == "BF16",
                 final: np.dtype[Any] = final) -> np.ndarray:
            raw = data[data_start + begin:data_start + end].view(stored).reshape(shape)
            array = _bf16_to_f32(raw) if bf16 else raw
            return np.asarray(array, dtype=final).copy()

        plan.append(PlannedShard(key_prefix + name, shape, final, load))
    infos = write_shards(sink, plan, progress=progress, description=f"importing {file.name}",
                         file=file)
    hf_config: dict[str, Any] | None = None
    config_file = file.with_name("config.json")
    if config_file.is_file():
        try:
            hf_config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            hf_config = None
    architecture = str((hf_config or {}).get("model_type") or "unknown")
    meta: dict[str, Any] = {"safetensors_metadata": metadata}
    if hf_config is not None:
        meta["hf_config"] = hf_config
    stat = file.stat()
    return ModelManifest(
        architecture=architecture, name=file.stem if file.stem != "model" else
        f"{file.parent.name}/{file.name}",
        dtype=target.name if target is not None else None, key_prefix=key_prefix,
        source={"kind": "safetensors", "path": str(file.resolve()), "size_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns},
        tensors=infos, metadata=meta)
