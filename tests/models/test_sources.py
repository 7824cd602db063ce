"""Importers (GGUF, safetensors), sinks, manifests and the synthetic generator.

A tiny llama GGUF is written here with the ``gguf`` package's own writer (quantized
Q8_0 and F16 tensors included), so the importer is tested without any shipped model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf_fixtures import write_tiny_gguf
from reference_llama import ReferenceLlama, load_gguf

import tiercache
from tiercache.cli import main
from tiercache.models import (
    BPETokenizer,
    CacheSink,
    DictSink,
    ModelFormatError,
    ModelManifest,
    NpyDirSink,
    default_import_tier,
    detect_format,
    import_gguf,
    import_model,
    import_safetensors,
    llama_schedule,
    load_manifest,
    manifest_path_for_config,
    manifest_path_for_npy_dir,
    synthetic_hparams,
    synthetic_llama,
)
from tiercache.origins import NpyDirOrigin


# --- a tiny llama GGUF --------------------------------------------------------------------------
@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def test_gguf_import_dequantizes_every_tensor(tiny_gguf: Path) -> None:
    sink = DictSink()
    manifest = import_gguf(tiny_gguf, sink, dtype="float32", progress=False)
    hp = manifest.llama_hparams()
    assert (hp.n_layers, hp.dim, hp.n_heads, hp.n_kv_heads, hp.rope_theta) == (2, 64, 4, 2, 5000.0)
    assert hp.tied_embeddings and hp.rope_style == "interleaved"
    assert set(sink.arrays) == set(hp.tensor_shapes())
    assert list(manifest.tensors) == list(sink.arrays)
    reference, _ = load_gguf(tiny_gguf)
    for key, array in sink.arrays.items():
        assert array.dtype == np.float32
        assert array.shape == hp.tensor_shapes()[key]
        assert np.array_equal(array, reference[key]), key
    tok = BPETokenizer.from_dict(manifest.tokenizer or {})
    assert tok.eos_id == 256 and tok.encode("hi") == [104, 105]
    assert manifest.source["kind"] == "gguf"


def test_gguf_float16_and_prefix(tiny_gguf: Path) -> None:
    sink = DictSink()
    manifest = import_gguf(tiny_gguf, sink, dtype="float16", key_prefix="tiny/", progress=False)
    assert manifest.dtype == "float16" and manifest.key_prefix == "tiny/"
    assert all(k.startswith("tiny/") for k in sink.arrays)
    assert all(a.dtype == np.float16 for a in sink.arrays.values())
    assert llama_schedule(manifest.llama_hparams(), "tiny/")[0] == "tiny/token_embd.weight"
    with pytest.raises(ValueError, match="float32 or float16"):
        import_gguf(tiny_gguf, DictSink(), dtype="int8", progress=False)


@pytest.mark.tf
def test_gguf_model_runs_like_the_reference(tiny_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from tiercache.models.runtime.tensorflow import LlamaModel

    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "64KiB"},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "8MiB"}]}
    with tiercache.open(cfg) as cache:
        manifest = import_gguf(tiny_gguf, CacheSink(cache), progress=False)
        got = LlamaModel.from_manifest(cache, manifest).generate([10, 20, 30], 10)
    weights, config = load_gguf(tiny_gguf)
    assert got == ReferenceLlama(weights, config).generate([10, 20, 30], 10)


@pytest.mark.parametrize("cut", [3, 100, 2000, -1000])
def test_truncated_gguf_is_a_clear_error(tiny_gguf: Path, tmp_path: Path, cut: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_gguf.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[:cut])
    with pytest.raises(ModelFormatError, match=r"broken\.gguf"):
        import_gguf(broken, DictSink(), progress=False)
    assert main(["import", str(broken), "--npy-dir", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tiercache: error: ") and "broken.gguf" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_not_a_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        import_gguf(fake, DictSink(), progress=False)
    with pytest.raises(ModelFormatError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", DictSink(), progress=False)


# --- safetensors --------------------------------------------------------------------------------
def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]],
                       metadata: dict[str, str] | None = None) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob
                     + b"".join(raw for _, _, raw in tensors.values()))


def test_safetensors_import(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "encoder.layer.0.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "encoder.layer.0.bias": rng.standard_normal(8).astype(np.float16),
        "position_ids": np.arange(12, dtype=np.int64).reshape(1, 12)}
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(arrays, str(path), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    sink = DictSink()
    manifest = import_safetensors(path, sink, progress=False)
    assert manifest.architecture == "bert"
    assert manifest.metadata["hf_config"] == {"model_type": "bert"}
    assert manifest.hparams is None
    for key, value in arrays.items():
        assert sink.arrays[key].dtype == value.dtype
        assert np.array_equal(sink.arrays[key], value)
    half = DictSink()
    import_safetensors(path, half, dtype="float16", progress=False)
    assert half.arrays["encoder.layer.0.weight"].dtype == np.float16
    assert half.arrays["position_ids"].dtype == np.int64  # integers keep their dtype


def test_safetensors_bf16_is_widened_exactly(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # exact in bfloat16
    path = tmp_path / "w.safetensors"
    _write_safetensors(path, {"w": ("BF16", [2, 2], bits.tobytes())})
    sink = DictSink()
    import_safetensors(path, sink, progress=False)
    assert sink.arrays["w"].dtype == np.float32
    assert np.array_equal(sink.arrays["w"], values.reshape(2, 2))


@pytest.mark.parametrize(("content", "message"), [
    (b"\x01\x00", "shorter than"),
    (struct.pack("<Q", 50) + b"{}", "header needs 50 bytes"),
    (struct.pack("<Q", 5) + b"{oops", "malformed"),
    (struct.pack("<Q", 2**40), "not a safetensors"),
])
def test_bad_safetensors_headers(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError, match=message) as info:
        import_safetensors(path, DictSink(), progress=False)
    assert "bad.safetensors" in str(info.value)


def test_truncated_safetensors_data(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, {"w": ("F32", [4], np.ones(4, np.float32).tobytes())})
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ModelFormatError, match="truncated"):
        import_safetensors(path, DictSink(), progress=False)
    _write_safetensors(path, {"w": ("F32", [5], np.ones(4, np.float32).tobytes())})
    with pytest.raises(ModelFormatError, match="do not match"):
        import_safetensors(path, DictSink(), progress=False)
    _write_safetensors(path, {"w": ("C64", [1], bytes(8))})
    with pytest.raises(ModelFormatError, match="C64"):
        import_safetensors(path, DictSink(), progress=False)


# --- sinks, dispatch, manifests -----------------------------------------------------------------
def test_cache_sink_defaults_to_the_lowest_persistent_tier(tmp_path: Path, cfg3: Any,
                                                           tiny_gguf: Path) -> None:
    cfg3["tiers"][2]["capacity"] = "4MiB"
    with tiercache.open(cfg3) as cache:
        assert default_import_tier(cache) == "hdd"
        manifest = import_model(tiny_gguf, CacheSink(cache), progress=False)
        assert all(cache.where(k) == ["hdd"] for k in manifest.tensors)
        assert cache.stats()["tiers"]["ram"]["resident_bytes"] == 0  # no cascade through RAM


def test_cache_sink_refuses_a_model_too_big_for_the_tiers(tmp_path: Path, cfg3: Any,
                                                          tiny_gguf: Path) -> None:
    cfg3["tiers"][2]["capacity"] = "128KiB"  # ssd + hdd: 256 KiB; the model needs ~320 KiB
    with tiercache.open(cfg3) as cache:
        sink = CacheSink(cache, "ssd")
        with pytest.raises(tiercache.TierCacheError, match="the model needs"):
            import_gguf(tiny_gguf, sink, dtype="float32", progress=False)
        assert cache.keys() == []  # nothing was written
        with pytest.raises(KeyError, match="no tier named"):
            CacheSink(cache, "nvme")


def test_npy_dir_sink_feeds_an_origin(tmp_path: Path, tiny_gguf: Path) -> None:
    folder = tmp_path / "origin"
    manifest = import_model(tiny_gguf, NpyDirSink(folder), progress=False)
    manifest.save(manifest_path_for_npy_dir(folder))
    origin = NpyDirOrigin(folder)
    assert sorted(origin.keys()) == sorted(manifest.tensors)
    assert load_manifest(folder / "tiercache-model.json").tensors == manifest.tensors


def test_detect_format(tmp_path: Path, tiny_gguf: Path) -> None:
    assert detect_format(tiny_gguf) == "gguf"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tiny_gguf.read_bytes())
    assert detect_format(renamed) == "gguf"
    (tmp_path / "x.bin").write_bytes(b"hello world")
    with pytest.raises(ModelFormatError, match="unknown model format"):
        detect_format(tmp_path / "x.bin")


def test_manifest_round_trip_and_errors(tmp_path: Path, tiny_gguf: Path) -> None:
    manifest = import_gguf(tiny_gguf, DictSink(), progress=False)
    path = manifest.save(tmp_path / "m.json")
    loaded = load_manifest(path)
    assert loaded.to_dict() == manifest.to_dict()
    assert loaded.total_bytes == sum(t.nbytes for t in manifest.tensors.values())
    with pytest.raises(ModelFormatError, match="import a model first"):
        load_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"bad\.json"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ModelFormatError, match="expected 'tiercache-model'"):
        load_manifest(tmp_path / "other.json")
    keras_like = ModelManifest(architecture="keras")
    with pytest.raises(ModelFormatError, match="only 'llama'"):
        keras_like.llama_hparams()
    assert manifest_path_for_config("conf/tiers.toml") == Path("conf/tiers.model.json")


def test_cli_import_into_a_config(tmp_path: Path, tiny_gguf: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiers.toml"
    config.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "1MiB"\n'
                      '[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "ssd"\n'
                      'capacity = "16MiB"\n', encoding="utf-8")
    assert main(["import", str(tiny_gguf), "--config", str(config), "--tier", "ram",
                 "--no-progress"]) == 0
    assert "into tier 'ram'" in capsys.readouterr().out
    assert load_manifest(tmp_path / "tiers.model.json").name == "tiny"
    assert main(["import", str(tiny_gguf), "--no-progress"]) == 2
    assert "exactly one of --config" in capsys.readouterr().err
    assert main(["import", str(tiny_gguf), "--config", str(config), "--layers", "3"]) == 2
    assert "synthetic" in capsys.readouterr().err


# --- synthetic ----------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_sized() -> None:
    hp = synthetic_hparams(layers=2, dim=128, vocab=400, heads=4, kv_heads=2)
    assert hp.ffn_dim == 352 and hp.head_dim == 32
    a, b, c = DictSink(), DictSink(), DictSink()
    manifest = synthetic_llama(a, hp, seed=1, progress=False)
    synthetic_llama(b, hp, seed=1, progress=False)
    synthetic_llama(c, hp, seed=2, progress=False)
    assert set(a.arrays) == set(hp.tensor_shapes()) == set(manifest.tensors)
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert not np.array_equal(a.arrays["blk.0.attn_q.weight"], c.arrays["blk.0.attn_q.weight"])
    assert manifest.total_bytes == sum(v.nbytes for v in a.arrays.values())
    assert BPETokenizer.from_dict(manifest.tokenizer or {}).vocab_size == 400
    with pytest.raises(ValueError, match="multiple"):
        synthetic_hparams(dim=100, heads=3)


def test_cli_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "npy"
    assert main(["import", "synthetic", "--npy-dir", str(out), "--layers", "1", "--dim", "64",
                 "--vocab", "260", "--seed", "5", "--no-progress"]) == 0
    manifest = load_manifest(out / "tiercache-model.json")
    assert manifest.llama_hparams().n_layers == 1 and manifest.source["seed"] == 5
    assert "synthetic-llama-1x64" in capsys.readouterr().out
    assert manifest_path_for_config(tmp_path / "x.toml").name == "x.model.json"
