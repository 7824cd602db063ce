"""Importing into quantized shards: GGUF tensors kept in their ggml encoding, float
checkpoints stored as float16/bfloat16/Q8_0, the manifest's per-tensor encoding."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import numpy as np
import pytest
from safetensors.numpy import save_file

import tiercache
from tiercache.cli import main
from tiercache.errors import ModelFormatError
from tiercache.models import (
    CacheSink,
    DictSink,
    NpyDirSink,
    import_model,
    load_manifest,
    quant,
    smollm2_path,
)
from tiercache.models.importers.gguf import gguf_import_bytes, import_gguf
from tiercache.models.importers.safetensors import import_safetensors
from tiercache.models.manifest import ModelManifest, TensorInfo
from tiercache.models.quant import GGML_TYPES, dequantize

MiB = 1 << 20
#: Every type quant knows, as one tensor each: (name, logical shape).
TYPED = {name: (f"t.{name.lower()}", (3, 512)) for name in GGML_TYPES}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and \
        bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def write_typed_gguf(path: Path, *, extra_iq4_nl: bool = True) -> dict[str, np.ndarray]:
    """A GGUF with one tensor of every supported type (random valid blocks) and one IQ4_NL
    tensor (a type only gguf dequantizes). Returns the shards as quant lays them out."""
    rng = np.random.default_rng(3)
    writer = gguf.GGUFWriter(str(path), "test")
    shards: dict[str, np.ndarray] = {}
    for type_name, (name, shape) in TYPED.items():
        t = GGML_TYPES[type_name]
        shard = quant.random_shard(t, *shape, rng)
        shards[name] = shard
        qtype = gguf.GGMLQuantizationType[type_name]
        if type_name in ("F32", "F16"):
            writer.add_tensor(name, shard)
        else:
            raw = shard.reshape(shape[0], -1).view(np.uint8)
            writer.add_tensor(name, raw, raw_dtype=qtype)
    if extra_iq4_nl:
        raw = rng.integers(0, 256, (2, 2 * 18), dtype=np.uint8)
        raw.reshape(2, 2, 18)[:, :, :2] = np.array([0.5], np.float16).view(np.uint8)
        writer.add_tensor("t.iq4_nl", raw, raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
        shards["t.iq4_nl"] = raw
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return shards


@pytest.fixture
def typed_gguf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "typed.gguf"
    return path, write_typed_gguf(path)


# --- GGUF, native -------------------------------------------------------------------------------
def test_native_gguf_keeps_every_supported_type_byte_for_byte(typed_gguf: Any) -> None:
    path, written = typed_gguf
    sink = DictSink()
    manifest = import_gguf(path, sink, progress=False)
    assert manifest.dtype == "native"
    floats = DictSink()
    import_gguf(path, floats, dtype="float32", progress=False)
    for type_name, (name, shape) in TYPED.items():
        info, shard = manifest.tensors[name], sink.arrays[name]
        assert info.encoding == type_name and info.shape == shape
        assert info.nbytes == shard.nbytes and info.dtype == shard.dtype.name
        assert same_bits(shard, written[name]), type_name          # the file's bytes
        assert quant.encoding_of(shard) == (GGML_TYPES[type_name] if type_name not in
                                            ("F32", "F16") else None)
        assert same_bits(dequantize(shard), floats.arrays[name]), type_name  # = gguf's


def test_an_unknown_type_is_dequantized_and_the_manifest_says_so(typed_gguf: Any) -> None:
    path, written = typed_gguf
    sink = DictSink()
    manifest = import_gguf(path, sink, progress=False)
    assert manifest.metadata["tiercache.dequantized"] == {"t.iq4_nl": "IQ4_NL"}
    assert gguf_import_bytes(path) == manifest.total_bytes
    info = manifest.tensors["t.iq4_nl"]
    assert info.encoding is None and info.dtype == "float32" and info.shape == (2, 64)
    expected = gguf.quants.dequantize(written["t.iq4_nl"], gguf.GGMLQuantizationType.IQ4_NL)
    assert same_bits(sink.arrays["t.iq4_nl"], expected)


def test_native_shards_go_through_a_cache_and_an_npy_folder(typed_gguf: Any,
                                                            tmp_path: Path) -> None:
    path, written = typed_gguf
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "64KiB"},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "8MiB"}]}
    with tiercache.open(cfg) as cache:
        manifest = import_gguf(path, CacheSink(cache), progress=False)
        for name, info in manifest.tensors.items():
            if info.encoding is not None:
                assert same_bits(cache.get(name), written[name])
                assert cache.get(name).shape == info.stored_shape
    folder = tmp_path / "npy"
    import_gguf(path, NpyDirSink(folder), progress=False)
    origin = tiercache.origins.NpyDirOrigin(folder)
    served = origin.get("t.q6_k")
    assert served is not None and same_bits(served, written["t.q6_k"])


class _Comparing:
    """A sink that checks each float32 shard against dequantize() of the native one."""

    def __init__(self, native: dict[str, np.ndarray]) -> None:
        self.native = native
        self.checked = 0
        self.total = 0

    def begin(self, total_bytes: int, keys: list[str]) -> None:
        self.total = total_bytes

    def write(self, key: str, array: np.ndarray) -> None:
        out = np.empty(array.shape, np.float32)
        assert same_bits(dequantize(self.native[key], out=out), array), key
        self.checked += 1

    def finish(self) -> None:
        pass

    def abort(self, keys: list[str]) -> None:
        pass


@pytest.mark.slow
def test_smollm2_native_is_92_mib_and_dequantizes_to_the_float32_import() -> None:
    native = DictSink()
    manifest = import_model("smollm2", native, progress=False)
    assert manifest.dtype == "native"
    assert Counter(t.encoding for t in manifest.tensors.values()) == \
        {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert 90 * MiB < manifest.total_bytes < 94 * MiB
    assert manifest.total_bytes == sum(a.nbytes for a in native.arrays.values())
    assert manifest.total_bytes <= smollm2_path().stat().st_size
    assert gguf_import_bytes(smollm2_path()) == manifest.total_bytes
    comparing = _Comparing(native.arrays)
    floats = import_model("smollm2", comparing, dtype="float32", progress=False)
    assert comparing.checked == 272 and 512 * MiB < floats.total_bytes < 514 * MiB
    assert gguf_import_bytes(smollm2_path(), "float32") == floats.total_bytes
    for name, info in manifest.tensors.items():
        assert info.shape == floats.tensors[name].shape


# --- the manifest -------------------------------------------------------------------------------
def test_manifest_round_trip_with_encodings(tmp_path: Path) -> None:
    m = ModelManifest(architecture="llama", dtype="native", tensors={
        "a": TensorInfo((576, 576), "uint8", 576 * 18 * 20, "Q4_1"),
        "b": TensorInfo((576,), "float32", 576 * 4, "F32"),
        "c": TensorInfo((4, 8), "uint16", 64, "BF16"),
        "d": TensorInfo((3, 2), "float32", 24)})
    path = m.save(tmp_path / "m.json")
    raw = json.loads(path.read_text())
    assert raw["tensors"]["a"]["encoding"] == "Q4_1" and "encoding" not in raw["tensors"]["d"]
    back = load_manifest(path)
    assert back.tensors == m.tensors and back.dtype == "native"
    assert back.tensors["a"].stored_shape == (576, 18, 20)
    assert back.tensors["d"].stored_shape == (3, 2)


def test_manifest_round_trip_with_the_in_out_layout(tmp_path: Path) -> None:
    m = ModelManifest(architecture="llama", dtype="float32", tensors={
        "w": TensorInfo((3, 2), "float32", 24, None, "in_out"),
        "n": TensorInfo((3,), "float32", 12)})
    path = m.save(tmp_path / "m.json")
    raw = json.loads(path.read_text())
    assert raw["tensors"]["w"]["layout"] == "in_out" and "layout" not in raw["tensors"]["n"]
    back = load_manifest(path)
    assert back.tensors == m.tensors and back.tensors["w"].stored_shape == (2, 3)


def _manifest_with(tmp_path: Path, entry: dict[str, Any]) -> Path:
    data = ModelManifest(architecture="x").to_dict()
    data["tensors"] = {"blk.0.w": entry}
    path = tmp_path / "tiers.model.json"
    path.write_text(json.dumps(data))
    return path


def test_an_old_manifest_without_encodings_still_reads(tmp_path: Path) -> None:
    path = _manifest_with(tmp_path, {"shape": [2, 3], "dtype": "float16", "nbytes": 12})
    assert load_manifest(path).tensors["blk.0.w"] == TensorInfo((2, 3), "float16", 12)


@pytest.mark.parametrize("entry, message", [
    ({"shape": [4, 32], "dtype": "uint8", "nbytes": 66, "encoding": "IQ2_XXS"},
     "unknown encoding 'IQ2_XXS'"),
    ({"shape": [4, 32], "dtype": "uint8", "nbytes": 66, "encoding": 7}, "unknown encoding '7'"),
    ({"shape": [4, 32], "dtype": "float32", "nbytes": 72, "encoding": "Q4_1"},
     "Q4_1 is stored as uint8"),
    ({"shape": [4, 32], "dtype": "uint8", "nbytes": 81, "encoding": "Q4_1"},
     "nbytes is 81, but uint8 \\[4, 1, 20\\] takes 80"),
    ({"shape": [4, 33], "dtype": "uint8", "nbytes": 80, "encoding": "Q4_1"}, "multiple of 32"),
    ({"shape": [4, 32], "dtype": "uint16", "nbytes": 8, "encoding": "BF16"}, "takes 256"),
    ({"shape": [2, 3], "dtype": "float32", "nbytes": 12}, "nbytes is 12, but float32"),
    ({"shape": [2, 3], "dtype": "floaty", "nbytes": 12}, "not a numpy dtype"),
    ({"shape": [2, 3], "dtype": "float32", "nbytes": 24, "layout": "cols"},
     "layout 'cols' is not valid"),
    ({"shape": [6], "dtype": "float32", "nbytes": 24, "layout": "in_out"},
     "for a 2-D float matrix"),
    ({"shape": [4, 32], "dtype": "uint8", "nbytes": 80, "encoding": "Q4_1",
      "layout": "in_out"}, "layout 'in_out' is not valid"),
])
def test_a_hostile_manifest_entry_names_the_file_and_tensor(tmp_path: Path, entry: Any,
                                                            message: str) -> None:
    path = _manifest_with(tmp_path, entry)
    with pytest.raises(ModelFormatError, match=message) as info:
        load_manifest(path)
    assert str(path) in str(info.value) and "'blk.0.w'" in str(info.value)


# --- float checkpoints --------------------------------------------------------------------------
def _float_checkpoint(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    arrays: dict[str, np.ndarray] = {"w": rng.standard_normal((8, 64)).astype(np.float32),
              "w16": rng.standard_normal((4, 32)).astype(np.float16),
              "norm": rng.standard_normal(64).astype(np.float32),
              "odd": rng.standard_normal((4, 40)).astype(np.float32),
              "ids": np.arange(6, dtype=np.int64)}
    save_file(arrays, str(path))
    return arrays


def test_safetensors_as_q8_0(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    arrays = _float_checkpoint(path)
    sink = DictSink()
    m = import_safetensors(path, sink, dtype="q8_0", progress=False)
    assert m.dtype == "q8_0"
    assert m.tensors["w"] == TensorInfo((8, 64), "uint8", 8 * 2 * 34, "Q8_0")
    expected = gguf.quants.quantize(arrays["w"], gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(sink.arrays["w"].reshape(8, -1), expected)
    assert m.tensors["w16"].encoding == "Q8_0"
    for plain in ("norm", "odd"):  # 1-D, or rows not a whole number of blocks: float32
        assert m.tensors[plain].encoding is None and sink.arrays[plain].dtype == np.float32
    assert sink.arrays["ids"].dtype == np.int64 and m.tensors["ids"].encoding is None
    err = np.abs(dequantize(sink.arrays["w"]) - arrays["w"])
    assert (err.reshape(8, 2, 32).max(axis=2) <= quant.q8_0_error_bound(arrays["w"])).all()


def test_safetensors_as_bfloat16_float16_and_native(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    arrays = _float_checkpoint(path)
    sink = DictSink()
    m = import_safetensors(path, sink, dtype="bfloat16", progress=False)
    assert m.dtype == "bfloat16" and m.tensors["w"] == TensorInfo((8, 64), "uint16", 1024,
                                                                   "BF16")
    ref = gguf.quants.quantize(arrays["w"], gguf.GGMLQuantizationType.BF16)
    assert np.array_equal(sink.arrays["w"].view(np.uint8), ref)
    assert sink.arrays["ids"].dtype == np.int64
    half = DictSink()
    m = import_safetensors(path, half, dtype="float16", progress=False)
    assert m.dtype == "float16" and half.arrays["w"].dtype == np.float16
    assert m.tensors["w"].encoding is None
    same = DictSink()
    m = import_safetensors(path, same, dtype="native", progress=False)
    assert all(same_bits(same.arrays[k], arrays[k]) for k in arrays)


def test_safetensors_bf16_stays_bf16_when_native(tmp_path: Path) -> None:
    values = np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)
    bits = quant.quantize(values, "BF16")
    header = {"b": {"dtype": "BF16", "shape": [4, 32], "data_offsets": [0, bits.nbytes]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "bf.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bits.tobytes())
    native, widened, q8 = DictSink(), DictSink(), DictSink()
    m = import_safetensors(path, native, dtype="native", progress=False)
    assert m.tensors["b"].encoding == "BF16" and same_bits(native.arrays["b"], bits)
    import_safetensors(path, widened, progress=False)  # the default: widened to float32
    assert same_bits(dequantize(native.arrays["b"]), widened.arrays["b"])
    import_safetensors(path, q8, dtype="q8_0", progress=False)
    assert np.array_equal(q8.arrays["b"], quant.quantize(widened.arrays["b"], "Q8_0"))


def test_q8_0_of_a_non_finite_tensor_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    save_file({"a": np.ones((2, 32), np.float32),
               "z": np.full((2, 32), np.inf, np.float32)}, str(path))
    sink = DictSink()
    with pytest.raises(ModelFormatError, match=r"nan\.safetensors.*'z' cannot be stored as "
                                               r"Q8_0.*finite"):
        import_safetensors(path, sink, dtype="q8_0", progress=False)
    assert sink.arrays == {}  # the shard written before it was removed


@pytest.mark.parametrize("dtype", ["int8", "q4_0", "bf16"])
def test_unknown_float_dtypes_are_refused(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "m.safetensors"
    _float_checkpoint(path)
    with pytest.raises(ValueError, match="dtype must be one of native, float32, float16, "
                                         "bfloat16, q8_0"):
        import_safetensors(path, DictSink(), dtype=dtype, progress=False)


@pytest.mark.tf
@pytest.mark.slow
def test_keras_as_q8_0() -> None:
    import keras

    from tiercache.models import import_keras

    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64)])
    sink = DictSink()
    m = import_keras(model, sink, dtype="q8_0", progress=False)
    kernel, bias = (v.path for v in model.layers[0].weights)
    assert m.dtype == "q8_0" and m.tensors[kernel].encoding == "Q8_0"
    assert m.tensors[kernel].shape == (32, 64) and sink.arrays[kernel].shape == (32, 2, 34)
    assert m.tensors[bias].encoding is None
    value = model.layers[0].weights[0].numpy()
    assert np.array_equal(sink.arrays[kernel], quant.quantize(value, "Q8_0"))


# --- the CLI ------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    return main(["import", *argv, "--no-progress"])


def test_cli_dtype_for_a_gguf(typed_gguf: Any, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = typed_gguf
    assert _cli(str(path), "--npy-dir", str(tmp_path / "n")) == 0
    native = load_manifest(tmp_path / "n" / "tiercache-model.json")
    assert native.dtype == "native" and native.tensors["t.q4_k"].encoding == "Q4_K"
    assert _cli(str(path), "--npy-dir", str(tmp_path / "f"), "--dtype", "float32") == 0
    floats = load_manifest(tmp_path / "f" / "tiercache-model.json")
    assert floats.dtype == "float32" and floats.total_bytes > native.total_bytes
    assert all(t.encoding is None for t in floats.tensors.values())
    capsys.readouterr()
    assert _cli(str(path), "--npy-dir", str(tmp_path / "q"), "--dtype", "q8_0") == 2
    err = capsys.readouterr().err
    assert "typed.gguf" in err and "bfloat16 and q8_0 are for float checkpoints" in err


def test_cli_weight_layout_is_refused_where_it_does_not_apply(
        typed_gguf: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = typed_gguf
    capsys.readouterr()
    # not a Llama model: nothing to transpose, and nothing written
    assert _cli(str(path), "--npy-dir", str(tmp_path / "a"), "--dtype", "float32",
                "--weight-layout", "in_out") == 2
    assert "needs a Llama model" in capsys.readouterr().err
    assert not list((tmp_path / "a").glob("*.npy"))
    # a quantized (native) import keeps its blocks per output row
    assert _cli(str(path), "--npy-dir", str(tmp_path / "b"), "--weight-layout", "in_out") == 2
    assert "in_out is for float32/float16 imports" in capsys.readouterr().err
    # a float checkpoint: the option is a GGUF import's
    st = tmp_path / "w.safetensors"
    _float_checkpoint(st)
    assert _cli(str(st), "--npy-dir", str(tmp_path / "c"), "--weight-layout", "in_out") == 2
    assert "is for GGUF imports" in capsys.readouterr().err


def test_cli_dtype_for_safetensors_and_synthetic(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.safetensors"
    _float_checkpoint(path)
    for dtype, encoding in (("q8_0", "Q8_0"), ("bfloat16", "BF16"), ("float16", None)):
        folder = tmp_path / dtype
        assert _cli(str(path), "--npy-dir", str(folder), "--dtype", dtype) == 0
        manifest = load_manifest(folder / "tiercache-model.json")
        assert manifest.dtype == dtype and manifest.tensors["w"].encoding == encoding
    assert _cli("synthetic", "--npy-dir", str(tmp_path / "s"), "--dtype", "native") == 0
    assert load_manifest(tmp_path / "s" / "tiercache-model.json").dtype == "float32"
    capsys.readouterr()
    assert _cli("synthetic", "--npy-dir", str(tmp_path / "s8"), "--dtype", "q8_0") == 2
    assert "synthetic model is float32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(str(path), "--npy-dir", str(tmp_path / "x"), "--dtype", "int4")
