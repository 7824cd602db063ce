"""The decoder's functions in numpy, with ggml blocks multiplied by the C kernel.

The same computation as :mod:`.decoder` (same arguments, same shapes, same
results up to float rounding), for shards computed on as stored: every product
with a Q4_0/Q4_1/Q8_0 block shard runs :func:`~.kernels.block_matmul`, which never
writes a float32 copy of the weights, and float32 shards go to ``np.matmul``. The
small operations around the products (RMSNorm, rotary embeddings, attention over
the KV cache, SwiGLU) are numpy calls on a few KiB each. Nothing is traced or
compiled, so a new batch or length bucket costs nothing and keeps no memory.

Why a second path: TensorFlow's compiled step must dequantize every block into a
float32 matrix before a product, which bounds native shards at several rows (a
SmolLM2 step at batch 16: 73-80 ms); here the blocks are decoded in registers.
Measured with ``python bench/bench_decode.py`` (docs/performance.md).

:class:`CpuFunctions` has :class:`~.decoder.DecoderFunctions`' interface
(``group``, ``step``, ``head``, ``step_head``, ``call``, ``traces``), taking numpy
arrays where that one takes tensors. Cost per call: as :mod:`.decoder`'s.
Thread-safety: pure functions of their arguments (one model per thread, as the
model itself).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..llama import LlamaHParams
from .kernels import attend_one_token, block_matmul, block_matmul_lean, is_kernel_block

__all__ = ["CpuFunctions", "last_real_rows"]

F32 = np.float32


def last_real_rows(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``x[r, counts[r] - 1]`` for every row, ``[rows, 1, d]`` (the last real token of
    ragged prompts padded on the right). O(rows * d)."""
    index = np.maximum(counts - 1, 0).astype(np.intp)[:, None, None]
    return np.take_along_axis(x, index, axis=1)


class CpuFunctions:
    """The decoder's group, step and head for the architecture ``hp`` (see the module)."""

    def __init__(self, hp: LlamaHParams) -> None:
        self.hp = hp
        self.group_size = hp.n_heads // hp.n_kv_heads
        self.scale = F32(1.0 / math.sqrt(hp.head_dim))
        self.eps = F32(hp.rms_eps)
        #: Nothing is traced; kept for :class:`~.decoder.DecoderFunctions`' interface.
        self.traces: Counter[str] = Counter()

    @property
    def trace_count(self) -> int:
        """Always 0: nothing is traced."""
        return 0

    def has_step_variant(self, layers: int, rows: int, length: int) -> bool:
        """Always True: no variant is compiled, so none is missing. O(1)."""
        return True

    def call(self, fn: str, key: tuple[Any, ...], args: tuple[Any, ...],
             flat: list[Any]) -> Any:
        """``getattr(self, fn)(*args)`` (``key`` and ``flat`` are ignored). O(1) besides it."""
        return getattr(self, fn)(*args)

    # --- the pieces ------------------------------------------------------------------
    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """``x * rsqrt(mean(x^2) + eps) * weight`` over the last axis, in float32."""
        mean = np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32)
        out: np.ndarray = x * (F32(1.0) / np.sqrt(mean + self.eps)) * weight
        return out

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Rotary embedding of ``x`` ``[B, T, heads, head_dim]`` (cos/sin ``[B, T, 1, half]``)."""
        half = self.hp.head_dim // 2
        if self.hp.rope_style == "interleaved":  # pairs (x[2i], x[2i+1])
            pairs = x.reshape(*x.shape[:3], half, 2)
            x0, x1 = pairs[..., 0], pairs[..., 1]
            return np.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos],
                            axis=-1).reshape(x.shape)
        x0, x1 = x[..., :half], x[..., half:]  # rotate_half: (x[i], x[i + d/2])
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)

    @staticmethod
    def linear(h: np.ndarray, w: np.ndarray, in_out: bool = False) -> np.ndarray:
        """``h @ W.T`` over the last axis of ``h``: blocks by the kernel, float32 by
        ``np.matmul`` (``in_out``: ``w`` stored ``[in, out]``)."""
        flat = h.reshape(-1, h.shape[-1])
        if w.dtype == np.uint8 and is_kernel_block(w):
            lean = flat.dtype == F32 and flat.flags.c_contiguous
            out = block_matmul_lean(flat, w) if lean else block_matmul(flat, w)
        else:
            out = flat @ (w if in_out else w.T)
        return out.reshape(*h.shape[:-1], out.shape[-1])

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  cache: tuple[np.ndarray, np.ndarray], mask: np.ndarray,
                  causal: np.ndarray) -> np.ndarray:
        """Grouped-query attention of the new tokens over the cache and themselves.

        ``q`` ``[B, T, heads, hd]``, ``k``/``v`` ``[B, T, kv, hd]``, cache (keys ``[B, kv,
        hd, S]``, values ``[B, kv, S, hd]``), ``mask`` ``[B, S]``, ``causal`` ``[T, T]``;
        returns ``[B, T, heads * hd]``. One token per row (a decode step): in C
        (:func:`~.kernels.attend_one_token`); more (a prompt): numpy's batched products."""
        b, t, heads, hd = q.shape
        if t == 1:
            return attend_one_token(q, k, v, cache[0], cache[1], mask, float(self.scale))
        kv, g = k.shape[2], self.group_size
        keys, values = cache
        s = keys.shape[-1]
        qg = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
        past = np.matmul(qg, keys).reshape(b, kv, g, t, s) * self.scale
        past += mask[:, None, None, None, :]
        own = np.matmul(qg, k.transpose(0, 2, 3, 1)).reshape(b, kv, g, t, t) * self.scale
        own += causal
        scores = np.concatenate([past, own], axis=-1)
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out: np.ndarray = (np.matmul(scores[..., :s].reshape(b, kv, g * t, s), values)
               + np.matmul(scores[..., s:].reshape(b, kv, g * t, t), v.transpose(0, 2, 1, 3)))
        return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, heads * hd)

    def block(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mask: np.ndarray,
              causal: np.ndarray, cache: tuple[np.ndarray, np.ndarray], w: Sequence[Any],
              flags: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """One Llama block: the new ``x`` and the new keys/values ``[B, 2, T, kv, hd]``."""
        hp = self.hp
        attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down = w
        b, t = x.shape[:2]
        h = self.rms_norm(x, attn_norm)
        q = self.linear(h, wq, flags[1]).reshape(b, t, hp.n_heads, hp.head_dim)
        k = self.linear(h, wk, flags[2]).reshape(b, t, hp.n_kv_heads, hp.head_dim)
        v = self.linear(h, wv, flags[3]).reshape(b, t, hp.n_kv_heads, hp.head_dim)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        x = x + self.linear(self.attention(q, k, v, cache, mask, causal), wo, flags[4])
        h = self.rms_norm(x, ffn_norm)
        gate = self.linear(h, w_gate, flags[6])
        # silu(g) = g * sigmoid(g), sigmoid by tanh (no overflow for large |g|)
        act = gate * (F32(0.5) * np.tanh(F32(0.5) * gate) + F32(0.5))
        x = x + self.linear(act * self.linear(h, w_up, flags[7]), w_down, flags[8])
        return x, np.stack([k, v], axis=1)

    # --- the decoder's functions -------------------------------------------------------
    def group(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mask: np.ndarray,
              caches: Sequence[tuple[np.ndarray, np.ndarray]],
              weights: Sequence[Sequence[Any]],
              in_out: Sequence[Sequence[bool]] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Blocks over the new tokens ``x`` ``[B, T, d]``: the new ``x`` and the new
        keys/values ``[L, B, 2, T, kv, hd]`` (the caller writes them in the cache)."""
        t = x.shape[1]
        causal = np.triu(np.full((t, t), F32(-1e30), dtype=F32), k=1)
        layouts = in_out or tuple((False,) * len(w) for w in weights)
        new_kv = []
        for cache, w, flags in zip(caches, weights, layouts, strict=True):
            x, kv = self.block(x, cos, sin, mask, causal, cache, w, flags)
            new_kv.append(kv)
        return x, np.stack(new_kv, axis=0)

    step = group

    def head(self, x: np.ndarray, norm: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Logits ``[B, vocab]`` of each row's last token of ``x`` ``[B, T, d]``."""
        logits: np.ndarray = self.linear(self.rms_norm(x[:, -1], norm), weight)
        return logits

    def step_head(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mask: np.ndarray,
                  caches: Sequence[tuple[np.ndarray, np.ndarray]],
                  weights: Sequence[Sequence[Any]], in_out: Sequence[Sequence[bool]],
                  norm: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`group` then :meth:`head`: ``(logits, new keys/values)``."""
        x, new_kv = self.group(x, cos, sin, mask, caches, weights, in_out)
        return self.head(x, norm, head), new_kv
