"""One call from a cache's TOML file to generated text: :func:`load_model`.

>>> import tiercache
>>> with tiercache.load_model("tiers.toml") as model:        # doctest: +SKIP
...     for piece in model.generate("The capital of France is", max_new_tokens=16):
...         print(piece, end="", flush=True)
...     reply = model.generate("What is 2 + 2?", chat=True, stream=False)

:func:`load_model` finds the model's manifest next to the config (as
``tiercache generate`` does: ``tiers.toml`` -> ``tiers.model.json``, or the
``.npy`` origin folder's ``tiercache-model.json``), opens the cache, builds the
decoder (:class:`~tiercache.models.runtime.tensorflow.LlamaModel`: TensorFlow, or
numpy and the C kernel for a native import of Q4_0/Q4_1/Q8_0 blocks),
declares its schedule to the cache (so ``opt`` tiers and the prefetcher know the
loop's order) and starts the prefetcher (``prefetch=0`` leaves it off).

Sampling (:class:`Sampler`) is pure numpy: greedy at ``temperature=0`` (ties to
the lowest id: the tokens of ``LlamaModel.generate``), else temperature, ``top_k``,
``top_p`` and a draw seeded by ``seed`` (the same seed, the same tokens).

Several prompts at once: ``generate`` and ``generate_ids`` also take a list of
prompts and run them as one batch (``LlamaModel.generate_batch``: one forward
pass per step serves every live sequence, each stops on its own). Prompt ``i``
gets its own :class:`Sampler` seeded ``seed + i`` (:func:`batch_samplers`), so
each result is what generating that prompt alone with seed ``seed + i`` gives,
whatever else is in the batch (greedy: the same tokens as alone).

This module imports neither TensorFlow nor the runtime at import time;
``import tiercache`` stays light (``tiercache.load_model`` is resolved lazily).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import numpy as np

from ..config import CacheConfig, load_config
from ..errors import CacheClosedError
from ..units import format_size
from .batching import BatchPieces, OnToken, run_in_chunks, split_prompts
from .manifest import (
    ModelManifest,
    load_manifest,
    manifest_path_for_config,
    manifest_path_for_npy_dir,
)
from .prefix import DEFAULT_BLOCK_TOKENS, PrefixCache, stored_identity
from .sampling import Sampler, TextStream, batch_samplers
from .tokenizer import BPETokenizer, apply_chat_template

if TYPE_CHECKING:
    from ..core.cache import TieredCache
    from .runtime.tensorflow import LlamaModel, ModelTimings

__all__ = ["Model", "Sampler", "TextStream", "batch_samplers", "find_manifest", "load_model"]

#: Prefetch depth :func:`load_model` and ``tiercache generate`` use by default.
DEFAULT_PREFETCH = 32

ChatMessages = Sequence[Mapping[str, str]]
#: A list of prompts for one batch: each a text or a chat (a list of messages).
Prompts = Sequence[str | ChatMessages]


def find_manifest(config: str | os.PathLike[str], cfg: CacheConfig | None = None) -> Path:
    """Where the manifest of the model imported into the cache of ``config`` is.

    ``tiers.toml`` -> ``tiers.model.json`` beside it; if that does not exist and
    the cache has an ``npy`` origin folder holding ``tiercache-model.json``,
    that one. O(1) (two ``stat`` calls).
    """
    path = manifest_path_for_config(config)
    if not path.exists() and cfg is not None and cfg.origin is not None \
            and cfg.origin.kind == "npy":
        in_origin = manifest_path_for_npy_dir(cfg.origin.path)
        if in_origin.exists():
            return in_origin
    return path


def _schedule_bytes(manifest: ModelManifest, schedule: Sequence[str]) -> int:
    """Bytes of the distinct shards one forward pass reads (per the manifest)."""
    return sum(manifest.tensors[k].nbytes for k in set(schedule) if k in manifest.tensors)


def _decoded_schedule_bytes(manifest: ModelManifest, schedule: Sequence[str]) -> int:
    """The same shards' bytes once decoded to float32 (what a decoded RAM tier holds)."""
    return sum(4 * math.prod(manifest.tensors[k].shape) for k in set(schedule)
               if k in manifest.tensors)


def load_model(config: str | os.PathLike[str] | Mapping[str, Any] | CacheConfig, *,
               manifest: str | os.PathLike[str] | ModelManifest | None = None,
               prefetch: int | bool = DEFAULT_PREFETCH, compile: bool = True,
               warn: bool | Callable[[str], None] = True,
               on_status: Callable[[str], None] | None = None,
               kv_cache: bool = True,
               kv_block_tokens: int = DEFAULT_BLOCK_TOKENS,
               group_layers: int | None = None,
               kernels: bool | None = None) -> Model:
    """Open the cache of ``config`` and the model imported into it, ready to generate.

    Parameters
    ----------
    config:
        The cache's TOML file (or a dict / :class:`CacheConfig`; then give
        ``manifest``).
    manifest:
        The model's manifest (a path or a loaded one). Default:
        :func:`find_manifest` next to the config.
    prefetch:
        Prefetch depth (shards ahead of the loop); ``0`` or ``False`` turns the
        prefetcher off. The schedule is declared either way.
    compile:
        Run each block as a ``tf.function`` (see ``LlamaModel``).
    warn:
        Emit a :class:`RuntimeWarning` per layout problem
        (:func:`tiercache.advice.layout_warnings`, e.g. an LRU RAM tier smaller
        than the model, which thrashes), or call this function with each
        message; ``False``: neither. They are in ``model.layout_warnings``
        either way.
    on_status:
        Called with a short line before each slow step (``"loading TensorFlow…"``,
        ``"loading MODEL…"``); ``tiercache generate`` prints them on stderr.
    kv_cache:
        Keep each prompt's attention state (KV blocks of ``kv_block_tokens``
        tokens) in the cache's tiers and reuse the longest cached prefix of the
        next prompts (:mod:`tiercache.models.prefix`; per call:
        ``generate(..., kv_cache=False)``). ``False``: every prompt computed whole.
    group_layers:
        Blocks per compiled call (``LlamaModel``'s; default: the whole step when it
        fits, else block by block). ``1``: always block by block, the least memory.
    kernels:
        Run on numpy and tiercache's C kernel instead of TensorFlow (``LlamaModel``'s).
        ``None`` (the default): yes for a native import of Q4_0/Q4_1/Q8_0 blocks where
        the CPU has AVX-512 (``kernels.suits``); TensorFlow is then not imported.

    Errors (a bad config, no manifest, a model that is not a Llama, no
    tokenizer) are raised before TensorFlow is imported. Takes seconds
    (importing TensorFlow, tracing the block function; the kernel path neither); the returned
    :class:`Model` owns the cache: close it (or use ``with``).
    """
    from ..advice import layout_warnings
    from ..core.cache import TieredCache
    from .llama import llama_schedule

    cfg = config if isinstance(config, CacheConfig) else load_config(config)
    if isinstance(manifest, ModelManifest):
        loaded = manifest
    else:
        if manifest is None:
            if isinstance(config, Mapping | CacheConfig):
                raise ValueError("load_model: give manifest= (the model's .model.json) when "
                                 "the config is not a TOML file")
            manifest = find_manifest(config, cfg)
        loaded = load_manifest(manifest)
    hparams = loaded.llama_hparams()
    if loaded.tokenizer is None:
        raise ValueError(f"model {loaded.name!r} has no supported tokenizer")
    tokenizer = BPETokenizer.from_dict(loaded.tokenizer)
    from .runtime.tensorflow import check_group_layers  # no TensorFlow import
    check_group_layers(group_layers)
    depth = DEFAULT_PREFETCH if prefetch is True else int(prefetch)
    if depth < 0:
        raise ValueError(f"prefetch must be a depth >= 0 (0: off), got {prefetch!r}")
    schedule = llama_schedule(hparams, loaded.key_prefix)
    advice = layout_warnings(cfg, _schedule_bytes(loaded, schedule), prefetch=depth > 0,
                             decoded_bytes=_decoded_schedule_bytes(loaded, schedule))
    for text in advice:
        if callable(warn):
            warn(text)
        elif warn:
            warnings.warn(text, RuntimeWarning, stacklevel=2)

    status = on_status or (lambda _line: None)
    from .runtime import kernels as block_kernels
    from .runtime.shards import transposed_keys
    from .runtime.tensorflow import LlamaModel, tf_module

    on_kernels = (block_kernels.suits(loaded, compile) if kernels is None
                  else block_kernels.wanted(kernels, compile))
    if not on_kernels:
        status("loading TensorFlow…")
        tf_module()
    status(f"loading {loaded.name or 'the model'} ({len(loaded.tensors)} shards, "
           f"{format_size(loaded.total_bytes)}) from {cfg.config_path}…")
    cache = TieredCache.from_config(cfg)
    try:
        llama = LlamaModel(cache, hparams, key_prefix=loaded.key_prefix, compile=compile,
                           group_layers=group_layers, transposed=transposed_keys(loaded),
                           kernels=on_kernels)
        if kv_cache:
            llama.prefix_cache = PrefixCache(cache, stored_identity(cache, loaded), hparams,
                                             block_tokens=kv_block_tokens)
        cache.declare_schedule(llama.schedule())
        if depth:  # the keep set, and streaming on TensorFlow's step (docs/serving.md)
            cache.start_prefetcher(depth=depth, drop_behind=True, stream=not on_kernels)
    except BaseException:
        cache.close()
        raise
    return Model(cache, loaded, tokenizer, llama, layout_warnings=advice)


def _id_batch(prompt_ids: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]] | None:
    """The prompts of a list of id lists, or ``None`` for one prompt (ids, or empty)."""
    if isinstance(prompt_ids, np.ndarray):
        return [list(row) for row in prompt_ids] if prompt_ids.ndim == 2 else None
    if len(prompt_ids) == 0 or isinstance(prompt_ids[0], int | np.integer):
        return None
    batch: list[list[int]] = []
    for i, ids in enumerate(prompt_ids):
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence | np.ndarray):
            raise ValueError(f"prompt {i} of the list is a {type(ids).__name__}, not a "
                             "sequence of token ids")
        batch.append(list(ids))
    return batch


class Model:
    """A model served from a cache, as :func:`load_model` returns it.

    Attributes: ``cache`` (the :class:`~tiercache.TieredCache`, owned:
    :meth:`close` closes it), ``manifest``, ``tokenizer``, ``llama`` (the
    TensorFlow decoder), ``layout_warnings`` (problems of the tier layout).

    Thread-safety: one call at a time (the decoder keeps a KV cache); use one
    :class:`Model` per thread. A streamed batch runs on a worker thread: other
    calls raise ``RuntimeError`` until its iterator is finished or closed.
    """

    def __init__(self, cache: TieredCache, manifest: ModelManifest, tokenizer: BPETokenizer,
                 llama: LlamaModel, *, layout_warnings: Sequence[str] = ()) -> None:
        self.cache = cache
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.llama = llama
        self.layout_warnings = list(layout_warnings)
        self._closed = False
        self._batch: BatchPieces | None = None  # the last streamed batch (its worker thread)

    @property
    def timings(self) -> ModelTimings:
        """Where the decoder's time went (cumulative; ``timings.as_dict()``)."""
        return self.llama.timings

    def encode_prompt(self, text: str | ChatMessages, *, chat: bool = False,
                      system: str | None = None) -> list[int]:
        """Token ids of a prompt: raw ``text``, or with ``chat`` the chat template
        applied to ``text`` as the user's message (or to a list of
        ``{"role", "content"}`` messages), with an optional ``system`` message.
        ``ValueError`` for an empty prompt. O(len(text))."""
        if chat:
            messages: list[Mapping[str, str]] = []
            if system is not None:
                messages.append({"role": "system", "content": system})
            if isinstance(text, str):
                messages.append({"role": "user", "content": text})
            else:
                messages.extend(text)  # apply_chat_template checks each message
            template = (self.manifest.tokenizer or {}).get("chat_template")
            text = apply_chat_template(template, messages)
        elif not isinstance(text, str):
            raise ValueError("a list of chat messages needs chat=True")
        elif system is not None:
            raise ValueError("a system message (system= / --system) needs chat=True / --chat")
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ValueError("the prompt is empty: give some text")
        return ids

    @overload
    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                     sampler: Callable[[np.ndarray], int] | None = ...,
                     stop_at_eos: bool = ..., kv_cache: bool = ...) -> Iterator[int]: ...

    @overload
    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, *,
                     sampler: Callable[[np.ndarray], int]
                     | Sequence[Callable[[np.ndarray], int]] | None = ...,
                     stop_at_eos: bool = ..., on_token: OnToken | None = ...,
                     batch_size: int | None = ..., kv_cache: bool = ...) -> list[list[int]]: ...

    def generate_ids(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]],
                     max_new_tokens: int, *,
                     sampler: Callable[[np.ndarray], int]
                     | Sequence[Callable[[np.ndarray], int]] | None = None,
                     stop_at_eos: bool = True, on_token: OnToken | None = None,
                     batch_size: int | None = None,
                     kv_cache: bool = True) -> Iterator[int] | list[list[int]]:
        """New token ids; stops after the end-of-sequence token unless ``stop_at_eos``
        is false.

        One prompt (a sequence of ints): an iterator yielding each id as it is
        chosen (one forward pass each). A list of prompts (a sequence of id
        sequences): runs them as one batch -- or consecutive batches of
        ``batch_size`` -- and returns each prompt's new ids, in prompt order;
        ``on_token(index, token)`` is called as each is chosen; ``sampler`` is
        one callable per prompt (e.g. :func:`batch_samplers`) or one shared by
        all (then its random state is shared too), ``None`` greedy. One forward
        pass per step serves every live sequence of a batch.

        ``kv_cache``: one prompt reuses and keeps KV blocks (see :meth:`generate`);
        a batch computes its prompts whole.
        """
        self._check_open()
        eos = self.tokenizer.eos_id if stop_at_eos else None
        batch = _id_batch(prompt_ids)
        if batch is None:
            if sampler is not None and not callable(sampler):
                raise ValueError("one prompt takes one sampler (a callable), not a list")
            if on_token is not None or batch_size is not None:
                raise ValueError("on_token and batch_size are for a list of prompts")
            return self._stream_one(list(cast("Sequence[int]", prompt_ids)), max_new_tokens,
                                    eos, sampler, kv_cache)
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        samplers = None if sampler is None else (
            [sampler] * len(batch) if callable(sampler) else list(sampler))
        return run_in_chunks(self.llama.generate_batch, batch, max_new_tokens, eos_id=eos,
                             samplers=samplers, on_token=on_token, batch_size=batch_size)

    def _stream_one(self, prompt_ids: list[int], max_new_tokens: int, eos: int | None,
                    sampler: Callable[[np.ndarray], int] | None,
                    kv_cache: bool) -> Iterator[int]:
        """One prompt's ids, with or without KV-block reuse for this call only."""
        stream = self.llama.stream(prompt_ids, max_new_tokens, eos_id=eos, sampler=sampler)
        return stream if kv_cache else self._without_kv_cache(stream)

    def _without_kv_cache(self, stream: Iterator[int]) -> Iterator[int]:
        prefix, self.llama.prefix_cache = self.llama.prefix_cache, None
        try:
            yield from stream
        finally:
            self.llama.prefix_cache = prefix

    @property
    def batch_running(self) -> bool:
        """Whether a streamed batch (``generate([...])``) is still running on its thread."""
        return self._batch is not None and self._batch.running

    @property
    def kv_stats(self) -> dict[str, int] | None:
        """What KV-block reuse did (:class:`~tiercache.models.prefix.PrefixStats`), or
        ``None`` when the model was loaded with ``kv_cache=False``."""
        prefix = self.llama.prefix_cache
        return None if prefix is None else prefix.stats.as_dict()

    def _stream_batch(self, batch: list[list[int]], max_new_tokens: int,
                      samplers: list[Sampler], stop_at_eos: bool,
                      batch_size: int | None) -> Generator[tuple[int, str], None, None]:
        eos = self.tokenizer.eos_id if stop_at_eos else None

        def run(on_token: OnToken) -> list[list[int]]:  # on the worker thread
            return run_in_chunks(self.llama.generate_batch, batch, max_new_tokens, eos_id=eos,
                                 samplers=samplers, on_token=on_token, batch_size=batch_size)

        self._batch = BatchPieces(run, [TextStream(self.tokenizer) for _ in batch],
                                  max_new_tokens=max_new_tokens, eos_id=eos)
        return self._batch.pieces()

    @overload
    def generate(self, text: str | ChatMessages,  # type: ignore[overload-overlap]
                 max_new_tokens: int = ..., *,  # (a str is a Sequence[str]: str first)
                 stream: Literal[True] = ..., chat: bool = ..., temperature: float = ...,
                 top_k: int | None = ..., top_p: float | None = ..., seed: int | None = ...,
                 system: str | None = ..., stop_at_eos: bool = ...,
                 batch_size: int | None = ..., kv_cache: bool = ...) -> Iterator[str]: ...

    @overload
    def generate(self, text: str | ChatMessages,  # type: ignore[overload-overlap]
                 max_new_tokens: int = ..., *,
                 stream: Literal[False], chat: bool = ..., temperature: float = ...,
                 top_k: int | None = ..., top_p: float | None = ..., seed: int | None = ...,
                 system: str | None = ..., stop_at_eos: bool = ...,
                 batch_size: int | None = ..., kv_cache: bool = ...) -> str: ...

    @overload
    def generate(self, text: Prompts, max_new_tokens: int = ..., *,
                 stream: Literal[True] = ..., chat: bool = ..., temperature: float = ...,
                 top_k: int | None = ..., top_p: float | None = ..., seed: int | None = ...,
                 system: str | None = ..., stop_at_eos: bool = ...,
                 batch_size: int | None = ..., kv_cache: bool = ...
                 ) -> Generator[tuple[int, str], None, None]: ...

    @overload
    def generate(self, text: Prompts, max_new_tokens: int = ..., *,
                 stream: Literal[False], chat: bool = ..., temperature: float = ...,
                 top_k: int | None = ..., top_p: float | None = ..., seed: int | None = ...,
                 system: str | None = ..., stop_at_eos: bool = ...,
                 batch_size: int | None = ..., kv_cache: bool = ...) -> list[str]: ...

    def generate(self, text: str | ChatMessages | Prompts, max_new_tokens: int = 64, *,
                 stream: bool = True, chat: bool = False, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, system: str | None = None,
                 stop_at_eos: bool = True, batch_size: int | None = None,
                 kv_cache: bool = True,
                 ) -> Iterator[str] | str | Generator[tuple[int, str], None, None] | list[str]:
        """Continue ``text`` (or, with ``chat``, answer it) with up to ``max_new_tokens``.

        ``stream=True`` returns an iterator of text pieces as the tokens come
        (the prompt is not repeated; the pieces join to the generated text);
        ``stream=False`` returns the whole generated text. ``temperature``,
        ``top_k``, ``top_p``, ``seed``: see :class:`Sampler` (0: greedy).
        With ``chat`` the model's chat template (ChatML) wraps ``text`` as the
        user's message -- or a list of ``{"role", "content"}`` messages --
        after an optional ``system`` message, and the text is the reply.
        Arguments are checked at the call, before anything runs. One forward
        pass per token.

        A list of prompts (each a str or, with ``chat``, a str or a list of
        messages) runs as one batch (or batches of ``batch_size``):
        ``stream=False`` returns the texts in prompt order; ``stream=True`` an
        iterator of ``(index, piece)`` pairs as the tokens come (the pieces of
        prompt ``index``, in order, join to its text; a worker thread runs the
        batch: read the iterator to the end or ``close()`` it before the next
        call). Prompt ``i`` samples with seed ``seed + i``.

        ``kv_cache`` (one prompt, a model loaded with ``kv_cache=True``): reuse the
        cached KV blocks of the prompt's longest cached prefix and keep its new
        blocks; ``False`` computes the whole prompt and keeps nothing. The tokens
        are the same either way.
        """
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if batch_size is not None and (isinstance(batch_size, bool)
                                       or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        prompts = split_prompts(text)
        if prompts is None:
            sampler = Sampler(temperature, top_k, top_p, seed)
            prompt_ids = self.encode_prompt(cast("str | ChatMessages", text), chat=chat,
                                            system=system)
            self._check_open()
            pieces = self._pieces(prompt_ids, max_new_tokens, sampler, stop_at_eos, kv_cache)
            return pieces if stream else "".join(pieces)
        samplers = batch_samplers(len(prompts), temperature, top_k, top_p, seed)
        batch = [self._encode_item(i, p, chat, system) for i, p in enumerate(prompts)]
        self._check_open()
        if not stream:
            ids = self.generate_ids(batch, max_new_tokens, sampler=samplers,
                                    stop_at_eos=stop_at_eos, batch_size=batch_size)
            return [self.tokenizer.decode(t) for t in ids]
        return self._stream_batch(batch, max_new_tokens, samplers, stop_at_eos, batch_size)

    def _encode_item(self, index: int, prompt: str | ChatMessages, chat: bool,
                     system: str | None) -> list[int]:
        try:
            return self.encode_prompt(prompt, chat=chat, system=system)
        except ValueError as exc:
            raise ValueError(f"prompt {index}: {exc}") from None

    def _pieces(self, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler,
                stop_at_eos: bool, kv_cache: bool = True) -> Iterator[str]:
        text = TextStream(self.tokenizer)
        for token in self.generate_ids(prompt_ids, max_new_tokens, sampler=sampler,
                                       stop_at_eos=stop_at_eos, kv_cache=kv_cache):
            piece = text.push(token)
            if piece:
                yield piece
        rest = text.flush()
        if rest:
            yield rest

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"model {self.manifest.name!r} is closed (model.close() "
                                   "closed its cache)")
        if self.batch_running:
            raise RuntimeError("a streamed batch of prompts is still running on this model: "
                               "read its iterator to the end or close() it first")

    def close(self) -> None:
        """Stop a streamed batch still running (waits for its forward pass), the
        prefetcher, and close the cache. Idempotent."""
        self._closed = True
        if self._batch is not None:
            self._batch.stop()
        self.cache.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Model {self.manifest.name!r} on {self.cache!r}>"
