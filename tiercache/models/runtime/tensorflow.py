"""A Llama-family decoder in TensorFlow whose weights stream from a tiercache.

:class:`LlamaModel` runs the architecture of llama.cpp's ``llama`` models
(SmolLM2, TinyLlama, Llama 2/3 without RoPE scaling): RMSNorm, rotary position
embeddings, grouped-query attention, a SwiGLU MLP, and an output projection
that may be tied to the embedding table. It holds **no weights**: the shards
of each group of ``group_layers`` blocks (default 1: one block) are fetched
from a :class:`~tiercache.models.runtime.WeightProvider` (a
:class:`~tiercache.TieredCache` qualifies) right before that group runs and
released right after, so a model larger than the RAM tier runs and the
cache's prefetcher overlaps reading the next blocks with computing this one.
:meth:`LlamaModel.schedule` lists the keys of one forward pass in the order
they are read, for a prefetcher or a schedule-aware eviction policy.

The pieces, one module each:

- :mod:`.handoff` -- numpy -> ``tf.Tensor`` without a copy (DLPack, 64-byte
  alignment; read its docstring for the two traps), and
  :class:`~.handoff.ShardDecoder`, which turns quantized / float16 / bfloat16
  shards into float32 in reused aligned buffers (``timings.dequant_s``);
- :mod:`.kv` -- the KV cache, preallocated in length buckets (64, 128, ...)
  and batch buckets (1, 4, 16, 32, ...), written in place;
- :mod:`.decoder` -- the TensorFlow functions: a one-token step compiled with
  XLA over static shapes (batch bucket, length bucket; positions and masks are
  inputs), traced once per bucket pair, and a prompt pass (any length);
- :mod:`.batch` -- :meth:`LlamaModel.generate_batch`: one forward pass per
  step for every live sequence;
- :mod:`.cpu` and :mod:`.kernels` -- the same functions on numpy and a C kernel
  that multiplies by Q4_0/Q4_1/Q8_0 blocks as stored (``kernels=True``; chosen by
  :meth:`LlamaModel.from_manifest` for a native import where the CPU has AVX-512):
  no TensorFlow at all, which is then never imported.

Measured on the 2-core VM under other jobs' load (SmolLM2-135M float32 in a
2 GiB memory tier, greedy, medians of 3 rounds of 32 tokens, same process;
``python bench/bench_decoder_ab.py --baseline <HEAD's tensorflow.py>``), per
decoded token: the previous decoder (per-layer ``tf.function``, ``tf.concat``
KV cache) 116 ms = 1.94x the matmul floor of the same rounds; this one 45.6 ms
= 0.79x (whole step in one XLA call; fetch 0.60 + handoff 0.45 ms per pass)
and 61.3 ms = 1.06x block by block; batch 4 decodes 42 tokens/s (1.9x batch
1), batch 16 117 tokens/s (5.4x). A second run (heavier load): 226 -> 80.6 ms
(2.64x -> 1.02x floor), block by block 1.47x; batch 16 5.7x batch 1.

``compile=False`` runs the same Python body eagerly (for debugging): logits
agree with the compiled path within 1e-4 absolute on the synthetic test model,
greedy tokens are the same (tests/models/test_decoder.py); SmolLM2's prompt logits
stay within 1e-3 of the numpy reference and its greedy tokens equal it
(tests/models/test_model.py).

``tensorflow`` is imported on first use (3-7 s), never at module import.

Thread-safety: a :class:`LlamaModel` keeps per-sequence state (the KV
cache) and timing counters; use one instance per thread. Several instances
may share one provider.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from ...errors import ShardNotFoundError
from ..llama import LlamaHParams, llama_layer_keys, llama_schedule
from ..manifest import ModelManifest
from ..prefix import PrefixCache
from . import WeightProvider
from . import kernels as block_kernels
from .batch import generate_batch, greedy
from .cpu import CpuFunctions, last_real_rows
from .decoder import DecoderFunctions, build_functions
from .handoff import (
    TF_ALIGN_BYTES,
    CacheTensors,
    InputBuffers,
    ShardDecoder,
    _writable_alias,
    tf_module,
    to_tensor,
    zero_copy_ok,
)
from .kv import KVCache
from .qlinear import is_tf_block
from .sequence import SequenceMethods
from .shards import (
    Form,
    check_shard,
    every_shard_in_memory,
    in_out_flags,
    room_for_whole_step,
    transposed_keys,
)
from .timings import ModelTimings

#: How often (forward passes) ``group_layers=None`` re-checks that every shard is in memory.
RESIDENCY_CHECK_PASSES = 16

__all__ = ["TF_ALIGN_BYTES", "LlamaModel", "ModelTimings", "_writable_alias", "greedy",
           "tf_module", "to_tensor", "zero_copy_ok"]


def _check_ids(ids: np.ndarray, vocab_size: int) -> None:
    """``ValueError`` unless ``ids`` is a non-empty ``[rows, tokens]`` array of token ids."""
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError("ids must be a non-empty [rows, tokens] array")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size})")


def check_group_layers(group_layers: object) -> None:
    """``ValueError`` unless ``group_layers`` is None or a whole number >= 1."""
    if group_layers is not None and (isinstance(group_layers, bool)
                                     or not isinstance(group_layers, int) or group_layers < 1):
        raise ValueError(f"group_layers must be a whole number >= 1 or None, "
                         f"got {group_layers!r}")


def head_in_step(rows: int, head_form: Form | None) -> bool:
    """Whether a one-token step of every block runs the output head in the same call:
    yes, but not a head of ggml blocks (form ``True``) for several rows -- dequantized
    in the step, a temporary the size of the float32 head, it slowed the one call from
    86 to 125 ms at batch 16 in a process that had run other models (its own call: 86).
    ``head_form``: the head's form at its last fetch (None: not fetched yet). O(1)."""
    return rows == 1 or head_form is not True


def _choose_group(model: LlamaModel, one_token: bool, rows: int, length: int) -> None:
    """``group_layers=None``'s group for the next pass (see the class); block by block
    for a one-token pass whose whole-step variant (batch and length bucket) is not
    compiled yet while memory is short: each variant keeps its own. O(1) most passes."""
    n = model.hparams.n_layers
    model._passes_to_check -= 1
    if model._passes_to_check <= 0:
        model._passes_to_check = RESIDENCY_CHECK_PASSES
        resident = model._all_resident()
        model.group_layers = n if resident else 1
        model._memo = (model._memo or {}) if resident else None
    fns = model._fns
    if (one_token and model.group_layers >= n and fns is not None
            and not fns.has_step_variant(n, rows, length)
            and not room_for_whole_step(n)):
        model.group_layers, model._memo = 1, None


class LlamaModel(SequenceMethods):
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
        Run the blocks as ``tf.function``s (one-token steps under XLA unless
        ``xla=False``). ``False``: eager, for debugging; same tokens.
    xla:
        Compile the one-token step with XLA (``jit_compile``).
    group_layers:
        Blocks per compiled call, fetched together before it (1: stream block
        by block; ``n_layers``: the whole step in one call). ``None`` (the
        default): the whole step while every shard of the schedule is in memory and
        the process can spare what its compile keeps (``shards.room_for_whole_step``;
        checked every :data:`RESIDENCY_CHECK_PASSES` passes), else block by block:
        the whole step ran at 0.79-1.02x the matmul floor, block by block at
        1.06-1.47x (bench/bench_decoder_ab.py), so streaming is kept for shards read
        from disk, whose reads the prefetcher overlaps with the compute.
    kernels:
        Run on numpy and the C kernel of :mod:`~tiercache.models.runtime.kernels`
        (:mod:`~tiercache.models.runtime.cpu`) instead of TensorFlow: products
        straight on Q4_0/Q4_1/Q8_0 blocks, no compile, TensorFlow not imported.
        ``None`` (the default): TensorFlow; :meth:`from_manifest` (and so
        :func:`~tiercache.models.load_model`) chooses the kernel when it runs here
        and the import keeps the blocks' query matrices as Q4_0/Q4_1/Q8_0.
        ``ValueError`` for ``True`` where the kernel cannot run.
    """

    def __init__(self, provider: WeightProvider, hparams: LlamaHParams, *, key_prefix: str = "",
                 compile: bool = True, xla: bool = True,
                 group_layers: int | None = None,
                 transposed: Collection[str] = (), kernels: bool | None = None) -> None:
        check_group_layers(group_layers)
        self._kernels = block_kernels.wanted(kernels, compile)
        self._compile, self._xla = compile, xla
        self.provider = provider
        self.hparams = hparams
        self.key_prefix = key_prefix
        #: Blocks per compiled call now (see the ``group_layers`` parameter).
        self.group_layers = min(group_layers or 1, hparams.n_layers)
        self._auto_group = group_layers is None
        self._passes_to_check = 0
        self._memo: dict[str, tuple[np.ndarray, Any, Form]] | None = None
        self._cache_tensors = CacheTensors()
        self._inputs = InputBuffers()
        #: Q4_0/Q4_1/Q8_0 blocks go to compiled functions as stored (eager: numpy, exact).
        self._raw_blocks = compile
        self._forms: list[Form] = []
        self._head_form: Form | None = None  # the output head's form at its last fetch
        self._float_keys: set[str] = set()
        #: Each key's array (while a store holds it) from the pass before a residency
        #: check, for its mincore; that pass only (~1.4 us a shard: 3 % of a native step).
        self._seen: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
        self._record_seen = False
        #: Shards :meth:`_fetch_layers` read ahead of their :meth:`_fetch` (this group only).
        self._batch: dict[str, np.ndarray] = {}
        #: The array each key was last checked as (``check_shard``), while it is alive.
        self._checked: weakref.WeakValueDictionary[str, np.ndarray] = \
            weakref.WeakValueDictionary()
        self.timings = ModelTimings()
        #: Keys of float matrices stored ``[inputs, outputs]`` (a manifest's ``in_out``).
        self._transposed = frozenset(transposed)
        self._shapes = {key_prefix + k: (v[::-1] if key_prefix + k in self._transposed else v)
                        for k, v in hparams.tensor_shapes().items()}  # as stored
        self._layer_keys = [llama_layer_keys(i, key_prefix) for i in range(hparams.n_layers)]
        self._embed_key = f"{key_prefix}token_embd.weight"
        self._output_key = (self._embed_key if hparams.tied_embeddings
                            else f"{key_prefix}output.weight")
        self._norm_key = f"{key_prefix}output_norm.weight"
        self._tf: Any = None
        self._fns: DecoderFunctions | CpuFunctions | None = None  # at the first pass
        self._decoder = ShardDecoder()
        half = hparams.head_dim // 2
        self._inv_freq = hparams.rope_theta ** (-np.arange(0, half, dtype=np.float64) * 2
                                                / hparams.head_dim)
        self._kv = self.new_cache(1)
        #: Reuse of prompt prefixes' KV blocks (:class:`~tiercache.models.prefix.PrefixCache`);
        #: ``None``: every prompt is computed whole.
        self.prefix_cache: PrefixCache | None = None

    @classmethod
    def from_manifest(cls, provider: WeightProvider, manifest: ModelManifest, *,
                      compile: bool = True, xla: bool = True,
                      group_layers: int | None = None,
                      kernels: bool | None = None) -> LlamaModel:
        """The model described by an import's manifest (matrices it marks ``in_out``
        are taken transposed; ``kernels=None``: see the class)."""
        if kernels is None:
            kernels = block_kernels.suits(manifest, compile)
        return cls(provider, manifest.llama_hparams(), key_prefix=manifest.key_prefix,
                   compile=compile, xla=xla, group_layers=group_layers,
                   transposed=transposed_keys(manifest), kernels=kernels)

    # --- public API ----------------------------------------------------------------------
    def schedule(self) -> list[str]:
        """Shard keys of one forward pass in read order (the embedding table appears
        twice with tied embeddings: first for the row lookup, last as the output
        projection). O(n_layers)."""
        return llama_schedule(self.hparams, self.key_prefix)

    @property
    def position(self) -> int:
        """Tokens of the current sequence (its next position)."""
        return int(self._kv.lengths[0])

    @property
    def decode_buffer_bytes(self) -> int:
        """Bytes of the float32 buffers stored (quantized, float16) shards are decoded
        into: bounded by one block's shards plus the norm and the output head, since
        only float32 shards run the whole step at once. O(buffers)."""
        return self._decoder.buffer_bytes

    def traces(self) -> dict[str, int]:
        """How often each compiled function was traced, per shape key (``step:L:BxS``:
        a one-token step over L blocks, batch bucket B, length bucket S)."""
        return dict(self._fns.traces) if self._fns is not None else {}

    def reset(self) -> None:
        """Forget the sequence (empty the KV cache, keeping its memory); timings are kept."""
        self._kv.reset()

    def new_cache(self, rows: int) -> KVCache:
        """An empty KV cache for ``rows`` sequences (a batch bucket)."""
        hp = self.hparams
        return KVCache(hp.n_layers, hp.n_kv_heads, hp.head_dim, rows, hp.context_length)

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        """Run ``token_ids`` (appended to the current sequence) through the model.

        Returns the float32 logits of the last position, shape ``(vocab,)``.
        Streams every weight shard once (the embedding twice when tied).
        """
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("token_ids must be a non-empty sequence of ints")
        logits: np.ndarray = self.run(ids[None, :], self._kv, slice(0, 1))[0]
        return logits

    def run(self, ids: np.ndarray, cache: KVCache, rows: slice, *,
            live: int | None = None, counts: np.ndarray | None = None) -> np.ndarray:
        """One forward pass of the new tokens ``ids`` (``[rows, T]``) of the sequences in
        ``cache``'s ``rows``, appended at each row's length; returns the float32 logits
        of each row's last new token, ``[rows, vocab]``.

        One token per row runs the compiled step (static shapes); more run the
        prompt pass. ``live``: how many of the rows are real sequences (the rest
        padding of a batch bucket; counted in ``timings.decoded_tokens``).
        ``counts`` (ragged prompts padded on the right): how many of each row's
        ``T`` tokens are real; the rest are written past the row's length (never
        attended to: causal, then masked) and the logits are those of the last
        real token. O(weights + rows * T * (model width + cached positions)).
        """
        hp = self.hparams
        _check_ids(ids, hp.vocab_size)
        n_rows, steps = ids.shape
        lengths = cache.lengths[rows]
        if lengths.size != n_rows:
            raise ValueError(f"{n_rows} rows of ids for {lengths.size} cache rows")
        cache.reserve(int(lengths.max()) + steps)
        fns = self._fns or self._start()
        t, traced = self.timings, fns.trace_count
        started = time.perf_counter()
        is_decode = steps == 1 and bool(lengths.max() > 0)
        # record what this pass fetches when the next pass checks residency (1 -> 0)
        self._record_seen = self._auto_group and self._passes_to_check == 2
        if self._record_seen:
            self._seen.clear()
        t0 = time.perf_counter()
        angles = (lengths[:, None] + np.arange(steps)[None, :])[..., None] * self._inv_freq
        inputs = dict(x=self._embed(ids), cos=np.cos(angles)[:, :, None, :],
                      sin=np.sin(angles)[:, :, None, :], mask=cache.mask(rows))
        cpu = isinstance(fns, CpuFunctions)
        x, cos, sin, mask = ([v.astype(np.float32) for v in inputs.values()] if cpu
                             else self._inputs.tensors(**inputs))
        t.handoff_s += time.perf_counter() - t0
        if self._auto_group:
            _choose_group(self, steps == 1, n_rows, cache.length)
        size = self.group_layers
        whole = (steps == 1 and counts is None and size >= hp.n_layers
                 and head_in_step(n_rows, self._head_form))
        logits = None
        for first in range(0, hp.n_layers, size):
            layers = range(first, min(first + size, hp.n_layers))
            self._forms = []
            self._fetch_layers(layers)
            weights = tuple(tuple(self._weight(key, (layer - first, j))
                                  for j, key in enumerate(self._layer_keys[layer]))
                            for layer in layers)
            in_out = (in_out_flags(self._forms, len(self._layer_keys[0]))
                      if self._transposed else ())
            ends = self._head_weights() if whole else ()
            t0 = time.perf_counter()
            caches = tuple((cache.keys[layer, rows], cache.values[layer, rows]) if cpu else
                           self._cache_tensors.layer(cache.keys, cache.values, layer, rows)
                           for layer in layers)
            args = (x, cos, sin, mask, caches, weights, in_out, *ends)
            if steps == 1:  # the compiled step: one trace per (group, batch, length) bucket
                flat = [x, cos, sin, mask, *(c for pair in caches for c in pair),
                        *(w for ws in weights for w in ws), *ends]
                out, new_kv = fns.call("step_head" if whole else "step",
                                             (len(layers), n_rows, cache.length,
                                              tuple(self._forms)), args, flat)
                logits, x = (out, x) if whole else (None, out)
            else:
                x, new_kv = fns.group(*args)
            cache.write(slice(layers.start, layers.stop), rows, np.asarray(new_kv))
            t.compute_s += time.perf_counter() - t0
            del weights, caches, new_kv, args, ends
        if counts is None:
            cache.advance(rows, steps)
            last = x if steps == 1 else x[:, -1:]  # [rows, 1, dim]
        else:
            cache.lengths[rows] += counts
            last = (last_real_rows(x, counts) if cpu else
                    self._tf.gather(x, np.maximum(counts - 1, 0)[:, None], batch_dims=1))
        t0 = time.perf_counter()
        if logits is None:
            self._forms = []
            head_args = (last, *self._head_weights())
            logits = fns.call("head", (n_rows, tuple(self._forms)), head_args,
                                    list(head_args))
            del head_args
        result = np.asarray(logits, dtype=np.float32)
        t.compute_s += time.perf_counter() - t0
        tokens = (n_rows if live is None else live) if is_decode else \
            int(ids.size if counts is None else counts.sum())
        t.add_pass(time.perf_counter() - started, is_decode, tokens,
                   traced=fns.trace_count != traced)
        return result

    def _start(self) -> DecoderFunctions | CpuFunctions:
        """The functions, made at the first pass (see ``kernels``): numpy and the C kernel,
        or TensorFlow (imported here, 3-7 s). O(1) besides the import."""
        self.timings.engine = "kernels" if self._kernels else "tensorflow"
        if self._kernels:
            self._fns = CpuFunctions(self.hparams)
            self._auto_group = False  # nothing to compile: stream block by block
        else:
            self._tf = tf_module()
            self._fns = build_functions(self._tf, self.hparams, compile=self._compile,
                                        xla=self._xla)
        return self._fns

    def _head_weights(self) -> tuple[Any, Any]:
        """The final norm and the output head as handed over (forms: ``_forms``, ``_head_form``)."""
        norm, head = self._weight(self._norm_key, "norm"), self._weight(self._output_key, "head")
        self._head_form = self._forms[-1]
        return norm, head

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                       eos_id: int | None = None,
                       samplers: Sequence[Callable[[np.ndarray], int]] | None = None,
                       on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """Generate for several prompts at once: each step is **one** forward pass for
        every live sequence (each with its own KV cache rows and position).

        Returns the new ids per prompt, in order; each list equals what
        :meth:`generate` gives for that prompt alone (greedy: the same tokens).
        ``samplers``: one per prompt (default greedy). ``on_token(index, id)`` is
        called for each new id. A sequence leaves the batch after ``eos_id``
        (included) or ``max_new_tokens``. Does not touch the single sequence of
        :meth:`generate`. See :mod:`tiercache.models.runtime.batch`.
        """
        return generate_batch(self, prompts, max_new_tokens, eos_id=eos_id,
                              samplers=samplers, on_token=on_token)

    # --- internals -------------------------------------------------------------------------
    def _all_resident(self) -> bool:
        """:func:`every_shard_in_memory` of the schedule; to switch to the whole step,
        also :func:`room_for_whole_step` (once it runs, its compile is spent)."""
        n = self.hparams.n_layers
        return (self.group_layers >= n or room_for_whole_step(n)) and every_shard_in_memory(
            self.provider, set(self.schedule()), self._seen, raw_blocks=self._raw_blocks,
            decoded=self._float_keys)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        """Float32 embedding rows ``[rows, T, dim]`` (row lookup: no full-table handoff)."""
        table = self._fetch(self._embed_key)
        t0 = time.perf_counter()
        rows = self._decoder.rows(self._embed_key, table, ids.reshape(-1))
        if table.dtype != np.float32:
            self.timings.dequant_s += time.perf_counter() - t0
        return rows.reshape(*ids.shape, -1)

    def _weight(self, key: str, slot: Any) -> Any:
        """Fetch, decode (stored formats) and hand over one shard as a float32 tensor (or
        Q4_0/Q4_1/Q8_0 blocks as stored, for the compiled functions: see
        :mod:`~tiercache.models.runtime.qlinear`); records its :data:`Form` in ``_forms``.
        While the whole step runs in one call, the tensor is kept with its array and
        reused while the provider returns that same (immutable) array: no new handoff
        or decode. Any other mode keeps nothing between passes. On the kernel path
        (:mod:`.cpu`) the numpy array itself: blocks the kernel takes as stored, other
        stored formats decoded."""
        array = self._fetch(key)
        t = self.timings
        memo = self._memo
        if memo is not None:
            kept = memo.get(key)
            if kept is not None and kept[0] is array:
                t.zero_copy_handoffs += 1
                self._forms.append(kept[2])
                return kept[1]
        source = array
        if array.dtype == np.float32:
            self._float_keys.add(key)
        cpu = isinstance(self._fns, CpuFunctions)
        if cpu:  # numpy: blocks the kernel takes go as stored, whatever came before
            raw = block_kernels.is_kernel_block(array)
        else:  # a key served as float32 once (a decoded tier) is decoded from then on:
            # each mix of forms is a trace of its own (an XLA compile), so a key changes
            # form at most once instead of at every move between a decoded and a stored tier
            raw = (self._raw_blocks and key not in self._float_keys
                   and is_tf_block(array.dtype, array.shape))
        form: Form = True if raw else ("in_out" if key in self._transposed else False)
        self._forms.append(form)
        if not raw and array.dtype != np.float32:  # (blocks: multiplied by as stored)
            t0 = time.perf_counter()
            array = self._decoder.decode(key, array, slot)
            t.dequant_s += time.perf_counter() - t0
        if cpu:
            return array
        t0 = time.perf_counter()
        tensor, zero_copy = to_tensor(array)
        t.handoff_s += time.perf_counter() - t0
        t.zero_copy_handoffs += zero_copy
        t.copied_handoffs += not zero_copy
        if memo is not None:
            memo[key] = (source, tensor, form)
        return tensor

    def _fetch_layers(self, layers: range) -> None:
        """Read the shards of ``layers`` in one call when the provider reads many at once
        (:meth:`TieredCache.get_many`: one hold of its lock for a layer's resident
        shards); :meth:`_fetch` hands them out. A missing shard leaves them to
        :meth:`_fetch`, which names it. O(shards)."""
        self._batch = {}  # nothing left from a pass an exception cut short
        get_many = getattr(self.provider, "get_many", None)
        if get_many is None:
            return
        keys = [key for layer in layers for key in self._layer_keys[layer]]
        t0 = time.perf_counter()
        try:
            arrays = get_many(keys)
        except KeyError:
            return
        finally:
            self.timings.fetch_s += time.perf_counter() - t0
        if len(arrays) != len(keys):
            raise TypeError(f"{type(self.provider).__name__}.get_many returned {len(arrays)} "
                            f"arrays for {len(keys)} keys")
        self._batch = dict(zip(keys, arrays, strict=True))

    def _fetch(self, key: str) -> np.ndarray:
        t = self.timings
        batched = self._batch.pop(key, None) if self._batch else None
        if batched is not None:
            array: np.ndarray = batched
        else:
            t0 = time.perf_counter()
            try:
                array = self.provider.get(key)
            except KeyError:
                raise ShardNotFoundError(f"model shard {key!r} is not in the cache or its "
                                         "origin: import the model first (tiercache import "
                                         "MODEL --config ...)") from None
            t.fetch_s += time.perf_counter() - t0
        if self._checked.get(key) is not array:  # (a provider returning the same
            array = check_shard(key, array, self._shapes.get(key))  # immutable array:
            self._checked[key] = array  # a RAM hit, a cached view; checked once)
        t.shards_fetched += 1
        t.bytes_fetched += array.nbytes
        if self._record_seen:
            self._seen[key] = array
        return array
