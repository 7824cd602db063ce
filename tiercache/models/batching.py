"""Several prompts through one decoder: chunking and streaming for :mod:`tiercache.models.api`.

The decoder's ``LlamaModel.generate_batch`` runs one forward pass per step
for every live sequence and reports each new token through a callback
``on_token(seq_index, token_id)``; it returns when every sequence has
stopped. This module adds what :class:`~tiercache.models.api.Model` builds on
it:

- :func:`run_in_chunks`: a long list of prompts as consecutive batches of at
  most ``batch_size`` (indices stay those of the whole list);
- :class:`BatchPieces`: the same run on a worker thread, turned into an
  iterator of ``(index, text piece)`` pairs as the tokens come, each
  sequence's pieces whole characters (:class:`~tiercache.models.api.TextStream`);
- :func:`split_prompts`: whether a ``generate`` argument is one prompt or a
  list of prompts.

No TensorFlow import here; the decoder is reached through the callables given.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Protocol

import numpy as np

__all__ = ["BatchPieces", "GenerateBatch", "OnToken", "PieceSink", "run_in_chunks",
           "split_prompts"]

#: ``on_token(seq_index, token_id)``: called with each new token of each sequence.
OnToken = Callable[[int, int], None]
TokenSampler = Callable[[np.ndarray], int]


class GenerateBatch(Protocol):
    """The shape of ``LlamaModel.generate_batch``."""

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 eos_id: int | None = None, samplers: Sequence[TokenSampler] | None = None,
                 on_token: OnToken | None = None) -> list[list[int]]: ...


class PieceSink(Protocol):
    """Token ids in, text pieces out (:class:`~tiercache.models.api.TextStream`)."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


def split_prompts(text: object) -> list[str | Sequence[Mapping[str, str]]] | None:
    """The prompts of ``text`` when it is a list of prompts, else ``None`` (one prompt).

    One prompt: a ``str``, or a sequence of ``Mapping`` (one chat: its messages).
    A list of prompts: a non-empty list or tuple whose items are each a ``str`` or
    a list/tuple of messages. ``ValueError`` for an empty list (an empty prompt
    and an empty batch look the same) and for an item that is neither, naming
    its index. O(number of prompts).
    """
    if isinstance(text, str):
        return None
    if not isinstance(text, list | tuple):
        raise ValueError(f"a prompt is a str, a list of chat messages or a list of prompts, "
                         f"not {type(text).__name__}")
    if not text:
        raise ValueError("no prompt: the list is empty (give a prompt, or a list of prompts)")
    if all(isinstance(item, Mapping) for item in text):
        return None  # one chat: a list of {"role", "content"} messages
    prompts: list[str | Sequence[Mapping[str, str]]] = []
    for i, item in enumerate(text):
        chat = isinstance(item, list | tuple) and all(isinstance(m, Mapping) for m in item)
        if isinstance(item, str) or chat:
            prompts.append(item)
        else:
            raise ValueError(f"prompt {i} of the list is a {type(item).__name__}: each prompt "
                             "is a str or a list of chat messages ({'role', 'content'} dicts)")
    return prompts


def run_in_chunks(generate_batch: GenerateBatch, prompts: Sequence[Sequence[int]],
                  max_new_tokens: int, *, eos_id: int | None,
                  samplers: Sequence[TokenSampler] | None, on_token: OnToken | None,
                  batch_size: int | None) -> list[list[int]]:
    """The new tokens of every prompt, ``batch_size`` prompts per ``generate_batch`` call.

    ``batch_size=None``: all in one call. ``on_token`` gets indices into the
    whole ``prompts``; ``samplers`` (one per prompt) are sliced the same way.
    Results in prompt order. One forward pass per step per chunk.
    """
    n = len(prompts)
    size = n if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if samplers is not None and len(samplers) != n:
        raise ValueError(f"{len(samplers)} samplers for {n} prompts: give one per prompt")
    results: list[list[int]] = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        report: OnToken | None = None
        if on_token is not None:
            report = _shifted(on_token, start)
        results.extend(generate_batch(
            prompts[start:stop], max_new_tokens, eos_id=eos_id,
            samplers=None if samplers is None else samplers[start:stop], on_token=report))
    return results


def _shifted(on_token: OnToken, start: int) -> OnToken:
    def report(index: int, token: int) -> None:
        on_token(start + index, token)
    return report


class _Stopped(Exception):
    """Raised inside the decoder's callback to end a batch nobody reads any more."""


class BatchPieces:
    """A batch run on a worker thread, read as ``(index, piece)`` pairs.

    ``run(on_token)`` runs the whole batch (e.g. :func:`run_in_chunks`) and
    calls ``on_token(index, token)`` for each new token. Iterating
    :meth:`pieces` starts it on a daemon thread (``tiercache-batch``); each
    token goes through ``sinks[index]`` and every non-empty piece is yielded
    with its prompt's index, in the order the tokens were chosen. A sequence's
    held-back bytes are flushed when it ends (``eos_id`` or ``max_new_tokens``
    tokens) and any left at the end of the run. An error in the run is raised
    from the iterator. Leaving the iterator early (``close()``, ``break`` then
    garbage collection, an exception) stops the run at its next token and
    waits for the thread (at most one forward pass).

    Thread-safety: one consumer; the decoder runs on the worker thread, so
    nothing else may use it until :attr:`running` is false (``Model`` checks).
    Memory: the pieces not read yet are queued (a few bytes per token).
    """

    def __init__(self, run: Callable[[OnToken], object], sinks: Sequence[PieceSink], *,
                 max_new_tokens: int, eos_id: int | None) -> None:
        self._run = run
        self._sinks = list(sinks)
        self._max_new_tokens = max_new_tokens
        self._eos_id = eos_id
        self._counts = [0] * len(self._sinks)
        self._queue: queue.SimpleQueue[tuple[int, str] | BaseException | None] = \
            queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the worker thread is still using the decoder."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask the run to end at its next token and wait for the thread. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def pieces(self) -> Generator[tuple[int, str], None, None]:
        """The ``(index, piece)`` pairs; starts the run on the first ``next()``."""
        if self._thread is not None:
            raise RuntimeError("BatchPieces.pieces() runs its batch once")
        self._thread = threading.Thread(target=self._work, name="tiercache-batch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop()

    def _on_token(self, index: int, token: int) -> None:
        if self._stop.is_set():
            raise _Stopped
        sink = self._sinks[index]
        piece = sink.push(token)
        self._counts[index] += 1
        if self._counts[index] >= self._max_new_tokens or token == self._eos_id:
            piece += sink.flush()
        if piece:
            self._queue.put((index, piece))

    def _work(self) -> None:
        try:
            self._run(self._on_token)
            for index, sink in enumerate(self._sinks):
                rest = sink.flush()
                if rest:
                    self._queue.put((index, rest))
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)
        self._queue.put(None)
