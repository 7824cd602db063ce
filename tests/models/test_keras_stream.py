"""Keras models imported as shards and run layer by layer with streamed weights."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import tiercache
from tiercache.cli import main
from tiercache.models import (
    CacheSink,
    DictSink,
    ModelFormatError,
    import_keras,
    load_manifest,
    manifest_path_for_config,
)
from tiercache.models.runtime.keras import StreamingKerasModel

# Keras's own saving code calls np.array(tensor) the numpy-1 way
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.tf,
]


def _sequential() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    # non-trivial batch-norm statistics, so a missing weight would change the output
    bn = model.layers[1]
    bn.moving_mean.assign(np.linspace(-1, 1, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 8).astype("float32"))
    return model


def _functional() -> Any:
    keras.utils.set_random_seed(1)
    inp = keras.Input((12,))
    a = keras.layers.Dense(64, activation="gelu", name="a")(inp)
    b = keras.layers.Dense(64, name="b")(inp)
    shared = keras.layers.Dense(64, name="shared")  # called twice: two nodes
    c = shared(keras.layers.Add()([a, b]))
    d = shared(c)
    out = keras.layers.Dense(3, name="out")(keras.layers.Concatenate()([d, a]))
    return keras.Model(inp, [out, c])


def _weights_bytes(model: Any) -> int:
    return sum(int(np.prod(w.shape)) * 4 for w in model.weights)


@pytest.mark.parametrize(("build", "shape"), [(_sequential, (4, 16, 16, 3)),
                                              (_functional, (5, 12))])
def test_streamed_model_equals_the_plain_model(tmp_path: Path, build: Any,
                                               shape: tuple[int, ...]) -> None:
    model = build()
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    want = model(x)
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": _weights_bytes(model) // 4},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "64MiB"}]}
    with tiercache.open(cfg) as cache:
        manifest = import_keras(path, CacheSink(cache), progress=False)
        assert set(cache.keys()) == set(manifest.tensors)
        streamed = StreamingKerasModel(manifest, cache)
        got = streamed(x)
        assert cache.stats()["tiers"]["ssd"]["hits"] > 0
    wants = want if isinstance(want, list) else [want]
    gots = got if isinstance(got, list) else [got]
    assert len(gots) == len(wants)
    for g, w in zip(gots, wants, strict=True):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-6, atol=1e-6)
    assert streamed.timings.layers_run > 0


def test_functional_schedule_repeats_shared_layers() -> None:
    sink = DictSink()
    manifest = import_keras(_functional(), sink, progress=False)
    schedule = StreamingKerasModel(manifest, sink).schedule()
    assert schedule.count("shared/kernel") == 2
    assert schedule[:2] == ["a/kernel", "a/bias"]


def test_layers_are_released_after_use() -> None:
    model = _sequential()
    sink = DictSink()
    manifest = import_keras(model, sink, progress=False)

    class Tracking:
        def __init__(self) -> None:
            self.refs: list[weakref.ref[np.ndarray]] = []
            self.most_alive = 0

        def get(self, key: str) -> np.ndarray:
            self.most_alive = max(self.most_alive, sum(r() is not None for r in self.refs))
            array = sink.arrays[key].copy()
            self.refs.append(weakref.ref(array))
            return array

    source = Tracking()
    x = np.ones((2, 16, 16, 3), np.float32)
    np.testing.assert_allclose(StreamingKerasModel(manifest, source)(x), np.asarray(model(x)),
                               rtol=1e-6, atol=1e-6)
    gc.collect()
    assert source.most_alive <= 4  # never more than one layer's arrays (batch norm: 4)


def test_float16_import_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _sequential()
    path = tmp_path / "m.keras"
    model.save(path)
    config = tmp_path / "tiers.toml"
    config.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "1MiB"\n'
                      '[[tiers]]\nname = "ssd"\nbackend = "lmdb"\npath = "ssd"\n'
                      'capacity = "16MiB"\n', encoding="utf-8")
    assert main(["import", str(path), "--config", str(config), "--dtype", "float16",
                 "--no-progress"]) == 0
    assert "shards" in capsys.readouterr().out
    manifest = load_manifest(manifest_path_for_config(config))
    assert manifest.architecture == "keras" and manifest.dtype == "float16"
    with tiercache.open(config) as cache:
        assert manifest.keras is not None
        kernel = cache.get(manifest.keras["layers"][0]["weights"][0])
        assert kernel.dtype == np.float16


def test_bad_keras_files_are_clear_errors(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "fake.keras"
    fake.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ModelFormatError, match=r"fake\.keras"):
        import_keras(fake, DictSink(), progress=False)
    assert main(["import", str(fake), "--npy-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "fake.keras" in err and "Traceback" not in err
    with pytest.raises(ModelFormatError, match="not built"):
        import_keras(keras.Sequential([keras.layers.Dense(2)]), DictSink(), progress=False)


@pytest.mark.parametrize(("dtype", "tolerance"), [("bfloat16", 0.05), ("q8_0", 0.05)])
def test_encoded_imports_run_close_to_float32(tmp_path: Path, dtype: str,
                                              tolerance: float) -> None:
    """A Keras model imported as bfloat16 or q8_0 keeps its shards encoded; the streamed
    model dequantizes them at use (set_weights cannot take ggml blocks) and stays close
    to the float32 model."""
    model = _functional()
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(0).random((5, 12), dtype=np.float32)
    want = model(x)
    sink = DictSink()
    manifest = import_keras(path, sink, dtype=dtype, progress=False)
    assert any(info.encoding is not None for info in manifest.tensors.values())
    got = StreamingKerasModel(manifest, sink)(x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=tolerance, rtol=0.05)
