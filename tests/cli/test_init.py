"""``tiercache init``: the recommended layout sized for a model (issue 11.4)."""

from __future__ import annotations

import json
import struct
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiercache.advice import layout_warnings
from tiercache.cli import main
from tiercache.commands.init import model_sizes, model_weight_bytes
from tiercache.config import load_config
from tiercache.models import DictSink, synthetic_hparams, synthetic_llama

SMOLLM2_F32_BYTES = 538_060_032  # 272 tensors dequantized to float32 (513.1 MiB)
SMOLLM2_NATIVE_BYTES = 96_576_768  # the same tensors in their ggml blocks (92.1 MiB)


@pytest.fixture
def manifest(tmp_path: Path) -> tuple[Path, int]:
    """The manifest of a small synthetic import and its weights' bytes."""
    hp = synthetic_hparams(layers=2, dim=64, ffn=96, vocab=300, heads=4, kv_heads=2)
    m = synthetic_llama(DictSink(), hp, progress=False)
    path = m.save(tmp_path / "old.model.json")
    return path, m.total_bytes


def test_init_writes_the_serving_recipe_for_smollm2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SmolLM2 imports natively (Q4_1 and Q8_0 blocks, 92 MiB), which the compiled decoder
    multiplies by as stored: the RAM tier holds the blocks (no decoded representation),
    sized as a share of the stored bytes; the SSD tier twice the stored bytes."""
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--model", "smollm2", "--ram", "25%"]) == 0
    text = (tmp_path / "tiers.toml").read_text(encoding="utf-8")
    cfg = load_config(tmp_path / "tiers.toml")
    ram, ssd = cfg.tiers
    assert cfg.mode == "inclusive"
    assert (ram.backend, ram.policy, ram.capacity_bytes) == ("memory", "opt", 24 << 20)
    assert ram.options == {} and "representation" not in text
    assert (ssd.backend, ssd.zero_copy, ssd.path) == ("packed", True, tmp_path / "ssd")
    assert 2 * SMOLLM2_NATIVE_BYTES <= ssd.capacity_bytes < 2 * SMOLLM2_NATIVE_BYTES + (64 << 20)
    assert "92.1 MiB of weights" in text and "decoded" not in text
    assert "25% of the weights" in text and "docs/serving.md" in text
    assert layout_warnings(cfg, SMOLLM2_NATIVE_BYTES, prefetch=True) == []
    out = capsys.readouterr()
    assert "wrote tiers.toml" in out.out and "opt decoded" not in out.out
    assert "tiercache import smollm2" in out.err
    name = "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert model_weight_bytes("smollm2") == (SMOLLM2_NATIVE_BYTES, name)
    # computed as stored: the decoded form is the stored one; float16 decodes to float32
    assert model_sizes("smollm2") == (SMOLLM2_NATIVE_BYTES, SMOLLM2_NATIVE_BYTES, name)
    assert model_sizes("smollm2", "float16").decoded == SMOLLM2_F32_BYTES
    assert model_weight_bytes("smollm2", "float32")[0] == SMOLLM2_F32_BYTES
    assert model_weight_bytes("smollm2", "float16")[0] == SMOLLM2_F32_BYTES // 2


def test_init_keeps_a_float32_model_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to decode (a float32 import): no representation key, --ram of the weights."""
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--model", "smollm2", "--dtype", "float32", "--ram", "25%"]) == 0
    text = (tmp_path / "tiers.toml").read_text(encoding="utf-8")
    ram = load_config(tmp_path / "tiers.toml").tiers[0]
    assert ram.options == {} and "representation" not in text
    assert ram.capacity_bytes == 129 << 20 and "25% of the weights" in text
    assert main(["init", "--model", "smollm2", "--dtype", "float16", "--force"]) == 0
    ram = load_config(tmp_path / "tiers.toml").tiers[0]  # float16 is decoded to float32
    assert ram.options == {"representation": "decoded"} and ram.capacity_bytes == 129 << 20


def test_init_refuses_to_overwrite_without_force(
        tmp_path: Path, manifest: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiers.toml"
    out.write_text("# mine\n", encoding="utf-8")
    assert main(["init", "--model", str(manifest[0]), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err and "Traceback" not in err
    assert out.read_text(encoding="utf-8") == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.model.json", "tiers.toml"]
    assert main(["init", "--model", str(manifest[0]), "--output", str(out), "--force"]) == 0
    assert tomllib.loads(out.read_text(encoding="utf-8"))["tiers"][0]["policy"] == "opt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.model.json", "tiers.toml"]


def test_init_sizes_from_a_manifest_and_resolves_the_ssd_path(
        tmp_path: Path, manifest: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    path, total = manifest
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--model", str(path), "--ram", "64KiB", "--ssd", "data/ssd",
                 "--output", "conf/tiers.toml"]) == 0
    text = (tmp_path / "conf" / "tiers.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert data["tiers"][1]["path"] == "../data/ssd"  # --ssd from here, relative to the TOML
    cfg = load_config(tmp_path / "conf" / "tiers.toml")
    assert cfg.tiers[1].path == tmp_path / "data" / "ssd"
    assert cfg.tiers[0].capacity_bytes == 1 << 20  # 64 KiB, rounded up to a MiB
    assert "the whole model fits" in text  # 1 MiB >= the 316 KiB model
    assert cfg.tiers[1].capacity_bytes == 64 << 20  # twice the model, at least 64 MiB
    assert f"{total / 1024:.1f} KiB" in text


def test_init_sizes_a_safetensors_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = {"a": {"dtype": "F16", "shape": [1024, 512], "data_offsets": [0, 1 << 20]},
              "b": {"dtype": "BF16", "shape": [512], "data_offsets": [1 << 20, (1 << 20) + 1024]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    st = tmp_path / "m.safetensors"
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes((1 << 20) + 1024))
    assert model_weight_bytes(str(st)) == ((1 << 20) + 2048, "m")  # BF16 widens to float32
    assert model_weight_bytes(str(st), "float32")[0] == 4 * (1024 * 512 + 512)
    assert model_weight_bytes(str(st), "native")[0] == (1 << 20) + 1024  # bf16 kept
    assert model_sizes(str(st)).decoded == 4 * (1024 * 512 + 512)
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--model", str(st), "--ram", "50%"]) == 0
    ram = load_config(tmp_path / "tiers.toml").tiers[0]  # F16 is decoded: 50% of 2 MiB
    assert ram.options == {"representation": "decoded"} and ram.capacity_bytes == 2 << 20


@pytest.mark.parametrize(("argv", "words"), [
    (["--model", "nope.gguf"], "nope.gguf"),
    (["--model", "MANIFEST", "--ram", "lots"], "--ram 'lots'"),
    (["--model", "MANIFEST", "--ram", "0%"], "--ram"),
    (["--model", "MANIFEST", "--ram", "64M"], "ambiguous"),
    (["--model", "missing.model.json"], "missing.model.json"),
    (["--model", "NOTAMODEL"], "unknown model format"),
])
def test_init_bad_input_is_one_line_and_writes_nothing(
        tmp_path: Path, manifest: tuple[Path, int], monkeypatch: pytest.MonkeyPatch,
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.bin").write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    argv = [str(manifest[0]) if a == "MANIFEST" else "junk.bin" if a == "NOTAMODEL" else a
            for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["init", *argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiercache: error: "), err
    assert words in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_decoded_tier_is_warned_about_at_its_decoded_size(tmp_path: Path) -> None:
    """An LRU RAM tier that holds the stored model but not the decoded one thrashes when
    it holds shards decoded: the warning compares its capacity with the decoded bytes."""
    ram: dict[str, Any] = {"name": "ram", "backend": "memory", "capacity": "200MiB",
                           "policy": "lru"}
    ssd: dict[str, Any] = {"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"),
                           "capacity": "1GiB", "promote_after": 1}
    stored = load_config({"tiers": [ram, ssd]})
    decoded = load_config({"tiers": [{**ram, "representation": "decoded"}, ssd]})
    native, f32 = SMOLLM2_NATIVE_BYTES, SMOLLM2_F32_BYTES
    assert layout_warnings(stored, native, decoded_bytes=f32) == []
    (warning,) = layout_warnings(decoded, native, decoded_bytes=f32)
    assert "tier 'ram'" in warning and "513.1 MiB" in warning and "thrash" in warning
    assert layout_warnings(decoded, native) == []  # decoded size unknown: the stored one
