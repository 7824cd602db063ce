"""A Llama-family decoder in TensorFlow whose weights stream from a tiercache.

:class:`LlamaModel` runs the architecture of llama.cpp's ``llama`` models
(SmolLM2, TinyLlama, Llama 2/3 without RoPE scaling): RMSNorm, rotary position
embeddings, grouped-query attention with its own KV cache, a SwiGLU MLP, and
an output projection that may be tied to the embedding table. It holds **no
weights**: each block's nine shards are fetched from a
:class:`~tiercache.models.runtime.WeightProvider`
(a :class:`~tiercache.TieredCache` qualifies) right before that block
runs and released right after, so a model larger than the RAM tier runs.
:meth:`LlamaModel.schedule` lists the keys of one forward pass in the order
they are read, for a prefetcher or a schedule-aware eviction policy.

Handoff (numpy -> ``tf.Tensor``): ``tf.constant`` / ``tf.convert_to_tensor``
always copy (about 25 ms for 64 MiB here, into fresh memory). A C-contiguous
array whose address is 64-byte aligned is instead wrapped without a copy via
DLPack (``tf.experimental.dlpack.from_dlpack``, about 2 µs per shard). Two
traps, both handled in :func:`to_tensor`: numpy refuses to export a
read-only array through (pre-1.0) DLPack, so a read-only array -- what a
RAM-tier hit returns -- is exported through a writable *view* of the same
memory (TensorFlow never writes to it: the adapter only reads weights, and
the test suite checks the cache's arrays are unchanged after a run); and an
array that is not 64-byte aligned must never go through DLPack -- TensorFlow
accepts it, then aborts the process (``Check failed: IsAligned()``) in the
first kernel that reads it -- so those are copied into an aligned buffer
first. tiercache's stores return page-aligned arrays, so with a
:class:`~tiercache.TieredCache` every handoff is zero-copy. The
aliasing is safe: the tensor keeps the numpy array alive, and tiercache's
buffer pool reuses a buffer only when nothing references it.

``tensorflow`` is imported on first use (3-7 s), never at module import.

Thread-safety: a :class:`LlamaModel` keeps per-sequence state (the KV
cache) and timing counters; use one instance per thread. Several instances
may share one provider.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ...errors import ModelFormatError, ShardNotFoundError
from ...stores.memory import writable_view
from ..llama import LLAMA_LAYER_TENSORS, LlamaHParams, llama_layer_keys, llama_schedule
from ..manifest import ModelManifest
from . import WeightProvider

#: Alignment TensorFlow's CPU kernels require of tensor memory (EIGEN_MAX_ALIGN_BYTES).
TF_ALIGN_BYTES = 64

_TF: Any = None


def tf_module() -> Any:
    """Import TensorFlow once (with ``TF_CPP_MIN_LOG_LEVEL=1`` unless set) and return it."""
    global _TF
    if _TF is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        try:
            import tensorflow
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModelFormatError("running models needs TensorFlow: "
                                   "pip install 'tiercache[tf]'") from None
        _TF = tensorflow
    return _TF


def greedy(logits: np.ndarray) -> int:
    """The id of the largest logit (ties: the lowest id). O(vocab)."""
    return int(np.argmax(logits))


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + TF_ALIGN_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % TF_ALIGN_BYTES
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _address(array: np.ndarray) -> int:
    """The data address (``__array_interface__``: cheaper than ``.ctypes`` on a new array)."""
    return int(array.__array_interface__["data"][0])


def _writable_alias(array: np.ndarray) -> np.ndarray | None:
    """A writable view of the read-only ``array``'s memory, or None if numpy refuses.
    A RAM-tier hit lies over a read-only memoryview (numpy refuses): its alias is
    taken from the buffer under it (:func:`tiercache.stores.memory.writable_view`)."""
    view = array.view()
    try:
        view.flags.writeable = True
    except ValueError:
        return writable_view(array)
    return view


def zero_copy_ok(array: np.ndarray) -> bool:
    """Whether :func:`to_tensor` can wrap ``array`` without copying it."""
    return (array.flags.c_contiguous and array.size > 0
            and _address(array) % TF_ALIGN_BYTES == 0
            and (array.flags.writeable or _writable_alias(array) is not None))


def to_tensor(array: np.ndarray) -> tuple[Any, bool]:
    """A ``tf.Tensor`` with the contents of ``array`` and whether it was zero-copy.

    Zero-copy (DLPack) when :func:`zero_copy_ok`, else one copy into a
    64-byte-aligned buffer that the tensor then owns. The tensor may alias
    ``array``: do not write to ``array`` while the tensor is alive. O(1) or
    O(nbytes).
    """
    tf = tf_module()
    if array.size and array.flags.c_contiguous and _address(array) % TF_ALIGN_BYTES == 0:
        view = array if array.flags.writeable else _writable_alias(array)
        if view is not None:
            return tf.experimental.dlpack.from_dlpack(view.__dlpack__()), True
    if array.size == 0:
        return tf.zeros(array.shape, dtype=array.dtype), False
    staged = _aligned_empty(array.shape, array.dtype)
    np.copyto(staged, array)
    return tf.experimental.dlpack.from_dlpack(staged.__dlpack__()), False


@dataclass
class ModelTimings:
    """Where a model's time went, cumulative since construction or :meth:`reset`.

    ``fetch_s`` waiting on ``provider.get``; ``handoff_s`` numpy -> ``tf.Tensor``
    (plus a float16 -> float32 cast); ``compute_s`` in TensorFlow; ``prefill_s``
    and ``decode_s`` wall time of prompt passes and of one-token passes.
    """

    fetch_s: float = 0.0
    handoff_s: float = 0.0
    compute_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    forward_passes: int = 0
    prompt_tokens: int = 0
    decoded_tokens: int = 0
    shards_fetched: int = 0
    bytes_fetched: int = 0
    zero_copy_handoffs: int = 0
    copied_handoffs: int = 0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    def as_dict(self) -> dict[str, Any]:
        """The counters plus derived rates (``decode_tokens_per_s`` counts one-token passes)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["decode_tokens_per_s"] = (self.decoded_tokens / self.decode_s
                                      if self.decode_s > 0 else None)
        out["fetch_gb_per_s"] = (self.bytes_fetched / self.fetch_s / 1e9
                                 if self.fetch_s > 0 else None)
        out["handoff_s_per_shard"] = (self.handoff_s / self.shards_fetched
                                      if self.shards_fetched else None)
        return out


class LlamaModel:
    """A streaming Llama decoder. See the module docstring.

    Parameters
    ----------
    provider:
        Serves the shards (``get(key) -> np.ndarray``): a
        :class:`~tiercache.TieredCache`, a :class:`~tiercache.models.runtime.MappingProvider`, ...
    hparams:
        The architecture (``manifest.llama_hparams()``).
    key_prefix:
        Prepended to every tensor name (as at import).
    compile:
        Run each block as a ``tf.function`` (one trace; much less per-op
        overhead than eager execution). Results are the same either way.
    """

    def __init__(self, provider: WeightProvider, hparams: LlamaHParams, *, key_prefix: str = "",
                 compile: bool = True) -> None:
        self.provider = provider
        self.hparams = hparams
        self.key_prefix = key_prefix
        self.timings = ModelTimings()
        self._shapes = {key_prefix + k: v for k, v in hparams.tensor_shapes().items()}
        self._layer_keys = [llama_layer_keys(i, key_prefix) for i in range(hparams.n_layers)]
        self._embed_key = f"{key_prefix}token_embd.weight"
        self._output_key = (self._embed_key if hparams.tied_embeddings
                            else f"{key_prefix}output.weight")
        self._norm_key = f"{key_prefix}output_norm.weight"
        tf = tf_module()
        self._block, self._head = _build_functions(tf, hparams, compile=compile)
        half = hparams.head_dim // 2
        self._inv_freq = hparams.rope_theta ** (-np.arange(0, half, dtype=np.float64) * 2
                                                / hparams.head_dim)
        self._kv: list[tuple[Any, Any]] = []
        self.position = 0
        self.reset()

    @classmethod
    def from_manifest(cls, provider: WeightProvider, manifest: ModelManifest, *,
                      compile: bool = True) -> LlamaModel:
        """The model described by an import's manifest."""
        return cls(provider, manifest.llama_hparams(), key_prefix=manifest.key_prefix,
                   compile=compile)

    # --- public API ----------------------------------------------------------------------
    def schedule(self) -> list[str]:
        """Shard keys of one forward pass in read order (the embedding table appears
        twice with tied embeddings: first for the row lookup, last as the output
        projection). O(n_layers)."""
        return llama_schedule(self.hparams, self.key_prefix)

    def reset(self) -> None:
        """Forget the sequence (empty the KV cache); timings are kept."""
        tf = tf_module()
        hp = self.hparams
        empty = tf.zeros([0, hp.n_kv_heads, hp.head_dim], dtype=tf.float32)
        self._kv = [(empty, empty) for _ in range(hp.n_layers)]
        self.position = 0

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        """Run ``token_ids`` (appended to the current sequence) through the model.

        Returns the float32 logits of the last position, shape ``(vocab,)``.
        Streams every weight shard once (the embedding twice when tied).
        """
        tf = tf_module()
        hp = self.hparams
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("token_ids must be a non-empty sequence of ints")
        if ids.min() < 0 or ids.max() >= hp.vocab_size:
            raise ValueError(f"token ids must be in [0, {hp.vocab_size})")
        n = int(ids.size)
        if self.position + n > hp.context_length:
            raise ValueError(f"the sequence would exceed the context length "
                             f"({hp.context_length} tokens)")
        t = self.timings
        started = time.perf_counter()
        is_decode = n == 1 and self.position > 0
        embed = self._fetch(self._embed_key)
        t0 = time.perf_counter()
        rows = np.asarray(embed[ids], dtype=np.float32)  # row lookup: no full-table handoff
        del embed
        x = tf.constant(rows)
        positions = np.arange(self.position, self.position + n, dtype=np.float64)
        angles = positions[:, None] * self._inv_freq[None, :]
        cos = tf.constant(np.cos(angles).astype(np.float32)[:, None, :])
        sin = tf.constant(np.sin(angles).astype(np.float32)[:, None, :])
        total = self.position + n
        allowed = np.arange(total)[None, :] <= positions.astype(np.int64)[:, None]
        mask = tf.constant(np.where(allowed, 0.0, -np.inf).astype(np.float32))
        t.handoff_s += time.perf_counter() - t0
        for layer in range(hp.n_layers):
            weights = [self._handoff(self._fetch(key)) for key in self._layer_keys[layer]]
            k_past, v_past = self._kv[layer]
            t0 = time.perf_counter()
            x, k_all, v_all = self._block(x, k_past, v_past, cos, sin, mask, *weights)
            t.compute_s += time.perf_counter() - t0
            del weights
            self._kv[layer] = (k_all, v_all)
        norm = self._handoff(self._fetch(self._norm_key))
        head = self._handoff(self._fetch(self._output_key))
        t0 = time.perf_counter()
        logits = self._head(x[-1:], norm, head).numpy()[0]
        t.compute_s += time.perf_counter() - t0
        del head, norm
        self.position = total
        elapsed = time.perf_counter() - started
        t.forward_passes += 1
        if is_decode:
            t.decode_s += elapsed
            t.decoded_tokens += 1
        else:
            t.prefill_s += elapsed
            t.prompt_tokens += n
        return np.asarray(logits, dtype=np.float32)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                 eos_id: int | None = None, reset: bool = True,
                 on_token: Callable[[int], None] | None = None,
                 sampler: Callable[[np.ndarray], int] | None = None) -> list[int]:
        """The ids of up to ``max_new_tokens`` new tokens (greedy unless ``sampler``).

        Stops after ``eos_id`` (included) if given. With ``reset`` the KV cache
        starts empty; without, ``prompt_ids`` continue the current sequence.
        ``on_token`` is called with each new id as soon as it is chosen.
        ``sampler`` picks each token from the float32 logits (e.g.
        :class:`tiercache.models.api.Sampler`); without it, greedy: ties in the
        logits go to the lowest id. One forward pass per token.
        """
        out: list[int] = []
        for token in self.stream(prompt_ids, max_new_tokens, eos_id=eos_id, reset=reset,
                                 sampler=sampler):
            out.append(token)
            if on_token is not None:
                on_token(token)
        return out

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
               eos_id: int | None = None, reset: bool = True,
               sampler: Callable[[np.ndarray], int] | None = None) -> Iterator[int]:
        """:meth:`generate` as an iterator: yields each new id as soon as it is chosen.

        Runs the next forward pass only when the next id is asked for; an
        iterator left unfinished leaves the sequence where it stopped.
        ``max_new_tokens < 0`` raises :class:`ValueError` at the call.
        """
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        return self._stream(list(prompt_ids), max_new_tokens, eos_id, reset,
                            sampler if sampler is not None else greedy)

    def _stream(self, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None,
                reset: bool, sampler: Callable[[np.ndarray], int]) -> Iterator[int]:
        if reset:
            self.reset()
        if max_new_tokens == 0:
            return
        logits = self.forward(prompt_ids)
        produced = 0
        while True:
            token = int(sampler(logits))
            produced += 1
            yield token
            if produced >= max_new_tokens or (eos_id is not None and token == eos_id):
                return
            logits = self.forward([token])

    # --- internals -------------------------------------------------------------------------
    def _fetch(self, key: str) -> np.ndarray:
        t = self.timings
        t0 = time.perf_counter()
        try:
            array = self.provider.get(key)
        except KeyError:
            raise ShardNotFoundError(f"model shard {key!r} is not in the cache or its origin: "
                                     "import the model first (tiercache import MODEL "
                                     "--config ...)") from None
        t.fetch_s += time.perf_counter() - t0
        if not isinstance(array, np.ndarray):
            raise ModelFormatError(f"shard {key!r} is a {type(array).__name__}, not an array")
        expected = self._shapes.get(key)
        if expected is not None and array.shape != expected:
            raise ModelFormatError(f"shard {key!r} has shape {array.shape}, the model "
                                   f"expects {expected}: the cache holds another model")
        if array.dtype.kind != "f":
            raise ModelFormatError(f"shard {key!r} has dtype {array.dtype}, expected floats")
        t.shards_fetched += 1
        t.bytes_fetched += array.nbytes
        return array

    def _handoff(self, array: np.ndarray) -> Any:
        t = self.timings
        t0 = time.perf_counter()
        tensor, zero_copy = to_tensor(array)
        if array.dtype != np.float32:
            tensor = tf_module().cast(tensor, "float32")
        t.handoff_s += time.perf_counter() - t0
        if zero_copy:
            t.zero_copy_handoffs += 1
        else:
            t.copied_handoffs += 1
        return tensor


def _build_functions(tf: Any, hp: LlamaHParams, *, compile: bool) -> tuple[Any, Any]:
    """The per-block function and the output head, as (optionally traced) TF functions."""
    n_heads, n_kv, head_dim = hp.n_heads, hp.n_kv_heads, hp.head_dim
    group = n_heads // n_kv
    half = head_dim // 2
    scale = 1.0 / math.sqrt(head_dim)
    eps = hp.rms_eps
    interleaved = hp.rope_style == "interleaved"

    def rms_norm(x: Any, weight: Any) -> Any:
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
                                 + eps) * weight

    def rope(x: Any, cos: Any, sin: Any, heads: int) -> Any:
        # x: [T, heads, head_dim]; cos/sin: [T, 1, head_dim/2]
        steps = tf.shape(x)[0]
        if interleaved:  # rotate (x[2i], x[2i+1]) -- llama.cpp "normal" RoPE, GGUF layout
            pairs = tf.reshape(x, [steps, heads, half, 2])
            x0, x1 = pairs[..., 0], pairs[..., 1]
            rotated = tf.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
            return tf.reshape(rotated, [steps, heads, head_dim])
        x0, x1 = x[..., :half], x[..., half:]  # rotate (x[i], x[i+d/2]) -- HF rotate_half
        return tf.concat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)

    def block(x: Any, k_past: Any, v_past: Any, cos: Any, sin: Any, mask: Any,
              attn_norm: Any, wq: Any, wk: Any, wv: Any, wo: Any,
              ffn_norm: Any, w_gate: Any, w_up: Any, w_down: Any) -> tuple[Any, Any, Any]:
        steps = tf.shape(x)[0]
        h = rms_norm(x, attn_norm)
        q = tf.reshape(tf.matmul(h, wq, transpose_b=True), [steps, n_heads, head_dim])
        k = tf.reshape(tf.matmul(h, wk, transpose_b=True), [steps, n_kv, head_dim])
        v = tf.reshape(tf.matmul(h, wv, transpose_b=True), [steps, n_kv, head_dim])
        q = rope(q, cos, sin, n_heads)
        k = rope(k, cos, sin, n_kv)
        k_all = tf.concat([k_past, k], axis=0)  # [S, n_kv, head_dim]
        v_all = tf.concat([v_past, v], axis=0)
        q = tf.reshape(q, [steps, n_kv, group, head_dim])  # query head j uses kv head j // group
        scores = tf.einsum("tkgd,skd->kgts", q, k_all) * scale + mask
        probs = tf.nn.softmax(scores, axis=-1)
        attn = tf.reshape(tf.einsum("kgts,skd->tkgd", probs, v_all), [steps, n_heads * head_dim])
        x = x + tf.matmul(attn, wo, transpose_b=True)
        h = rms_norm(x, ffn_norm)
        gate = tf.matmul(h, w_gate, transpose_b=True)
        up = tf.matmul(h, w_up, transpose_b=True)
        x = x + tf.matmul(tf.nn.silu(gate) * up, w_down, transpose_b=True)
        return x, k_all, v_all

    def head(x: Any, norm: Any, weight: Any) -> Any:
        return tf.matmul(rms_norm(x, norm), weight, transpose_b=True)

    if not compile:
        return block, head
    f32 = tf.float32
    d, f, q_dim, kv_dim = hp.dim, hp.ffn_dim, n_heads * head_dim, n_kv * head_dim
    spec = tf.TensorSpec
    block_sig = [
        spec([None, d], f32), spec([None, n_kv, head_dim], f32),
        spec([None, n_kv, head_dim], f32), spec([None, 1, half], f32),
        spec([None, 1, half], f32), spec([None, None], f32),
        spec([d], f32), spec([q_dim, d], f32), spec([kv_dim, d], f32), spec([kv_dim, d], f32),
        spec([d, q_dim], f32), spec([d], f32), spec([f, d], f32), spec([f, d], f32),
        spec([d, f], f32),
    ]
    assert len(block_sig) == 6 + len(LLAMA_LAYER_TENSORS)
    head_sig = [spec([None, d], f32), spec([d], f32), spec([hp.vocab_size, d], f32)]
    return (tf.function(block, input_signature=block_sig),
            tf.function(head, input_signature=head_sig))
