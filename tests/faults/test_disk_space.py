"""Hard capacity: what a disk tier occupies on disk, as ``du`` counts it, stays within its
capacity plus the documented overhead (docs/reliability.md) under a churn workload.

Bounds, with n the number of shards the tier holds:

- lmdb: ``1.25 * (capacity + 4.5 KiB * n) + 1 MiB + 8 KiB``. lmdb never shrinks its file
  and fragments under churn; the store compacts once the file passes 1.25 x capacity
  + 1 MiB (``COMPACT_RATIO``, ``COMPACT_SLACK_BYTES``), and each value rounds up to
  4 KiB pages.
- diskcache: ``capacity + 12 KiB * n + 1.25 MiB``: each value file rounds up to a 4 KiB
  block and may need two 4 KiB folders; sqlite's WAL is truncated to 1 MiB after each
  checkpoint, plus the 32 KiB shared-memory file and the database's own pages.
- packed: the data file holds at most ``2 x live + COMPACT_MIN_DEAD_BYTES`` after every
  operation (it compacts when dead bytes exceed both), padding included, plus one shard
  while a put runs; the sqlite index adds its WAL (autocheckpointed at 1000 pages, about
  4 MiB), its own pages and the 8-byte epoch and lock files. The tests lower
  ``COMPACT_MIN_DEAD_BYTES`` to 1 MiB so compactions happen within the workloads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiercache
from tiercache.stores import lmdb_env
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.packed import PackedStore
from tiercache.stores.packed import store as packed_store

pytestmark = pytest.mark.slow  # about a minute: real workloads, du measured

KiB = 1024
MiB = 1 << 20


def du(path: Path) -> int:
    """Bytes allocated under ``path`` (sum of st_blocks * 512, folders included), like du."""
    total = os.lstat(path).st_blocks * 512
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def lmdb_bound(capacity: int, shards: int) -> float:
    return 1.25 * (capacity + 4.5 * KiB * shards) + MiB + 8 * KiB


def diskcache_bound(capacity: int, shards: int) -> float:
    return capacity + 12 * KiB * shards + 1.25 * MiB


#: COMPACT_MIN_DEAD_BYTES of the packed store in these tests.
PACKED_MIN_DEAD = 1 * MiB
#: The sqlite index next to the packed data file: WAL, database pages, epoch and lock.
PACKED_INDEX_BYTES = 4.5 * MiB


def packed_bound(capacity: int, shards: int) -> float:
    # 2 x live + minimum dead bytes, alignment padding (< 4 KiB a shard), the largest shard
    return 2 * (capacity + 4 * KiB * shards) + PACKED_MIN_DEAD + 1 * MiB + PACKED_INDEX_BYTES


BOUNDS: dict[str, Callable[[int, int], float]] = {"lmdb": lmdb_bound,
                                                  "diskcache": diskcache_bound,
                                                  "packed": packed_bound}
WORKLOADS = [  # (capacity, smallest, largest shard, operations)
    pytest.param(4 * MiB, 1 * KiB, 256 * KiB, 1500, id="mixed-1K-256K"),
    pytest.param(1 * MiB, 512, 8 * KiB, 1500, id="small-0.5K-8K"),
    pytest.param(4 * MiB, 256 * KiB, 1 * MiB, 500, id="large-256K-1M"),
]


@pytest.mark.parametrize("backend", ["lmdb", "diskcache", "packed"])
@pytest.mark.parametrize(("capacity", "lo", "hi", "ops"), WORKLOADS)
def test_du_stays_within_capacity_plus_overhead(tmp_path: Path, backend: str, capacity: int,
                                                lo: int, hi: int, ops: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_store, "COMPACT_MIN_DEAD_BYTES", PACKED_MIN_DEAD)
    folder = tmp_path / "tier"
    cfg: dict[str, Any] = {"tiers": [{"name": "disk", "backend": backend, "path": str(folder),
                                      "capacity": capacity, "policy": "lru"}]}
    rng = np.random.default_rng(7)
    worst = 0.0
    with tiercache.open(cfg) as cache:
        tier = cache.tier("disk")
        for i in range(ops):
            key = f"k{int(rng.integers(400))}"
            if rng.random() < 0.1:
                cache.delete(key)
            else:
                cache.put(key, np.full(int(rng.integers(lo, hi)) // 4, i, np.float32))
            if isinstance(tier.store, PackedStore):  # the data file's own bound, every op
                live, size = tier.store.disk_usage()
                assert size <= 2 * live + PACKED_MIN_DEAD, (f"op {i}: data file {size} > "
                                                            f"2 x {live} live + minimum")
            if i % 10 == 0:
                used = du(folder)
                bound = BOUNDS[backend](capacity, len(tier))
                assert used <= bound, (f"op {i}: {used} bytes on disk > bound {bound:.0f} "
                                       f"({len(tier)} shards)")
                worst = max(worst, used / capacity)
        assert tier.used_bytes <= capacity
    print(f"{backend} {capacity // KiB} KiB, shards {lo}-{hi} B: peak du = {worst:.2f} x capacity")


def test_lmdb_without_compaction_would_outgrow_the_bound(tmp_path: Path) -> None:
    """The reason for compaction: fragmentation alone takes lmdb past 1.25 x capacity."""
    folder = tmp_path / "tier"
    capacity = 4 * MiB
    cfg = {"tiers": [{"name": "disk", "backend": "lmdb", "path": str(folder),
                      "capacity": capacity}]}
    rng = np.random.default_rng(7)
    with tiercache.open(cfg) as cache:
        store = cache.tier("disk").store
        assert isinstance(store, LmdbStore)
        store.compacting = False
        for i in range(1500):
            cache.put(f"k{int(rng.integers(400))}",
                      np.full(int(rng.integers(KiB, 256 * KiB)) // 4, i, np.float32))
    assert du(folder) > 1.25 * capacity + MiB


def test_packed_without_compaction_would_outgrow_the_bound(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for compaction: an append-only file only grows."""
    monkeypatch.setattr(packed_store, "COMPACT_MIN_DEAD_BYTES", 1 << 62)  # never compacts
    folder = tmp_path / "tier"
    capacity = 4 * MiB
    cfg = {"tiers": [{"name": "disk", "backend": "packed", "path": str(folder),
                      "capacity": capacity}]}
    rng = np.random.default_rng(7)
    with tiercache.open(cfg) as cache:
        for i in range(400):
            cache.put(f"k{int(rng.integers(400))}",
                      np.full(int(rng.integers(KiB, 256 * KiB)) // 4, i, np.float32))
        shards = len(cache.tier("disk"))
    assert du(folder) > packed_bound(capacity, shards)


def _hold_a_read_then_die(path: str, ready: Any) -> None:  # pragma: no cover - child process
    import lmdb

    env = lmdb.open(path, max_dbs=2)  # any process reading the environment, as a store does
    txn = env.begin()  # a reader slot pinning this snapshot
    txn.get(b"x")
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_reader_slot_of_a_killed_process_is_freed_on_open(tmp_path: Path) -> None:
    """A process SIGKILLed inside a read transaction leaves its slot in lock.mdb; the slot
    pins old pages so freed pages are never reused. Opening runs reader_check."""
    path = tmp_path / "tier"
    LmdbStore(path).close()
    ctx = multiprocessing.get_context("spawn")  # never carry an lmdb env across a fork
    ready = ctx.Event()
    child = ctx.Process(target=_hold_a_read_then_die, args=(str(path), ready))
    child.start()
    child.join(60)
    assert ready.is_set() and child.exitcode == -signal.SIGKILL
    store = LmdbStore(path)
    with store:
        readers = store.readers()
        assert str(child.pid) not in readers.split(), readers


def _lru_put(store: LmdbStore, live: dict[str, int], capacity: int, key: str,
             value: np.ndarray) -> None:
    """Put like a tier with an LRU policy: delete the oldest keys until the value fits."""
    need = store.stored_size(value)
    while live and sum(live.values()) + need > capacity:
        oldest = next(iter(live))
        store.delete(oldest)
        del live[oldest]
    store.put(key, value)
    live[key] = need


def test_lmdb_holds_its_bound_when_small_shards_give_way_to_large_ones(tmp_path: Path) -> None:
    """Issue 12.13: 4 MiB tier, 4,000 puts of 2.1 KiB, then 1 MiB shards, then the small
    ones deleted. The threshold used to follow the file up after each compaction and never
    come down: du stayed at 7.89 MiB against a bound of 6.02 MiB. It now follows the live
    pages both ways, and a delete may compact too."""
    capacity = 4 * MiB
    folder = tmp_path / "tier"
    store = LmdbStore(folder, capacity_bytes=capacity, sync=False)
    live: dict[str, int] = {}
    thresholds = []

    def check(step: str) -> None:
        used, bound = du(folder), lmdb_bound(capacity, len(live))
        assert used <= bound, f"{step}: du {used} > bound {bound:.0f} ({len(live)} shards)"

    with store:
        small = np.full(2150 // 4, 1, np.float32)
        for i in range(4000):
            _lru_put(store, live, capacity, f"s{i}", small)
            if i % 250 == 0:
                check(f"small put {i}")
        thresholds.append(store.compact_above_bytes)
        for i in range(3):
            _lru_put(store, live, capacity, f"big{i}", np.full(MiB // 4, i, np.float32))
            check(f"big put {i}")
        for key in [k for k in live if k.startswith("s")]:
            store.delete(key)
            del live[key]
        check("small ones deleted")
        thresholds.append(store.compact_above_bytes)
        assert thresholds[1] is not None and thresholds[0] is not None
        assert thresholds[1] < thresholds[0]  # the threshold came back down
        assert store.compactions >= 2
        assert du(folder) <= 1.25 * (3 * (MiB + 8 * KiB)) + MiB + 16 * KiB
        print(f"lmdb small -> large: du {du(folder) / MiB:.2f} MiB, bound "
              f"{lmdb_bound(capacity, len(live)) / MiB:.2f} MiB, threshold "
              f"{thresholds[0] / MiB:.2f} -> {thresholds[1] / MiB:.2f} MiB, "
              f"{store.compactions} compactions")


def _fail_compaction_copy(path: Path) -> None:
    if lmdb_env.COMPACT_DIR in str(path):
        raise OSError(28, "No space left on device", str(path))
    _REAL_FSYNC(path)


def _fail_compaction_rename(path: Path) -> None:
    if path.name == "tier":  # the folder, fsynced after the rename
        raise OSError(5, "Input/output error", str(path))
    _REAL_FSYNC(path)


_REAL_FSYNC = lmdb_env.fsync_path


@pytest.mark.parametrize("step", ["copy", "rename"])
def test_a_put_that_committed_stands_when_the_compaction_after_it_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        step: str) -> None:
    """Issue 12.2 (store side): compaction on a full disk used to turn a committed put into a
    reported failure. The put now returns, the value reads back, the failure is logged and
    counted, and a later write compacts once the disk has room. ``rename``: the copy is in
    place, the folder's fsync fails (an ``OSError``, not a ``StoreError``)."""
    with LmdbStore(tmp_path / "tier", sync=False) as setup:  # no capacity: never compacts
        for i in range(24):
            setup.put(f"k{i}", np.full(64 * KiB, i, np.float32))  # 256 KiB each
        for i in range(20):
            setup.delete(f"k{i}")  # ~5 MiB of free pages, 1 MiB live
    store = LmdbStore(tmp_path / "tier", capacity_bytes=MiB, sync=False)
    with store:
        before = store.compactions
        monkeypatch.setattr(lmdb_env, "fsync_path", _fail_compaction_copy
                            if step == "copy" else _fail_compaction_rename)
        value = np.full(64 * KiB, 263, np.float32)
        with caplog.at_level("WARNING", logger="tiercache"):
            assert store.put("k6", value) == store.stored_size(value)  # no StoreError
        got = store.get("k6")
        assert got is not None and np.array_equal(got, value)
        assert store.compactions == before and store.compaction_failures == 1
        reason = "No space left on device" if step == "copy" else "Input/output error"
        assert reason in caplog.text and "the write stands" in caplog.text
        store.put("k7", value)  # within the back-off: no second attempt
        assert store.compaction_failures == 1
        monkeypatch.setattr(lmdb_env, "fsync_path", _REAL_FSYNC)  # the disk has room again
        store.compaction_backoff.expire()  # the back-off has passed
        store.put("k8", value)
        # the copy step left the file as it was: compacted now; the rename step had done it
        assert store.compactions == before + (1 if step == "copy" else 0)
        assert store.compact_above_bytes is not None
        assert store.file_nbytes() <= store.compact_above_bytes
        for key in ("k6", "k7", "k8", "k23"):
            got = store.get(key)
            assert got is not None and got[0] == (23 if key == "k23" else 263)


def test_an_lmdb_put_that_does_not_commit_leaves_the_old_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiercache.errors import StoreError

    store = LmdbStore(tmp_path / "tier", capacity_bytes=MiB, map_size_bytes=256 * KiB,
                      sync=False)
    with store:
        old = np.full(1024, 1, np.float32)
        store.put("k", old)

        def refuse(self: LmdbStore, need: int) -> None:
            raise StoreError("map growth refused")

        monkeypatch.setattr(LmdbStore, "grow_map", refuse)
        with pytest.raises(StoreError, match="refused"):
            store.put("k", np.full(MiB // 4, 2, np.float32))  # does not fit the map
        got = store.get("k")
        assert got is not None and np.array_equal(got, old)
