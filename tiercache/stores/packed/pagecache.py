"""The page-cache side of the packed store: what a process knows of each shard
(:class:`_Entry`), and the calls a loop makes about the page cache -- read a shard
ahead (:meth:`PageCacheSide.advise`), notice the kernel evicted one it had read
(:meth:`~PageCacheSide.page_evictions`), let one go after use
(:meth:`~PageCacheSide.release`), read one for a single use without keeping it
(:meth:`~PageCacheSide.read_once`).

Thread-safety: as :class:`~tiercache.stores.packed.PackedStore` (all methods may be
called from any thread; the system calls release the GIL).
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ... import codec
from ...errors import CorruptShardError
from ..base import VerifyMode
from .datafile import DataFile
from .readahead import advise_range, drop_range, resident

__all__ = ["READ_ONCE_CHUNK_BYTES", "PageCacheSide"]

#: Bytes per ``pread`` of :meth:`PageCacheSide.read_once`. Reads of this size let the
#: kernel's read-ahead run ahead of the calls; on the 2-core VM, reads of 8 MiB ran at
#: 0.7-2.7 GB/s and reads of 1 MiB at 2.3-2.8 (docs/lab-notes/2026-12-05-streamed-shards.md).
READ_ONCE_CHUNK_BYTES = 1 << 20


@dataclass
class _Entry:
    """What a process knows of one stored shard: where it is and its header. Its view
    lives in :attr:`PackedStore._views` (dropped when the data file is remapped), so an
    entry never keeps a superseded mapping alive."""

    generation: int
    offset: int
    length: int
    header: codec.ShardHeader
    verified: bool = False
    seen: bool = False  # read ahead or viewed by this process before



class PageCacheSide:
    """Mixin of :class:`~tiercache.stores.packed.PackedStore`: its page-cache calls."""

    verify: VerifyMode
    _data: DataFile
    _entries: dict[str, _Entry]
    _views: dict[str, tuple[_Entry, np.ndarray]]
    _advice_bytes: int
    _page_evictions: int
    _lock: threading.RLock

    def _entry(self, key: str) -> tuple[_Entry, np.ndarray] | None:
        raise NotImplementedError

    if TYPE_CHECKING:  # the store's own (not stubs here: they would shadow them)
        def _check_open(self) -> None: ...

        def _settle_verified(self, *, own: bool = False) -> None: ...

        def _verify(self, entry: _Entry, view: np.ndarray, key: str) -> None: ...

        def _where(self, key: str) -> str: ...

        def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None: ...

    def advise(self, key: str) -> int:
        """Get ``key`` ready for a fast :meth:`get_view` without waiting; return its
        stored bytes (0 if absent).

        - All its pages in the page cache (``mincore``): nothing to do.
        - Not there, and never read by this process: start reading it into the page
          cache (``posix_fadvise(WILLNEED)`` in read-ahead-window pieces, the most
          Linux reads per call; asynchronous).
        - Not there, but read before: the page cache evicted it, so it cannot hold
          the loop. Nothing is advised then: pages read ahead sit unmapped on the
          inactive list and are the first the kernel reclaims -- before the loop gets
          to them, while the pages it already used stay, protected by their accessed
          bits. Measured (docs/performance.md): advising under a memory cap read
          7-15 % more and ran slower than leaving it to the page-fault read-ahead,
          which reads the file sequentially since shards are laid out in order.

        Never waits for the read itself (verification is :meth:`get_view`'s, see
        :meth:`needs_check`), though the kernel may reclaim memory for it first
        (measured under a cap: calling it from the prefetcher's threads instead of
        the loop's ran slower on 2 cores, docs/performance.md). O(pages / 4096) plus
        system calls that release the GIL. Thread-safe."""
        found = self._entry(key)
        if found is None:
            return 0
        entry, view = found
        data = self._data
        if entry.generation == data.generation and resident(
                view.ctypes.data - entry.header.header_nbytes - entry.offset,  # the mapping
                entry.offset, entry.length) is False:
            if entry.seen:  # read before, evicted since: counted, not read ahead
                self._page_evictions += entry.length
            else:
                advise_range(data.fd, entry.offset, entry.length, self._advice_bytes)
        entry.seen = True
        return entry.length

    def release(self, key: str) -> int:
        """Drop ``key``'s pages from the store's mapping and the page cache
        (:func:`.readahead.drop_range`); the next :meth:`advise` reads it ahead again.
        Views stay valid. A hint: never raises. O(pages). Thread-safe."""
        found = self._views.get(key)
        if found is None:
            return 0
        entry, view = found
        mapping = view.base
        if entry.generation != self._data.generation or not isinstance(mapping, mmap.mmap):
            return 0
        entry.seen = False  # first: a concurrent advise reads it ahead, not an eviction
        return drop_range(mapping, self._data.fd, entry.offset, entry.length)

    def read_once(self, key: str) -> np.ndarray | None:
        """A private, page-aligned, writable copy of ``key``'s payload read from the data
        file with ``pread`` (not through the mapping: nothing is mapped), in
        :data:`READ_ONCE_CHUNK_BYTES` pieces, after which the shard's whole pages
        leave the page cache (``posix_fadvise(DONTNEED)``; pages a mapping still
        holds stay). Checked as a view is: with ``verify="always"``, a shard not
        verified in this process -- or since the file changed other than by this store
        -- is verified on the copy. ``None`` if absent. Raises
        :class:`CorruptShardError` (checksum; the file ends inside the shard). The
        read uses its own duplicate of the descriptor, so a concurrent switch to
        another data file cannot redirect it. O(n). Thread-safe."""
        found = self._entry(key)
        if found is None:
            return None
        entry, _ = found
        with self._lock:
            self._check_open()
            data = self._data
            fd = os.dup(data.fd) if entry.generation == data.generation else -1
        if fd < 0:  # a data file being replaced by a compaction: through its mapping
            return self.get(key)
        try:
            header = entry.header
            out = codec.prepare_out(header, None, key)
            flat = codec.byte_view(out)
            start = entry.offset + header.header_nbytes
            with flat.data as target:
                done = 0
                while done < flat.nbytes:
                    got = os.preadv(fd, [target[done:done + READ_ONCE_CHUNK_BYTES]],
                                    start + done)
                    if got <= 0:
                        raise CorruptShardError(f"{self._where(key)}: the shard lies past "
                                                f"the end of {data.path.name} (lost in a "
                                                "crash?)")
                    done += got
            drop_range(None, fd, entry.offset, entry.length)
        finally:
            os.close(fd)
        if self.verify == "always":
            self._settle_verified()
            self._verify(entry, out, key)
        return out

    def page_evictions(self) -> int:
        """Bytes of shards read before that :meth:`advise` found evicted (cumulative)."""
        return self._page_evictions

    def needs_check(self, key: str) -> bool:
        """Whether :meth:`get_view` would verify ``key`` first (not verified yet). O(1)."""
        if self.verify != "always":
            return False
        entry = self._entries.get(key)
        return entry is None or not entry.verified

    def viewed(self, key: str) -> bool:  # read ahead or viewed, verified if it must be
        entry = self._entries.get(key)
        return entry is not None and entry.seen and (entry.verified or self.verify != "always")
