"""lmdb store: shards in one lmdb environment (a directory with ``data.mdb``, ``lock.mdb``).

Layout
    Two named databases keyed alike: ``hdr`` holds each shard's
    :mod:`~tiercache.codec` header, ``data`` its raw payload. Both are written in
    one write transaction, so a put is atomic. Two values instead of one
    ``header + payload`` value let ``put`` hand lmdb the caller's array buffer
    directly (no concatenation copy: measured 4.6 vs 4.2 GB/s for 4 MiB puts,
    1.44 vs 1.23 GB/s for 64 MiB, without fsync), and let :meth:`LmdbStore.info`
    and :meth:`LmdbStore.keys` touch only the small header pages. Reads are
    equally fast either way.
Keys
    The lmdb key is the key's UTF-8 (``surrogatepass``) bytes when they are
    1..511 bytes long; otherwise (empty or longer keys) it is ``0xFF`` followed
    by the BLAKE2b-256 digest of those bytes -- ``0xFF`` never occurs in UTF-8,
    so the two forms cannot collide -- and the header then carries the full key,
    which every read checks. Keys never become file names: nothing is written
    outside the environment directory.
Reads
    ``get`` opens a read transaction with zero-copy buffers, checks the header
    and copies the payload straight from lmdb's memory map into the destination
    with :func:`~tiercache.codec.copy_verified`, inside the transaction (the
    view is only valid there).
Map size
    The map is virtual address space only (the file grows as data is written),
    so it starts generous: ``max(4 GiB, 2 * capacity_bytes + 256 MiB)``. A put
    that still hits ``MapFullError`` grows the map (at least doubling it, and
    enough for the value) and retries, so a put never fails because of the map
    size. Remapping invalidates every open transaction and zero-copy view, so
    operations hold a shared guard and the remap an exclusive one.
Durability
    Opened with ``metasync=False`` and, by default, ``sync=True``: one
    ``fdatasync`` per commit and none for the meta page. lmdb documents this
    mode as keeping atomicity and consistency across an OS crash or power loss;
    only the last committed puts may be undone, which a cache tolerates. A
    process crash loses nothing. ``sync=False`` skips the fsync too (puts run
    ~1.5-2.7x faster here) but then an OS crash can corrupt the environment on
    file systems that reorder writes (ext4 included); use it only for a tier
    you are willing to delete after a power loss. Opening runs lmdb's
    ``reader_check``, which frees the reader slots of processes that died
    (SIGKILL) inside a read transaction; a stale slot would otherwise pin old
    pages and make the file grow without bound.
Space on disk
    lmdb never shrinks its file and needs *contiguous* free pages for a large
    value, so churn fragments it: measured, ``data.mdb`` plateaued at 1.7-2.2x
    the bytes held (docs/reliability.md). A store that knows its tier's
    ``capacity_bytes`` therefore compacts itself (``env.copy(compact=True)``,
    then an atomic rename over ``data.mdb``) when, after a put or a delete, the
    file passes :data:`COMPACT_RATIO` x the bytes of the pages in use (every
    tree's branch, leaf and overflow pages: what a compaction keeps) +
    :data:`COMPACT_SLACK_BYTES`. The threshold follows the live data down as
    well as up, so ``du`` stays within 1.25 x live + 1 MiB however the mix of
    shard sizes changes; a compaction costs O(live) and comes after at least
    0.25 x live + 1 MiB written or deleted. A compaction that fails (a full
    disk) never fails the write that triggered it -- that write is committed --
    it is logged, counted (``compaction_failures``) and retried by a later
    write after a back-off (1 s doubling to 60 s). While it runs, the folder
    briefly holds the compacted copy too (at most the live data). A crash
    during a compaction leaves the old file intact; the leftover copy is removed
    at the next open. Compaction replaces the file, so a tier with a capacity
    belongs to one process: such a store locks its folder
    (:func:`~tiercache.stores.base.lock_tier_folder`); processes sharing an
    environment must open it without a capacity.
Damaged files
    lmdb keeps no checksums of its own pages and maps the file: a page past
    the end of a truncated ``data.mdb`` faults with SIGBUS when touched. Every
    open (and reopen) therefore first reads the two meta pages with plain reads
    (:func:`check_data_file`): both must be valid and the file must hold every
    page up to the newer one's ``mm_last_pg``; the named databases' roots must
    lie within those pages. Otherwise, and for lmdb's own "corrupted" errors
    and stored keys that are not UTF-8, the store raises
    :class:`~tiercache.errors.MediumDamagedError` naming the file (the engine
    opens the tier degraded). A damaged shard (header or payload) stays
    :class:`~tiercache.errors.CorruptShardError`, and so is an entry whose node
    points past the end of the file (a flipped bit in its overflow page number
    or value length), checked before py-lmdb touches the value
    (:meth:`.lmdb_meta.ValueBounds.value`: it would fault with SIGBUS). Not
    covered: damage that makes lmdb itself read out of bounds while searching
    (a branch or leaf page's own offsets).

Thread-safety: one :class:`lmdb.Environment` is shared by all threads (opened
with ``lock=True``); lmdb runs one write transaction at a time and any number
of concurrent readers. Reads do not block each other; the copy and hash
release the GIL.

Processes: several processes may open the same environment (readers beside
one writer; lmdb's lock file coordinates them) -- each through its own
store, opened *after* any ``fork()``: a store used in a process other than
the one that opened it raises :class:`~tiercache.errors.StoreError` instead
of corrupting lmdb's lock table. py-lmdb refuses to open one environment
twice in a process. A store given a ``capacity_bytes`` compacts (replaces
its file) and locks the folder, so only stores without one may be shared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Literal

import lmdb
import numpy as np

from .. import codec
from ..buffers import PAGE_BYTES
from ..errors import CorruptShardError, MediumDamagedError
from .base import ShardInfo
from .lmdb_env import (
    COMPACT_RATIO,
    COMPACT_RETRY_MAX_S,
    COMPACT_RETRY_S,
    COMPACT_SLACK_BYTES,
    DEFAULT_MAP_BYTES,
    LmdbEnvironment,
)

__all__ = ["COMPACT_RATIO", "COMPACT_RETRY_MAX_S", "COMPACT_RETRY_S", "COMPACT_SLACK_BYTES",
           "DEFAULT_MAP_BYTES", "LmdbStore"]

_DIGEST_PREFIX = b"\xff"


class LmdbStore(LmdbEnvironment):
    """Persistent store over one lmdb environment directory.

    Parameters
    ----------
    path, verify, exclusive:
        As :class:`~tiercache.stores.disk.DiskStore`; ``path`` is the environment's
        directory. ``verify="never"`` skips only the payload check (the header is
        always checked): a damaged payload is returned as stored. A store given a
        capacity compacts (replaces) its file, hence its folder lock; stores shared by
        several processes (readers beside one writer) are opened without a capacity.
    capacity_bytes:
        The tier's capacity: sizes the initial map and makes writes compact the file.
    map_size_bytes:
        Initial map size, overriding the one derived from ``capacity_bytes``.
    sync:
        ``fdatasync`` the data on every commit (see the module docstring).

    Raises :class:`~tiercache.errors.MediumDamagedError` when ``data.mdb`` is
    truncated or its structure is damaged, and
    :class:`~tiercache.errors.StoreError` when the folder cannot be opened or is
    locked by another process.
    """

    backend = "lmdb"

    # -- keys -----------------------------------------------------------------

    def _db_key(self, key: str) -> tuple[bytes, bool]:
        """The lmdb key for ``key`` and whether it is a digest. O(len(key))."""
        raw = codec.key_bytes(key)
        if 0 < len(raw) <= self._max_key:
            return raw, False
        return _DIGEST_PREFIX + hashlib.blake2b(raw, digest_size=32).digest(), True

    # -- Store API --------------------------------------------------------------

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """:meth:`get` that always verifies the payload (``verify`` ignored)."""
        return self._get(key, out, True)

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Return the shard under ``key`` (into ``out`` if given) or ``None``.

        Without ``out`` the result is a new writable, page-aligned array owned by
        the caller. O(n) for an n-byte payload (one copy, hashed on the fly).
        Thread-safe; concurrent reads run in parallel.
        """
        return self._get(key, out, self.verify == "always")

    def _get(self, key: str, out: np.ndarray | None, expect: bool) -> np.ndarray | None:
        db_key, _digest = self._db_key(key)
        where = self._where(key)

        def op(env: lmdb.Environment) -> np.ndarray | None:
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor(db=self._hdr)
                if not cursor.set_key(db_key):
                    return None
                header = codec.decode_header(self._bounds.value(cursor, where, "header"), key,
                                             where=where)
                result = codec.prepare_out(header, out, key)
                cursor = txn.cursor(db=self._data)
                if not cursor.set_key(db_key):
                    raise CorruptShardError(f"{where}: header present but payload missing")
                payload = self._bounds.value(cursor, where, "payload")
                codec.copy_verified(codec.byte_view(result), payload,
                                    header.payload_checksum if expect else None, where=where)
                return result

        return self._run(op)

    def put(self, key: str, array: np.ndarray) -> int:
        """Store a copy of ``array`` under ``key`` in one write transaction.

        Returns :meth:`stored_size` of the array. O(n): one hash pass plus
        lmdb's write of the payload (the array's own buffer when C-contiguous).
        Writers are serialised by lmdb; readers are not blocked.
        """
        payload = codec.contiguous_payload(array)
        db_key, digest = self._db_key(key)
        header = codec.encode_header(key, array, codec.payload_checksum(payload),
                                     store_key=digest)

        def op(env: lmdb.Environment) -> None:
            with env.begin(write=True) as txn:
                txn.put(db_key, header, db=self._hdr)
                txn.put(db_key, payload, db=self._data)

        self._run(op, grow_for=len(header) + payload.nbytes)
        self._maybe_compact()  # never raises: the put is committed whatever happens now
        return codec.stored_nbytes(array)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was present. O(log n), one write transaction."""
        db_key, _digest = self._db_key(key)

        def op(env: lmdb.Environment) -> bool:
            with env.begin(write=True) as txn:
                found = txn.delete(db_key, db=self._hdr)
                found_data = txn.delete(db_key, db=self._data)
                return bool(found or found_data)

        found = self._run(op, grow_for=PAGE_BYTES)
        if found:
            self._maybe_compact()  # fewer live pages: the threshold came down
        return found

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` from its header (payload untouched).

        Raises :class:`~tiercache.errors.CorruptShardError` for a damaged header.
        O(header).
        """
        db_key, _digest = self._db_key(key)
        where = self._where(key)

        def op(env: lmdb.Environment) -> bytes | None:
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor(db=self._hdr)
                if not cursor.set_key(db_key):
                    return None
                return bytes(self._bounds.value(cursor, where, "header"))

        raw_header = self._run(op)
        if raw_header is None:
            return None
        header = codec.decode_header(raw_header, key, where=where)
        return ShardInfo.from_header(header)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry (damaged or not). O(log n); no decoding."""
        if not isinstance(key, str):
            return False
        db_key, _digest = self._db_key(key)

        def op(env: lmdb.Environment) -> bool:
            with env.begin(buffers=True) as txn:
                return bool(txn.cursor(db=self._hdr).set_key(db_key))  # the value untouched

        return self._run(op)

    def rewrite_raw(self, key: str, part: Literal["header", "payload"],
                    edit: Callable[[bytes], bytes]) -> None:
        """Replace the stored bytes of ``key``'s header or payload by ``edit(old)`` in one
        write transaction, checking nothing: a test or tool simulating damage on the
        medium (lmdb refuses a second open of the environment in one process, so it
        cannot be done from outside). Raises :class:`KeyError` when ``key`` is absent.
        O(n) for an n-byte part."""
        db_key, _digest = self._db_key(key)

        def op(env: lmdb.Environment) -> None:
            db = self._hdr if part == "header" else self._data
            with env.begin(write=True) as txn:
                raw = txn.get(db_key, db=db)
                if raw is None:
                    raise KeyError(f"lmdb store {self.path}: no {part} under {key!r}")
                txn.put(db_key, edit(bytes(raw)), db=db)

        self._run(op, grow_for=PAGE_BYTES)

    def keys(self) -> Iterator[str]:
        """Snapshot of all keys, in lmdb key order. O(number of shards).

        A digest-filed key whose header is damaged cannot be named and is
        left out; every other key is listed even if its shard is damaged
        (``get`` then raises). A stored key that is not valid UTF-8 (a bit flipped
        on the medium: tiercache never writes one) raises
        :class:`~tiercache.errors.MediumDamagedError` naming ``data.mdb`` and the
        key's bytes: lmdb keeps no checksums of its own pages, so the tree holding
        it cannot be trusted either.
        """

        def op(env: lmdb.Environment) -> list[str]:
            found: list[str] = []
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor(db=self._hdr)
                for key_view in cursor.iternext(keys=True, values=False):
                    db_key = bytes(key_view)
                    if not db_key.startswith(_DIGEST_PREFIX):
                        try:
                            found.append(codec.key_from_bytes(db_key))
                        except UnicodeDecodeError as exc:
                            raise MediumDamagedError(
                                f"lmdb data file {self.path / 'data.mdb'} is damaged: stored "
                                f"key {db_key[:80]!r} is not valid UTF-8 ({exc.reason} at "
                                f"byte {exc.start})") from None
                        continue
                    try:
                        raw_header = self._bounds.value(cursor, f"lmdb store {self.path}", "header")
                        stored = codec.decode_header(raw_header).key
                    except CorruptShardError:
                        continue
                    if stored is not None:
                        found.append(stored)
            return found

        return iter(self._run(op))
