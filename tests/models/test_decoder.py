"""The compiled, batched decoder (tiercache/models/runtime): static shapes traced once per
bucket, the KV cache written in place, batches that equal each sequence alone, and the
eager path and the numpy reference agreeing with the compiled one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from reference_llama import RefConfig, ReferenceLlama

import tiercache
from tiercache.errors import ModelFormatError
from tiercache.models import (
    DictSink,
    LlamaHParams,
    ModelManifest,
    synthetic_hparams,
    synthetic_llama,
)
from tiercache.models.runtime import MappingProvider
from tiercache.models.runtime.batch import generate_batch
from tiercache.models.runtime.kv import KVCache, batch_bucket, length_bucket
from tiercache.models.runtime.tensorflow import RESIDENCY_CHECK_PASSES, LlamaModel

pytestmark = pytest.mark.tf

HP = synthetic_hparams(layers=3, dim=64, ffn=96, vocab=300, heads=4, kv_heads=2)


class Synthetic:
    def __init__(self, hp: LlamaHParams = HP, seed: int = 3) -> None:
        self.sink = DictSink()
        self.manifest: ModelManifest = synthetic_llama(self.sink, hp, seed=seed, progress=False)
        self.hp = hp
        weights = {k: v.astype(np.float32) for k, v in self.sink.arrays.items()}
        self.reference = ReferenceLlama(weights, RefConfig(
            n_layers=hp.n_layers, n_heads=hp.n_heads, n_kv_heads=hp.n_kv_heads,
            rope_theta=hp.rope_theta, eps=hp.rms_eps))

    def model(self, **kwargs: object) -> LlamaModel:
        return LlamaModel.from_manifest(MappingProvider(self.sink.arrays), self.manifest,
                                        **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def synth() -> Synthetic:
    return Synthetic()


# --- buckets and the KV cache ------------------------------------------------------------------
def test_buckets() -> None:
    assert [length_bucket(n, 2048) for n in (1, 64, 65, 128, 129, 1000)] == \
        [64, 64, 128, 128, 256, 1024]
    assert length_bucket(2000, 2000) == 2000  # the last bucket is the context
    with pytest.raises(ValueError, match="context length"):
        length_bucket(2049, 2048)
    assert [batch_bucket(n) for n in (1, 2, 4, 5, 16, 17, 33, 65)] == \
        [1, 4, 4, 16, 16, 32, 64, 128]
    with pytest.raises(ValueError):
        batch_bucket(0)


def test_kv_cache_writes_in_place_and_grows_by_bucket() -> None:
    cache = KVCache(n_layers=2, n_kv_heads=1, head_dim=4, rows=4, context_length=300)
    # keys positions-last, values positions-major: the layouts attention multiplies by
    assert cache.keys.shape == (2, 4, 1, 4, 64) and cache.values.shape == (2, 4, 1, 64, 4)
    for array in (cache.keys, cache.values, cache.keys[1], cache.values[1]):
        assert array.ctypes.data % 64 == 0
    first = cache.keys, cache.values
    cache.lengths[:] = [3, 0, 5, 1]  # ragged rows: each written at its own length
    kv = np.arange(2 * 4 * 2 * 1 * 1 * 4, dtype=np.float32).reshape(2, 4, 2, 1, 1, 4)
    cache.write(slice(0, 2), slice(0, 4), kv)
    assert cache.keys is first[0] and cache.values is first[1]  # in place
    for row, length in enumerate([3, 0, 5, 1]):
        assert np.array_equal(cache.keys[:, row, :, :, length], kv[:, row, 0, 0])
        assert np.array_equal(cache.values[:, row, :, length], kv[:, row, 1, 0])
        # the prefix cache's token-major block view of the same position
        assert np.array_equal(cache.read_block(row, length, 1), kv[:, row, :, :])
    k_view, v_view = cache.layer(1, slice(0, 4))
    assert np.shares_memory(k_view, cache.keys) and k_view.flags.c_contiguous
    assert np.shares_memory(v_view, cache.values) and v_view.flags.c_contiguous
    cache.advance(slice(0, 4), 1)
    cache.reserve(65)
    assert cache.keys is not first[0] and cache.length == 128 and cache.reallocations == 1
    assert np.array_equal(cache.keys[..., :64], first[0])  # the held part moved over
    assert np.array_equal(cache.values[:, :, :, :64], first[1])
    cache.reserve(100)
    assert cache.reallocations == 1  # still fits: no copy
    mask = cache.mask()
    assert mask.shape == (4, 128) and mask[2, 5] == 0 and np.isneginf(mask[2, 6])
    cache.keep([2, 0], rows=4)  # rows 2 and 0 survive, in that order
    assert list(cache.lengths) == [6, 4, 0, 0]
    assert np.array_equal(cache.read_block(0, 5, 1), kv[:, 2])
    assert np.array_equal(cache.read_block(1, 3, 1), kv[:, 0])
    with pytest.raises(ValueError, match="reserve"):
        cache.write(slice(0, 2), slice(0, 1), np.zeros((2, 1, 2, 200, 1, 4), np.float32))
    block = np.random.default_rng(0).normal(size=(2, 2, 8, 1, 4)).astype(np.float32)
    cache.write_block(3, 16, block)  # the prefix cache's round trip
    assert np.array_equal(cache.read_block(3, 16, 8), block)
    cache.reserve(10)  # rows still held: a live cache never shrinks
    assert cache.length == 128
    cache.reset()  # a new sequence: a short prompt gets a short bucket back
    cache.reserve(10)
    assert cache.length == 64 and cache.reallocations == 3
    assert cache.nbytes() == cache.keys.nbytes + cache.values.nbytes


# --- exactness -----------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_logits_match_eager_and_reference(synth: Synthetic) -> None:
    compiled, eager = synth.model(), synth.model(compile=False)
    prompt = [1, 2, 3, 4]
    a, b = compiled.forward(prompt), eager.forward(prompt)
    assert np.abs(a - b).max() < 1e-4  # the tolerance stated in the module docstring
    assert np.abs(a - synth.reference.logits(prompt)).max() < 1e-4
    for token in (7, 8, 9):  # one-token steps: the XLA function
        a, b = compiled.forward([token]), eager.forward([token])
        assert np.abs(a - b).max() < 1e-4
    prompt += [7, 8, 9]
    assert np.abs(a - synth.reference.logits(prompt)).max() < 1e-4


@pytest.mark.slow
def test_64_tokens_trace_once_per_bucket_and_match_the_reference(synth: Synthetic) -> None:
    model = synth.model()
    rng = np.random.default_rng(0)
    sequence = [int(t) for t in rng.integers(0, HP.vocab_size, size=72)]
    model.forward(sequence[:3])
    for n in range(3, 72):  # one-token steps over fixed tokens: 69 of them, past position 64
        logits = model.forward([sequence[n]])
        if n in (20, 63, 64, 71):  # before, at and after the 64-position bucket
            expected = synth.reference.logits(sequence[:n + 1])
            assert np.abs(logits - expected).max() < 1e-4, n
    steps = {k: v for k, v in model.traces().items() if k.startswith("step:")}
    # one trace per bucket (all weights in a dict: the whole step of 3 blocks in one call)
    assert steps == {"step:3:1x64": 1, "step:3:1x128": 1}
    model.generate([9, 1], 64)
    assert {k: v for k, v in model.traces().items() if k.startswith("step:")} == steps


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{"group_layers": 3}, {"group_layers": 2}, {"xla": False},
                                    {"compile": False}])
def test_every_mode_gives_the_same_tokens(synth: Synthetic, kwargs: dict[str, object]) -> None:
    expected = synth.model().generate([1, 2, 3], 12)
    assert synth.model(**kwargs).generate([1, 2, 3], 12) == expected


def test_group_layers_fetches_a_group_before_running_it(synth: Synthetic) -> None:
    order: list[str] = []

    class Recording:
        def get(self, key: str) -> np.ndarray:
            order.append(key)
            return synth.sink.arrays[key]

    model = LlamaModel.from_manifest(Recording(), synth.manifest, group_layers=3)
    model.forward([1, 2])
    assert order == model.schedule()  # the read order is the schedule, whatever the group
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="group_layers"):
            synth.model(group_layers=bad)


def test_the_whole_step_runs_in_one_call_only_when_every_shard_is_in_memory(
        synth: Synthetic, tmp_path: Path) -> None:
    assert synth.model().group_layers == 1  # before the first pass: block by block
    in_dict = synth.model()
    in_dict.forward([1])
    assert in_dict.group_layers == HP.n_layers

    class Plain:  # a provider that says nothing about where its shards are
        def get(self, key: str) -> np.ndarray:
            return synth.sink.arrays[key]

    plain = LlamaModel.from_manifest(Plain(), synth.manifest)
    plain.forward([1])
    assert plain.group_layers == 1
    total = synth.manifest.total_bytes
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": total * 2},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "64MiB"}]}
    with tiercache.open(cfg) as cache:
        for key, array in synth.sink.arrays.items():
            cache.put(key, array, tier="ssd")
        model = LlamaModel.from_manifest(cache, synth.manifest)
        first = model.generate([1, 2, 3], 3)
        assert model.group_layers == 1  # the first pass read from the SSD tier
        for key in synth.sink.arrays:
            cache.put(key, synth.sink.arrays[key], tier="ram")
        model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES)  # residency is checked again
        assert model.group_layers == HP.n_layers
        assert model.generate([1, 2, 3], 3) == first


def test_the_whole_step_waits_for_the_memory_its_compile_keeps(
        synth: Synthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shard in memory, yet too little to spare for compiling the whole step (a
    capped process): the model keeps streaming block by block, and takes the whole
    step once the memory is there, with the same tokens, and keeps it -- but does not
    compile a new variant of it (a new length bucket) while memory is short."""
    from tiercache.models.runtime import shards
    need = HP.n_layers * shards.WHOLE_STEP_BYTES_PER_LAYER
    monkeypatch.setattr(shards, "spare_memory_bytes", lambda: need - 1)
    model = synth.model()
    first = model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES + 2)
    assert model.group_layers == 1
    steps = {k for k in model.traces() if k.startswith("step:")}
    assert steps == {"step:1:1x64"}  # the block's variant only, never the whole step
    monkeypatch.setattr(shards, "spare_memory_bytes", lambda: need)
    assert model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES + 2) == first
    assert model.group_layers == HP.n_layers
    # its compile spent, the whole step stays while every shard stays in memory
    monkeypatch.setattr(shards, "spare_memory_bytes", lambda: 0)
    assert model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES + 2) == first
    assert model.group_layers == HP.n_layers
    # but a new length bucket would be a new variant of it: short of memory, those
    # steps run block by block (same tokens)
    long = model.generate([1, 2, 3], 70)  # past the 64-position bucket
    steps = {k for k in model.traces() if k.startswith("step:")}
    assert f"step:{HP.n_layers}:1x128" not in steps and "step:1:1x128" in steps
    assert model.group_layers == 1
    assert long == synth.model(group_layers=1).generate([1, 2, 3], 70)


def test_steps_that_compiled_are_counted_apart(synth: Synthetic) -> None:
    """The first one-token step traces and compiles; ``compiling_s`` holds it and the
    steady rate leaves it out; the same buckets again compile nothing."""
    from tiercache.commands.generate import _decode_rate

    model = synth.model(group_layers=1)
    model.generate([1, 2, 3], 6)
    t = model.timings
    assert t.compiling_tokens == 1 and 0 < t.compiling_s < t.decode_s
    timing = t.as_dict()
    steady = timing["steady_decode_tokens_per_s"]
    assert steady == pytest.approx(4 / (t.decode_s - t.compiling_s))  # 5 steps, 1 compiled
    assert f"({steady:.2f} once compiled; {t.compiling_s:.2f} s compiling)" in _decode_rate(
        timing)
    model.timings.reset()
    model.generate([1, 2, 3], 6)
    timing = model.timings.as_dict()
    assert timing["compiling_s"] == 0 and timing["compiling_tokens"] == 0
    assert timing["steady_decode_tokens_per_s"] == timing["decode_tokens_per_s"]
    assert "compiling" not in _decode_rate(timing)


def _count_calls(model: LlamaModel) -> Counter[str]:
    """Counts, from now on, the model's calls of its compiled functions, by name."""
    calls: Counter[str] = Counter()
    fns = model._fns or model._start()
    call = fns.call

    def counting(fn: str, key: tuple[object, ...], args: tuple[object, ...],
                 flat: list[object]) -> object:
        calls[fn] += 1
        return call(fn, key, args, flat)

    fns.call = counting  # type: ignore[method-assign]
    return calls


def test_a_whole_step_runs_the_blocks_and_the_head_in_one_call(synth: Synthetic) -> None:
    model = synth.model()
    calls = _count_calls(model)
    tokens = model.generate([1, 2, 3], 5)
    assert model.group_layers == HP.n_layers
    assert calls == {"head": 1, "step_head": 4}  # the prompt's head, then 4 one-call steps
    assert tokens == synth.model(group_layers=1).generate([1, 2, 3], 5)  # block by block


def test_a_head_of_blocks_for_several_rows_keeps_its_own_call(synth: Synthetic) -> None:
    from gguf import GGMLQuantizationType, quants

    stored = {k: (quants.quantize(v.astype(np.float32), GGMLQuantizationType.Q4_1)
                  .reshape(v.shape[0], -1, 20) if v.ndim == 2 else v)
              for k, v in synth.sink.arrays.items()}
    model = LlamaModel.from_manifest(MappingProvider(stored), synth.manifest)
    calls = _count_calls(model)
    model.generate([1, 2, 3], 3)  # one row: blocks and head in one call
    assert calls == {"head": 1, "step_head": 2}
    calls.clear()
    model.generate_batch([[1, 2, 3], [4, 5]], 3)  # two rows: the head dequantized apart
    # the prompts together in one pass, then 2 steps: each with a head call of its own
    assert calls == {"head": 3, "step": 2}
    grouped = LlamaModel.from_manifest(MappingProvider(stored), synth.manifest,
                                       group_layers=HP.n_layers)  # no residency checks
    calls = _count_calls(grouped)
    grouped.generate_batch([[1, 2, 3], [4, 5]], 3)
    assert calls == {"head": 3, "step": 2}


def test_the_whole_step_runs_over_views_of_a_zero_copy_tier_in_the_page_cache(
        synth: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards a zero-copy (packed) tier serves as verified float32 views cost no memory
    of their own: the whole step runs in one call while every page is in the page cache
    (mincore), block by block as soon as one is not (reading it would wait for the disk).
    Same tokens either way."""
    from tiercache.models.runtime import shards as runtime

    cfg = {"tiers": [{"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"),
                      "capacity": "64MiB", "zero_copy": True}]}
    with tiercache.open(cfg) as cache:
        for key, array in synth.sink.arrays.items():
            cache.put(key, array.astype(np.float32))
        model = LlamaModel.from_manifest(cache, synth.manifest)
        first = model.generate([1, 2, 3], 3)
        model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES)
        assert model.group_layers == HP.n_layers
        assert model.generate([1, 2, 3], 3) == first
        monkeypatch.setattr(runtime, "pages_resident", lambda array: False)
        model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES)
        assert model.group_layers == 1
        assert model.generate([1, 2, 3], 3) == first


# --- batches -----------------------------------------------------------------------------------
PROMPTS = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13], [4, 4], [250, 3, 17]]


def test_batch_equals_each_sequence_alone(synth: Synthetic) -> None:
    model = synth.model()
    alone = [model.generate(p, 10) for p in PROMPTS]
    seen: list[tuple[int, int]] = []
    batch = model.generate_batch(PROMPTS, 10, on_token=lambda i, t: seen.append((i, t)))
    assert batch == alone
    assert generate_batch(model, PROMPTS, 10, prefill="each") == alone
    for index, tokens in enumerate(batch):
        assert [t for i, t in seen if i == index] == tokens
    assert model.timings.decoded_tokens > 0
    steps = {k for k in model.traces() if k.startswith("step:")}
    assert steps <= {"step:3:1x64", "step:3:16x64", "step:3:4x64"}  # buckets only (5 -> 16)


def test_batch_early_stops_leave_the_batch(synth: Synthetic) -> None:
    model = synth.model()
    alone = [model.generate(p, 12) for p in PROMPTS]
    eos = alone[2][3]  # a token the third sequence produces early
    expected = [model.generate(p, 12, eos_id=eos) for p in PROMPTS]
    assert any(len(e) < 12 for e in expected) and any(len(e) == 12 for e in expected)
    batch = model.generate_batch(PROMPTS, 12, eos_id=eos)
    assert batch == expected
    for tokens in batch:
        assert eos not in tokens[:-1]


def test_batch_samplers_and_bad_input(synth: Synthetic) -> None:
    model = synth.model()
    calls: list[int] = []

    def picker(index: int) -> Callable[[np.ndarray], int]:
        def pick(logits: np.ndarray) -> int:
            calls.append(index)
            return int(np.argsort(logits)[-2])  # the second best: not greedy
        return pick

    samplers = [picker(i) for i in range(2)]
    batch = model.generate_batch(PROMPTS[:2], 4, samplers=samplers)
    assert batch[0] == model.generate(PROMPTS[0], 4, sampler=picker(0))
    assert calls.count(1) == 4
    assert model.generate_batch(PROMPTS, 0) == [[] for _ in PROMPTS]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate_batch([[1], []], 3)
    with pytest.raises(ValueError, match="at least one prompt"):
        model.generate_batch([], 3)
    with pytest.raises(ValueError, match="one per prompt"):
        model.generate_batch([[1], [2]], 3, samplers=samplers[:1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate_batch([[1]], -1)
    with pytest.raises(ValueError, match="token ids"):
        model.generate_batch([[1], [300]], 2)


def test_batch_does_not_disturb_the_single_sequence(synth: Synthetic) -> None:
    model = synth.model()
    first = model.generate([1, 2, 3], 4)
    model.generate_batch(PROMPTS, 3)
    more = model.generate([9], 4, reset=False)  # continues the sequence of generate
    fresh = synth.model()
    assert fresh.generate([1, 2, 3], 4) == first
    assert fresh.generate([9], 4, reset=False) == more


# --- stored formats --------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["Q8_0", "Q4_0", "Q4_1", "BF16", "F16"])
def test_quantized_shards_decode_to_the_float_model(synth: Synthetic, encoding: str) -> None:
    from tiercache.models import quant
    from tiercache.models.runtime.handoff import aligned_empty

    def aligned(array: np.ndarray) -> np.ndarray:  # as a cache returns shards
        out = aligned_empty(array.shape, array.dtype)
        out[...] = array
        return out

    def encode(v: np.ndarray) -> np.ndarray:
        if encoding in ("Q4_0", "Q4_1"):  # tiercache writes only Q8_0: gguf-py's encoder
            from gguf import GGMLQuantizationType, quants
            blocks = quants.quantize(v.astype(np.float32),
                                     getattr(GGMLQuantizationType, encoding))
            return blocks.reshape(v.shape[0], -1, quant.GGML_TYPES[encoding].block_bytes)
        return quant.quantize(v, encoding)

    stored = {k: aligned(encode(v)) if v.ndim == 2 else aligned(v)
              for k, v in synth.sink.arrays.items()}
    decoded = {k: quant.dequantize(v) for k, v in stored.items()}
    model = LlamaModel.from_manifest(MappingProvider(stored), synth.manifest)
    tokens = model.generate([1, 2, 3], 8)
    assert model.timings.copied_handoffs == 0  # blocks as stored or decoded into aligned buffers
    assert tokens == LlamaModel.from_manifest(MappingProvider(decoded),
                                              synth.manifest).generate([1, 2, 3], 8)
    if encoding in ("Q8_0", "Q4_0", "Q4_1"):
        # the compiled functions multiply by the blocks as stored: no decoded buffer
        # (only the embedding rows a pass looks up are dequantized), and the whole step
        # runs in one call (nothing to hold); logits within float rounding of the eager
        # path, which dequantizes exactly
        assert model.decode_buffer_bytes == 0
        model.generate([1, 2, 3], RESIDENCY_CHECK_PASSES)
        assert model.group_layers == HP.n_layers
        eager = LlamaModel.from_manifest(MappingProvider(stored), synth.manifest, compile=False)
        compiled = LlamaModel.from_manifest(MappingProvider(stored), synth.manifest)
        for ids in ([1, 2, 3], [4], [5]):  # a prompt pass, then two one-token steps
            want, got = eager.forward(ids), compiled.forward(ids)
            assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
        assert eager.timings.dequant_s > 0
    else:
        assert model.timings.dequant_s > 0
        # stored shards stream block by block, decoded at each use into one block's
        # buffers: the decoded model is never held whole (no tier counts that memory)
        decoded_s = model.timings.dequant_s
        assert model.generate([1, 2, 3], 8) == tokens
        assert model.timings.dequant_s > decoded_s
        one_block = sum(quant.dequantize(v).nbytes for k, v in stored.items()
                        if k.startswith("blk.0."))
        head = max(quant.dequantize(v).nbytes for v in stored.values())
        assert 0 < model.decode_buffer_bytes <= one_block + 2 * head
        assert model.group_layers == 1
    wrong = dict(stored)
    other = synthetic_llama(DictSink(), synthetic_hparams(layers=1, dim=96, vocab=300),
                            progress=False)
    assert other.tensors["blk.0.attn_q.weight"].shape != (64, 64)
    wrong["blk.0.attn_q.weight"] = encode(np.ones((64, 96), np.float32))
    with pytest.raises(tiercache.TierCacheError, match=r"attn_q.*\(64, 96\).*another model"):
        LlamaModel.from_manifest(MappingProvider(wrong), synth.manifest).forward([1])
    broken = dict(stored)
    broken["blk.0.attn_k.weight"] = np.zeros((32, 2, 7), np.uint8)  # no ggml block is 7 bytes
    with pytest.raises(tiercache.TierCacheError, match="attn_k"):
        LlamaModel.from_manifest(MappingProvider(broken), synth.manifest).forward([1])


def test_a_shard_that_came_decoded_once_is_decoded_from_then_on(synth: Synthetic) -> None:
    """Each mix of float32 and block forms is an XLA trace of its own: a key served as
    float32 once (a decoded tier) is decoded whenever it comes as blocks afterwards, so
    moving between a decoded and a stored tier changes its form once, not every time."""
    from gguf import GGMLQuantizationType, quants

    from tiercache.models import quant

    stored = {}
    for k, v in synth.sink.arrays.items():
        if v.ndim == 2:
            blocks = quants.quantize(v.astype(np.float32), GGMLQuantizationType.Q4_1)
            v = blocks.reshape(v.shape[0], -1, 20)
        stored[k] = np.ascontiguousarray(v)
    arrays = dict(stored)
    model = LlamaModel.from_manifest(MappingProvider(arrays), synth.manifest,
                                     group_layers=HP.n_layers)  # one mode throughout
    model.generate([1, 2, 3], 4)

    def step_traces() -> int:
        return sum(n for k, n in model.traces().items() if k.startswith("step:"))

    before = step_traces()
    keys = ["blk.0.attn_q.weight", "blk.1.ffn_up.weight", "blk.2.ffn_down.weight"]
    # which of the three come decoded, pass after pass: six different mixes
    for decoded in ([0], [1], [2], [0, 1], [], [1, 2], [0], [2]):
        for i, key in enumerate(keys):
            arrays[key] = quant.dequantize(stored[key]) if i in decoded else stored[key]
        model.generate([1, 2, 3], 2)
    # forms change only towards decoded: {0}, {0,1}, {0,1,2} -- three new traces, not six
    assert step_traces() == before + 3, model.traces()


# --- the in_out weight layout --------------------------------------------------------------------
def test_an_in_out_import_stores_matrices_transposed_and_decodes_the_same(tmp_path: Path) -> None:
    from gguf_fixtures import write_tiny_gguf

    from tiercache.models import import_model

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    rows, cols = DictSink(), DictSink()
    plain = import_model(path, rows, dtype="float32", progress=False)
    moved = import_model(path, cols, dtype="float32", progress=False, weight_layout="in_out")
    q = "blk.0.attn_q.weight"
    assert moved.tensors[q].layout == "in_out" and moved.tensors[q].shape == (64, 64)
    assert np.array_equal(cols.arrays["blk.0.attn_k.weight"], rows.arrays["blk.0.attn_k.weight"].T)
    assert cols.arrays["blk.1.ffn_down.weight"].shape == (96, 64)  # [in, out]
    for key in ("token_embd.weight", "blk.0.attn_norm.weight", "output_norm.weight"):
        assert moved.tensors[key].layout is None  # only a block's matrices move
        assert np.array_equal(cols.arrays[key], rows.arrays[key])
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    runs = {}
    for name, sink, manifest in (("rows", rows, plain), ("cols", cols, moved)):
        for compile in (True, False):
            model = LlamaModel.from_manifest(MappingProvider(sink.arrays), manifest,
                                             compile=compile)
            runs[name, compile] = (model.generate(prompts[0], 12),
                                   model.generate_batch(prompts, 6))
            last = model.forward([5])
            if name == "rows" and compile:
                reference = last
            else:
                assert np.allclose(last, reference, atol=1e-4 * float(np.abs(reference).max()))
    assert len({repr(v) for v in runs.values()}) == 1  # same tokens every way
    # under a key prefix (several models in one cache): the manifest's keys carry it
    prefixed = DictSink()
    other = import_model(path, prefixed, dtype="float32", progress=False,
                         weight_layout="in_out", key_prefix="m/")
    model = LlamaModel.from_manifest(MappingProvider(prefixed.arrays), other)
    assert model.generate(prompts[0], 12) == runs["rows", True][0]
    with pytest.raises(ValueError, match="in_out is for float32/float16"):
        import_model(path, DictSink(), progress=False, weight_layout="in_out")
    with pytest.raises(ValueError, match="must be out_in or in_out"):
        import_model(path, DictSink(), dtype="float32", progress=False, weight_layout="cols")


def test_an_in_out_float16_import_decodes_the_same_as_its_default_layout(
        tmp_path: Path) -> None:
    from gguf_fixtures import write_tiny_gguf

    from tiercache.models import import_model

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    tokens = []
    for layout in ("out_in", "in_out"):
        sink = DictSink()
        manifest = import_model(path, sink, dtype="float16", progress=False,
                                weight_layout=layout)
        assert sink.arrays["blk.0.ffn_up.weight"].dtype == np.float16
        model = LlamaModel.from_manifest(MappingProvider(sink.arrays), manifest)
        tokens.append((model.generate([1, 2, 3], 10), model.generate_batch([[4], [5, 6]], 5)))
    assert tokens[0] == tokens[1]


def test_a_shard_in_the_wrong_layout_is_refused_naming_it() -> None:
    synth = Synthetic()
    # the manifest says in_out, the store holds [out, in]: a non-square matrix shows it
    model = LlamaModel(MappingProvider(synth.sink.arrays), synth.hp,
                       transposed={"blk.0.attn_k.weight"})
    with pytest.raises(ModelFormatError, match=r"blk\.0\.attn_k\.weight"):
        model.generate([1, 2], 2)
