"""Batched generation: one forward pass per step serves every live sequence.

:func:`generate_batch` (what :meth:`LlamaModel.generate_batch
<tiercache.models.runtime.tensorflow.LlamaModel.generate_batch>` runs) gives
each prompt a row of one :class:`~tiercache.models.runtime.kv.KVCache` sized
to a batch bucket (1, 4, 16, 32, ...; the unused rows are padding whose
results are ignored). The prompts are prefilled together in one prompt pass,
padded on the right to the longest (a padded token comes after the row's real
ones, so causality keeps them out of its attention, and it is written past
the row's length, where the mask hides it until a real token overwrites it);
measured on the 2-core VM (SmolLM2 float32 in a memory tier, prompts of 4-10
tokens): 16 prompts 719 ms together vs 2222 ms one pass each, 4 prompts
260 vs 368 ms, same tokens (``prefill="each"`` keeps the other way). Then
every step feeds each live
sequence's last token through **one** compiled one-token step, each row at
its own position (the positions and the cache mask are inputs, so ragged
lengths cost no retrace). A sequence that stops (``eos_id`` or its budget)
leaves the batch: the cache keeps only the live rows, in a smaller batch
bucket once they fit one (one copy), so the step's shape changes only
between buckets.

Each sequence's tokens equal generating it alone: its rows never mix with
the others (attention is per row; the matmuls compute each row on its own),
and its sampler sees only its own logits in order.

Cost per step: one read of every weight shard for all sequences, plus
O(batch bucket * cached positions) attention. Thread-safety: as the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from .kv import KVCache, batch_bucket

#: How a batch's prompts are prefilled: "together" (one prompt pass, padded) or "each".
PREFILL = "together"


def greedy(logits: np.ndarray) -> int:
    """The id of the largest logit (ties: the lowest id). O(vocab)."""
    return int(np.argmax(logits))


class BatchRunner(Protocol):
    """What :func:`generate_batch` needs of a model (a
    :class:`~tiercache.models.runtime.tensorflow.LlamaModel` is one)."""

    def new_cache(self, rows: int) -> KVCache: ...

    def run(self, ids: np.ndarray, cache: KVCache, rows: slice, *,
            live: int | None = None, counts: np.ndarray | None = None) -> np.ndarray: ...


def _check(prompts: Sequence[Sequence[int]], max_new_tokens: int,
           samplers: Sequence[Callable[[np.ndarray], int]] | None) -> list[list[int]]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    checked: list[list[int]] = []
    for index, prompt in enumerate(prompts):
        ids = [int(i) for i in prompt]
        if not ids:
            raise ValueError(f"prompt {index} is empty: every prompt needs at least one token")
        checked.append(ids)
    if not checked:
        raise ValueError("generate_batch needs at least one prompt")
    if samplers is not None and len(samplers) != len(checked):
        raise ValueError(f"{len(samplers)} samplers for {len(checked)} prompts: give one "
                         "per prompt (or none for greedy)")
    return checked


def generate_batch(model: BatchRunner, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   *, eos_id: int | None = None,
                   samplers: Sequence[Callable[[np.ndarray], int]] | None = None,
                   on_token: Callable[[int, int], None] | None = None,
                   prefill: str = PREFILL) -> list[list[int]]:
    """New ids per prompt; see :meth:`LlamaModel.generate_batch
    <tiercache.models.runtime.tensorflow.LlamaModel.generate_batch>` and the module
    docstring. ``ValueError`` for an empty prompt list, an empty prompt, a token id
    out of range, a negative budget or a sampler count that does not match."""
    ids = _check(prompts, max_new_tokens, samplers)
    picks = list(samplers) if samplers is not None else [greedy] * len(ids)
    out: list[list[int]] = [[] for _ in ids]
    if max_new_tokens == 0:
        return out
    cache = model.new_cache(batch_bucket(len(ids)))
    rows: list[int] = []  # rows[r]: the prompt index in cache row r

    def choose(index: int, logits: np.ndarray) -> bool:
        """Pick prompt ``index``'s next token; whether it goes on."""
        token = int(picks[index](logits))
        out[index].append(token)
        if on_token is not None:
            on_token(index, token)
        return len(out[index]) < max_new_tokens and (eos_id is None or token != eos_id)

    if prefill == "together":  # one prompt pass, prompts padded on the right to the longest
        padded = np.zeros((cache.rows, max(len(p) for p in ids)), dtype=np.int64)
        counts = np.zeros(cache.rows, dtype=np.int64)
        for index, prompt in enumerate(ids):
            padded[index, :len(prompt)] = prompt
            counts[index] = len(prompt)
        first = model.run(padded, cache, slice(0, cache.rows), counts=counts)
    for index, prompt in enumerate(ids):
        if prefill != "together":  # one prompt pass per prompt, its own row
            logits = model.run(np.asarray([prompt], dtype=np.int64), cache,
                               slice(index, index + 1))[0]
        else:
            logits = first[index]
        rows.append(index)
        if not choose(index, logits):
            rows[-1] = -1  # done already: leaves at the next compaction
    while True:
        kept = [r for r, index in enumerate(rows) if index >= 0]
        if not kept:
            return out
        if len(kept) < len(rows):
            cache.keep(kept, batch_bucket(len(kept)))
            rows = [rows[r] for r in kept]
        step = np.zeros((cache.rows, 1), dtype=np.int64)
        for r, index in enumerate(rows):
            step[r, 0] = out[index][-1]
        logits = model.run(step, cache, slice(0, cache.rows), live=len(rows))
        for r, index in enumerate(rows):
            if not choose(index, logits[r]):
                rows[r] = -1
