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

Thread-safety: a sink is used by one importer thread at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from ..errors import TierCacheError
from ..origins import NpyDirOrigin
from ..units import format_size

if TYPE_CHECKING:
    from ..engine import TieredCache
    from .manifest import TensorInfo


class ModelFormatError(TierCacheError, ValueError):
    """A model file cannot be imported: missing, truncated, malformed or unsupported.

    The message names the file and says what is wrong, e.g.
    ``model.gguf: truncated: tensor 'blk.3.ffn_up.weight' ends at byte 912 of 640``.
    """

    def __init__(self, reason: str, *, file: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.file = os.fspath(file) if file is not None else None
        super().__init__(f"{self.file}: {reason}" if self.file else reason)


class ShardSink(Protocol):
    """Receives the shards of one import, one at a time."""

    def begin(self, total_bytes: int, keys: list[str]) -> None:
        """Called once before the first :meth:`write` with the size of everything to come."""

    def write(self, key: str, array: np.ndarray) -> None:
        """Store one shard. ``array`` may be reused by the caller afterwards."""

    def finish(self) -> None:
        """Called once after the last :meth:`write`."""


class CacheSink:
    """Write shards into one tier of a :class:`~tiercache.engine.TieredCache`.

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

    def get(self, key: str) -> np.ndarray:
        """Serve a stored shard (so a DictSink is also a weight source)."""
        return self.arrays[key]


def default_import_tier(cache: TieredCache) -> str:
    """The tier an import writes to by default: the lowest persistent one, else the last."""
    persistent = [t.name for t in cache.tiers if t.store.persistent]
    return persistent[-1] if persistent else cache.tiers[-1].name


class PlannedShard(NamedTuple):
    """One shard an importer will write: its key, final shape and dtype, and a loader
    that produces the array (called once, right before the write)."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    load: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


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


def write_shards(sink: ShardSink, plan: Sequence[PlannedShard], *, progress: bool = True,
                 description: str = "importing", file: str | os.PathLike[str] | None = None,
                 ) -> dict[str, TensorInfo]:
    """Load and write every planned shard in order, one at a time, with a progress bar.

    Only one shard is in memory at a time (plus whatever the sink keeps). A
    loader returning the wrong shape or dtype is a :class:`ModelFormatError`
    naming ``file`` and the key. Returns the :class:`TensorInfo` of each key,
    in order. O(total bytes).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from . import manifest

    keys = [p.key for p in plan]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ModelFormatError(f"two tensors map to the shard key {dup!r}", file=file)
    total = sum(p.nbytes for p in plan)
    sink.begin(total, keys)
    infos: dict[str, TensorInfo] = {}
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress,
                  transient=False) as bar:
        task = bar.add_task(description, total=total)
        for shard in plan:
            array = shard.load()
            if array.shape != shard.shape or array.dtype != shard.dtype:
                raise ModelFormatError(
                    f"tensor {shard.key!r} decoded to {array.dtype} {array.shape}, expected "
                    f"{shard.dtype} {shard.shape}", file=file)
            sink.write(shard.key, np.ascontiguousarray(array))
            infos[shard.key] = manifest.TensorInfo(shard.shape, shard.dtype.name, int(array.nbytes))
            del array
            bar.update(task, advance=shard.nbytes)
    sink.finish()
    return infos
