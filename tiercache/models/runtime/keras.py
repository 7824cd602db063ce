"""Run a Keras 3 model layer by layer with its weights streamed from a tiercache.

:class:`StreamingKerasModel` never builds the whole model. For each layer, in
call order, it rebuilds that one layer from its saved config (Keras
``deserialize_keras_object``, which also builds it from its ``build_config``),
sets its weights from the :class:`~tiercache.models.runtime.WeightProvider` just before
calling it (``layer.set_weights``), calls it, and drops it -- so at most one
layer's weights are held at a time and a model larger than the RAM tier runs.
Outputs equal the plain model's (same layers, same kernels).

Supported: ``Sequential`` models (layers in order) and functional models
(the saved graph -- ``inbound_nodes`` with ``keras_history`` references -- is
interpreted node by node; a layer shared by several nodes is rebuilt for each
call). Subclassed models have no such config and are not supported. The model
must have been imported with :func:`tiercache.models.import_keras`, whose
manifest holds the config and each layer's weight keys.

Complexity: one pass over the layers per call, plus rebuilding each layer
(milliseconds for Dense/Conv). Thread-safety: calls do not share state beyond
the provider and timing counters; use one instance per thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from ..importers.keras import keras_module
from ..manifest import ModelManifest
from ..quant import dequantize
from . import WeightProvider


@dataclass
class KerasTimings:
    """Cumulative seconds waiting on ``provider.get``, setting weights, and in layer calls."""

    fetch_s: float = 0.0
    set_weights_s: float = 0.0
    compute_s: float = 0.0
    layers_run: int = 0
    bytes_fetched: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _as_triples(value: Any) -> list[list[Any]]:
    """Keras saves one input/output as ``[name, node, index]`` and several as a list of them."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [value]
    return list(value)


class StreamingKerasModel:
    """A Keras model whose layers are rebuilt and fed weights one at a time.

    Parameters
    ----------
    manifest:
        From :func:`~tiercache.models.import_keras` (``manifest.keras`` is required).
    provider:
        Serves the weight shards (a :class:`~tiercache.TieredCache`, ...).
    """

    def __init__(self, manifest: ModelManifest, provider: WeightProvider) -> None:
        if manifest.keras is None:
            raise ModelFormatError(f"model {manifest.name!r} was not imported from Keras")
        self.manifest = manifest
        self.provider = provider
        self.timings = KerasTimings()
        section = manifest.keras
        self.class_name = str(section["class_name"])
        self.config: dict[str, Any] = section["config"]
        self._weights: dict[str, list[str]] = {e["name"]: list(e["weights"])
                                               for e in section["layers"]}
        self._keras = keras_module()
        layer_configs = self.config.get("layers")
        if not isinstance(layer_configs, list):
            raise ModelFormatError(f"{self.class_name} config has no layer list; only "
                                   "Sequential and functional models can stream")
        self._layers: list[dict[str, Any]] = layer_configs
        self._sequential = not any("inbound_nodes" in c for c in layer_configs)

    def schedule(self) -> list[str]:
        """Weight keys in the order one call reads them. O(layers)."""
        keys: list[str] = []
        for cfg in self._layers:
            calls = 1 if self._sequential else max(1, len(cfg.get("inbound_nodes") or []))
            name = self._layer_name(cfg)
            for _ in range(calls):
                keys.extend(self._weights.get(name, []))
        return keys

    def __call__(self, inputs: Any) -> Any:
        """Run the model on ``inputs`` (numpy or tensors); returns numpy output(s)."""
        keras = self._keras
        outputs = self._run_sequential(inputs) if self._sequential else \
            self._run_functional(inputs)
        if isinstance(outputs, (list, tuple)):
            return [keras.ops.convert_to_numpy(o) for o in outputs]
        return keras.ops.convert_to_numpy(outputs)

    predict = __call__

    # --- internals -------------------------------------------------------------------------
    @staticmethod
    def _layer_name(cfg: dict[str, Any]) -> str:
        return str(cfg.get("name") or cfg.get("config", {}).get("name"))

    def _plain(self, key: str, array: Any) -> Any:
        """The shard ``key`` as float32 when the manifest says it is kept encoded (a
        ``q8_0`` or ``bfloat16`` import: :func:`tiercache.models.quant.dequantize`), else
        as fetched. O(size) for an encoded shard, O(1) otherwise."""
        info = self.manifest.tensors.get(key)
        if info is not None and info.encoding is not None and isinstance(array, np.ndarray):
            return dequantize(array)
        return array

    def _call_layer(self, cfg: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        keras = self._keras
        t = self.timings
        layer = keras.saving.deserialize_keras_object(
            {k: v for k, v in cfg.items() if k != "inbound_nodes"})
        keys = self._weights.get(self._layer_name(cfg), [])
        if keys:
            if not layer.built:
                raise ModelFormatError(f"layer {layer.name!r} cannot be built from its config")
            t0 = time.perf_counter()
            arrays = [self._plain(k, self.provider.get(k)) for k in keys]
            t1 = time.perf_counter()
            if len(arrays) != len(layer.weights):
                raise ModelFormatError(f"layer {layer.name!r} has {len(layer.weights)} "
                                       f"weights, the manifest lists {len(arrays)}")
            layer.set_weights(arrays)
            t.fetch_s += t1 - t0
            t.set_weights_s += time.perf_counter() - t1
            t.bytes_fetched += sum(int(a.nbytes) for a in arrays)
            del arrays
        t0 = time.perf_counter()
        result = layer(*args, **kwargs)
        t.compute_s += time.perf_counter() - t0
        t.layers_run += 1
        del layer  # releases this layer's weights
        return result

    def _run_sequential(self, inputs: Any) -> Any:
        x = inputs
        for cfg in self._layers:
            if cfg.get("class_name") == "InputLayer":
                continue
            x = self._call_layer(cfg, [x], {})
        return x

    def _run_functional(self, inputs: Any) -> Any:
        results: dict[tuple[str, int], Any] = {}
        input_refs = _as_triples(self.config["input_layers"])
        given = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(given) != len(input_refs):
            raise ValueError(f"the model takes {len(input_refs)} inputs, got {len(given)}")
        for (name, node, _), value in zip(input_refs, given, strict=True):
            results[(name, int(node))] = value

        def resolve(obj: Any) -> Any:
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    name, node, index = obj["config"]["keras_history"]
                    value = results[(name, int(node))]
                    return value[int(index)] if isinstance(value, (list, tuple)) else value
                return {k: resolve(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [resolve(v) for v in obj]
            return obj

        def ready(obj: Any) -> bool:
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    name, node, _ = obj["config"]["keras_history"]
                    return (name, int(node)) in results
                return all(ready(v) for v in obj.values())
            if isinstance(obj, list):
                return all(ready(v) for v in obj)
            return True

        pending = [(cfg, i, node) for cfg in self._layers if cfg.get("class_name") != "InputLayer"
                   for i, node in enumerate(cfg.get("inbound_nodes") or [])]
        while pending:  # saved configs are topologically ordered: normally one sweep
            progressed = False
            remaining = []
            for cfg, index, node in pending:
                if ready(node.get("args", [])) and ready(node.get("kwargs", {})):
                    results[(self._layer_name(cfg), index)] = self._call_layer(
                        cfg, resolve(node.get("args", [])), resolve(node.get("kwargs", {})))
                    progressed = True
                else:
                    remaining.append((cfg, index, node))
            if not progressed:
                raise ModelFormatError("the functional graph has inputs no layer produces")
            pending = remaining
        outs = []
        for name, node, index in _as_triples(self.config["output_layers"]):
            value = results[(name, int(node))]
            outs.append(value[int(index)] if isinstance(value, (list, tuple)) else value)
        return outs[0] if len(outs) == 1 else outs

