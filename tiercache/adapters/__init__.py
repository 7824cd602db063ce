"""Framework adapters: run models whose weights stream from a tiercache.

- :mod:`tiercache.adapters.tensorflow` -- a Llama-family decoder in TensorFlow
  (:class:`~tiercache.adapters.tensorflow.LlamaModel`), the only module that
  imports ``tensorflow`` (lazily, on first use).
- :mod:`tiercache.adapters.keras` -- run a Keras 3 model layer by layer with
  its weights set from the cache just before each layer
  (:class:`~tiercache.adapters.keras.StreamingKerasModel`).

Importing this package imports no framework.
"""

from __future__ import annotations

from typing import Any, Protocol


class WeightSource(Protocol):
    """Anything that returns a shard by key: a :class:`~tiercache.engine.TieredCache`,
    a :class:`MappingSource`, an origin wrapped in one, ...

    ``get`` must raise ``KeyError`` (e.g. ``ShardNotFoundError``) for a missing key.
    The adapters never write to what it returns.
    """

    def get(self, key: str, /) -> Any: ...


class MappingSource:
    """A :class:`WeightSource` over a plain dict of arrays (an all-in-RAM run).

    Thread-safe for reads.
    """

    def __init__(self, arrays: dict[str, Any]) -> None:
        self.arrays = arrays

    def get(self, key: str, /) -> Any:
        return self.arrays[key]


__all__ = ["MappingSource", "WeightSource"]
