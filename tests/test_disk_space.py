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
from tiercache.stores import lmdb_store, packed_store
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.packed_store import PackedStore

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


def test_lmdb_without_compaction_would_outgrow_the_bound(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for compaction: fragmentation alone takes lmdb past 1.25 x capacity."""
    monkeypatch.setattr(lmdb_store.LmdbStore, "_maybe_compact", lambda self: None)
    folder = tmp_path / "tier"
    capacity = 4 * MiB
    cfg = {"tiers": [{"name": "disk", "backend": "lmdb", "path": str(folder),
                      "capacity": capacity}]}
    rng = np.random.default_rng(7)
    with tiercache.open(cfg) as cache:
        for i in range(1500):
            cache.put(f"k{int(rng.integers(400))}",
                      np.full(int(rng.integers(KiB, 256 * KiB)) // 4, i, np.float32))
    assert du(folder) > 1.25 * capacity + MiB


def test_packed_without_compaction_would_outgrow_the_bound(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for compaction: an append-only file only grows."""
    monkeypatch.setattr(packed_store, "COMPACT_MIN_DEAD_BYTES", PACKED_MIN_DEAD)
    monkeypatch.setattr(PackedStore, "_maybe_compact", lambda self, data: None)
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
    store = LmdbStore(path)
    txn = store._env_or_raise().begin()  # a reader slot pinning this snapshot
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
        readers = store._env_or_raise().readers()
        assert str(child.pid) not in readers.split(), readers
