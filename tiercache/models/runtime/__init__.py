"""Runtimes: run models whose weights stream from a tiercache.

- :mod:`tiercache.models.runtime.tensorflow` -- a Llama-family decoder in
  TensorFlow (:class:`~tiercache.models.runtime.tensorflow.LlamaModel`), built
  from :mod:`.handoff` (zero-copy numpy -> tensor, decoding stored shards),
  :mod:`.kv` (the bucketed KV cache), :mod:`.decoder` (the compiled functions)
  and :mod:`.batch` (batched generation); they import ``tensorflow`` lazily,
  on first use.
- :mod:`tiercache.models.runtime.keras` -- run a Keras 3 model layer by layer
  with its weights set from the cache just before each layer
  (:class:`~tiercache.models.runtime.keras.StreamingKerasModel`).

A runtime reads its weights from a :class:`WeightProvider`, never from a
store, an origin or an importer directly. Importing this package imports no
framework.
"""

from __future__ import annotations

from typing import Any, Protocol


class WeightProvider(Protocol):
    """What a runtime reads its weights from: ``get(key)`` returns the array of one shard.

    The name says the role: it *provides weights by key* to a runtime -- as
    opposed to an *origin* (the read-only source of truth a cache falls back
    to on a miss, :mod:`tiercache.origins`) and an *importer* (which turns a
    model file into shards, :mod:`tiercache.models.importers`). A
    :class:`~tiercache.TieredCache` is one, a :class:`MappingProvider` (a
    plain dict) is another.

    ``get`` must raise ``KeyError`` (e.g. ``ShardNotFoundError``) for a missing
    key. The runtimes never write to what it returns.
    """

    def get(self, key: str, /) -> Any: ...


class MappingProvider:
    """A :class:`WeightProvider` over a plain dict of arrays (an all-in-RAM run).

    Parameters
    ----------
    arrays:
        Shard key -> array; held by reference, never copied.

    ``get`` is O(1). Thread-safe for reads.
    """

    def __init__(self, arrays: dict[str, Any]) -> None:
        self.arrays = arrays

    def get(self, key: str, /) -> Any:
        """The array stored under ``key``; ``KeyError`` when there is none."""
        return self.arrays[key]


__all__ = ["MappingProvider", "WeightProvider"]
