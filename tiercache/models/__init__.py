"""Models: everything that knows what a model is, in one package.

- :mod:`tiercache.models.api` -- :func:`load_model`, :class:`Model`,
  :class:`Sampler`: one call from a cache's TOML file to generated text.
- :mod:`tiercache.models.runtime` -- the runtimes that read weights from a
  :class:`WeightProvider` (a :class:`~tiercache.TieredCache`, a
  :class:`MappingProvider`): :mod:`~tiercache.models.runtime.tensorflow` (a
  streaming Llama decoder) and :mod:`~tiercache.models.runtime.keras` (a Keras
  model run layer by layer).

Words: an *importer* turns a model file into shards; a *weight provider* hands
a runtime its shards by key; an *origin* (:mod:`tiercache.origins`) is the
read-only source of truth a cache falls back to on a miss.

Importing this package imports no framework (TensorFlow, Keras and gguf are
imported on first use). Thread-safety is documented per class.
"""

from __future__ import annotations

from .api import DEFAULT_PREFETCH, Model, Sampler, TextStream, find_manifest, load_model
from .runtime import MappingProvider, WeightProvider

__all__ = [
    "DEFAULT_PREFETCH",
    "MappingProvider",
    "Model",
    "Sampler",
    "TextStream",
    "WeightProvider",
    "find_manifest",
    "load_model",
]
