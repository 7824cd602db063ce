"""Choosing tokens from logits and turning them into text: :class:`Sampler` (greedy,
temperature, ``top_k``, ``top_p``, seeded), :func:`batch_samplers` (prompt ``i`` of a
batch seeded ``seed + i``) and :class:`TextStream` (token ids to whole characters).

Pure numpy, no TensorFlow; re-exported by :mod:`tiercache.models.api`.
"""

from __future__ import annotations

import codecs
import math

import numpy as np

from .tokenizer import BPETokenizer

__all__ = ["Sampler", "TextStream", "batch_samplers"]

class Sampler:
    """Picks the next token from a vector of logits. See the module docstring.

    Parameters
    ----------
    temperature:
        0 (default) for greedy decoding; > 0 to sample from
        ``softmax(logits / temperature)``.
    top_k:
        Keep only the ``top_k`` largest logits (ties: lower ids first). ``None``: all.
    top_p:
        Keep the smallest set of most likely tokens whose probabilities add up
        to at least ``top_p`` (nucleus sampling), in ``(0, 1]``. ``None``: all.
    seed:
        Seeds the random generator: the same seed draws the same tokens from the
        same logits. ``None``: fresh entropy.

    Complexity: O(V) greedy, O(V log V) sampling (a stable sort of the V
    logits). Thread-safety: holds a random generator; one sampler per sequence.
    """

    def __init__(self, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int | float)
                                  or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or seed < 0):
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = None if top_p is None else float(top_p)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        """Whether this sampler always takes the largest logit."""
        return self.temperature == 0.0 or self.top_k == 1

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token ids sampling may pick and their probabilities (summing to 1),
        most likely first, after temperature, ``top_k`` and ``top_p``."""
        scores = np.asarray(logits, dtype=np.float64).reshape(-1)
        if scores.size == 0:
            raise ValueError("cannot sample from empty logits")
        if np.isnan(scores).any():
            raise ValueError("the logits contain NaN: the model's output is broken")
        if self.greedy:
            best = np.array([int(np.argmax(scores))])
            return best, np.ones(1)
        order = np.argsort(-scores, kind="stable")  # descending; ties: lower id first
        if self.top_k is not None:
            order = order[:self.top_k]
        scaled = scores[order] / self.temperature
        if not np.isfinite(scaled[0]):
            raise ValueError("the largest logit is not finite: cannot sample")
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
        if self.top_p is not None and self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p, side="left")) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return order, probs

    def __call__(self, logits: np.ndarray) -> int:
        """The next token id for ``logits`` (shape ``(vocab,)``)."""
        if self.greedy:
            return int(np.argmax(np.asarray(logits).reshape(-1)))
        ids, probs = self.candidates(logits)
        if ids.size == 1:
            return int(ids[0])
        return int(ids[int(self._rng.choice(ids.size, p=probs))])


class TextStream:
    """Turns token ids, one at a time, into text pieces that are whole characters.

    A token may end inside a multi-byte UTF-8 character; :meth:`push` holds
    those bytes back until the character is complete, :meth:`flush` returns
    what is left (an incomplete character as U+FFFD). The pieces joined equal
    ``tokenizer.decode(ids)``. O(1) per token amortised. Not thread-safe.
    """

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The new text that token ``token`` completes (may be ``""``)."""
        return str(self._decoder.decode(self.tokenizer.decode_bytes([token])))

    def flush(self) -> str:
        """The text still held back (at the end of the sequence)."""
        return str(self._decoder.decode(b"", final=True))


def batch_samplers(count: int, temperature: float = 0.0, top_k: int | None = None,
                   top_p: float | None = None, seed: int | None = None, *,
                   start: int = 0) -> list[Sampler]:
    """One :class:`Sampler` per prompt of a batch: prompt ``i`` (counted from
    ``start``) is seeded ``seed + i`` (``seed=None``: each its own fresh entropy),
    so a prompt draws the same tokens whatever else is in its batch. O(count)."""
    return [Sampler(temperature, top_k, top_p, None if seed is None else seed + start + i)
            for i in range(count)]
