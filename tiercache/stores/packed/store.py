"""The packed store: :class:`PackedStore` (the layout, writes, crashes, reads and damage
are described in :mod:`tiercache.stores.packed`).

Thread-safety: all methods may be called from any thread. Index and file state
are guarded by one lock; the view cache is read without it (GIL-atomic dict
operations). Writers in several processes are serialised by the ``flock``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ... import codec
from ...errors import CacheClosedError, CorruptShardError, StoreError
from ..base import ShardInfo, VerifyMode
from ..disk import DiskStore
from .datafile import (
    EPOCH_NAME,
    LOCK_NAME,
    DataFile,
    EpochCounter,
    WriterLock,
    align_for,
    copy_shards,
    data_name,
    fsync_dir,
    pwrite_all,
    read_header,
    sweep_data_files,
)
from .index import INDEX_NAME, PackedIndex
from .pagecache import PageCacheSide, _Entry
from .readahead import advice_bytes

__all__ = ["COMPACT_MIN_DEAD_BYTES", "PackedStore"]

#: Dead bytes must exceed both this and the live bytes before a put or delete compacts.
COMPACT_MIN_DEAD_BYTES = 64 << 20


class _PackedFiles(DiskStore):
    """The open files of a packed store -- index, epoch counter, writers' lock, current
    data file -- and what keeps this process's cached entries and views current: the
    epoch check, the switch to another generation's file, compaction.

    :class:`PackedStore` adds the shard API over it. Thread-safety: as
    :class:`PackedStore`.
    """

    identity_file = INDEX_NAME

    def __init__(self, path: str | os.PathLike[str], *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> None:
        super().__init__(path, verify=verify, capacity_bytes=capacity_bytes,
                         exclusive=exclusive)
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        #: Views over the *current* mapping, per key, with the entry each was made for.
        #: Replaced by an empty dict whenever the data file is remapped or switched, so
        #: the store itself never holds a superseded mapping (and its descriptor).
        self._views: dict[str, tuple[_Entry, np.ndarray]] = {}
        self._closed = True
        self._open()

    # -- opening and closing ---------------------------------------------------------
    def _open_medium(self) -> None:
        """Open (creating if needed) the directory, the writers' lock file, the index, the
        epoch counter and the data file (folder lock held if exclusive). Whatever it
        opened is closed again when it fails."""
        writer: WriterLock | None = None
        index: PackedIndex | None = None
        epoch: EpochCounter | None = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            writer = WriterLock(self.path / LOCK_NAME)
            with writer.held():
                index = PackedIndex(self.path)
                epoch = EpochCounter(self.path / EPOCH_NAME)
                generation = index.meta("generation")
                data_path = self.path / data_name(generation)
                if index.has_rows() and not data_path.exists():
                    raise index.damaged(f"it names shards in {data_name(generation)}, which "
                                        "is missing (the folder lost files, or the index its "
                                        "generation)")
                data = DataFile(data_path, generation, create=True)
        except BaseException as exc:
            for opened in (index, epoch, writer):
                if opened is not None:
                    opened.close()
            if isinstance(exc, sqlite3.Error):
                raise PackedIndex.error_for(self.path, exc, f"packed store {self.path}: "
                                            "cannot open the index") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"packed store {self.path}: cannot open ({exc}); check the "
                                 "path is a writable directory") from exc
            raise
        self._writer, self._index, self._epoch_file, self._data = writer, index, epoch, data
        self._epoch = epoch.counter
        self._epoch_seen = self._epoch[0]
        self._remember_identity(os.stat(self.path / INDEX_NAME))
        self._advice_bytes = advice_bytes(data.fd)
        self._page_evictions = 0  # bytes advise() found evicted after a read (page_evictions)
        self._stamp, self._closed = data.stamp(), False  # `verified` flags hold for _stamp

    def _medium_closed(self) -> bool:
        return self._closed

    def _close_medium(self) -> None:
        """Close the index, data file, epoch counter and writers' lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._forget_all()
            self._index.close()
            self._data.close()
            self._epoch_file.close()
            self._writer.close()

    def close(self) -> None:
        """Close the store; later calls -- and calls running into the close -- raise
        :class:`~tiercache.errors.CacheClosedError`. Views stay valid. Idempotent."""
        with self._lock:
            self._close_medium()
            self._release_folder()

    # -- helpers ---------------------------------------------------------------------
    def _forget_all(self) -> None:
        """Drop every cached entry and view (the index changed under us). O(1)."""
        self._entries = {}
        self._views = {}

    def _forget(self, key: str) -> None:
        """Drop ``key``'s cached entry and view. O(1)."""
        self._entries.pop(key, None)
        self._views.pop(key, None)

    def _forget_if(self, key: str, entry: _Entry) -> None:
        """Drop ``key``'s cached entry if it is still ``entry`` (its bytes failed a check).
        Lock held."""
        if self._entries.get(key) is entry:
            self._forget(key)

    def _check_open(self) -> None:
        """Raise :class:`CacheClosedError` once :meth:`close` has begun."""
        if self._closed:
            raise CacheClosedError(f"packed store {self.path}: the store was closed")

    def _sync_epoch(self) -> None:
        """Forget cached views if any process changed the store since we last looked."""
        try:
            now = self._epoch[0]
        except ValueError:  # close() released the counter: a StoreError, as every store
            self._check_open()
            raise
        if now != self._epoch_seen:
            with self._lock:
                self._forget_all()
                self._epoch_seen = now

    def _settle_verified(self, *, own: bool = False) -> None:
        """Unverify every entry if the data file changed since the last look, unless by
        this store (``own``). One ``fstat``; O(entries) after a foreign change."""
        stamp = self._data.stamp()
        if stamp != self._stamp:
            with self._lock:
                for entry in () if own else self._entries.values():
                    entry.verified = False
                self._stamp = stamp

    def _bump_epoch(self, before: int) -> None:
        """Record a committed change (flock held). ``before`` is the counter read when
        the change began: if nobody else changed the store meanwhile, our cached views
        of other keys stay valid."""
        value = self._epoch_file.bump()
        if before != self._epoch_seen:
            self._forget_all()
        self._epoch_seen = value

    def _data_for(self, generation: int) -> DataFile:
        """The data file of ``generation`` (switching to it after another process
        compacted). Lock held."""
        if generation != self._data.generation:
            new = DataFile(self.path / data_name(generation), generation, create=False)
            self._data.close()
            self._data = new
            self._views = {}
        return self._data

    def _map_for(self, data: DataFile, end: int, where: str) -> mmap.mmap | None:
        """``data.mapped(end)``, dropping the cached views when that remapped the file (so
        the superseded mapping dies with the caller's last view); its errors as
        StoreError naming the file. Lock held. O(1)."""
        before = data.mapping
        try:
            mapping = data.mapped(end)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{where}: cannot map {data.path} ({exc})") from exc
        if mapping is not before:
            self._views = {}
        return mapping

    def disk_usage(self) -> tuple[int, int]:
        """``(live bytes, data file bytes)``; the difference is dead space and padding."""
        with self._lock:
            self._check_open()
            return self._index.meta("live_bytes"), self._data.size()

    # -- writes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[DataFile, int]]:
        """Hold the thread lock and the cross-process flock; yield the current data file
        and the epoch counter's value at the start."""
        with self._lock:
            self._check_open()
            with self._writer.held():
                before = self._epoch[0]
                try:
                    data = self._data_for(self._index.meta("generation"))
                except sqlite3.Error as exc:
                    raise self._index.error(exc, f"packed store {self.path}: index read "
                                                 "failed") from exc
                except OSError as exc:
                    raise StoreError(f"packed store {self.path}: cannot open data file "
                                     f"({exc})") from exc
                self._settle_verified()  # a foreign change before ours is not absorbed
                try:
                    yield data, before
                finally:
                    self._settle_verified(own=True)

    def _maybe_compact(self, data: DataFile) -> None:
        """Compact when dead bytes exceed both the live bytes and the minimum. Locks held."""
        live = self._index.meta("live_bytes")
        if data.size() - live > max(COMPACT_MIN_DEAD_BYTES, live):
            self._compact_locked(data, None)

    def _compact_locked(self, data: DataFile, order: Sequence[str] | None) -> int:
        """Copy the live shards into the next generation's file and switch to it. Rows
        pointing past the end of the data file (bytes an OS crash lost: unreadable) are
        dropped from the index. Locks held. O(live bytes)."""
        all_rows = self._index.rows(f"packed store {self.path}: compaction failed")
        size = data.size()
        rows = [r for r in all_rows if r[1] + r[2] <= size]
        lost = [(kb,) for kb, o, n in all_rows if o + n > size]
        live = sum(n for _kb, _o, n in rows) if lost else None
        if order is not None:
            rank: dict[bytes, int] = {}
            for i, key in enumerate(order):
                rank.setdefault(codec.key_bytes(key), i)
            rows.sort(key=lambda r: (rank.get(r[0], len(rank)), r[1]))
        generation = data.generation + 1
        path = self.path / data_name(generation)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"packed store {self.path}: cannot create {path.name} "
                             f"({exc})") from exc
        try:
            moved, position = copy_shards(data.fd, fd, rows)
            self._index.record_compaction(generation, moved, lost, live)
        except (OSError, sqlite3.Error) as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise StoreError(f"packed store {self.path}: compaction failed ({exc}); the "
                             "old data file is still in use") from exc
        os.close(fd)
        self._forget_all()
        old_path = data.path
        self._data_for(generation)
        with contextlib.suppress(OSError):
            old_path.unlink()
        fsync_dir(self.path)
        return position

    def sweep_orphans(self, *, remove: bool = False, min_age_s: float = 60.0) -> int:
        """Count (with ``remove``: delete) data files of other generations than the
        current one -- left by a compaction interrupted by a crash -- older than
        ``min_age_s``. Holds the writers' lock, so no compaction can finish meanwhile.
        O(files in the folder)."""
        with self._lock:
            self._check_open()
            with self._writer.held():
                try:
                    current = self._index.meta("generation")
                except sqlite3.Error as exc:
                    raise self._index.error(exc, f"packed store {self.path}: index read "
                                                 "failed") from exc
                return sweep_data_files(self.path, current, remove=remove,
                                        min_age_s=min_age_s)


class PackedStore(PageCacheSide, _PackedFiles):
    """Persistent store keeping every shard in one append-only, memory-mapped data file.

    Parameters
    ----------
    path, verify, capacity_bytes, exclusive:
        As :class:`~tiercache.stores.disk.DiskStore`; ``path`` is the store's
        directory, ``capacity_bytes`` only decides ``exclusive``'s default.
        ``verify="always"`` checks the payload checksum on every copying read and on
        the first view of each shard (headers and lengths are always checked).

    Raises :class:`~tiercache.errors.MediumDamagedError` when ``index.sqlite`` is
    damaged, and :class:`~tiercache.errors.StoreError` when the folder cannot be
    opened or another process holds it.

    Capacity counts :func:`tiercache.codec.stored_nbytes` (header plus payload);
    alignment padding and dead space are not counted (see :mod:`tiercache.stores.packed`
    for the bound on disk use).
    """

    backend = "packed"
    zero_copy = True

    def _entry(self, key: str) -> tuple[_Entry, np.ndarray] | None:
        """The cached entry of ``key`` and a view of its payload over the current mapping,
        resolving the entry from the index and (re)building the view if needed. O(1)
        once cached (two dict lookups); O(header) otherwise."""
        self._sync_epoch()
        entry = self._entries.get(key)
        if entry is not None:
            cached = self._views.get(key)
            if cached is not None and cached[0] is entry:
                return cached
        where = self._where(key)
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is not None and entry.generation == self._data.generation:
                mapping = self._map_for(self._data, entry.offset + entry.length, where)
                if mapping is not None:  # else the file shrank: resolve it again below
                    return self._cache_view(key, entry, mapping)
            for attempt in range(3):
                try:
                    found = self._index.lookup(codec.key_bytes(key), where)
                    if found is None:
                        return None
                    generation, offset, length = found
                    data = self._data_for(generation)
                    break
                except FileNotFoundError:
                    if attempt == 2:  # compacted away under us three times in a row
                        raise StoreError(f"{where}: its data file keeps disappearing") from None
                except sqlite3.Error as exc:
                    raise self._index.error(exc, f"{where}: index read failed") from exc
                except OSError as exc:
                    raise StoreError(f"{where}: cannot open the data file ({exc})") from exc
            mapping = self._map_for(data, offset + length, where)
            if mapping is None:
                raise CorruptShardError(f"{where}: the shard lies past the end of "
                                        f"{data.path.name} (lost in a crash?)")
            entry = _Entry(generation, offset, length,
                           read_header(mapping, offset, length, key, where))
            self._entries[key] = entry
            return self._cache_view(key, entry, mapping)

    def _cache_view(self, key: str, entry: _Entry,
                    mapping: mmap.mmap) -> tuple[_Entry, np.ndarray]:
        """Build ``entry``'s read-only payload view over ``mapping`` and cache it. Lock held;
        O(1)."""
        header = entry.header
        view: np.ndarray = np.ndarray(header.shape, dtype=header.dtype, buffer=mapping,
                                      offset=entry.offset + header.header_nbytes)
        view.flags.writeable = False
        pair = (entry, view)
        self._views[key] = pair
        return pair

    def _verify(self, entry: _Entry, view: np.ndarray, key: str) -> None:
        """Check ``entry``'s payload checksum once (outside the lock: it may read disk)."""
        if entry.verified:
            return
        payload = codec.byte_view(view)
        if codec.payload_checksum(payload) != entry.header.payload_checksum:
            with self._lock:
                self._forget_if(key, entry)
            raise CorruptShardError(f"{self._where(key)}: payload checksum mismatch")
        entry.verified = True

    # -- reads -----------------------------------------------------------------------
    def get_view(self, key: str) -> np.ndarray | None:
        """A zero-copy, read-only view of ``key``'s payload in the mapped data file.

        Valid while referenced (the store never rewrites the file's bytes). With
        ``verify="always"`` the checksum is checked at the first view in this process
        and again after the file changed other than by this store (size, mtime or ctime
        moved): bytes another program wrote raise :class:`CorruptShardError`. O(1) once
        cached (dict lookups, an epoch read, an ``fstat``); O(n) the first time."""
        found = self._entry(key)
        if found is None:
            return None
        entry, view = found
        entry.seen = True
        if self.verify == "always":
            self._settle_verified()
            if not entry.verified:
                self._verify(entry, view, key)
        return view

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Copy ``key``'s shard into ``out`` (or a new page-aligned array) and return it.

        Copy and checksum run in one pass over the mapping (the checksum only with
        ``verify="always"``). O(n). Thread-safe.
        """
        return self._copy(key, out, self.verify == "always")

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """:meth:`get` that always verifies the payload (``verify`` ignored)."""
        return self._copy(key, out, True)

    def _copy(self, key: str, out: np.ndarray | None, verify: bool) -> np.ndarray | None:
        found = self._entry(key)
        if found is None:
            return None
        entry, view = found
        header = entry.header
        result = codec.prepare_out(header, out, key)
        try:
            codec.copy_verified(codec.byte_view(result), codec.byte_view(view),
                                header.payload_checksum if verify else None,
                                where=self._where(key))
        except CorruptShardError:
            with self._lock:
                self._forget_if(key, entry)
            raise
        if verify:
            entry.verified = True
        return result

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` (header only). O(1) once cached."""
        found = self._entry(key)
        if found is None:
            return None
        return ShardInfo.from_header(found[0].header)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry (damaged or not). One index lookup."""
        if not isinstance(key, str):
            return False
        self._sync_epoch()
        if key in self._entries:
            return True
        with self._lock:
            self._check_open()
            try:
                return self._index.has(codec.key_bytes(key))
            except sqlite3.Error as exc:
                raise self._index.error(exc, f"{self._where(key)}: lookup failed") from exc

    def keys(self) -> Iterator[str]:
        """Snapshot of every key, in data-file order. O(number of shards)."""
        return iter([key for key, _offset, _length in self.layout()])

    @property
    def data_file(self) -> Path:
        """The data file in use, ``data.<generation>.bin`` (a compaction moves to the next
        generation): where :meth:`layout`'s offsets point. O(1)."""
        with self._lock:
            return self._data.path

    def layout(self) -> list[tuple[str, int, int]]:
        """``(key, offset, length)`` of every shard, in data-file order. O(shards).

        Raises :class:`MediumDamagedError` (naming ``index.sqlite`` and the row) when
        the index is damaged: sqlite cannot read it, or a row holds what this store
        never writes (a key that is not UTF-8 bytes, an offset or length that is not a
        non-negative integer). A row pointing past the end of the data file is listed:
        reading it raises :class:`CorruptShardError` (an OS crash can lose unsynced
        bytes), and the tier drops it.
        """
        with self._lock:
            self._check_open()
            rows = self._index.rows(f"packed store {self.path}: listing keys failed")
        return [(codec.key_from_bytes(k), o, n) for k, o, n in rows]

    def put(self, key: str, array: np.ndarray) -> int:
        """Append a copy of ``array`` and point ``key`` at it (atomically replacing any
        old value). O(n): one hash pass and one write from the array's own buffer."""
        payload = codec.contiguous_payload(array)
        header = codec.encode_header(key, array, codec.payload_checksum(payload))
        length = len(header) + payload.nbytes
        align = align_for(length)
        kb = codec.key_bytes(key)
        where = self._where(key)
        with self._writing() as (data, before):
            start = 0
            try:
                start = data.size()
                offset = -(-start // align) * align
                pwrite_all(data.fd, memoryview(header), offset)
                pwrite_all(data.fd, payload, offset + len(header))
                self._index.record_put(kb, offset, length)
            except (OSError, sqlite3.Error) as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(data.fd, start)  # nothing committed points past start
                if isinstance(exc, sqlite3.Error):
                    raise self._index.error(exc, f"{where}: write failed") from exc
                raise StoreError(f"{where}: write failed ({exc})") from exc
            self._forget(key)
            self._bump_epoch(before)
            self._maybe_compact(data)
        return codec.stored_nbytes(array)

    def delete(self, key: str) -> bool:
        """Remove ``key``'s entry (its bytes become dead space); return whether it was
        present. O(log n)."""
        with self._writing() as (data, before):
            try:
                found = self._index.record_delete(codec.key_bytes(key))
            except sqlite3.Error as exc:
                raise self._index.error(exc, f"{self._where(key)}: delete failed") from exc
            self._forget(key)
            if not found:
                return False
            self._bump_epoch(before)
            self._maybe_compact(data)
            return True

    def compact(self, order: Sequence[str] | None = None) -> int:
        """Rewrite the live shards into a new data file, reclaiming dead space; with
        ``order``, those keys first, in that order (a model's schedule, so a forward
        pass reads the file front to back), then the rest in their current order.

        Returns the bytes reclaimed (may be negative by the alignment padding). Views
        handed out before stay valid. O(live bytes), copied in the kernel
        (``copy_file_range``); the new file is fsynced before the index switches.
        """
        with self._writing() as (data, before):
            size = data.size()
            new_size = self._compact_locked(data, order)
            self._bump_epoch(before)
            return size - new_size
