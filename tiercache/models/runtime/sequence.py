"""One sequence at a time: :class:`SequenceMethods`, the prompt-and-continue API of
:class:`~tiercache.models.runtime.tensorflow.LlamaModel` (``generate``, ``stream``,
``prefill``), written on its ``forward`` and KV cache.

Thread-safety: as the model's (one instance per thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .batch import greedy

if TYPE_CHECKING:
    from ..prefix import PrefixCache
    from .kv import KVCache
    from .timings import ModelTimings

__all__ = ["SequenceMethods"]


class SequenceMethods:
    """Mixed into the decoder: generation of the single sequence its KV cache holds."""

    _kv: KVCache
    prefix_cache: PrefixCache | None
    timings: ModelTimings

    @property
    def position(self) -> int:  # pragma: no cover - the decoder defines it
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover - the decoder defines it
        raise NotImplementedError

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                 eos_id: int | None = None, reset: bool = True,
                 on_token: Callable[[int], None] | None = None,
                 sampler: Callable[[np.ndarray], int] | None = None) -> list[int]:
        """The ids of up to ``max_new_tokens`` new tokens (greedy unless ``sampler``).

        Stops after ``eos_id`` (included) if given. With ``reset`` the KV cache
        starts empty; without, ``prompt_ids`` continue the current sequence.
        ``on_token`` is called with each new id as soon as it is chosen.
        ``sampler`` picks each token from the float32 logits (e.g.
        :class:`tiercache.models.api.Sampler`); without it, greedy: ties in the
        logits go to the lowest id. One forward pass per token.
        """
        out: list[int] = []
        for token in self.stream(prompt_ids, max_new_tokens, eos_id=eos_id, reset=reset,
                                 sampler=sampler):
            out.append(token)
            if on_token is not None:
                on_token(token)
        return out

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Run a prompt (appended to the current sequence); return the float32 logits of
        its last token, ``(vocab,)``. With :attr:`prefix_cache` set and an empty
        sequence, the prompt's longest cached block prefix is loaded instead of
        computed (``timings.prompt_tokens_reused``) and its new blocks are kept
        (:mod:`tiercache.models.prefix`). O(weights + computed tokens x (width +
        positions) + reused blocks' bytes)."""
        ids = list(prompt_ids)
        if not ids:
            raise ValueError("token_ids must be a non-empty sequence of ints")
        prefix = self.prefix_cache if self.position == 0 else None
        reused = 0
        if prefix is not None:
            self._kv.reserve(len(ids))
            reused = prefix.load(ids, self._kv, 0)
            self._kv.lengths[0] = reused
            self.timings.prompt_tokens_reused += reused
        logits = self.forward(ids[reused:])
        if prefix is not None:
            prefix.save(ids, self._kv, 0, skip_tokens=reused)
        return logits

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
               eos_id: int | None = None, reset: bool = True,
               sampler: Callable[[np.ndarray], int] | None = None) -> Iterator[int]:
        """:meth:`generate` as an iterator: yields each new id as soon as it is chosen.

        Runs the next forward pass only when the next id is asked for; an
        iterator left unfinished leaves the sequence where it stopped.
        ``max_new_tokens < 0`` raises :class:`ValueError` at the call.
        """
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        return self._stream(list(prompt_ids), max_new_tokens, eos_id, reset,
                            sampler if sampler is not None else greedy)

    def _stream(self, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None,
                reset: bool, sampler: Callable[[np.ndarray], int]) -> Iterator[int]:
        if reset:
            self.reset()
        if max_new_tokens == 0:
            return
        started = time.perf_counter()
        logits = self.prefill(prompt_ids)
        produced = 0
        tokens: list[int] = []
        while True:
            token = int(sampler(logits))
            if produced == 0:
                self.timings.ttft_s = time.perf_counter() - started
            produced += 1
            yield token
            if produced >= max_new_tokens or (eos_id is not None and token == eos_id):
                break
            tokens.append(token)
            logits = self.forward([token])
        if self.prefix_cache is not None and tokens and self.position == len(prompt_ids) + len(
                tokens):  # a fresh sequence: the answer's blocks, for the next turn of a chat
            self.prefix_cache.save(prompt_ids + tokens, self._kv, 0,
                                   skip_tokens=len(prompt_ids))
