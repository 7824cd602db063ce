"""KV blocks of prompt prefixes kept in the tiers and reused (issue 15): the chained block
keys and the block store on numpy (no TensorFlow), then generation with reuse on a small
synthetic Llama and on SmolLM2 -- the same tokens as without reuse, logits within the
stated tolerance, a new process and a second worker through Redis reusing the blocks,
damaged blocks recomputed, the CLI's switches and timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.cli import main
from tiercache.errors import CorruptShardError
from tiercache.keyspace import KV_PREFIX, is_kv_key
from tiercache.models import load_manifest
from tiercache.models.api import find_manifest
from tiercache.models.llama import LlamaHParams
from tiercache.models.manifest import ModelManifest
from tiercache.models.prefix import PrefixCache, block_keys, model_identity, stored_identity
from tiercache.models.runtime.kv import KVCache

SYNTH = ["--layers", "2", "--dim", "64", "--ffn", "96", "--vocab", "300", "--heads", "4",
         "--kv-heads", "2", "--seed", "5"]
#: Logits of a prompt whose prefix came from KV blocks differ from a full recompute by
#: float rounding only (a shorter prompt pass sums in another order): at most this much,
#: relative to the largest logit (measured: below 1e-6 on both models).
LOGIT_TOLERANCE = 1e-4


# --- block keys ---------------------------------------------------------------------------
def test_block_keys_chain_the_whole_prefix() -> None:
    ids = list(range(100, 140))
    keys = block_keys("m" * 32, ids, 8)
    assert len(keys) == 5 and len(set(keys)) == 5
    assert all(k.startswith(KV_PREFIX) and is_kv_key(k) for k in keys)
    assert block_keys("m" * 32, [*ids, 1, 2, 3], 8) == keys  # a partial block has no key
    changed = list(ids)
    changed[12] = 7  # in block 1: blocks 1.. differ, block 0 does not
    other = block_keys("m" * 32, changed, 8)
    assert other[0] == keys[0] and all(a != b for a, b in zip(other[1:], keys[1:], strict=True))
    # a block's key names everything before it too: the same ids after another prefix differ
    shifted = block_keys("m" * 32, [9] * 8 + ids[8:], 8)
    assert shifted[1:] != keys[1:]
    assert not set(block_keys("n" * 32, ids, 8)) & set(keys)  # another model
    assert not set(block_keys("m" * 32, ids, 4)) & set(keys)  # another block size
    assert not set(block_keys("m" * 32, ids, 8, np.dtype(np.float16))) & set(keys)
    with pytest.raises(ValueError, match="block_tokens"):
        block_keys("m", ids, 0)


def _manifest(**changes: Any) -> ModelManifest:
    hp = {"n_layers": 2, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 96,
          "vocab_size": 300, "head_dim": 16, "context_length": 512}
    base: dict[str, Any] = {"architecture": "llama", "name": "m", "dtype": "float32",
                            "source": {"kind": "gguf", "path": "/a/m.gguf", "size_bytes": 9,
                                       "mtime_ns": 1}, "hparams": hp}
    base.update(changes)
    return ModelManifest(**base)


def test_model_identity_names_the_model_not_where_its_file_was() -> None:
    first = model_identity(_manifest())
    moved = _manifest(source={"kind": "gguf", "path": "/elsewhere/m.gguf", "size_bytes": 9,
                              "mtime_ns": 77})
    assert model_identity(moved) == first  # the same model on another machine
    assert model_identity(_manifest(name="other")) != first
    assert model_identity(_manifest(dtype="native")) != first
    assert model_identity(_manifest(), b"weights") != first  # a fingerprint of its weights


def test_the_stored_identity_tells_apart_weights_with_equal_manifests() -> None:
    norm = np.ones(64, np.float32)
    same = DictStore({"output_norm.weight": norm, "blk.0.attn_norm.weight": norm})
    other = DictStore({"output_norm.weight": norm * 2, "blk.0.attn_norm.weight": norm})
    first = stored_identity(same, _manifest())
    assert stored_identity(DictStore(same), _manifest()) == first
    assert stored_identity(other, _manifest()) != first
    assert stored_identity(DictStore(), _manifest()) == model_identity(_manifest())


# --- the block store on numpy -------------------------------------------------------------
class DictStore(dict[str, Any]):
    """A dict with the cache's get/put/delete (a test double for a TieredCache)."""

    def get(self, key: str, default: Any = None) -> Any:
        value = super().get(key, default)
        if isinstance(value, Exception):
            raise value
        return value

    def put(self, key: str, array: np.ndarray) -> None:
        self[key] = np.array(array)

    def delete(self, key: str) -> bool:
        return self.pop(key, None) is not None


HP = LlamaHParams(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=300,
                  head_dim=16, context_length=512)


def _empty_cache(tokens: int = 64) -> KVCache:
    cache = KVCache(HP.n_layers, HP.n_kv_heads, HP.head_dim, rows=1,
                    context_length=HP.context_length)
    cache.reserve(tokens)
    return cache


def _kv_cache(tokens: int, seed: int) -> KVCache:
    """A one-row cache holding ``tokens`` positions of random keys and values."""
    cache = _empty_cache(tokens)
    shape = (HP.n_layers, 2, tokens, HP.n_kv_heads, HP.head_dim)
    cache.write_block(0, 0, np.random.default_rng(seed).normal(size=shape).astype(np.float32))
    return cache


def test_save_then_load_copies_the_longest_cached_prefix() -> None:
    store = DictStore()
    prefix = PrefixCache(store, "i" * 32, HP, block_tokens=8)
    ids = list(range(30))  # 3 complete blocks and 6 tokens
    source = _kv_cache(64, 1)
    assert prefix.save(ids, source, 0) == 3 and len(store) == 3
    assert prefix.save(ids, source, 0) == 0  # already there
    assert prefix.block_bytes == 2 * 2 * 8 * 2 * 16 * 4
    target = _empty_cache()
    assert prefix.load([*ids, 5, 6], target, 0) == 24
    assert np.array_equal(target.read_block(0, 0, 24), source.read_block(0, 0, 24))
    assert not target.read_block(0, 24, 40).any()
    # at least one prompt token is always computed (its logits are needed)
    assert prefix.load(ids[:24], _empty_cache(), 0) == 16
    # another prompt shares only the first block
    other = ids[:8] + [299] * 22
    assert prefix.load(other, _empty_cache(), 0) == 8
    assert prefix.stats.tokens_reused == 24 + 16 + 8 and prefix.stats.blocks_saved == 3


def test_damaged_or_misshapen_blocks_are_deleted_and_recomputed() -> None:
    store = DictStore()
    prefix = PrefixCache(store, "i" * 32, HP, block_tokens=8)
    ids = list(range(40))
    prefix.save(ids, _kv_cache(64, 2), 0)
    keys = prefix.keys(ids)
    store[keys[1]] = CorruptShardError("checksum mismatch")  # a get raises
    store[keys[3]] = np.zeros((2, 2, 8, 2, 16), np.float16)  # wrong dtype
    assert prefix.load(ids, _empty_cache(), 0) == 8
    assert keys[1] not in store and prefix.stats.blocks_rejected == 1
    assert prefix.load(ids[:8] + ids[8:], _empty_cache(), 0) == 8
    prefix.save(ids, _kv_cache(64, 2), 0)  # recomputed blocks are kept again
    assert keys[1] in store
    store[keys[2]] = np.zeros((2, 2, 4, 2, 16), np.float32)  # wrong shape
    assert prefix.load(ids, _empty_cache(), 0) == 16
    assert keys[2] not in store and prefix.stats.blocks_rejected == 2


# --- generation with reuse (TensorFlow) ---------------------------------------------------
def _layout(root: Path, *, ram: str = "64KiB", kv_capacity: str | None = None,
            ssd: str = "64MiB", name: str = "tiers.toml") -> Path:
    config = root / name
    kv = f"kv_capacity = \"{kv_capacity}\"\n" if kv_capacity else ""
    config.write_text(
        "[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\n"
        f"capacity = \"{ram}\"\npolicy = \"lru\"\n{kv}"
        "[[tiers]]\nname = \"ssd\"\nbackend = \"packed\"\npath = \"ssd\"\n"
        f"capacity = \"{ssd}\"\nzero_copy = true\npromote_after = 1\n", encoding="utf-8")
    return config


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    config = _layout(tmp_path, ram="1MiB", kv_capacity="25%")
    assert main(["import", "synthetic", *SYNTH, "--config", str(config), "--no-progress"]) == 0
    return config


PROMPT = [int(i) for i in np.random.default_rng(3).integers(3, 300, size=45)]


@pytest.mark.tf
def test_reuse_gives_the_same_tokens_and_logits_within_tolerance(synthetic: Path) -> None:
    with tiercache.load_model(synthetic, kv_block_tokens=8, prefetch=0) as model:
        plain = list(model.generate_ids(PROMPT, 10, kv_cache=False))
        assert model.kv_stats is not None and model.kv_stats["blocks_saved"] == 0
        first = list(model.generate_ids(PROMPT, 10))  # computes and keeps 5 blocks + answer's
        assert model.timings.prompt_tokens_reused == 0
        assert model.kv_stats["blocks_saved"] == 5 + 1  # 45 prompt + 9 fed back: 6 blocks
        again = list(model.generate_ids(PROMPT, 10))
        assert model.timings.prompt_tokens_reused == 40  # 5 blocks, the last token computed
        assert model.timings.ttft_s is not None and model.timings.ttft_s > 0
        # a longer prompt with the same start (the next turn of a chat) reuses the answer too
        turn = list(model.generate_ids(PROMPT + first[:-1] + [7, 8, 9], 4))
        assert model.timings.prompt_tokens_reused == 40 + 48
        # the logits: a full prompt pass vs blocks + the rest
        llama = model.llama
        prefix, llama.prefix_cache = llama.prefix_cache, None
        llama.reset()
        full = llama.prefill(PROMPT)
        llama.prefix_cache = prefix
        llama.reset()
        tail = llama.prefill(PROMPT)
        assert prefix is not None
        reused = prefix.stats.last_tokens_reused
        stats = model.cache.stats()
    assert first == plain and again == plain
    assert len(turn) == 4
    assert reused == 40
    assert np.abs(full - tail).max() <= LOGIT_TOLERANCE * np.abs(full).max()
    ram = stats["tiers"]["ram"]
    assert ram["kv_bytes"] <= ram["kv_capacity_bytes"] == (1 << 20) // 4
    assert stats["tiers"]["ram"]["kv_blocks"] + stats["tiers"]["ssd"]["kv_blocks"] >= 7


@pytest.mark.tf
def test_a_new_process_reuses_blocks_from_the_disk_tier_and_recomputes_damaged_ones(
        synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids_arg = ["--kv-block-tokens", "8", "--max-new-tokens", "6", "--json", "--prefetch", "0"]
    text = "".join(f"w{i} " for i in range(30))  # a long prompt for the synthetic tokenizer
    assert main(["generate", "--config", str(synthetic), "--prompt", text, *ids_arg]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["timing"]["prompt_tokens_reused"] == 0 and first["timing"]["ttft_s"] > 0
    assert first["kv"]["blocks_saved"] >= 2
    # another process: the blocks were flushed to the SSD tier when the first one closed
    proc = subprocess.run([sys.executable, "-m", "tiercache", "generate", "--config",
                           str(synthetic), "--prompt", text, *ids_arg],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert second["token_ids"] == first["token_ids"]
    reused = second["timing"]["prompt_tokens_reused"]
    assert reused >= 8 and reused % 8 == 0
    # `tiercache stats` shows the KV share of each tier
    assert main(["stats", str(synthetic)]) == 0
    assert "KV blocks:" in capsys.readouterr().out
    # damage every KV block on the SSD tier: detected by the checksum, recomputed
    with tiercache.open(synthetic) as cache:
        kv_keys = [k for k in cache.tier("ssd").keys() if is_kv_key(k)]
        blocks = {k: np.array(cache.get(k)) for k in kv_keys}
    assert kv_keys
    damaged = 0
    for path in (synthetic.parent / "ssd").rglob("*"):
        if path.is_file() and path.stat().st_size > 4096:
            data = bytearray(path.read_bytes())
            for block in blocks.values():
                at = data.find(block.tobytes()[:256])
                if at >= 0:
                    data[at + 100] ^= 0xFF
                    damaged += 1
            path.write_bytes(bytes(data))
    assert damaged >= len(blocks)
    assert main(["generate", "--config", str(synthetic), "--prompt", text, *ids_arg]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["token_ids"] == first["token_ids"]
    assert third["timing"]["prompt_tokens_reused"] == 0
    # the checksum caught it: the engine dropped the copy, the block was computed again
    assert third["stats"]["tiers"]["ssd"]["corrupt"] >= 1
    assert third["kv"]["blocks_saved"] >= 2
    # --no-kv-cache: neither reuse nor keep
    assert main(["generate", "--config", str(synthetic), "--prompt", text, *ids_arg,
                 "--no-kv-cache"]) == 0
    fourth = json.loads(capsys.readouterr().out)
    assert fourth["token_ids"] == first["token_ids"] and fourth["kv"] is None
    assert fourth["timing"]["prompt_tokens_reused"] == 0


@pytest.mark.tf
@pytest.mark.redis
def test_a_second_worker_reuses_blocks_through_redis(tmp_path: Path, redis_standalone: Any,
                                                     redis_namespace: str) -> None:
    def config(name: str) -> Path:
        path = tmp_path / name
        path.write_text(
            "[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\ncapacity = \"256KiB\"\n"
            "policy = \"opt\"\nkv_capacity = \"50%\"\n"
            "[[tiers]]\nname = \"shared\"\nbackend = \"redis\"\ncapacity = \"64MiB\"\n"
            f"url = \"{redis_standalone.url}\"\nnamespace = \"{redis_namespace}\"\n",
            encoding="utf-8")
        return path

    first, second = config("worker1.toml"), config("worker2.toml")
    assert main(["import", "synthetic", *SYNTH, "--config", str(first), "--no-progress"]) == 0
    manifest = find_manifest(first)
    with tiercache.load_model(first, kv_block_tokens=8, prefetch=0) as model:
        expected = list(model.generate_ids(PROMPT, 6))
    proc = subprocess.run(
        [sys.executable, "-c",
         "import json, sys, tiercache\n"
         f"m = tiercache.load_model({str(second)!r}, manifest={str(manifest)!r}, "
         "kv_block_tokens=8, prefetch=0)\n"
         f"ids = list(m.generate_ids({PROMPT!r}, 6))\n"
         "print(json.dumps({'ids': ids, 'reused': m.timings.prompt_tokens_reused}))\n"
         "m.close()\n"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"] == expected and out["reused"] == 40
    assert load_manifest(manifest).name


# --- SmolLM2: the test prompts, with and without reuse --------------------------------------
@pytest.mark.tf
@pytest.mark.slow
def test_smollm2_tokens_equal_with_reuse(tmp_path: Path) -> None:
    config = _layout(tmp_path, ram="200MiB", kv_capacity="30%", ssd="256MiB")
    assert main(["import", "smollm2", "--config", str(config), "--no-progress"]) == 0
    document = ("The history of the printing press begins in the fifteenth century. "
                "Johannes Gutenberg combined movable metal type, oil-based ink and a "
                "wooden press adapted from wine making. ") * 6
    questions = ["Who built the press?", "What did the ink contain?"]
    with tiercache.load_model(config, prefetch=0) as model:
        prompts = [model.encode_prompt(document + "\nQuestion: " + q + "\nAnswer:")
                   for q in questions]
        plain = [list(model.generate_ids(p, 8, kv_cache=False)) for p in prompts]
        reused = []
        for p in prompts:
            reused.append(list(model.generate_ids(p, 8)))
        reused_tokens = model.timings.prompt_tokens_reused
        llama = model.llama
        prefix, llama.prefix_cache = llama.prefix_cache, None
        assert prefix is not None
        llama.reset()
        full = llama.prefill(prompts[1])
        llama.prefix_cache = prefix
        llama.reset()
        tail = llama.prefill(prompts[1])
        count = prefix.stats.last_tokens_reused
    assert reused == plain
    assert reused_tokens >= 64  # the second question reused the document's blocks
    assert count >= 64
    assert np.abs(full - tail).max() <= LOGIT_TOLERANCE * np.abs(full).max()
    assert int(np.argmax(full)) == int(np.argmax(tail))
