"""Hostile model files: every length, count and shape is checked before anything is
allocated, and every problem is one ``ModelFormatError`` naming the file and the key or
tensor. A failed import leaves the tiers (or the ``.npy`` folder) as they were.

Each hostile file is imported in a child process under a memory cap (``memcap``), so a
regression that allocates from a declared size fails the test instead of the machine.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from memcap import run_capped

import tiercache
from tiercache.cli import main
from tiercache.models import (
    CacheSink,
    DictSink,
    LlamaHParams,
    ModelFormatError,
    NpyDirSink,
    import_gguf,
    import_safetensors,
    load_manifest,
)
from tiercache.models.importers.base import (
    PLAIN_PROGRESS_WIDTH,
    ImportProgress,
    PlannedShard,
    write_shards,
)

CAP = 1 << 30  # far above what a small file needs
TIMEOUT_S = 60.0


# --- building files by hand -----------------------------------------------------------------
def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_kv(key: str, type_id: int, payload: bytes) -> bytes:
    """One metadata entry: key, value type, raw value bytes."""
    return gguf_string(key) + struct.pack("<I", type_id) + payload


def gguf_file(kvs: list[bytes], tensors: list[bytes] | None = None, data: bytes = b"",
              *, version: int = 3, n_kv: int | None = None, n_tensors: int | None = None,
              alignment: int | None = 32) -> bytes:
    """A GGUF file from raw parts; counts default to the parts given; ``alignment=None``:
    no padding after the header."""
    tensors = tensors or []
    head = b"GGUF" + struct.pack("<IQQ", version,
                                 len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    if alignment is not None:
        body += bytes(-len(body) % alignment)
    return body + data


def gguf_tensor(name: str, ne: list[int], type_id: int = 0, offset: int = 0) -> bytes:
    return (gguf_string(name) + struct.pack("<I", len(ne))
            + b"".join(struct.pack("<Q", n) for n in ne) + struct.pack("<IQ", type_id, offset))


def f32_tensor_file(extra_kvs: list[bytes] | None = None, n: int = 4) -> bytes:
    """A valid GGUF with one F32 tensor ``w`` of ``n`` values and an architecture."""
    kvs = [gguf_kv("general.architecture", 8, gguf_string("test")), *(extra_kvs or [])]
    return gguf_file(kvs, [gguf_tensor("w", [n])], np.arange(n, dtype="<f4").tobytes())


def safetensors_file(header: Any, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _import(kind: str, path: str) -> int:
    """Import ``path`` into a DictSink (in the capped child); the number of shards."""
    sink = DictSink()
    if kind == "gguf":
        import_gguf(path, sink, progress=False)
    else:
        import_safetensors(path, sink, progress=False)
    return len(sink.arrays)


def assert_rejected(path: Path, *, kind: str, match: str, names: tuple[str, ...] = ()) -> str:
    """Import ``path`` in a capped child: it must raise ModelFormatError naming the file,
    matching ``match`` and naming each of ``names``. Returns the message."""
    result = run_capped(_import, kind, str(path), limit_bytes=CAP, timeout_s=TIMEOUT_S)
    assert result.error_type == "ModelFormatError", result.describe()
    message = result.error_message or ""
    assert message.startswith(f"{path}: "), message
    for name in names:
        assert name in message, message
    assert match in message, message
    return message


# --- item: GGUF headers ----------------------------------------------------------------------
U8, U32, F32, BOOL, STRING, ARRAY, U64 = 0, 4, 6, 7, 8, 9, 10

GGUF_CASES: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    # 72 bytes that declare an array of 2^40 uint8: GGUFReader allocated without end (14 GB)
    "array of 2^40 bytes": (
        gguf_file([gguf_kv("general.bomb", ARRAY, struct.pack("<IQ", U8, 1 << 40) + bytes(12))],
                  alignment=None),
        "declares 1099511627776 items", ("'general.bomb'",)),
    "array of 2^21 strings in 60 bytes": (
        gguf_file([gguf_kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 1 << 21))]),
        "truncated", ("'tokenizer.ggml.tokens'",)),
    # a 2^62-byte string: the reader cut it short silently and the file imported "0 shards"
    "string of 2^62 bytes": (
        gguf_file([gguf_kv("general.name", STRING, struct.pack("<Q", 1 << 62) + b"x" * 16)]),
        "truncated", ("'general.name'",)),
    "key of 2^40 bytes": (
        gguf_file([struct.pack("<Q", 1 << 40) + b"k" * 8], n_kv=1), "declares", ("key #0",)),
    "2^60 tensors": (gguf_file([], n_tensors=1 << 60), "tensors (at most", ()),
    "2^50 metadata keys": (gguf_file([], n_kv=1 << 50), "metadata keys (at most", ()),
    "a million keys in 24 bytes": (gguf_file([], n_kv=1 << 20), "truncated", ()),
    "arrays nested 5 deep": (
        gguf_file([gguf_kv("general.deep", ARRAY,
                           struct.pack("<IQ", ARRAY, 1) * 5 + struct.pack("<IQ", U8, 1) + b"\0")]),
        "nested more than", ("'general.deep'",)),
    "unknown value type": (gguf_file([gguf_kv("general.x", 99, b"1234")]),
                           "value type 99", ("'general.x'",)),
    "key given twice": (
        gguf_file([gguf_kv("general.x", U32, b"1234"), gguf_kv("general.x", U32, b"1234")]),
        "appears twice", ("'general.x'",)),
    "invalid UTF-8 string": (gguf_file([gguf_kv("general.name", STRING, gguf_string(b"\xff\xfe"))]),
                             "not valid UTF-8", ("'general.name'",)),
    "rank 2^32-1": (gguf_file([], [gguf_string("w") + struct.pack("<I", 2**32 - 1)]),
                    "dimensions (1 to 4", ("'w'",)),
    "dimensions 2^32 x 2^32": (gguf_file([], [gguf_tensor("w", [2**32, 2**32])], bytes(64)),
                               "truncated", ("'w'",)),
    "dimension 2^64-1": (gguf_file([], [gguf_tensor("w", [2**64 - 1])], bytes(64)),
                         "truncated", ("'w'",)),
    "a zero dimension": (gguf_file([], [gguf_tensor("w", [4, 0])], bytes(64)),
                         "must be >= 1", ("'w'",)),
    "unknown tensor type": (gguf_file([], [gguf_tensor("w", [4], type_id=1000)], bytes(64)),
                            "type 1000", ("'w'",)),
    "type gguf cannot dequantize": (
        gguf_file([], [gguf_tensor("w", [32], type_id=gguf.GGMLQuantizationType.Q8_1)],
                  bytes(64)),
        "Q8_1, which gguf cannot dequantize", ("'w'",)),
    "row not a whole number of blocks": (
        gguf_file([], [gguf_tensor("w", [33], type_id=gguf.GGMLQuantizationType.Q8_0)],
                  bytes(64)),
        "not a whole number of Q8_0 blocks", ("'w'",)),
    "unaligned offset": (gguf_file([], [gguf_tensor("w", [4], offset=3)], bytes(64)),
                         "not a multiple of the alignment", ("'w'",)),
    "alignment zero": (gguf_file([gguf_kv("general.alignment", U32, struct.pack("<I", 0))],
                                 [gguf_tensor("w", [4])], bytes(64)),
                       "power of two", ("'general.alignment'",)),
    "tensor name of 65 bytes": (gguf_file([], [gguf_tensor("w" * 65, [4])], bytes(64)),
                                "at most 64 allowed", ("tensor #0",)),
    "tensor given twice": (gguf_file([], [gguf_tensor("w", [4]), gguf_tensor("w", [4])],
                                     bytes(64)),
                           "appears twice", ("'w'",)),
    "no tensors": (gguf_file([gguf_kv("general.architecture", STRING, gguf_string("x"))]),
                   "no tensors", ()),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian", ()),
    "version 1": (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1", ()),
    "empty": (b"", "truncated", ()),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_hostile_gguf_headers_are_one_error_before_any_allocation(tmp_path: Path,
                                                                   case: str) -> None:
    data, match, names = GGUF_CASES[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    assert_rejected(path, kind="gguf", match=match, names=names)


def test_the_72_byte_array_bomb_is_72_bytes(tmp_path: Path) -> None:
    assert len(GGUF_CASES["array of 2^40 bytes"][0]) == 72  # the file measured in the issue


def _cli_import(path: str, out: str) -> int:
    return main(["import", path, "--npy-dir", out, "--no-progress"])


@pytest.mark.parametrize("case", ["string of 2^62 bytes", "array of 2^40 bytes"])
def test_the_cli_refuses_a_hostile_gguf_with_exit_2(tmp_path: Path, case: str) -> None:
    """The 2^62-byte string imported "0 shards" with exit status 0."""
    path = tmp_path / "hostile.gguf"
    path.write_bytes(GGUF_CASES[case][0])
    result = run_capped(_cli_import, str(path), str(tmp_path / "out"), limit_bytes=CAP,
                        timeout_s=TIMEOUT_S)
    assert result.ok and result.value == 2, result.describe()
    assert not (tmp_path / "out" / "tiercache-model.json").exists()


def test_a_valid_hand_built_gguf_imports(tmp_path: Path) -> None:
    """The builder above makes files the importer accepts (so the cases test one fault each)."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(f32_tensor_file([gguf_kv("general.list", ARRAY,
                                              struct.pack("<IQ", U32, 2) + bytes(8))]))
    sink = DictSink()
    manifest = import_gguf(path, sink, progress=False)
    np.testing.assert_array_equal(sink.arrays["w"], np.arange(4, dtype=np.float32))
    assert manifest.metadata["general.list"] == [0, 0]


# --- llama hyper-parameters and tokenizer -----------------------------------------------------
def _patch_value(data: bytes, key: str, type_id: int, value: bytes) -> bytes:
    """Replace the type and the (same-sized) value of scalar metadata ``key``."""
    raw = bytearray(data)
    at = raw.index(gguf_string(key)) + 8 + len(key)
    old_type = struct.unpack_from("<I", raw, at)[0]
    assert old_type in (U32, F32), old_type
    raw[at:at + 4 + len(value)] = struct.pack("<I", type_id) + value
    return bytes(raw)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from gguf_fixtures import write_tiny_gguf

    path = tmp_path_factory.mktemp("llama") / "tiny.gguf"
    write_tiny_gguf(path, layers=1, dim=32, ffn=64, heads=4, kv_heads=2, vocab=260)
    return path.read_bytes()


HPARAM_CASES = [
    # head_count = 0 was a ZeroDivisionError
    ("llama.attention.head_count", U32, struct.pack("<I", 0), "expected a whole number"),
    # embedding_length = inf was an OverflowError, nan a ValueError without the file
    ("llama.embedding_length", F32, struct.pack("<f", math.inf), "expected a whole number"),
    ("llama.embedding_length", F32, struct.pack("<f", math.nan), "expected a whole number"),
    ("llama.embedding_length", F32, struct.pack("<f", 32.0), "expected a whole number"),
    ("llama.attention.head_count_kv", U32, struct.pack("<I", 3), "multiple of n_kv_heads"),
    ("llama.attention.head_count", U32, struct.pack("<I", 5), "not a multiple of"),
    ("llama.block_count", U32, struct.pack("<I", 2**32 - 1), "expected a whole number"),
    ("llama.block_count", U32, struct.pack("<I", 1000), "only"),
    ("llama.context_length", U32, struct.pack("<I", 0), "expected a whole number"),
    ("llama.rope.freq_base", F32, struct.pack("<f", math.nan), "finite number"),
    ("llama.rope.freq_base", F32, struct.pack("<f", -1.0), "finite number"),
    ("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", math.inf),
     "finite number"),
    ("llama.feed_forward_length", U32, struct.pack("<I", 63), "has shape"),
    ("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 10**6), "token id"),
    ("tokenizer.ggml.eos_token_id", F32, struct.pack("<f", 1.5), "token id"),
]


@pytest.mark.parametrize(("key", "type_id", "value", "match"), HPARAM_CASES,
                         ids=[f"{c[0]}={c[2].hex()}" for c in HPARAM_CASES])
def test_bad_llama_hyper_parameters_name_the_key(tiny_llama: bytes, tmp_path: Path, key: str,
                                                 type_id: int, value: bytes,
                                                 match: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(_patch_value(tiny_llama, key, type_id, value))
    message = assert_rejected(path, kind="gguf", match=match)
    short = key.split(".", 1)[1]
    field = {"attention.head_count_kv": "n_kv_heads", "feed_forward_length": "ffn_"}.get(short)
    assert short in message or (field or "\0") in message or "blk." in message, message


def test_an_embedding_length_string_names_the_key(tiny_llama: bytes, tmp_path: Path) -> None:
    """A string where a number belongs was a plain ValueError (int("...")) without the file."""
    raw = bytearray(tiny_llama)
    key = gguf_string("llama.embedding_length")
    at = raw.index(key) + len(key)
    raw[at:at + 8] = struct.pack("<I", STRING) + struct.pack("<I", 0)  # "" + 4 bytes of length
    raw[at + 8:at + 8] = bytes(4)  # the string length is 8 bytes: 0
    path = tmp_path / "s.gguf"
    path.write_bytes(bytes(raw))
    assert_rejected(path, kind="gguf", match="expected a whole number",
                    names=("'llama.embedding_length'",))


def test_llama_hparams_refuse_absurd_values() -> None:
    good: dict[str, Any] = {"n_layers": 2, "dim": 64, "ffn_dim": 96, "n_heads": 4,
                            "n_kv_heads": 2, "vocab_size": 300, "head_dim": 16}
    assert LlamaHParams(**good).n_layers == 2
    for field, value in [("n_layers", 0), ("n_layers", 1 << 40), ("dim", 2.0), ("dim", True),
                         ("head_dim", 15), ("n_kv_heads", 3), ("rope_theta", math.inf),
                         ("rope_theta", 0.0), ("rms_eps", math.nan), ("rms_eps", 1.0),
                         ("tied_embeddings", "yes"), ("context_length", -1)]:
        with pytest.raises(ValueError, match=field if field != "n_kv_heads" else "multiple"):
            LlamaHParams(**{**good, field: value})


def test_a_manifest_with_a_string_shape_or_1e400_is_refused(tmp_path: Path) -> None:
    base = {"format": "tiercache-model", "version": 1, "architecture": "x"}
    for tensors in ({"w": {"shape": "44", "dtype": "float32", "nbytes": 64}},
                    {"w": {"shape": [4, 4], "dtype": "float32", "nbytes": 1e400}},
                    {"w": {"shape": [1e400], "dtype": "float32", "nbytes": 4}},
                    {"w": {"shape": [-1], "dtype": "float32", "nbytes": 4}}):
        path = tmp_path / "m.json"
        path.write_text(json.dumps({**base, "tensors": tensors}).replace("Infinity", "1e400"))
        with pytest.raises(ModelFormatError, match=r"m\.json: not a tiercache model manifest"):
            load_manifest(path)


# --- safetensors headers ---------------------------------------------------------------------
def _entry(shape: Any, offsets: Any, dtype: Any = "F32") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


ST_CASES: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    # nested 100k deep: a RecursionError
    "header nested 100k deep": (
        safetensors_file(None, raw_header=b'{"w":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "nested too deep", ()),
    # 1e400 parses as inf: int(inf) was an OverflowError
    "1e400 in data_offsets": (
        safetensors_file(None, bytes(16),
                         raw_header=b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1e400]}}'),
        "data_offsets is", ("'w'",)),
    "1e400 in shape": (
        safetensors_file(None, bytes(16),
                         raw_header=b'{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,16]}}'),
        "shape is", ("'w'",)),
    # the element count wrapped to 0 in int64: a ValueError without the file, at load time
    "shape [2^32, 2^32] with offsets [0, 0]": (
        safetensors_file({"w": _entry([2**32, 2**32], [0, 0])}), "too large", ("'w'",)),
    "shape [2^63, 2] with offsets [0, 0]": (
        safetensors_file({"w": _entry([2**63, 2], [0, 0])}), "too large", ("'w'",)),
    "shape [2^20, 2^20] with offsets [0, 0]": (
        safetensors_file({"w": _entry([2**20, 2**20], [0, 0])}), "do not match", ("'w'",)),
    # "44" iterated as the digits 4 and 4: imported as (4, 4)
    # found by the fuzz campaign: no data, but numpy cannot make the shape
    "shape [0, 2^70] with offsets [0, 0]": (
        safetensors_file({"w": _entry([0, 2**70], [0, 0])}), "too large", ("'w'",)),
    'shape "44"': (safetensors_file({"w": _entry("44", [0, 64])}, bytes(64)), "shape is",
                   ("'w'",)),
    "shape [true, 4]": (safetensors_file({"w": _entry([True, 4], [0, 16])}, bytes(16)),
                        "shape is", ("'w'",)),
    "shape [2.0, 2]": (safetensors_file({"w": _entry([2.0, 2], [0, 16])}, bytes(16)),
                       "shape is", ("'w'",)),
    "negative dimension": (safetensors_file({"w": _entry([-4, -1], [0, 16])}, bytes(16)),
                           "shape is", ("'w'",)),
    "33 dimensions": (safetensors_file({"w": _entry([1] * 33, [0, 4])}, bytes(4)),
                      "at most 32", ("'w'",)),
    "offsets reversed": (safetensors_file({"w": _entry([0], [8, 0])}, bytes(8)),
                         "data_offsets is", ("'w'",)),
    "three offsets": (safetensors_file({"w": _entry([1], [0, 4, 8])}, bytes(8)),
                      "data_offsets is", ("'w'",)),
    "offsets as a string": (safetensors_file({"w": _entry([1], "04")}, bytes(8)),
                            "data_offsets is", ("'w'",)),
    "dtype not a string": (safetensors_file({"w": _entry([1], [0, 4], dtype=["F32"])}, bytes(4)),
                           "dtype is", ("'w'",)),
    "unknown dtype": (safetensors_file({"w": _entry([1], [0, 4], dtype="F8_E4M3")}, bytes(4)),
                      "F8_E4M3", ("'w'",)),
    "entry not an object": (safetensors_file({"w": [1, 2]}), "expected an object", ("'w'",)),
    "entry without dtype": (safetensors_file({"w": {"shape": [1], "data_offsets": [0, 4]}},
                                             bytes(4)), "no dtype", ("'w'",)),
    "key given twice": (safetensors_file(None, bytes(4), raw_header=(
        b'{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
        b'"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}')), "appears twice", ("'w'",)),
    "data past the end": (safetensors_file({"w": _entry([1 << 40], [0, 1 << 42])}, bytes(4)),
                          "truncated", ("'w'",)),
    "header longer than the file": (struct.pack("<Q", 1 << 20) + b"{}", "header needs", ()),
    "metadata not strings": (safetensors_file({"__metadata__": {"a": 1},
                                               "w": _entry([1], [0, 4])}, bytes(4)),
                             "__metadata__", ()),
    "no tensors": (safetensors_file({}), "no tensors", ()),
}


@pytest.mark.parametrize("case", list(ST_CASES))
def test_hostile_safetensors_headers_are_one_error(tmp_path: Path, case: str) -> None:
    data, match, names = ST_CASES[case]
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(data)
    assert_rejected(path, kind="safetensors", match=match, names=names)


def test_a_hostile_config_json_beside_the_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_file({"w": _entry([1], [0, 4])}, bytes(4)))
    for text in ("[" * 100_000 + "]" * 100_000, "[1, 2]", "\xff"):
        (tmp_path / "config.json").write_text(text, encoding="latin-1")
        assert import_safetensors(path, DictSink(), progress=False).architecture == "unknown"


# --- a failed import leaves the tiers as they were --------------------------------------------
def _bad_last_safetensors(path: Path) -> None:
    """Three tensors; the last one's shape wraps to 0 elements in int64 (passed the old
    checks and failed at load time, after the first two were written)."""
    path.write_bytes(safetensors_file(
        {"a": _entry([4], [0, 16]), "b": _entry([4], [16, 32]),
         "z": _entry([2**32, 2**32], [32, 32])}, bytes(32)))


def _bad_last_gguf(path: Path) -> None:
    """Two good F32 tensors, then one whose type gguf cannot dequantize (Q8_1)."""
    writer = gguf.GGUFWriter(str(path), "test")
    writer.add_tensor("a", np.arange(4, dtype=np.float32))
    writer.add_tensor("b", np.arange(8, dtype=np.float32))
    writer.add_tensor("z", np.zeros((1, 40), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("make", [_bad_last_safetensors, _bad_last_gguf])
def test_a_file_bad_in_its_last_tensor_writes_nothing(tmp_path: Path, cfg3: dict[str, Any],
                                                      make: Any) -> None:
    path = tmp_path / ("bad.gguf" if make is _bad_last_gguf else "bad.safetensors")
    make(path)
    with tiercache.open(cfg3) as cache:
        with pytest.raises(ModelFormatError, match=r"'z'"):
            tiercache.models.import_model(path, CacheSink(cache), progress=False)
        assert cache.keys() == []
    folder = tmp_path / "npy"
    with pytest.raises(ModelFormatError, match=r"'z'"):
        tiercache.models.import_model(path, NpyDirSink(folder), progress=False)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_the_cli_writes_no_shard_and_no_manifest_for_a_bad_last_tensor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.safetensors"
    _bad_last_safetensors(path)
    config = tmp_path / "tiers.toml"
    config.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "1MiB"\n'
                      '[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "ssd"\n'
                      'capacity = "16MiB"\n', encoding="utf-8")
    assert main(["import", str(path), "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tiercache: error: ") and "bad.safetensors" in err and "'z'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tiers.model.json").exists()
    with tiercache.open(str(config)) as cache:
        assert cache.keys() == []


class _FailingSink(CacheSink):
    """Fails the third write, like a disk that fills up midway."""

    def __init__(self, cache: Any) -> None:
        super().__init__(cache)
        self.writes = 0

    def write(self, key: str, array: np.ndarray) -> None:
        self.writes += 1
        if self.writes == 3:
            raise OSError(28, "No space left on device")
        super().write(key, array)


def test_a_write_failing_midway_removes_the_shards_already_written(
        tmp_path: Path, cfg3: dict[str, Any]) -> None:
    from gguf_fixtures import write_tiny_gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, layers=1, dim=32, ffn=64)
    with tiercache.open(cfg3) as cache:
        cache.put("other", np.arange(3))  # not the import's: must stay
        sink = _FailingSink(cache)
        with pytest.raises(OSError, match="No space"):
            import_gguf(path, sink, progress=False)
        assert sink.writes == 3
        assert cache.keys() == ["other"]


def test_a_failing_cleanup_is_noted_on_the_import_error() -> None:
    class Sink(DictSink):
        def write(self, key: str, array: np.ndarray) -> None:
            raise OSError("disk gone")

        def abort(self, keys: list[str]) -> None:
            raise OSError("still gone")

    plan = [PlannedShard("k", (2,), np.dtype(np.float32), lambda: np.zeros(2, np.float32))]
    with pytest.raises(OSError, match="disk gone") as info:
        write_shards(Sink(), plan, progress=False)
    assert "removing the 1 shards written so far failed: OSError: still gone" in \
        "".join(getattr(info.value, "__notes__", []))


# --- progress off a terminal ------------------------------------------------------------------
def test_progress_off_a_terminal_is_a_few_short_plain_lines() -> None:
    stream = io.StringIO()
    with ImportProgress("importing " + "x" * 200 + ".gguf", 10_000, stream=stream) as report:
        for _ in range(1000):
            report.advance(10)
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 10, lines
    assert all(len(line) <= PLAIN_PROGRESS_WIDTH for line in lines), lines
    assert lines[-1].split(": ", 1)[1].startswith("100% 9.8 KiB of 9.8 KiB")
    assert "\x1b" not in stream.getvalue()
    quiet = io.StringIO()
    with ImportProgress("x", 10, enabled=False, stream=quiet) as report:
        report.advance(10)
    assert quiet.getvalue() == ""


def test_the_cli_progress_in_a_ci_log_does_not_wrap(tmp_path: Path) -> None:
    """stderr to a pipe, as in CI, even with FORCE_COLOR (which made rich draw its live bar
    with escape codes, one copy per refresh) and a wide COLUMNS."""
    name = "a-model-file-with-a-long-name-" + "x" * 70 + ".safetensors"
    path = tmp_path / name
    tensors = {f"t{i:03d}": _entry([64], [i * 256, (i + 1) * 256]) for i in range(200)}
    path.write_bytes(safetensors_file(tensors, bytes(200 * 256)))
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "250", "TF_CPP_MIN_LOG_LEVEL": "1"}
    proc = subprocess.run([sys.executable, "-m", "tiercache", "import", str(path), "--npy-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert 1 <= len(lines) <= 11, lines
    assert all(len(line) <= PLAIN_PROGRESS_WIDTH for line in lines), lines
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    assert lines[-1].startswith("importing a-model-file") and "100%" in lines[-1]
    assert "200 shards" in proc.stdout


# --- the safetensors origin (the Rust reader) on the same files --------------------------------
def _read_origin(path: str) -> list[tuple[str, tuple[int, ...]]]:
    from tiercache.origins import SafetensorsOrigin

    origin = SafetensorsOrigin(path)
    return [(key, np.shape(np.asarray(origin.get(key)))) for key in origin.keys()]


@pytest.mark.parametrize("case", list(ST_CASES))
def test_the_safetensors_origin_refuses_the_same_files_with_store_error(tmp_path: Path,
                                                                        case: str) -> None:
    """The origin parses headers with the ``safetensors`` package (Rust), not tiercache's
    reader; it too must answer each hostile file with its one error, within the cap."""
    pytest.importorskip("safetensors")
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(ST_CASES[case][0])
    result = run_capped(_read_origin, str(path), limit_bytes=CAP, timeout_s=TIMEOUT_S)
    assert result.ok or result.error_type == "StoreError", result.describe()
    if not result.ok:
        assert str(path) in (result.error_message or "")
