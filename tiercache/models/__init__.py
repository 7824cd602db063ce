"""Models: everything that knows what a model is, in one package.

- :mod:`tiercache.models.manifest` -- :class:`ModelManifest`, what an import
  wrote (architecture, tokenizer, tensors), as one small JSON file.
- :mod:`tiercache.models.llama` -- :class:`LlamaHParams` and
  :func:`llama_schedule`, the shard keys of a forward pass in read order.
- :mod:`tiercache.models.tokenizer` -- :class:`BPETokenizer` (GPT-2 style BPE
  from a GGUF file) and the chat template.
- :mod:`tiercache.models.importers` -- the *importers* (GGUF, safetensors,
  Keras, synthetic) that turn a model file into shards plus a manifest.
- :mod:`tiercache.models.runtime` -- the runtimes that read their weights from a
  :class:`WeightProvider` (a :class:`~tiercache.TieredCache`, a
  :class:`MappingProvider`): a streaming TensorFlow Llama decoder and a Keras
  model run layer by layer.
- :mod:`tiercache.models.api` -- :func:`load_model`, :class:`Model`,
  :class:`Sampler`: one call from a cache's TOML file to generated text.

Words: an *importer* turns a model file into shards; a *weight provider* hands
a runtime its shards by key; an *origin* (:mod:`tiercache.origins`) is the
read-only source of truth a cache falls back to on a miss.

Importing this package imports no framework (TensorFlow, Keras and gguf are
imported on first use); ``import tiercache`` does not import this package at
all (``tiercache.load_model`` loads it lazily). Thread-safety is documented
per class.
"""

from __future__ import annotations

from ..errors import ModelFormatError
from .api import DEFAULT_PREFETCH, Model, Sampler, TextStream, find_manifest, load_model
from .importers import (
    MODEL_ALIASES,
    CacheSink,
    DictSink,
    NpyDirSink,
    PlannedShard,
    ShardSink,
    default_import_tier,
    detect_format,
    import_gguf,
    import_keras,
    import_model,
    import_safetensors,
    read_gguf_header,
    read_gguf_metadata,
    resolve_model,
    smollm2_path,
    synthetic_hparams,
    synthetic_llama,
    write_shards,
)
from .llama import LlamaHParams, llama_layer_keys, llama_schedule
from .manifest import (
    ModelManifest,
    TensorInfo,
    load_manifest,
    manifest_path_for_config,
    manifest_path_for_npy_dir,
)
from .runtime import MappingProvider, WeightProvider
from .tokenizer import BPETokenizer

__all__ = [
    "DEFAULT_PREFETCH",
    "MODEL_ALIASES",
    "BPETokenizer",
    "CacheSink",
    "DictSink",
    "LlamaHParams",
    "MappingProvider",
    "Model",
    "ModelFormatError",
    "ModelManifest",
    "NpyDirSink",
    "PlannedShard",
    "Sampler",
    "ShardSink",
    "TensorInfo",
    "TextStream",
    "WeightProvider",
    "default_import_tier",
    "detect_format",
    "find_manifest",
    "import_gguf",
    "import_keras",
    "import_model",
    "import_safetensors",
    "llama_layer_keys",
    "llama_schedule",
    "load_manifest",
    "load_model",
    "manifest_path_for_config",
    "manifest_path_for_npy_dir",
    "read_gguf_header",
    "read_gguf_metadata",
    "resolve_model",
    "smollm2_path",
    "synthetic_hparams",
    "synthetic_llama",
    "write_shards",
]
