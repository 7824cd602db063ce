"""The model manifest: what an import wrote, as one small JSON file.

Shards hold only arrays. Everything else an inference loop needs -- the
architecture's hyper-parameters, the tokenizer, the shape and dtype of each
shard, where the weights came from -- goes into a JSON manifest written next
to the cache's config (``tiers.toml`` -> ``tiers.model.json``, see
:func:`manifest_path_for_config`) or, for an ``.npy`` origin folder, into that
folder as ``tiercache-model.json``. A manifest is a few MB at most (a 49k-token
vocabulary with its merges is about 1.5 MB) and is read once per process.

Format (``format = "tiercache-model"``, ``version = 1``)::

    {
      "format": "tiercache-model", "version": 1,
      "architecture": "llama" | "bert" | "keras" | ...,
      "name": "SmolLM2 135M ...",
      "dtype": "float32" | "float16" | "native" | "bfloat16" | "q8_0" | null,
                                                  # of the import (null: as stored)
      "key_prefix": "",                           # prepended to every tensor name
      "source": {"kind": "gguf" | "safetensors" | "keras" | "synthetic", "path": ..., ...},
      "hparams": {...} | null,                     # tiercache.models.llama.LlamaHParams
      "tokenizer": {...} | null,                   # tiercache.models.tokenizer.BPETokenizer
      "tensors": {"token_embd.weight": {"shape": [49152, 576], "dtype": "float32",
                                        "nbytes": 113246208}, ...},   # in import order
                 # a tensor kept in a ggml encoding (tiercache.models.quant) says so:
                 # {"shape": [576, 576], "dtype": "uint8", "nbytes": 207360,
                 #  "encoding": "Q4_1"}: shape is the logical (float) shape, dtype and
                 #  nbytes those of the stored shard (here 576 rows x 18 blocks x 20 B)
      "metadata": {...},                           # other scalar metadata of the file
      "keras": {...} | null                        # model config + per-layer weight keys
    }

Reading checks every tensor entry: a known ``encoding`` (none: a plain
array), the dtype that encoding is stored as, and ``nbytes`` equal to what
the shape and encoding (or dtype) take; a wrong one is a
:class:`~tiercache.errors.ModelFormatError` naming the file and the tensor.
Manifests written before encodings existed have none and read as before.

Thread-safety: manifests are immutable values; loading and saving touch
only their own file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from .llama import LlamaHParams
from .quant import GGML_TYPES, storage_dtype, stored_shape

MANIFEST_FORMAT = "tiercache-model"
MANIFEST_VERSION = 1
#: The one non-default weight layout: a float matrix stored ``[inputs, outputs]``.
IN_OUT = "in_out"

#: File name of the manifest inside an ``.npy`` origin folder.
NPY_DIR_MANIFEST = "tiercache-model.json"


@dataclass(frozen=True)
class TensorInfo:
    """One shard: the (logical) shape, the stored dtype name and bytes, and the ggml
    ``encoding`` when it is kept encoded (None: a plain array of ``shape``)."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    encoding: str | None = None
    #: ``"in_out"``: a float matrix stored transposed, ``[inputs, outputs]`` (its
    #: logical ``shape`` stays ``[outputs, inputs]``, the GGUF layout); None: as ``shape``.
    layout: str | None = None

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of the stored array (``(rows, blocks, block_bytes)`` for a block
        encoding, the reversed shape for the ``in_out`` layout, else :attr:`shape`)."""
        if self.layout == IN_OUT:
            return tuple(reversed(self.shape))
        if self.encoding is None:
            return self.shape
        return stored_shape(GGML_TYPES[self.encoding], self.shape)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype,
                               "nbytes": self.nbytes}
        if self.encoding is not None:
            out["encoding"] = self.encoding
        if self.layout is not None:
            out["layout"] = self.layout
        return out


@dataclass
class ModelManifest:
    """Everything about an imported model except its arrays. See the module docstring."""

    architecture: str
    name: str = ""
    dtype: str | None = None
    key_prefix: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    keras: dict[str, Any] | None = None

    @property
    def total_bytes(self) -> int:
        """Bytes of all shards together."""
        return sum(t.nbytes for t in self.tensors.values())

    def llama_hparams(self) -> LlamaHParams:
        """The Llama hyper-parameters; :class:`ModelFormatError` if this is no Llama model."""
        if self.hparams is None or self.architecture != "llama":
            raise ModelFormatError(f"model {self.name or '?'} is a {self.architecture!r} "
                                   "model; only 'llama' models can generate text")
        return LlamaHParams.from_dict(self.hparams)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "architecture": self.architecture, "name": self.name, "dtype": self.dtype,
            "key_prefix": self.key_prefix, "source": self.source, "hparams": self.hparams,
            "tokenizer": self.tokenizer,
            "tensors": {k: v.to_dict() for k, v in self.tensors.items()},
            "metadata": self.metadata, "keras": self.keras,
        }

    @classmethod
    def from_dict(cls, data: Any, *, file: str | os.PathLike[str] | None = None
                  ) -> ModelManifest:
        """Validate and build; :class:`ModelFormatError` naming ``file`` on any problem."""
        def bad(reason: str) -> ModelFormatError:
            return ModelFormatError(f"not a tiercache model manifest: {reason}", file=file)

        if not isinstance(data, dict):
            raise bad("the top level is not an object")
        if data.get("format") != MANIFEST_FORMAT:
            raise bad(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        if data.get("version") != MANIFEST_VERSION:
            raise bad(f"version {data.get('version')!r} is not supported (this tiercache "
                      f"reads version {MANIFEST_VERSION})")
        try:
            tensors = {str(k): _tensor_info(str(k), v)
                       for k, v in dict(data.get("tensors") or {}).items()}
            manifest = cls(
                architecture=str(data["architecture"]), name=str(data.get("name") or ""),
                dtype=data.get("dtype"), key_prefix=str(data.get("key_prefix") or ""),
                source=dict(data.get("source") or {}), hparams=data.get("hparams"),
                tokenizer=data.get("tokenizer"), tensors=tensors,
                metadata=dict(data.get("metadata") or {}), keras=data.get("keras"))
            if manifest.hparams is not None and manifest.architecture == "llama":
                LlamaHParams.from_dict(manifest.hparams)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise bad(f"{type(exc).__name__}: {exc}") from None
        return manifest

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as JSON (atomically: temp file, then rename). Returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, target)
        return target


def _tensor_info(key: str, entry: Any) -> TensorInfo:
    """A manifest's ``tensors`` entry, checked: a shape of whole numbers (a list, not the
    string ``"44"``), a dtype name, whole ``nbytes``, a known ``encoding`` if any, and
    ``nbytes`` what the shape takes in that dtype/encoding. ``ValueError`` naming ``key``."""
    def whole(value: Any) -> bool:
        return type(value) is int and value >= 0

    if not isinstance(entry, dict):
        raise ValueError(f"tensor {key!r}: expected an object, got {type(entry).__name__}")
    shape, dtype, nbytes = entry["shape"], entry["dtype"], entry["nbytes"]
    encoding = entry.get("encoding")
    if not isinstance(shape, list) or not all(whole(n) for n in shape):
        raise ValueError(f"tensor {key!r}: shape {shape!r} is not a list of whole numbers")
    if not isinstance(dtype, str) or not whole(nbytes):
        raise ValueError(f"tensor {key!r}: dtype {dtype!r} / nbytes {nbytes!r} are not a "
                         "name and a whole number")
    layout = entry.get("layout")
    if layout is not None and (layout != IN_OUT or len(shape) != 2 or encoding is not None):
        raise ValueError(f"tensor {key!r}: layout {str(layout)[:40]!r} is not valid here "
                         f"(the only layout is {IN_OUT!r}, for a 2-D float matrix)")
    info = TensorInfo(tuple(shape), dtype, nbytes, encoding, layout)
    if encoding is not None:
        if not isinstance(encoding, str) or encoding not in GGML_TYPES:
            raise ValueError(f"tensor {key!r}: unknown encoding {str(encoding)[:40]!r} "
                             f"(known: {', '.join(GGML_TYPES)})")
        expected = storage_dtype(GGML_TYPES[encoding])
        if dtype != expected.name:
            raise ValueError(f"tensor {key!r}: encoding {encoding} is stored as "
                             f"{expected.name}, the manifest says {dtype[:40]!r}")
        try:
            stored = info.stored_shape
        except ValueError as exc:
            raise ValueError(f"tensor {key!r}: {exc}") from None
    else:
        try:
            expected = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"tensor {key!r}: dtype {dtype[:40]!r} is not a numpy dtype "
                             "name") from None
        stored = info.shape
    size = math.prod(stored) * expected.itemsize
    if size != nbytes:
        raise ValueError(f"tensor {key!r}: nbytes is {nbytes}, but {dtype} {list(stored)} "
                         f"takes {size}")
    return info


def load_manifest(path: str | os.PathLike[str]) -> ModelManifest:
    """Read a manifest written by an import. Raises :class:`ModelFormatError` naming the file."""
    file = Path(path)
    try:
        with file.open("r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ModelFormatError("no model manifest here: import a model first "
                               "(tiercache import MODEL --config ...)", file=file) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"unreadable model manifest: {exc}", file=file) from None
    return ModelManifest.from_dict(data, file=file)


def manifest_path_for_config(config_path: str | os.PathLike[str]) -> Path:
    """Where the manifest of the model imported into a cache lives: ``tiers.toml`` ->
    ``tiers.model.json`` in the same folder."""
    path = Path(config_path)
    return path.with_name(path.stem + ".model.json")


def manifest_path_for_npy_dir(folder: str | os.PathLike[str]) -> Path:
    """The manifest file inside an ``.npy`` origin folder."""
    return Path(folder) / NPY_DIR_MANIFEST
