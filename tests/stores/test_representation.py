"""Decoded memory tiers: ``representation = "decoded"`` (issue 14 item 2).

A decoded RAM tier over a packed SSD tier holding ggml blocks: promotion
dequantizes once, hits are float32, capacity counts the decoded bytes, evicting
writes nothing, the persistent copy stays in its stored form (also across a
SIGKILL), the engine's checks (verify/scrub, duplicate resolution on open,
``tiercache stats``/``verify``, the simulator) take the decoded copy as the same
shard, bad configs are errors naming file, tier and key, and a model decodes to
the same tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.cli import main
from tiercache.config import load_config
from tiercache.errors import ConfigError
from tiercache.models import quant
from tiercache.stores import open_store
from tiercache.stores.memory import MemoryStore, shard_cost_nbytes

REPO = Path(__file__).resolve().parents[2]


def shards() -> dict[str, np.ndarray]:
    """Stored shards of every kind a decoded tier meets: ggml blocks, float16, bf16
    bit patterns, and float32 (already ready to compute)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((96, 256)).astype(np.float32)
    return {"q5": q5_0(x), "q5b": q5_0(x[:64] * 2),
            "f16": x[:32].astype(np.float16), "bf16": quant.quantize(x[:16], "BF16"),
            "f32": x[:8].copy()}


def q5_0(x: np.ndarray) -> np.ndarray:
    """Q5_0 blocks of ``x`` (gguf-py's encoder): a type the decoder dequantizes, so the
    default decoder of a decoded tier decodes it (Q4_0/Q4_1/Q8_0 it keeps as stored)."""
    from gguf import GGMLQuantizationType, quants

    blocks = quants.quantize(x, GGMLQuantizationType.Q5_0)
    return np.ascontiguousarray(blocks.reshape(x.shape[0], -1, 22))


def held(store: MemoryStore, key: str) -> np.ndarray:
    """The array ``store`` holds under ``key`` (which it must hold)."""
    array = store.get(key)
    assert array is not None, key
    return array


def decoded_nbytes(array: np.ndarray) -> int:
    return int(np.prod(quant.logical_shape(array))) * 4


def layout(tmp_path: Path, *, ram: str | int = "64MiB", representation: str = "decoded",
           mode: str = "inclusive", extra: str = "") -> Path:
    """A RAM tier (``representation``) over a packed SSD tier; the TOML file."""
    rep = f'representation = "{representation}"\n' if representation else ""
    cap = f'"{ram}"' if isinstance(ram, str) else str(ram)
    path = tmp_path / "tiers.toml"
    path.write_text(f'mode = "{mode}"\n\n[[tiers]]\nname = "ram"\nbackend = "memory"\n'
                    f'capacity = {cap}\n{rep}{extra}\n'
                    '[[tiers]]\nname = "ssd"\nbackend = "packed"\npath = "ssd"\n'
                    'capacity = "64MiB"\nzero_copy = true\npromote_after = 1\n',
                    encoding="utf-8")
    return path


def imported(config: Path) -> dict[str, np.ndarray]:
    """Put every shard into the SSD tier (as ``tiercache import`` does) and close."""
    data = shards()
    with tiercache.open(config) as cache:
        for key, array in data.items():
            cache.put(key, array, tier="ssd")
    return data


# --------------------------------------------------------------------------- the store

def test_a_decoded_store_keeps_the_decoded_form_and_charges_it() -> None:
    store = MemoryStore(representation="decoded")
    for key, array in shards().items():
        size = store.stored_size(array)
        assert store.put(key, array) == size
        got = store.get(key)
        assert got is not None and got.dtype == np.float32
        assert got.shape == quant.logical_shape(array)
        assert np.array_equal(got, quant.dequantize(array))
        assert size == shard_cost_nbytes(decoded_nbytes(array))
        assert not got.flags.writeable and got.ctypes.data % 64 == 0
        info = store.info(key)
        assert info is not None and (info.dtype, info.shape) == (got.dtype, got.shape)
    ints = np.arange(12, dtype=np.int32).reshape(3, 4)  # no ggml encoding: kept as is
    store.put("ints", ints)
    assert held(store, "ints").dtype == np.int32
    assert store.stored_size(ints) == shard_cost_nbytes(ints.nbytes)
    stored = MemoryStore()
    q5 = shards()["q5"]
    assert stored.stored_size(q5) == shard_cost_nbytes(q5.nbytes) < store.stored_size(q5)
    assert stored.put("q5", q5) and held(stored, "q5").dtype == np.uint8


def test_adopt_decodes_too_and_a_float32_shard_is_adopted_without_a_copy() -> None:
    store = MemoryStore(representation="decoded")
    q5 = shards()["q5"].copy()
    store.adopt("q5", q5)
    assert held(store, "q5").dtype == np.float32 and q5.flags.writeable  # q5 not kept
    f32 = np.ones((256, 256), np.float32)  # 256 KiB: pooled size, adoptable when owned
    store.adopt("f32", f32)
    assert np.shares_memory(held(store, "f32"), f32)  # kept as is: no copy


def test_a_user_decoder_and_its_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "halves.py").write_text(textwrap.dedent('''
        import numpy as np

        def widen(array, out=None):
            if array.dtype != np.float16:
                raise ValueError("only float16")
            if out is None:
                out = np.empty(array.shape, np.float64)
            out[...] = array
            return out

        def bad(array, out=None):
            return 1.0
    '''), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    opened = open_store("memory", None, options={"representation": "decoded",
                                                 "decoder": "halves:widen"})
    assert isinstance(opened, MemoryStore)
    store = opened
    store.put("h", np.ones((4, 3), np.float16))
    store.put("q", shards()["q5"])
    assert held(store, "h").dtype == np.float64 and held(store, "q").dtype == np.uint8
    assert store.stored_size(np.ones((4, 3), np.float16)) == shard_cost_nbytes(4 * 3 * 8)
    broken = MemoryStore(representation="decoded", decoder="halves:bad")
    with pytest.raises(TypeError, match=r"halves:bad.*row for row"):
        broken.put("h", np.ones((4, 3), np.float16))
    with pytest.raises(ValueError, match="representation"):
        MemoryStore(representation="packed")  # type: ignore[arg-type]


def test_the_store_module_does_not_import_the_models_package() -> None:
    code = ("import sys, numpy as np; from tiercache.stores.memory import MemoryStore; "
            "s = MemoryStore(representation='decoded'); s.put('f', np.ones(3, np.float32)); "
            "s.stored_size(np.ones(3, np.float32)); "
            "print('tiercache.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the engine

def test_promotion_decodes_once_hits_are_float32_and_eviction_writes_nothing(
        tmp_path: Path) -> None:
    config = layout(tmp_path, ram="64MiB", mode="exclusive")
    data = imported(config)
    with tiercache.open(config) as cache:
        ram, ssd = cache.tier("ram"), cache.tier("ssd")
        for key, array in data.items():
            first = cache.get(key)  # a zero-copy view of the SSD's stored form; promoted
            assert first.dtype == array.dtype and np.array_equal(first, array)
            again = cache.get(key)  # a RAM hit: the decoded copy itself, ready to compute
            assert again.dtype == np.float32 and again is cache.get(key)
            assert np.array_equal(again, quant.dequantize(array))
            assert cache.where(key) == ["ram", "ssd"]  # the persistent copy stays
            info = ssd.info(key)
            assert info is not None and info.dtype == array.dtype and info.shape == array.shape
        assert ram.used_bytes == sum(shard_cost_nbytes(decoded_nbytes(a)) for a in data.values())
        written = ssd.stats.bytes_written
        big = np.ones((1024, 1024 * 11 // 4), np.float32)  # 11 MiB, float32: kept as is
        for i in range(6):  # 66 MiB into 64: every decoded shard (LRU, oldest) and big0 leave
            cache.put(f"big{i}", big)
        assert all(cache.where(key) == ["ssd"] for key in data)
        assert ram.stats.clean_drops == len(data)  # dropped: nothing written for them
        assert cache.where("big0") == ["ssd"]
        assert ssd.stats.bytes_written - written == ssd.size_of("big0")
        for key, array in data.items():
            info = ssd.info(key)
            assert info is not None and info.dtype == array.dtype and info.shape == array.shape
        report = cache.verify()
        assert report["ok"], report
        assert report["tiers"]["ssd"]["ok"] == len(data) + 1
        cache.check_invariants()


def test_capacity_counts_the_decoded_bytes(tmp_path: Path) -> None:
    data = shards()
    q5 = data["q5"]
    room = 2 * shard_cost_nbytes(decoded_nbytes(q5)) + 1000  # two decoded q5 shards
    for representation, held in (("decoded", 2), ("stored", 3)):
        folder = tmp_path / representation
        folder.mkdir()
        config = layout(folder, ram=room, representation=representation)
        with tiercache.open(config) as cache:
            for i in range(3):
                cache.put(f"w{i}", q5, tier="ssd")
            for _ in range(2):
                for i in range(3):
                    cache.get(f"w{i}")
            ram = cache.tier("ram")
            assert len(ram) == held, representation
            assert ram.used_bytes <= room
            stats = cache.stats()["tiers"]["ram"]
            assert stats["resident_bytes"] == ram.used_bytes
            cache.check_invariants()


def test_a_shard_only_in_the_decoded_tier_goes_down_decoded(tmp_path: Path) -> None:
    """Documented: a put into the RAM tier itself (no copy below) is demoted, and flushed
    on close, in its decoded form -- the same values, float32 bytes on the SSD."""
    config = layout(tmp_path, ram=1 << 20, mode="exclusive")
    q5 = shards()["q5"]
    with tiercache.open(config) as cache:
        cache.put("only", q5)  # to the top tier: decoded there, nothing below
        assert cache.where("only") == ["ram"]
        cache.put("filler", np.ones((512, 480), np.float32))  # 960 KiB: "only" must go
        assert cache.where("only") == ["ssd"]
        info = cache.tier("ssd").info("only")
        assert info is not None and info.dtype == np.float32
        assert np.array_equal(cache.get("only"), quant.dequantize(q5))
        cache.put("flushed", q5)
    with tiercache.open(config) as cache:  # flush_on_close wrote it down, decoded
        info = cache.tier("ssd").info("flushed")
        assert info is not None and info.dtype == np.float32
        assert np.array_equal(cache.get("flushed"), quant.dequantize(q5))


def test_sigkill_after_promotions_leaves_every_stored_copy(tmp_path: Path) -> None:
    config = layout(tmp_path, mode="exclusive")
    data = imported(config)
    code = textwrap.dedent(f"""
        import os, signal, numpy as np, tiercache
        cache = tiercache.open({str(config)!r})
        for key in {sorted(data)!r}:
            cache.get(key)  # promoted into the decoded RAM tier
            assert cache.get(key).dtype == np.float32
        assert all(cache.where(k) == ["ram", "ssd"] for k in {sorted(data)!r})
        print("promoted", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == -9 and "promoted" in run.stdout, run.stderr
    with tiercache.open(config) as cache:
        for key, array in data.items():
            assert cache.where(key) == ["ssd"]
            info = cache.tier("ssd").info(key)
            assert info is not None and info.dtype == array.dtype and info.shape == array.shape
            raw = cache.tier("ssd").read(key)
            assert raw is not None and np.array_equal(raw, array)
        assert cache.verify()["ok"]


def test_duplicates_on_open_stats_and_verify_take_the_decoded_tier(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Inclusive RAM (decoded) / SSD / HDD: a shard read from the HDD is copied into the
    SSD and decoded into RAM; on reopen the two persistent copies are the same shard
    (both kept), and ``tiercache stats``/``verify`` open the layout read-only."""
    config = layout(tmp_path)
    config.write_text(config.read_text(encoding="utf-8") + '\n[[tiers]]\nname = "hdd"\n'
                      'backend = "diskcache"\npath = "hdd"\ncapacity = "64MiB"\n'
                      'promote_after = 1\n', encoding="utf-8")
    data = shards()
    with tiercache.open(config) as cache:
        for key, array in data.items():
            cache.put(key, array, tier="hdd")
        for key in data:
            cache.get(key)  # hdd -> ssd
            cache.get(key)  # ssd -> ram, decoded
            assert cache.where(key) == ["ram", "ssd", "hdd"]
    with tiercache.open(config) as cache:  # duplicates resolved on open: both copies kept
        for key in data:
            assert cache.where(key) == ["ssd", "hdd"]
            cache.get(key)
            assert cache.get(key).dtype == np.float32  # promoted again, decoded
    assert main(["stats", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tiers"]["ssd"]["resident_count"] == len(data)
    assert stats["tiers"]["hdd"]["resident_count"] == len(data)
    assert main(["verify", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    with tiercache.TieredCache.from_config(load_config(config), read_only=True) as cache:
        assert cache.tier("ram").store.representation == "decoded"  # type: ignore[attr-defined]
        for key, array in data.items():
            assert np.array_equal(quant.dequantize(cache.get(key)), quant.dequantize(array))


def test_the_simulator_runs_a_layout_with_a_decoded_tier(tmp_path: Path) -> None:
    from tiercache.sim import simulate_tiers

    config = layout(tmp_path)
    trace = tmp_path / "trace.csv"
    trace.write_text("key,size\n" + "".join(f"k{i % 5},{1 << 20}\n" for i in range(40)),
                     encoding="utf-8")
    result = simulate_tiers(trace, config)
    assert [t.name for t in result.tiers] == ["ram", "ssd"]
    assert result.requests == 40


def test_the_default_decoder_keeps_blocks_the_step_computes_on() -> None:
    """A decoded tier's default decoder (quant.decode_for_compute) keeps Q4_0/Q4_1/Q8_0
    blocks as stored -- the compiled decoder multiplies by them, and float32 copies
    would be 5.6x the bytes -- and decodes the rest (Q5_0, float16, bf16)."""
    from gguf import GGMLQuantizationType, quants

    store = MemoryStore(representation="decoded")
    x = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    for name, width in (("Q4_0", 18), ("Q4_1", 20), ("Q8_0", 34)):
        blocks = quants.quantize(x, getattr(GGMLQuantizationType, name)).reshape(32, 2, width)
        assert store.stored_size(blocks) == shard_cost_nbytes(blocks.nbytes)
        store.put(name, blocks)
        assert held(store, name).dtype == np.uint8, name
        with pytest.raises(ValueError, match="computed on as stored"):
            quant.decode_for_compute(blocks)
    for key, array in shards().items():
        store.put(key, array)
        assert held(store, key).dtype == np.float32, key
        assert np.array_equal(held(store, key), quant.dequantize(array))


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize(("ram_extra", "ssd_extra", "key", "words"), [
    ("", 'representation = "decoded"', "tiers[1] (ssd).representation", "only a memory tier"),
    ('representation = "compact"', "", "tiers[0] (ram).representation", '"stored"'),
    ('decoder = "tiercache.models.quant:dequantize"', "", "tiers[0] (ram).decoder",
     'representation = "decoded"'),
    ('representation = "decoded"\ndecoder = "tiercache.models.quant:nope"', "",
     "tiers[0] (ram).decoder", "nope"),
    ('representation = "decoded"\ndecoder = "numpy:pi"', "", "tiers[0] (ram).decoder",
     "not a function"),
    ('representation = "decoded"\ndecoder = 3', "", "tiers[0] (ram).decoder", "package.module"),
])
def test_config_errors_name_the_file_the_tier_and_the_key(
        tmp_path: Path, ram_extra: str, ssd_extra: str, key: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "1MiB"\n'
                    f'{ram_extra}\n[[tiers]]\nname = "ssd"\nbackend = "packed"\npath = "ssd"\n'
                    f'capacity = "8MiB"\n{ssd_extra}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and key in text and words in text


def test_config_defaults_and_options() -> None:
    base: dict[str, Any] = {"name": "ram", "backend": "memory", "capacity": "1MiB"}
    assert load_config({"tiers": [base]}).tiers[0].options == {}
    assert load_config({"tiers": [{**base, "representation": "stored"}]}).tiers[0].options == {}
    cfg = load_config({"tiers": [{**base, "representation": "decoded"}]})
    assert cfg.tiers[0].options == {"representation": "decoded"}
    with tiercache.TieredCache.from_config(cfg) as cache:
        assert cache.tier("ram").store.representation == "decoded"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- generation

def _generate(config: Path, manifest: Any, tokens: int, *, compile: bool = True
              ) -> tuple[list[int], int]:
    """Greedy tokens after a prompt (twice: the second run is all RAM hits) and the
    bytes the RAM tier then holds."""
    from tiercache.models import load_model

    with load_model(config, manifest=manifest, warn=False, compile=compile) as model:
        ids = model.tokenizer.encode("The capital of France is")
        first = list(model.llama.generate(ids, tokens))
        again = list(model.llama.generate(ids, tokens))
        assert first == again
        return again, int(model.cache.stats()["tiers"]["ram"]["resident_bytes"])


@pytest.mark.tf
@pytest.mark.slow  # ~9 s, most of it importing TensorFlow
def test_generation_with_a_decoded_tier_gives_the_same_tokens(tmp_path: Path) -> None:
    """A float16 synthetic model: the decoded tier holds float32, the stored one float16
    (decoded at every use); same tokens, and the decoded tier holds ~2x the bytes."""
    from tiercache.models import CacheSink, synthetic_hparams, synthetic_llama

    hp = synthetic_hparams(layers=2, dim=64, ffn=96, vocab=300, heads=4, kv_heads=2)
    outs, held = {}, {}
    for representation in ("stored", "decoded"):
        folder = tmp_path / representation
        folder.mkdir()
        config = layout(folder, representation=representation)
        with tiercache.open(config) as cache:
            manifest = synthetic_llama(CacheSink(cache, "ssd"), hp, dtype="float16",
                                       progress=False)
        outs[representation], held[representation] = _generate(config, manifest, 6,
                                                               compile=False)
    assert outs["decoded"] == outs["stored"] and len(outs["stored"]) == 6
    assert 1.5 * held["stored"] < held["decoded"] < 2.5 * held["stored"]


@pytest.mark.tf
@pytest.mark.slow
def test_smollm2_native_generation_is_the_same_through_a_decoded_tier(tmp_path: Path) -> None:
    """The real thing: Q4_1/Q8_0 blocks on the SSD; a decoded RAM tier with the default
    decoder keeps them as stored (the compiled step multiplies by them), one with
    ``quant.dequantize`` as its decoder holds float32 copies; same tokens all three."""
    outs, held = {}, {}
    for name, representation, extra in (
            ("stored", "stored", ""), ("decoded", "decoded", ""),
            ("float32", "decoded", 'decoder = "tiercache.models.quant:dequantize"\n')):
        folder = tmp_path / name
        folder.mkdir()
        config = layout(folder, ram="1GiB", representation=representation, extra=extra)
        text = config.read_text(encoding="utf-8").replace('capacity = "64MiB"',
                                                          'capacity = "256MiB"')
        config.write_text(text, encoding="utf-8")
        subprocess.run([sys.executable, "-m", "tiercache", "import", "smollm2", "--config",
                        str(config), "--no-progress"], check=True, cwd=REPO,
                       capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"})
        outs[name], held[name] = _generate(config, folder / "tiers.model.json", 5)
    assert outs["decoded"] == outs["stored"] == outs["float32"] and len(outs["stored"]) == 5
    assert held["decoded"] == held["stored"]  # Q4_1 and Q8_0: kept as stored
    assert held["float32"] > 5 * held["stored"]  # Q4_1 etc. -> float32
