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
      "dtype": "float32" | "float16" | null,      # of the weight shards (null: as stored)
      "key_prefix": "",                           # prepended to every tensor name
      "source": {"kind": "gguf" | "safetensors" | "keras" | "synthetic", "path": ..., ...},
      "hparams": {...} | null,                     # LlamaHParams.to_dict() for llama
      "tokenizer": {...} | null,                   # tiercache.sources.tokenizer.BPETokenizer
      "tensors": {"token_embd.weight": {"shape": [49152, 576], "dtype": "float32",
                                        "nbytes": 113246208}, ...},   # in import order
      "metadata": {...},                           # other scalar metadata of the file
      "keras": {...} | null                        # model config + per-layer weight keys
    }

Thread-safety: manifests are immutable values; loading and saving touch
only their own file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .base import ModelFormatError

MANIFEST_FORMAT = "tiercache-model"
MANIFEST_VERSION = 1
#: File name of the manifest inside an ``.npy`` origin folder.
NPY_DIR_MANIFEST = "tiercache-model.json"

RopeStyle = Literal["interleaved", "half"]

#: Per-layer tensors of a Llama block, in the order a forward pass reads them.
LLAMA_LAYER_TENSORS: tuple[str, ...] = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
)


@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype name and size of one shard."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes}


#: Upper bounds of the whole-number Llama hyper-parameters (far above any real model:
#: they stop a damaged file or manifest from sizing tables by itself).
HPARAM_LIMITS: dict[str, int] = {
    "n_layers": 1 << 16, "dim": 1 << 20, "ffn_dim": 1 << 22, "n_heads": 1 << 14,
    "n_kv_heads": 1 << 14, "vocab_size": 1 << 24, "head_dim": 1 << 16,
    "context_length": 1 << 32,
}


@dataclass(frozen=True)
class LlamaHParams:
    """Hyper-parameters of a Llama-family decoder (GGUF ``llama.*`` keys).

    ``rope_style`` says how the rotary embedding pairs dimensions, which must
    match how the Q/K weights are laid out: ``"interleaved"`` rotates
    ``(x[2i], x[2i+1])`` -- llama.cpp's "normal" RoPE, the layout of GGUF
    files, whose converter permuted the Hugging Face Q/K rows for it --
    and ``"half"`` rotates ``(x[i], x[i + d/2])`` (Hugging Face / NeoX
    ``rotate_half``, for unpermuted weights).
    """

    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_style: RopeStyle = "interleaved"
    rms_eps: float = 1e-5
    context_length: int = 2048
    tied_embeddings: bool = True

    def __post_init__(self) -> None:
        """Check every field: whole numbers in ``1..HPARAM_LIMITS[name]``, KV heads that
        divide the heads, an even head size, rope theta and the norm epsilon finite and
        positive (epsilon below 1). ``ValueError`` naming the field. O(1)."""
        for name, limit in HPARAM_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 1 <= value <= limit:
                raise ValueError(f"{name} must be a whole number from 1 to {limit}, "
                                 f"got {value!r}")
        for name, upper in (("rope_theta", math.inf), ("rms_eps", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or not 0 < value < upper:
                raise ValueError(f"{name} must be a finite number above 0"
                                 + (f" and below {upper}" if upper != math.inf else "")
                                 + f", got {value!r}")
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(f"tied_embeddings must be true or false, got "
                             f"{self.tied_embeddings!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_style not in ("interleaved", "half"):
            raise ValueError(f"rope_style must be 'interleaved' or 'half', got "
                             f"{self.rope_style!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaHParams:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hparams {sorted(unknown)}")
        return cls(**data)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected numpy shape of every tensor (rows = output features), GGUF names."""
        d, f, kv = self.dim, self.ffn_dim, self.n_kv_heads * self.head_dim
        q = self.n_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab_size, d)}
        per_layer = {"attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
                     "attn_output": (d, q), "ffn_norm": (d,), "ffn_gate": (f, d),
                     "ffn_up": (f, d), "ffn_down": (d, f)}
        for layer in range(self.n_layers):
            for name in LLAMA_LAYER_TENSORS:
                shapes[f"blk.{layer}.{name}.weight"] = per_layer[name]
        shapes["output_norm.weight"] = (d,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (self.vocab_size, d)
        return shapes


def llama_layer_keys(layer: int, key_prefix: str = "") -> list[str]:
    """Shard keys of block ``layer`` in the order a forward pass reads them."""
    return [f"{key_prefix}blk.{layer}.{name}.weight" for name in LLAMA_LAYER_TENSORS]


def llama_schedule(hparams: LlamaHParams, key_prefix: str = "") -> list[str]:
    """Shard keys one forward pass reads, in order; O(n_layers).

    The embedding table comes first (row lookup), then each block, then the
    final norm and the output projection -- which, with tied embeddings, is the
    embedding table again, so that key appears twice.
    """
    keys = [f"{key_prefix}token_embd.weight"]
    for layer in range(hparams.n_layers):
        keys.extend(llama_layer_keys(layer, key_prefix))
    keys.append(f"{key_prefix}output_norm.weight")
    keys.append(f"{key_prefix}token_embd.weight" if hparams.tied_embeddings
                else f"{key_prefix}output.weight")
    return keys


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
    string ``"44"``), a dtype name, whole ``nbytes``. ``ValueError`` naming ``key``."""
    def whole(value: Any) -> bool:
        return type(value) is int and value >= 0

    if not isinstance(entry, dict):
        raise ValueError(f"tensor {key!r}: expected an object, got {type(entry).__name__}")
    shape, dtype, nbytes = entry["shape"], entry["dtype"], entry["nbytes"]
    if not isinstance(shape, list) or not all(whole(n) for n in shape):
        raise ValueError(f"tensor {key!r}: shape {shape!r} is not a list of whole numbers")
    if not isinstance(dtype, str) or not whole(nbytes):
        raise ValueError(f"tensor {key!r}: dtype {dtype!r} / nbytes {nbytes!r} are not a "
                         "name and a whole number")
    return TensorInfo(tuple(shape), dtype, nbytes)


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
