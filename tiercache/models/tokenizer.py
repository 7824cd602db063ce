"""A byte-level BPE tokenizer (GPT-2 style) built from a model's own vocabulary.

GGUF files carry their tokenizer: ``tokenizer.ggml.model = "gpt2"`` means
byte-level BPE -- every byte is first mapped to a printable character
(:func:`bytes_to_unicode`), text is split into pieces by a pre-tokenizer, and
each piece is merged pair by pair in the order of ``tokenizer.ggml.merges``.
This module implements that in pure Python, matching llama.cpp's tokenizer
(checked token for token against it in tests/models/test_tokenizer.py):

- Pre-tokenizers (``tokenizer.ggml.pre``): ``"gpt2"`` splits with the GPT-2
  pattern ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``;
  ``"smollm"`` (and the other names in :data:`DIGIT_SPLIT_PRE`) first cuts
  every digit into its own piece, then applies the GPT-2 pattern. The
  pattern is hand-coded (the standard library ``re`` has no ``\\p{L}``) after
  llama.cpp's ``unicode_regex_split_custom_gpt2``.
- Special tokens (types CONTROL and USER_DEFINED, e.g. ``<|im_start|>``) in
  the text are recognised as single tokens when ``parse_special`` is true.
- BOS/EOS are added as the model says (``tokenizer.ggml.add_bos_token``;
  SmolLM2 adds none).
- A byte the vocabulary has no token for (SmolLM2 lacks a few control bytes
  such as 0x04) is dropped, as llama.cpp does; see ``unencodable_bytes``.

Complexity: encoding is O(n * m) per piece of n characters with m merges
applied (pieces are short; results are memoised per piece); decoding is O(n).
Thread-safety: a tokenizer is read-only after construction except for its
piece memo, whose dict operations are atomic under the GIL; safe to share.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

# llama.cpp token types
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

#: Pre-tokenizer names that split digits one by one before the GPT-2 pattern.
DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell",
                             "exaone", "minerva"})
#: Pre-tokenizer names that apply the GPT-2 pattern alone.
GPT2_PRE = frozenset({"gpt2", "gpt-2"})

# Unicode White_Space (what \s matches in the reference regex engines)
_WHITESPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)] + [" ", "\x85", "\xa0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)]
    + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"])


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (control bytes, the
    space, ...) to characters from U+0100 on, so ``" "`` becomes ``"Ġ"``.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=4096)
def _char_class(ch: str) -> str:
    """'S' whitespace, 'L' letter, 'N' number, 'O' anything else."""
    if ch in _WHITESPACE:
        return "S"
    category = unicodedata.category(ch)[0]
    if category == "L":
        return "L"
    if category == "N":
        return "N"
    return "O"


def split_gpt2(text: str) -> list[str]:
    """Split ``text`` with the GPT-2 pre-tokenizer pattern (see the module docstring).

    O(len(text)). Pieces concatenate back to ``text``.
    """
    pieces: list[str] = []
    n = len(text)
    pos = 0
    while pos < n:
        start = pos
        ch = text[pos]
        # 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, as in GPT-2)
        if ch == "'" and pos + 1 < n:
            nxt = text[pos + 1]
            if nxt in "stmd":
                pieces.append(text[pos:pos + 2])
                pos += 2
                continue
            if pos + 2 < n and text[pos + 1:pos + 3] in ("re", "ve", "ll"):
                pieces.append(text[pos:pos + 3])
                pos += 3
                continue
        # the class that decides the branch: the next character's after an optional space
        following = text[pos + 1] if ch == " " and pos + 1 < n else ("" if ch == " " else ch)
        cls2 = _char_class(following) if following else ""
        if cls2 in ("L", "N", "O"):  # ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+'
            pos += 1 if ch == " " else 0
            while pos < n and _char_class(text[pos]) == cls2:
                pos += 1
            pieces.append(text[start:pos])
            continue
        spaces = 0
        while pos + spaces < n and text[pos + spaces] in _WHITESPACE:
            spaces += 1
        if spaces > 1 and pos + spaces < n:  # '\s+(?!\S)': leave the last space to the word
            pos += spaces - 1
        elif spaces > 0:  # '\s+'
            pos += spaces
        else:
            pos += 1
        pieces.append(text[start:pos])
    return pieces


def split_digits(text: str) -> list[str]:
    """Cut every numeric character (``\\p{N}``) into its own piece. O(len(text))."""
    pieces: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if _char_class(ch) == "N":
            if start < i:
                pieces.append(text[start:i])
            pieces.append(ch)
            start = i + 1
    if start < len(text):
        pieces.append(text[start:])
    return pieces


class BPETokenizer:
    """Byte-level BPE over a model's vocabulary and merges. See the module docstring.

    Parameters
    ----------
    tokens:
        The vocabulary: token id -> token text (byte-level characters).
    merges:
        Merge rules ``"a b"``, highest priority first.
    token_types:
        llama.cpp token types per id (1 normal, 3 control, 4 user-defined, ...);
        default all normal.
    pre:
        The pre-tokenizer name (``tokenizer.ggml.pre``).
    bos_id, eos_id, unk_id, pad_id:
        Special ids (``None`` when the model has none).
    add_bos, add_eos:
        Whether :meth:`encode` adds them by default.
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], *,
                 token_types: Sequence[int] | None = None, pre: str = "gpt2",
                 bos_id: int | None = None, eos_id: int | None = None,
                 unk_id: int | None = None, pad_id: int | None = None,
                 add_bos: bool = False, add_eos: bool = False) -> None:
        if pre not in GPT2_PRE | DIGIT_SPLIT_PRE:
            known = ", ".join(sorted(GPT2_PRE | DIGIT_SPLIT_PRE))
            raise ValueError(f"pre-tokenizer {pre!r} is not supported (supported: {known})")
        self.tokens = list(tokens)
        self.merges = list(merges)
        self.token_types = list(token_types) if token_types is not None else \
            [TOKEN_NORMAL] * len(self.tokens)
        if len(self.token_types) != len(self.tokens):
            raise ValueError(f"{len(self.token_types)} token types for {len(self.tokens)} tokens")
        self.pre = pre
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = bos_id, eos_id, unk_id, pad_id
        self.add_bos, self.add_eos = add_bos, add_eos
        self.token_to_id = {tok: i for i, tok in enumerate(self.tokens)}
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(self.merges):
            left, sep, right = merge.partition(" ")
            if not sep:
                raise ValueError(f"merge {rank} ({merge!r}) is not two symbols separated by a "
                                 "space")
            self.ranks.setdefault((left, right), rank)
        self._byte_to_char = bytes_to_unicode()
        self._char_to_byte = {c: b for b, c in self._byte_to_char.items()}
        #: Bytes without a token of their own; :meth:`encode` drops them, as llama.cpp does
        #: (SmolLM2 lacks 21, e.g. 0x04 and the never-valid UTF-8 bytes 0xC0, 0xC1, 0xF5-0xFF).
        self.unencodable_bytes = frozenset(b for b, c in self._byte_to_char.items()
                                           if c not in self.token_to_id)
        specials = [t for t, ty in zip(self.tokens, self.token_types, strict=True)
                    if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and t]
        specials.sort(key=len, reverse=True)
        self._special_re = (re.compile("|".join(re.escape(s) for s in specials))
                            if specials else None)
        self._memo: dict[str, tuple[int, ...]] = {}

    # --- construction from a manifest / GGUF --------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a model manifest (``manifest["tokenizer"]``)."""
        return {"model": "gpt2", "pre": self.pre, "tokens": self.tokens, "merges": self.merges,
                "token_types": self.token_types, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "unk_id": self.unk_id, "pad_id": self.pad_id, "add_bos": self.add_bos,
                "add_eos": self.add_eos}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        """Build from :meth:`to_dict` output. ``ValueError`` for unsupported tokenizers."""
        model = data.get("model")
        if model != "gpt2":
            raise ValueError(f"tokenizer model {model!r} is not supported (only byte-level "
                             "BPE, 'gpt2')")
        return cls(data["tokens"], data.get("merges") or [],
                   token_types=data.get("token_types"), pre=data.get("pre") or "gpt2",
                   bos_id=data.get("bos_id"), eos_id=data.get("eos_id"),
                   unk_id=data.get("unk_id"), pad_id=data.get("pad_id"),
                   add_bos=bool(data.get("add_bos")), add_eos=bool(data.get("add_eos")))

    @classmethod
    def byte_level(cls, vocab_size: int) -> BPETokenizer:
        """A merge-free byte tokenizer padded to ``vocab_size`` (for synthetic models):
        ids 0..255 are the bytes, 256 is ``<|endoftext|>`` (EOS), the rest are unused."""
        if vocab_size < 257:
            raise ValueError(f"a byte-level vocabulary needs at least 257 tokens, got "
                             f"{vocab_size}")
        mapping = bytes_to_unicode()
        tokens = [mapping[b] for b in range(256)] + ["<|endoftext|>"]
        tokens += [f"<|unused_{i}|>" for i in range(vocab_size - len(tokens))]
        types = [TOKEN_NORMAL] * 256 + [TOKEN_CONTROL] + [TOKEN_UNUSED] * (vocab_size - 257)
        return cls(tokens, [], token_types=types, pre="gpt2", eos_id=256, pad_id=256)

    # --- encode / decode ----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, *, add_bos: bool | None = None, add_eos: bool | None = None,
               parse_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        ``add_bos``/``add_eos`` default to the model's settings; with
        ``parse_special`` special-token text such as ``<|im_start|>`` becomes
        that single token.
        """
        ids: list[int] = []
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.append(self.bos_id)
        for fragment, special in self._split_special(text, parse_special):
            if special:
                ids.append(self.token_to_id[fragment])
                continue
            for piece in self._pre_tokenize(fragment):
                ids.extend(self._bpe(piece))
        if (self.add_eos if add_eos is None else add_eos) and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = True) -> bytes:
        """The raw bytes of ``ids`` (may end inside a UTF-8 sequence)."""
        out = bytearray()
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is out of range (vocabulary of "
                                 f"{len(self.tokens)})")
            kind = self.token_types[i]
            token = self.tokens[i]
            if kind == TOKEN_CONTROL:
                if not skip_special:
                    out += token.encode("utf-8")
                continue
            if kind == TOKEN_USER_DEFINED:
                out += token.encode("utf-8")
                continue
            for ch in token:
                b = self._char_to_byte.get(ch)
                if b is None:
                    out += ch.encode("utf-8")
                else:
                    out.append(b)
        return bytes(out)

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD. Control tokens are dropped
        unless ``skip_special`` is false."""
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8",
                                                                          errors="replace")

    def _split_special(self, text: str, parse_special: bool) -> list[tuple[str, bool]]:
        if not parse_special or self._special_re is None:
            return [(text, False)] if text else []
        parts: list[tuple[str, bool]] = []
        start = 0
        for match in self._special_re.finditer(text):
            if match.start() > start:
                parts.append((text[start:match.start()], False))
            parts.append((match.group(), True))
            start = match.end()
        if start < len(text):
            parts.append((text[start:], False))
        return parts

    def _pre_tokenize(self, text: str) -> list[str]:
        if self.pre in DIGIT_SPLIT_PRE:
            return [p for chunk in split_digits(text) for p in split_gpt2(chunk)]
        return split_gpt2(text)

    def _bpe(self, piece: str) -> tuple[int, ...]:
        cached = self._memo.get(piece)
        if cached is not None:
            return cached
        mapped = "".join(self._byte_to_char[b] for b in piece.encode("utf-8"))
        symbols = list(mapped)
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank = None
            best_at = -1
            for i in range(len(symbols) - 1):
                rank = ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_at = rank, i
            if best_rank is None:
                break
            left, right = symbols[best_at], symbols[best_at + 1]
            merged: list[str] = []
            i = 0
            while i < len(symbols):  # merge every occurrence of the best pair, left to right
                if i < len(symbols) - 1 and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids: list[int] = []
        for sym in symbols:
            tid = self.token_to_id.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            for ch in sym:  # not in the vocabulary: fall back to single bytes; a byte
                tid = self.token_to_id.get(ch)  # the vocabulary lacks is dropped (llama.cpp)
                if tid is not None:
                    ids.append(tid)
        result = tuple(ids)
        if len(self._memo) < 65536:
            self._memo[piece] = result
        return result


# --- chat templates ---------------------------------------------------------------------------
CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.S)
_TEMPLATE_SYNTAX = ("{", "}", "' +", "+ '", '" +', '+ "')


def chatml_default_system(template: str) -> str | None:
    """The system message a ChatML template inserts when the chat has none, if any.

    SmolLM2's template adds ``You are a helpful AI assistant named SmolLM, trained
    by Hugging Face`` before a first message that is not a system one. A match
    that contains template syntax (an expression, not a fixed text) counts as
    none. O(len(template)).
    """
    match = _CHATML_DEFAULT_SYSTEM.search(template)
    if match is None:
        return None
    text = match.group(1)
    if any(s in text for s in _TEMPLATE_SYNTAX):
        return None
    return text.replace("\\n", "\n")


def apply_chat_template(template: str | None, messages: Sequence[Mapping[str, str]], *,
                        add_generation_prompt: bool = True) -> str:
    """The prompt text a chat model expects for ``messages`` (``{"role", "content"}``).

    Implements the ChatML form a GGUF's ``tokenizer.chat_template`` describes
    (SmolLM2, Qwen, ...) without a Jinja engine: each message becomes
    ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``; the template's default system
    message (:func:`chatml_default_system`) comes first when the chat does not
    start with a system message; with ``add_generation_prompt`` the text ends
    with ``<|im_start|>assistant\\n`` for the model to continue. Encode the result
    with ``parse_special=True`` so the markers become their special tokens.

    Raises :class:`ValueError` when the model has no template, the template is
    not ChatML, or a message is malformed. O(total length). Thread-safe (pure).
    """
    if not template:
        raise ValueError("the model has no chat template (its GGUF carries no "
                         "tokenizer.chat_template): prompt it without --chat / chat=True")
    if CHATML_START not in template or CHATML_END not in template:
        raise ValueError(f"the model's chat template is not ChatML ({CHATML_START} ... "
                         f"{CHATML_END}), the only form implemented: prompt it without "
                         "--chat / chat=True")
    parts: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(role, str) or not role or "\n" in role or \
                not isinstance(content, str):
            raise ValueError(f"chat message {i} must be {{'role': str (one line), 'content': "
                             f"str}}, got {message!r}")
        if i == 0 and role != "system":
            default = chatml_default_system(template)
            if default is not None:
                parts.append(f"{CHATML_START}system\n{default}{CHATML_END}\n")
        parts.append(f"{CHATML_START}{role}\n{content}{CHATML_END}\n")
    if add_generation_prompt:
        parts.append(f"{CHATML_START}assistant\n")
    return "".join(parts)
