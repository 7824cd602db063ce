"""Where importers write shards: a :class:`TieredCache` tier or a ``.npy`` origin folder.

An importer produces one shard per tensor, one at a time, and hands each to a
:class:`ShardSink`; it never holds the whole model. Two sinks are built in:

- :class:`CacheSink` -- ``cache.put(key, array, tier=NAME)`` into a named tier
  (default: the lowest persistent one), so a bulk import does not cascade
  through RAM. Before the first shard it checks that the tiers from that one
  down can hold the whole model, and after the last one that every shard is
  still there (a too-small hierarchy would otherwise drop early shards
  silently).
- :class:`NpyDirSink` -- one ``<key>.npy`` per shard in a folder that
  :class:`tiercache.origins.NpyDirOrigin` serves.

An import either completes or leaves the sink as it was: importers check the
whole file before :func:`write_shards` writes the first shard, and if a load or
a write fails midway, :func:`write_shards` calls the sink's ``abort`` with the
keys written so far (a :class:`CacheSink` deletes them from every tier, an
:class:`NpyDirSink` removes their files) before the error propagates.

Progress goes to stderr: a rich live bar on a terminal, and on anything else
(a file, a pipe, a CI log) at most ten plain lines of at most
:data:`PLAIN_PROGRESS_WIDTH` characters, one per 10 % (see :class:`ImportProgress`).

Thread-safety: a sink is used by one importer thread at a time.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TextIO

import numpy as np

from ...errors import ModelFormatError, TierCacheError
from ...origins import NpyDirOrigin, npy_filename
from ...units import format_size
from ..manifest import TensorInfo

if TYPE_CHECKING:
    from ...core.cache import TieredCache


class ShardSink(Protocol):
    """Receives the shards of one import, one at a time."""

    def begin(self, total_bytes: int, keys: list[str]) -> None:
        """Called once before the first :meth:`write` with the size of everything to come."""

    def write(self, key: str, array: np.ndarray) -> None:
        """Store one shard. ``array`` may be reused by the caller afterwards."""

    def finish(self) -> None:
        """Called once after the last :meth:`write`."""

    def abort(self, keys: list[str]) -> None:
        """The import failed: remove ``keys``, the shards it wrote so far (best effort)."""


class CacheSink:
    """Write shards into one tier of a :class:`~tiercache.TieredCache`.

    Parameters
    ----------
    cache:
        An open cache.
    tier:
        The tier to put into; ``None`` picks the lowest persistent tier (the
        last tier if none is persistent). Shards too large for it go further down.
    """

    def __init__(self, cache: TieredCache, tier: str | None = None) -> None:
        self.cache = cache
        self.tier = tier if tier is not None else default_import_tier(cache)
        cache.tier(self.tier)  # raises KeyError naming the tiers when unknown
        self._keys: list[str] = []

    def begin(self, total_bytes: int, keys: list[str]) -> None:
        tiers = list(self.cache.tiers)
        start = [t.name for t in tiers].index(self.tier)
        room = sum(t.capacity_bytes for t in tiers[start:])
        if total_bytes > room:
            raise TierCacheError(
                f"the model needs {format_size(total_bytes)} but the tiers from "
                f"{self.tier!r} down hold at most {format_size(room)}: raise their capacity "
                f"or import into an origin folder")
        self._keys = list(keys)

    def write(self, key: str, array: np.ndarray) -> None:
        self.cache.put(key, array, tier=self.tier)

    def finish(self) -> None:
        missing = [k for k in self._keys if k not in self.cache]
        if missing:
            raise TierCacheError(
                f"{len(missing)} of {len(self._keys)} shards were evicted out of the cache "
                f"during the import (first: {missing[0]!r}); the lowest tier is too small")

    def abort(self, keys: list[str]) -> None:
        """Delete ``keys`` from every tier (a key the import overwrote loses its old value
        too, which the import had already replaced). O(len(keys) x tiers)."""
        for key in keys:
            self.cache.delete(key)


class NpyDirSink:
    """Write shards as ``.npy`` files into ``folder`` (an ``npy`` origin folder)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def begin(self, total_bytes: int, keys: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, key: str, array: np.ndarray) -> None:
        NpyDirOrigin.write(self.folder, {key: array})

    def finish(self) -> None:
        pass

    def abort(self, keys: list[str]) -> None:
        """Remove the ``.npy`` files of ``keys``. O(len(keys))."""
        for key in keys:
            (self.folder / npy_filename(key)).unlink(missing_ok=True)


class DictSink:
    """Keep shards in a dict (tests, small models). Copies each array."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def begin(self, total_bytes: int, keys: list[str]) -> None:
        pass

    def write(self, key: str, array: np.ndarray) -> None:
        self.arrays[key] = np.array(array, copy=True)

    def finish(self) -> None:
        pass

    def abort(self, keys: list[str]) -> None:
        """Forget ``keys``. O(len(keys))."""
        for key in keys:
            self.arrays.pop(key, None)

    def get(self, key: str) -> np.ndarray:
        """Serve a stored shard (so a DictSink is also a weight source)."""
        return self.arrays[key]


def default_import_tier(cache: TieredCache) -> str:
    """The tier an import writes to by default: the lowest persistent one, else the last."""
    persistent = [t.name for t in cache.tiers if t.store.persistent]
    return persistent[-1] if persistent else cache.tiers[-1].name


class PlannedShard(NamedTuple):
    """One shard an importer will write: its key, stored shape and dtype, and a loader
    that produces the array (called once, right before the write).

    ``encoding`` names the ggml type of a shard kept encoded
    (:mod:`tiercache.models.quant`; None: a plain array), ``logical`` the
    float shape it stands for (None: ``shape``) and ``layout`` ``"in_out"`` for a
    float matrix stored transposed; all go into its manifest entry.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    load: Callable[[], np.ndarray]
    logical: tuple[int, ...] | None = None
    encoding: str | None = None
    layout: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow


#: ``dtype`` choices of the float-checkpoint importers (safetensors, Keras); None keeps
#: each tensor as stored (a bf16 one widened to float32).
FLOAT_DTYPES = ("native", "float32", "float16", "bfloat16", "q8_0")


def float_target(dtype: str | np.dtype[Any] | None) -> str | None:
    """``dtype`` as one of :data:`FLOAT_DTYPES` (or None); ``ValueError`` otherwise. O(1)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.lower() in FLOAT_DTYPES:
        return dtype.lower()
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in ("float32", "float16"):
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype}")
    return name


def float_shard(key: str, shape: tuple[int, ...], natural: np.dtype[Any],
                load: Callable[[], np.ndarray], target: str | None, *,
                bf16_bits: Callable[[], np.ndarray] | None = None,
                file: str | os.PathLike[str] | None = None) -> PlannedShard:
    """The :class:`PlannedShard` of one tensor of a float checkpoint, converted to ``target``.

    ``load`` returns the tensor in ``natural`` (float32 for a bf16 source, whose
    raw bit patterns ``bf16_bits`` returns). Non-float tensors stay as they
    are. ``target``: None keeps the natural dtype; ``"native"`` keeps it too
    but a bf16 tensor stays bf16 (uint16 bits, encoding BF16); ``"float32"`` /
    ``"float16"`` cast; ``"bfloat16"`` rounds to nearest even (uint16 bits,
    encoding BF16); ``"q8_0"`` quantizes tensors of 2+ dimensions whose last
    one is a multiple of 32 (:func:`tiercache.models.quant.quantize`, encoding
    Q8_0) and keeps the others (norms, biases) float32. A tensor Q8_0 cannot
    hold (NaN, infinity, a scale beyond float16) is a :class:`ModelFormatError`
    naming ``file`` and ``key``. O(1); the conversion runs in the loader.
    """
    from .. import quant

    if natural.kind != "f" or target is None or (target == "native" and bf16_bits is None):
        return PlannedShard(key, shape, natural, load)
    if target in ("float32", "float16"):
        final = np.dtype(target)
        return PlannedShard(key, shape, final, lambda: np.asarray(load(), dtype=final))

    def encode(type_name: str) -> np.ndarray:
        if type_name == "BF16" and bf16_bits is not None:
            return np.ascontiguousarray(bf16_bits())
        try:
            return quant.quantize(np.asarray(load(), dtype=np.float32), type_name)
        except ValueError as exc:
            raise ModelFormatError(f"tensor {key!r} cannot be stored as {type_name}: {exc}",
                                   file=file) from None

    if target in ("native", "bfloat16"):
        return PlannedShard(key, shape, np.dtype(np.uint16), lambda: encode("BF16"),
                            logical=shape, encoding="BF16")
    q8 = quant.GGML_TYPES["Q8_0"]
    if len(shape) >= 2 and shape[-1] % q8.block_elems == 0 and math.prod(shape) > 0:
        return PlannedShard(key, quant.stored_shape(q8, shape), np.dtype(np.uint8),
                            lambda: encode("Q8_0"), logical=shape, encoding="Q8_0")
    final = np.dtype(np.float32)
    return PlannedShard(key, shape, final, lambda: np.asarray(load(), dtype=final))


def in_reading_order(plan: Sequence[PlannedShard], schedule: Sequence[str]) -> list[PlannedShard]:
    """``plan`` sorted by first position in ``schedule`` (a model's forward-pass order);
    shards it does not list keep their order, after the others. Writing in this
    order lays a model out in an append-only store (``packed``) the way a pass
    reads it, so a cold pass reads the disk front to back. O(n log n)."""
    first: dict[str, int] = {}
    for position, key in enumerate(schedule):
        first.setdefault(key, position)
    unlisted = len(schedule)
    return sorted(plan, key=lambda shard: first.get(shard.key, unlisted))


#: Longest line the plain (non-terminal) progress report prints.
PLAIN_PROGRESS_WIDTH = 100


class ImportProgress:
    """Progress of one import on ``stream`` (default: stderr).

    On a terminal: a rich live bar. Anywhere else -- a file, a pipe, a CI log,
    even one that claims colour support (``FORCE_COLOR``) -- a live bar would
    be written out once per refresh and wrap, so this prints plain lines
    instead: one each time another 10 % is done (at most 10), each at most
    :data:`PLAIN_PROGRESS_WIDTH` characters, no escape codes. A context
    manager; O(1) per :meth:`advance`. Thread-safety: one importer thread.
    """

    def __init__(self, description: str, total_bytes: int, *, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.description = description
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done_bytes = 0
        self._bar: Any = None
        self._task: Any = None
        self._next_tenth = 1
        self._started = time.monotonic()
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(enabled and callable(isatty) and isatty())

    def __enter__(self) -> ImportProgress:
        if self.interactive:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(),
                DownloadColumn(binary_units=True), TransferSpeedColumn(),
                TimeRemainingColumn(), console=Console(file=self.stream), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total_bytes)
        self._started = time.monotonic()
        return self

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more as done."""
        self.done_bytes += nbytes
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes)
        elif self.enabled:
            tenths = 10 if self.total_bytes <= 0 else self.done_bytes * 10 // self.total_bytes
            if tenths >= self._next_tenth:
                self._next_tenth = tenths + 1
                self._print_line()

    def _print_line(self) -> None:
        done, total = self.done_bytes, self.total_bytes
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        elapsed = time.monotonic() - self._started
        tail = f": {percent:3d}% {format_size(done)} of {format_size(total)}, {elapsed:.1f} s"
        room = PLAIN_PROGRESS_WIDTH - len(tail)
        label = self.description if len(self.description) <= room else \
            self.description[:max(0, room - 3)] + "..."
        print((label + tail)[:PLAIN_PROGRESS_WIDTH], file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def write_shards(sink: ShardSink, plan: Sequence[PlannedShard], *, progress: bool = True,
                 description: str = "importing", file: str | os.PathLike[str] | None = None,
                 ) -> dict[str, TensorInfo]:
    """Load and write every planned shard in order, one at a time, with a progress report.

    Only one shard is in memory at a time (plus whatever the sink keeps). A
    loader returning the wrong shape or dtype is a :class:`ModelFormatError`
    naming ``file`` and the key. If anything fails after :meth:`ShardSink.begin`
    -- a loader, a write, :meth:`ShardSink.finish`, an interrupt -- the keys
    written so far are handed to the sink's ``abort`` (when it has one) and
    the error propagates: a failed import leaves no shards behind. Returns the
    :class:`TensorInfo` of each key, in order. Progress: :class:`ImportProgress`
    on stderr. O(total bytes) time. Thread-safety: one caller per sink.
    """
    keys = [p.key for p in plan]
    dup = next((k for k, n in Counter(keys).items() if n > 1), None)
    if dup is not None:
        raise ModelFormatError(f"two tensors map to the shard key {dup!r}", file=file)
    total = sum(p.nbytes for p in plan)
    infos: dict[str, TensorInfo] = {}
    written: list[str] = []
    try:
        sink.begin(total, keys)
        with ImportProgress(description, total, enabled=progress) as report:
            for shard in plan:
                array = shard.load()
                if array.shape != shard.shape or array.dtype != shard.dtype:
                    raise ModelFormatError(
                        f"tensor {shard.key!r} decoded to {array.dtype} {array.shape}, "
                        f"expected {shard.dtype} {shard.shape}", file=file)
                written.append(shard.key)  # before the write: a failed write may leave a part
                sink.write(shard.key, np.ascontiguousarray(array))
                infos[shard.key] = TensorInfo(
                    shard.logical if shard.logical is not None else shard.shape,
                    shard.dtype.name, int(array.nbytes), shard.encoding, shard.layout)
                del array
                report.advance(shard.nbytes)
        sink.finish()
    except BaseException as exc:
        _abort(sink, written, exc)
        raise
    return infos


def _abort(sink: ShardSink, written: list[str], exc: BaseException) -> None:
    """Hand the keys of a failed import to the sink's ``abort``; a failure there is noted
    on ``exc`` (the import's own error stays the one raised)."""
    abort = getattr(sink, "abort", None)
    if abort is None or not written:
        return
    try:
        abort(list(written))
    except Exception as cleanup:
        exc.add_note(f"and removing the {len(written)} shards written so far failed: "
                     f"{type(cleanup).__name__}: {cleanup}")
