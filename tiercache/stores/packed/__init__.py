"""The packed store: every shard in one append-only data file, served as memory-mapped views.

Why
    A model's weights are read in the same order every forward pass. Laid out
    back to back in that order in one file -- as a GGUF file is, and as
    llama.cpp memory-maps it -- a cold pass reads the disk sequentially, at its
    full bandwidth; one file per shard (the diskcache store) read at 60-70 % of
    it on the benchmark machine (docs/performance.md). This store keeps that
    layout and still behaves like a tier: shards can be added, replaced and
    deleted at any time, and the space of dead ones is reclaimed.
Layout (in the store's directory)
    ``data.<generation>.bin``
        The shards, each a :mod:`~tiercache.codec` header followed by the
        payload, at an offset aligned to :data:`.datafile.LARGE_ALIGN_BYTES` (shards
        of at least :data:`.datafile.LARGE_SHARD_BYTES`) or to 64 bytes (smaller ones), so
        every payload is at least 64-byte aligned for zero-copy handoff.
    ``index.sqlite``
        ``key -> (offset, length)`` plus the current generation and the live
        bytes, in sqlite (WAL mode).
    ``epoch``
        An 8-byte change counter, mapped shared by every process that opens the
        store; bumped after every committed change. A reader compares it to the
        value it last saw (a memory read) to know whether its cached views may
        be stale.
    ``lock``
        Writers hold an exclusive ``flock`` on it for each write: one writer at a
        time across the instances that share the folder; readers never wait for it.
    ``.tiercache.lock``
        A tier's store (``exclusive``, the default when a capacity is given) holds
        :func:`~tiercache.stores.base.lock_tier_folder`'s lock on it while open: a
        second process -- or a second exclusive store in this one -- opening the
        folder is refused with a message naming the holder's pid. Instances opened
        without ``exclusive`` (tools, tests) share the folder through the per-write
        ``flock`` and the epoch counter.
Writes are appends
    A put writes header and payload past the current end of the data file,
    then commits the index row. Bytes in a file are never rewritten, so a view
    handed out earlier stays correct for as long as it is referenced, whatever
    happens to its key afterwards (the contract of :meth:`Store.get_view`), in
    this process and in others. A replaced or deleted shard's bytes become dead
    space; when dead bytes exceed both the live bytes and
    :data:`.store.COMPACT_MIN_DEAD_BYTES`, the store *compacts*: it copies the live
    shards into ``data.<generation + 1>.bin`` (fsynced), switches the index to
    it in one transaction and unlinks the old file (mappings of it stay valid).
    :meth:`PackedStore.compact` does the same on demand, optionally in a given
    key order: pass a model's schedule to lay its shards out in reading order.
    So the directory holds at most ``2 x live bytes + COMPACT_MIN_DEAD_BYTES``
    plus one shard.
Crashes
    A process killed after writing a shard but before committing its row leaves
    unreferenced bytes at the end of the file (dead space, reclaimed by the next
    compaction); one killed during a compaction leaves a ``data.<n>.bin`` file
    the index does not name (:meth:`PackedStore.sweep_orphans`, i.e. ``tiercache
    verify --repair``, removes it). Plain puts are not fsynced (as the other
    disk stores): after an OS crash a row may point at lost bytes, which the
    checksum (or the length check) turns into
    :class:`~tiercache.errors.CorruptShardError`; compactions are fsynced before
    the index switches to the new file.
Reads
    :meth:`PackedStore.get_view` maps the data file (private, copy-on-write:
    the array is read-only and can never change the file) and returns an array
    over the payload; with ``verify="always"`` the payload checksum is checked
    the first time each stored shard is viewed in this process. Views are
    cached per key: a repeated call costs a dict lookup and a read of the
    epoch counter. :meth:`PackedStore.get` copies from the mapping into the
    destination and checks the checksum in the same pass.
    :meth:`PackedStore.advise` (what the prefetcher calls on a zero-copy
    tier) starts reading a shard this process has not read before into the
    page cache without waiting (``posix_fadvise(WILLNEED)`` in
    read-ahead-window sized pieces, the most Linux reads per call); later
    passes are left to the kernel's read-ahead over the file, which reads it
    front to back since the shards are in reading order. A shard read before
    and found evicted is counted (:meth:`PackedStore.page_evictions`: the page
    cache does not hold the loop). :meth:`PackedStore.release` drops a shard's
    pages from the mapping and the page cache after use (a loop larger than
    memory keeps the shards it chose: :mod:`tiercache.serving.keep`); the next
    advise reads it ahead again.

Damage
    A damaged ``index.sqlite`` -- sqlite says it is not a database or malformed, its
    schema is not ours, or a row holds what :meth:`PackedStore.put` never writes (a
    key that is not UTF-8 bytes, an offset or length that is not a non-negative
    integer, a meta value that is not a count) -- raises
    :class:`~tiercache.errors.MediumDamagedError` naming the file and the row, from
    the constructor or :meth:`PackedStore.keys`: the engine opens such a tier
    degraded and ``tiercache verify --repair`` empties it. A row read by its key
    (:meth:`PackedStore.get`) with a damaged offset or length is that entry's
    :class:`~tiercache.errors.CorruptShardError`, as is a row pointing past the end of
    the data file (an OS crash can lose unsynced appends); compaction drops the
    latter. Every shard's bytes are checked against their header, which names the
    key, so a damaged index never serves another shard's bytes.
Closing
    After :meth:`PackedStore.close` -- and for a call that runs into it -- every
    method raises :class:`~tiercache.errors.CacheClosedError`; views handed out
    stay valid.

Modules: :mod:`.store` (:class:`PackedStore`), :mod:`.index` (``index.sqlite``),
:mod:`.datafile` (data files, the epoch counter, the writers' flock, compaction's
copy), :mod:`.pagecache` (what a process knows of each shard; read ahead, evictions
noticed, release after use), :mod:`.readahead` (``mincore``, ``posix_fadvise`` and
``madvise`` helpers).

Thread-safety: all methods may be called from any thread. Index and file state
are guarded by one lock; the view cache is read without it (GIL-atomic dict
operations). Writers in several processes are serialised by the ``flock``.
"""

from __future__ import annotations

from .store import PackedStore

__all__ = ["PackedStore"]
