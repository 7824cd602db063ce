"""Import a Keras 3 model (``.keras`` file or a model object): one shard per variable.

Each variable is stored under its Keras path (``variable.path``, e.g.
``sequential/dense/kernel``), optionally behind a key prefix. The manifest's
``keras`` section keeps what a streaming runner needs to rebuild the model one
layer at a time without loading any weights up front
(:class:`tiercache.models.runtime.keras.StreamingKerasModel`)::

    "keras": {
      "class_name": "Sequential" | "Functional" | ...,
      "config": {...},                      # model.get_config(): layer configs, graph
      "layers": [{"name": "dense", "weights": ["sequential/dense/kernel", ...]}, ...]
    }

``layers[i].weights`` lists the shard keys in the order of that layer's
``layer.weights`` (what ``set_weights`` expects). Keras is imported lazily;
loading a ``.keras`` file uses ``keras.saving.load_model(..., compile=False,
safe_mode=True)``, so it holds the model's weights in memory once during the
import.

Thread-safety: an import uses only its own model and sink.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from ..manifest import ModelManifest
from .base import PlannedShard, ShardSink, float_shard, float_target, write_shards


def keras_module() -> Any:
    """Import Keras once (``TF_CPP_MIN_LOG_LEVEL=1`` unless set) and return it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        import keras
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModelFormatError("importing Keras models needs keras: "
                               "pip install 'tiercache[tf]'") from None
    return keras


def load_keras_file(path: str | os.PathLike[str]) -> Any:
    """Load a ``.keras`` file (no compile, safe mode); :class:`ModelFormatError` if unreadable."""
    file = Path(path)
    if not file.is_file():
        raise ModelFormatError("no such file" if not file.exists() else "not a file", file=file)
    with file.open("rb") as fh:
        if fh.read(2) != b"PK":
            raise ModelFormatError("not a .keras file (a .keras file is a zip archive)",
                                   file=file)
    keras = keras_module()
    try:
        return keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises ValueError, zipfile errors, OSError, ...
        raise ModelFormatError(f"cannot load the Keras model ({type(exc).__name__}: {exc})",
                               file=file) from None


def import_keras(model_or_path: Any, sink: ShardSink, *,
                 dtype: str | np.dtype[Any] | None = None, key_prefix: str = "",
                 progress: bool = True) -> ModelManifest:
    """Write every variable of a Keras model into ``sink``; return the manifest.

    ``model_or_path`` is a ``.keras`` file or a built ``keras.Model``.
    ``dtype`` converts floating-point variables (``None`` or ``"native"``
    keeps them; ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"q8_0"``: see
    :func:`~tiercache.models.importers.base.float_shard`).
    """
    keras = keras_module()
    file: Path | None = None
    if isinstance(model_or_path, (str, os.PathLike)):
        file = Path(model_or_path)
        model = load_keras_file(file)
    else:
        model = model_or_path
    if not isinstance(model, keras.Model):
        raise ModelFormatError(f"expected a keras.Model, got {type(model).__name__}", file=file)
    if not model.built:
        raise ModelFormatError("the Keras model is not built (call it once or build it)",
                               file=file)
    target = float_target(dtype)
    layers: list[dict[str, Any]] = []
    plan: list[PlannedShard] = []
    planned: set[str] = set()
    for layer in model.layers:
        keys: list[str] = []
        for variable in layer.weights:
            key = key_prefix + str(variable.path)
            keys.append(key)
            if key in planned:  # a variable shared by two layers is stored once
                continue
            planned.add(key)
            natural = np.dtype(keras.backend.standardize_dtype(variable.dtype))

            def load(variable: Any = variable, natural: np.dtype[Any] = natural
                     ) -> np.ndarray:
                return np.asarray(variable.numpy(), dtype=natural)

            plan.append(float_shard(key, tuple(int(s) for s in variable.shape), natural, load,
                                    target, file=file))
        layers.append({"name": layer.name, "weights": keys})
    config = model.get_config()
    try:
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"the model's config is not JSON-serialisable ({exc})",
                               file=file) from None
    label = file.name if file is not None else model.name
    infos = write_shards(sink, plan, progress=progress, description=f"importing {label}",
                         file=file)
    source: dict[str, Any] = {"kind": "keras", "keras_version": keras.__version__}
    if file is not None:
        source.update(path=str(file.resolve()), size_bytes=file.stat().st_size)
    return ModelManifest(
        architecture="keras", name=model.name, dtype=target,
        key_prefix=key_prefix, source=source, tensors=infos,
        keras={"class_name": type(model).__name__, "config": config, "layers": layers})
