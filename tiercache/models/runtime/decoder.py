"""The decoder's TensorFlow functions: a group of Llama blocks and the output head.

One Python body serves every mode. :func:`build_functions` returns it three
ways: eager (``compile=False``, for debugging), as a ``tf.function`` for
prompt passes (any number of tokens; shapes relaxed, no XLA: a prompt runs
once, so compiling each prompt length would cost more than it saves), and as a
``tf.function(jit_compile=True)`` for one-token steps, whose shapes are all
static -- batch bucket ``B``, one token, KV length bucket ``S`` -- so XLA
compiles it once per ``(B, S, layers in the group)`` and never again while
those stay the same (:attr:`DecoderFunctions.traces` counts the traces).

Shapes (``L`` layers in the group, ``T`` new tokens per row, ``d`` model width):

- ``x``: ``[B, T, d]`` float32 hidden states of the new tokens;
- ``cos``, ``sin``: ``[B, T, 1, head_dim/2]`` rotary angles of each new token's
  position (computed in numpy: positions differ per row);
- ``mask``: ``[B, S]`` additive mask of the cached positions (0 where row ``b``
  holds a key at that position, ``-inf`` elsewhere);
- ``caches``: ``L`` pairs (keys ``[B, n_kv, head_dim, S]``, values ``[B, n_kv, S,
  head_dim]``: each in the layout its product takes, so XLA neither transposes nor
  copies them) -- read only: the new tokens attend to the cache *and* to themselves
  (a causal ``T x T`` block), so the function never writes the cache;
- ``weights``: ``L`` tuples of the nine block tensors (GGUF layout, rows =
  outputs): float32, or Q4_0/Q4_1/Q8_0 blocks as stored (uint8), which
  :func:`~tiercache.models.runtime.qlinear.quantized_linear` multiplies by
  without a float32 copy (a new trace per mix of the two);
- ``in_out`` (static, part of the trace): ``L`` tuples of nine flags, True for a
  float matrix stored ``[inputs, outputs]`` (an import's ``in_out`` layout, which
  XLA multiplies batches of rows by faster); empty: none.

It returns the new ``x`` and the new keys/values ``[L, B, 2, T, n_kv, head_dim]``,
which the caller writes in place into its preallocated cache
(:class:`~tiercache.models.runtime.kv.KVCache`): one small copy per step
instead of ``tf.concat`` of the whole cache per layer.

Cost per call: O(L * B * T * (d * (q + 2 kv + ffn) + (S + T) * n_heads * head_dim)).
Thread-safety: the functions are pure; tracing is guarded by TensorFlow.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..llama import LlamaHParams
from .qlinear import quantized_linear


@dataclass
class DecoderFunctions:
    """The callables and a trace counter.

    ``group(x, cos, sin, mask, caches, weights, in_out) -> (x, new_kv)`` for prompt
    passes, ``step`` the same for one-token passes (XLA when ``xla``),
    ``head(x, norm, weight) -> logits`` (``x``: ``[B, T, d]``, the logits of
    each row's last token), and ``step_head(x, cos, sin, mask, caches, weights,
    in_out, norm, weight) -> (logits, new_kv)``: a one-token step of every block
    and the head in one call (what a step runs while the whole model is one group:
    one dispatch and no hand-back of ``x`` between the two; counted as a ``step``
    trace). ``traces`` counts the Python traces per function
    and shape key (eager calls are not counted).

    :meth:`call` runs ``step`` or ``head`` through a concrete function kept per
    shape key, called with its flat argument list: calling the
    ``tf.function`` itself costs 1.2-1.8 ms per call on the 2-core VM (it
    matches every argument's type against its traces), the concrete
    function's flat call 60 us (both measured with a block's 14 tensors) --
    with one call per block, the difference is most of a step.
    """

    group: Any
    step: Any
    head: Any
    step_head: Any = None
    traces: Counter[str] = field(default_factory=Counter)
    _concrete: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def has_step_variant(self, layers: int, rows: int, length: int) -> bool:
        """Whether a one-token step over ``layers`` blocks at this batch and length
        bucket is compiled (any forms). O(variants)."""
        return any(k[0] in ("step", "step_head") and k[1:4] == (layers, rows, length)
                   for k in self._concrete)

    @property
    def trace_count(self) -> int:
        """Traces so far, every function and shape together. O(functions)."""
        return sum(self.traces.values())

    def call(self, fn: str, key: tuple[Any, ...], args: tuple[Any, ...],
             flat: list[Any]) -> Any:
        """``getattr(self, fn)(*args)``; ``key`` must identify the argument shapes and
        ``flat`` be ``args`` flattened (``tf.nest.flatten`` order). O(1) besides the call."""
        function = getattr(self, fn)
        if not hasattr(function, "get_concrete_function"):
            return function(*args)  # eager
        concrete = self._concrete.get((fn, *key))
        if concrete is None:
            concrete = function.get_concrete_function(*args)
            self._concrete[(fn, *key)] = concrete
        call_flat = getattr(concrete, "_call_flat", None)
        if call_flat is None:  # pragma: no cover - a TensorFlow without the flat call
            return concrete(*args)
        return call_flat(flat, concrete.captured_inputs)


def build_functions(tf: Any, hp: LlamaHParams, *, compile: bool = True,
                    xla: bool = True) -> DecoderFunctions:
    """Build the group, step and head functions for the architecture ``hp``."""
    n_heads, n_kv, head_dim = hp.n_heads, hp.n_kv_heads, hp.head_dim
    group_size = n_heads // n_kv
    half = head_dim // 2
    scale = 1.0 / math.sqrt(head_dim)
    eps = hp.rms_eps
    interleaved = hp.rope_style == "interleaved"
    fns = DecoderFunctions(group=None, step=None, head=None)

    def rms_norm(x: Any, weight: Any) -> Any:
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
                                 + eps) * weight

    def rope(x: Any, cos: Any, sin: Any) -> Any:
        # x: [B, T, heads, head_dim]; cos/sin: [B, T, 1, head_dim/2]
        if interleaved:  # rotate (x[2i], x[2i+1]) -- llama.cpp "normal" RoPE, GGUF layout
            shape = tf.shape(x)
            pairs = tf.reshape(x, tf.concat([shape[:3], [half, 2]], axis=0))
            x0, x1 = pairs[..., 0], pairs[..., 1]
            rotated = tf.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
            return tf.reshape(rotated, shape)
        x0, x1 = x[..., :half], x[..., half:]  # rotate (x[i], x[i+d/2]) -- HF rotate_half
        return tf.concat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)

    def matmul_t(x: Any, w: Any, in_out: bool = False) -> Any:
        # x: [n, in] @ W.T: w float32 [out, in], float32 [in, out] when ``in_out`` (a
        # manifest's in_out layout: static, part of the trace), or ggml blocks [out,
        # in/32, bytes] (uint8)
        if w.dtype == tf.uint8:
            return quantized_linear(tf, x, w)
        if in_out:
            return tf.matmul(x, w)
        return tf.matmul(x, w, transpose_b=True)

    def linear(h: Any, w: Any, in_out: bool = False) -> Any:
        # h: [B, T, in], w: [out, in] (or [in, out]) -> [B, T, out] (one matmul, all rows)
        shape = tf.shape(h)
        width = h.shape[-1] if h.shape[-1] is not None else shape[-1]
        flat = matmul_t(tf.reshape(h, [-1, width]), w, in_out)
        return tf.reshape(flat, tf.concat([shape[:2], [-1]], axis=0))

    def attention(q: Any, k: Any, v: Any, cache: Any, mask: Any, causal: Any) -> Any:
        # q: [B, T, n_heads, hd]; k, v: [B, T, n_kv, hd]; cache: (keys [B, n_kv, hd, S],
        # values [B, n_kv, S, hd]) -- the layouts the two products take as they are
        shape = tf.shape(q)
        q = tf.reshape(q, tf.concat([shape[:2], [n_kv, group_size, head_dim]], axis=0))
        k_past, v_past = cache
        past = (tf.einsum("btkgd,bkds->bkgts", q, k_past) * scale
                + mask[:, None, None, None, :])
        own = tf.einsum("btkgd,bukd->bkgtu", q, k) * scale + causal
        probs = tf.nn.softmax(tf.concat([past, own], axis=-1), axis=-1)
        s = tf.shape(v_past)[2]
        out = (tf.einsum("bkgts,bksd->btkgd", probs[..., :s], v_past)
               + tf.einsum("bkgtu,bukd->btkgd", probs[..., s:], v))
        return tf.reshape(out, tf.concat([shape[:2], [n_heads * head_dim]], axis=0))

    def block(x: Any, cos: Any, sin: Any, mask: Any, causal: Any, cache: Any,
              w: Sequence[Any], t: Sequence[bool]) -> tuple[Any, Any]:
        attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down = w
        shape = tf.shape(x)
        h = rms_norm(x, attn_norm)
        q = tf.reshape(linear(h, wq, t[1]), tf.concat([shape[:2], [n_heads, head_dim]], 0))
        k = tf.reshape(linear(h, wk, t[2]), tf.concat([shape[:2], [n_kv, head_dim]], 0))
        v = tf.reshape(linear(h, wv, t[3]), tf.concat([shape[:2], [n_kv, head_dim]], 0))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        x = x + linear(attention(q, k, v, cache, mask, causal), wo, t[4])
        h = rms_norm(x, ffn_norm)
        x = x + linear(tf.nn.silu(linear(h, w_gate, t[6])) * linear(h, w_up, t[7]),
                       w_down, t[8])
        return x, tf.stack([k, v], axis=1)  # [B, 2, T, n_kv, hd]

    def group_body(x: Any, cos: Any, sin: Any, mask: Any, caches: Sequence[Any],
                   weights: Sequence[Sequence[Any]],
                   in_out: Sequence[Sequence[bool]] = ()) -> tuple[Any, Any]:
        steps = tf.shape(x)[1]
        below = tf.linalg.band_part(tf.ones([steps, steps], dtype=x.dtype), -1, 0)
        causal = (1.0 - below) * -1e30  # exp() of it is exactly 0 after the max shift
        new_kv = []
        layouts = in_out or tuple((False,) * len(w) for w in weights)
        for cache, w, t in zip(caches, weights, layouts, strict=True):
            x, kv = block(x, cos, sin, mask, causal, cache, w, t)
            new_kv.append(kv)
        return x, tf.stack(new_kv, axis=0)

    def head_body(x: Any, norm: Any, weight: Any) -> Any:
        return matmul_t(rms_norm(x[:, -1], norm), weight)

    def step_head_body(x: Any, cos: Any, sin: Any, mask: Any, caches: Sequence[Any],
                       weights: Sequence[Sequence[Any]], in_out: Sequence[Sequence[bool]],
                       norm: Any, head: Any) -> tuple[Any, Any]:
        x, new_kv = group_body(x, cos, sin, mask, caches, weights, in_out)
        return head_body(x, norm, head), new_kv

    if not compile:
        fns.group = fns.step = group_body
        fns.head = head_body
        fns.step_head = step_head_body
        return fns

    def counted(name: str, body: Any) -> Any:
        def traced(*args: Any) -> Any:
            key = f"{name}:{len(args[4])}:" + "x".join(str(n) for n in args[3].shape)
            fns.traces[key] += 1  # runs only while TensorFlow traces
            return body(*args)
        return traced

    def counted_head(x: Any, norm: Any, weight: Any) -> Any:
        fns.traces[f"head:{x.shape[0]}x{x.shape[1]}"] += 1
        return head_body(x, norm, weight)

    fns.group = tf.function(counted("prompt", group_body), reduce_retracing=True)
    fns.step = tf.function(counted("step", group_body), jit_compile=xla)
    fns.head = tf.function(counted_head, jit_compile=xla)
    fns.step_head = tf.function(counted("step", step_head_body), jit_compile=xla)
    return fns
