"""A Llama-shaped model with deterministic random weights, of any size.

For scale runs and tests: :func:`synthetic_llama` writes the same shard keys
and the same kind of manifest as a GGUF import (``blk.N.attn_q.weight``, ...,
``hparams``, a tokenizer), so the streaming loop, the CLI and the prefetcher
treat it exactly like an imported model. Each tensor is generated from
``numpy.random.default_rng((seed, crc32(name)))`` on its own, so any tensor can
be regenerated without the others, the output does not depend on write
order, and memory stays at one tensor however big the model is.

Scales: matrices ~ N(0, 1/in_features) (keeps activations O(1) through the
blocks), the embedding table ~ N(0, 1) (confident logits), norm weights
~ 1 + N(0, 0.1). The tokenizer is byte-level without merges
(:meth:`BPETokenizer.byte_level`), so the vocabulary must have at least 257
entries.

Complexity: O(parameters). Thread-safety: each call uses its own generators.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ..llama import LlamaHParams, llama_schedule
from ..manifest import ModelManifest
from ..tokenizer import BPETokenizer
from .base import PlannedShard, ShardSink, in_reading_order, write_shards


def synthetic_hparams(*, layers: int = 2, dim: int = 64, ffn: int | None = None,
                      vocab: int = 512, heads: int | None = None, kv_heads: int | None = None,
                      rope_theta: float = 10000.0, tied: bool = True,
                      context_length: int = 2048) -> LlamaHParams:
    """Hyper-parameters with defaults: ``ffn = 8/3 * dim`` rounded up to 32,
    ``heads = max(1, dim // 64)``, ``kv_heads = heads``. ``ValueError`` if inconsistent."""
    heads = heads if heads is not None else max(1, dim // 64)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    ffn = ffn if ffn is not None else -(-dim * 8 // 3 // 32) * 32
    return LlamaHParams(n_layers=layers, dim=dim, ffn_dim=ffn, n_heads=heads,
                        n_kv_heads=kv_heads if kv_heads is not None else heads,
                        vocab_size=vocab, head_dim=dim // heads, rope_theta=rope_theta,
                        rope_style="interleaved", rms_eps=1e-5, context_length=context_length,
                        tied_embeddings=tied)


def synthetic_tensor(name: str, shape: tuple[int, ...], *, seed: int,
                     dtype: np.dtype[Any]) -> np.ndarray:
    """The deterministic value of tensor ``name`` (see the module docstring)."""
    rng = np.random.default_rng((seed, zlib.crc32(name.encode("utf-8"))))
    if len(shape) == 1:
        values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    elif name in ("token_embd.weight", "output.weight"):
        values = rng.standard_normal(shape, dtype=np.float32)
    else:
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(1.0 / np.sqrt(shape[1]))
    return values.astype(dtype, copy=False)


def synthetic_llama(sink: ShardSink, hparams: LlamaHParams | None = None, *, seed: int = 0,
                    dtype: str | np.dtype[Any] = "float32", key_prefix: str = "",
                    progress: bool = True) -> ModelManifest:
    """Write a synthetic Llama model into ``sink``; return its manifest.

    ``hparams`` defaults to :func:`synthetic_hparams` () (2 layers, dim 64).
    """
    hp = hparams if hparams is not None else synthetic_hparams()
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {target}")
    tokenizer = BPETokenizer.byte_level(hp.vocab_size)
    plan = []
    for name, shape in hp.tensor_shapes().items():
        def load(name: str = name, shape: tuple[int, ...] = shape) -> np.ndarray:
            return synthetic_tensor(name, shape, seed=seed, dtype=target)

        plan.append(PlannedShard(key_prefix + name, shape, target, load))
    plan = in_reading_order(plan, llama_schedule(hp, key_prefix))
    infos = write_shards(sink, plan, progress=progress, description="generating synthetic model")
    return ModelManifest(
        architecture="llama",
        name=f"synthetic-llama-{hp.n_layers}x{hp.dim}-ffn{hp.ffn_dim}-v{hp.vocab_size}-s{seed}",
        dtype=target.name, key_prefix=key_prefix, source={"kind": "synthetic", "seed": seed},
        hparams=hp.to_dict(), tokenizer=tokenizer.to_dict(), tensors=infos)
