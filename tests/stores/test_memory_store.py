"""The RAM tier: what its capacity really bounds, read-only hits that stay read-only,
and the arrays a shard cannot be (masked arrays and other ndarray subclasses)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from memcap import run_capped

import tiercache
from tiercache import codec
from tiercache.buffers import MIN_POOLED_BYTES, PAGE_BYTES, BufferPool
from tiercache.errors import ShardFormatError, TierCacheError
from tiercache.origins import NpyDirOrigin
from tiercache.stores.memory import (
    ENTRY_OVERHEAD_BYTES,
    SMALL_ALIGN_BYTES,
    MemoryStore,
    allocated_nbytes,
    shard_cost_nbytes,
)

MiB = 1 << 20


def _ram_only(capacity: int | str, policy: str = "lru") -> dict[str, Any]:
    return {"tiers": [{"name": "ram", "backend": "memory", "capacity": capacity,
                       "policy": policy}]}


def _buffer_of(kept: np.ndarray) -> object:
    """The buffer behind the read-only memoryview a stored array lies over."""
    base = kept.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and base.readonly
    return base.obj


# --- capacity: the real cost of a shard ---------------------------------------------------

def fill_one_byte_shards(puts: int, policy: str) -> tuple[int, int, int]:
    """In a child: put ``puts`` one-byte shards into a 1 MiB RAM tier through the engine;
    return (resident count, resident bytes, RSS growth in bytes)."""
    keys = [f"blk.{i % 30}.attn_q.weight#{i:06d}" for i in range(puts)]  # made before the baseline
    one = np.ones(1, np.uint8)
    with tiercache.TieredCache.from_config(_ram_only("1MiB", policy)) as cache:
        gc.collect()
        before = psutil.Process().memory_info().rss
        for key in keys:
            cache.put(key, one)
        gc.collect()
        grown = psutil.Process().memory_info().rss - before
        ram = cache.stats()["tiers"]["ram"]
        cache.check_invariants()
        return int(ram["resident_count"]), int(ram["resident_bytes"]), grown


@pytest.mark.parametrize("policy", ["lru", "arc"])
def test_a_1mib_tier_of_one_byte_shards_stays_near_1mib(policy: str) -> None:
    result = run_capped(fill_one_byte_shards, 10_000, policy, limit_bytes=4 << 30, timeout_s=60)
    assert result.ok, result.describe()
    count, resident, grown = result.value
    assert resident <= MiB
    assert 0 < count < MiB // ENTRY_OVERHEAD_BYTES  # was 10_000: every put fitted
    # was ~44 MiB (a page of slack per one-byte shard); the rest is the engine's own
    # per-put bookkeeping and allocator noise
    assert grown < 6 * MiB, f"RSS grew {grown / MiB:.1f} MiB for a 1 MiB tier"


def test_zero_size_shards_are_not_free() -> None:
    store = MemoryStore()
    empty = np.empty((0, 4), np.float32)
    assert store.stored_size(empty) >= ENTRY_OVERHEAD_BYTES
    assert store.put("e", empty) == store.stored_size(empty)
    with tiercache.TieredCache.from_config(_ram_only(1)) as cache:
        with pytest.raises(TierCacheError, match=r"fits no tier|too small"):
            cache.put("e", empty)
        assert cache.stats()["tiers"]["ram"]["resident_count"] == 0
    capacity = 10 * shard_cost_nbytes(0)
    with tiercache.TieredCache.from_config(_ram_only(capacity)) as cache:
        for i in range(100):
            cache.put(f"e{i}", empty)
        assert cache.stats()["tiers"]["ram"]["resident_count"] == 10


@pytest.mark.parametrize("nbytes", [0, 1, 63, 64, 4096, MIN_POOLED_BYTES - 1, MIN_POOLED_BYTES,
                                    MIN_POOLED_BYTES + 1, 3 * MiB])
def test_the_charge_is_the_allocation_made_plus_the_overhead(nbytes: int) -> None:
    store = MemoryStore()
    array = np.arange(nbytes, dtype=np.uint8)
    assert store.put("k", array) == store.stored_size(array) == shard_cost_nbytes(nbytes)
    info = store.info("k")
    assert info is not None and info.stored_nbytes == store.stored_size(array)
    kept = store.get("k")
    assert kept is not None
    np.testing.assert_array_equal(kept, array)
    buffer = _buffer_of(kept)
    assert isinstance(buffer, np.ndarray) and buffer.flags.owndata
    assert buffer.nbytes == allocated_nbytes(nbytes)
    if nbytes < MIN_POOLED_BYTES:
        assert allocated_nbytes(nbytes) == nbytes + SMALL_ALIGN_BYTES - 1  # no page of slack
        assert kept.ctypes.data % SMALL_ALIGN_BYTES == 0
    else:
        assert allocated_nbytes(nbytes) == BufferPool.size_class(nbytes) + PAGE_BYTES - 1
        assert kept.ctypes.data % PAGE_BYTES == 0


def test_the_overhead_covers_what_the_store_allocates_per_entry() -> None:
    keys = [f"blk.{i % 30}.ffn_down.weight#{i:06d}" for i in range(2000)]
    shards: list[np.ndarray] = [np.ones(1, np.float32), np.ones((2, 3), np.int16),
                                np.empty(0, np.uint8)]
    for array in shards:
        store = MemoryStore()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for key in keys:
                store.put(key, array)
            per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
        finally:
            tracemalloc.stop()
        assert per_entry <= store.stored_size(array), (array.shape, per_entry)
        store.close()


# --- read-only hits -------------------------------------------------------------------------

def _assert_frozen(array: np.ndarray) -> None:
    assert not array.flags.writeable
    for candidate in (array, array.reshape(-1), array[...], array.view(np.uint8)):
        with pytest.raises(ValueError, match="WRITEABLE"):
            candidate.flags.writeable = True
    with pytest.raises(ValueError):
        array.reshape(-1)[0] = 1


@pytest.mark.parametrize("nbytes", [4, 4096, 2 * MIN_POOLED_BYTES])
def test_a_hit_cannot_be_made_writable_again(nbytes: int) -> None:
    store = MemoryStore()
    source = np.arange(nbytes // 4, dtype=np.float32).reshape(-1, 1)
    store.put("k", source)
    hit = store.get("k")
    assert hit is not None and hit is store.get("k")  # a hit is the dict lookup, no copy
    _assert_frozen(hit)
    np.testing.assert_array_equal(store.get("k"), source)


def test_an_adopted_array_cannot_be_made_writable_again() -> None:
    store = MemoryStore()
    buffer = codec.empty_aligned(2 * MIN_POOLED_BYTES).view(np.float32)  # a pooled read buffer
    buffer[:] = 3
    store.adopt("k", buffer)
    kept = store.get("k")
    assert kept is not None and np.shares_memory(kept, buffer)  # adopted: no copy
    _assert_frozen(kept)
    assert not buffer.flags.writeable
    assert (kept == 3).all()


@pytest.mark.parametrize("case", ["page-padded small buffer", "view into a larger array",
                                  "non-contiguous", "memory map"])
def test_adopt_copies_what_would_cost_more_than_a_put(case: str, tmp_path: Path) -> None:
    if case == "page-padded small buffer":
        array = codec.empty_aligned(100)
        array[:] = 7
    elif case == "view into a larger array":
        array = np.full(1 << 20, 7, np.uint8)[:100]
    elif case == "non-contiguous":
        array = np.full((20, 10), 7, np.uint8)[:, ::2]
    else:
        mm = np.memmap(tmp_path / "m.bin", dtype=np.uint8, mode="w+", shape=(100,))
        mm[:] = 7
        array = mm[:]
    store = MemoryStore()
    assert store.adopt("k", array) == store.stored_size(array)
    kept = store.get("k")
    assert kept is not None and not np.shares_memory(kept, array)
    buffer = _buffer_of(kept)
    assert isinstance(buffer, np.ndarray) and buffer.nbytes == allocated_nbytes(array.nbytes)
    assert (kept == 7).all()
    _assert_frozen(kept)


def test_the_engine_hands_out_frozen_arrays_on_every_path(tmp_path: Path) -> None:
    """A RAM hit, the get that promotes a shard from a disk tier (the RAM tier adopts the
    buffer read) and the get that fills RAM from the origin all return arrays numpy
    cannot make writable, and the cached value never changes."""
    origin = tmp_path / "origin"
    NpyDirOrigin.write(origin, {"o": np.full(1000, 5, np.float32)})
    cfg: dict[str, Any] = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "8MiB"},
        {"name": "ssd", "backend": "lmdb", "path": str(tmp_path / "ssd"), "capacity": "8MiB",
         "promote_after": 1}], "origin": {"kind": "npy", "path": str(origin)}}
    value = np.full(MIN_POOLED_BYTES // 4, 2, np.float32)
    with tiercache.open(cfg) as cache:
        cache.put("k", value, tier="ssd")
        promoted = cache.get("k")
        assert cache.where("k")[0] == "ram"
        from_origin = cache.get("o")
        assert cache.where("o") == ["ram"]
        cache.put("r", value)
        for key, got, want in (("k", promoted, 2), ("o", from_origin, 5),
                               ("r", cache.get("r"), 2)):
            _assert_frozen(got)
            assert (cache.get(key) == want).all()


# --- what a shard cannot be -----------------------------------------------------------------

def test_masked_arrays_are_refused_with_what_to_do() -> None:
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(ShardFormatError, match=r"MaskedArray.*mask would be lost.*\.data.*"
                                               r"\.mask.*two shards.*\.filled"):
        codec.check_storable(masked)
    with pytest.raises(ShardFormatError, match="MaskedArray"):
        MemoryStore().put("m", masked)
    with tiercache.TieredCache.from_config(_ram_only("1MiB")) as cache:
        with pytest.raises(ShardFormatError, match="MaskedArray"):
            cache.put("m", masked)
        assert "m" not in cache
        cache.put("m.data", masked.data)  # what the message says to do
        cache.put("m.mask", np.ma.getmaskarray(masked))
        restored = np.ma.masked_array(cache.get("m.data"), mask=cache.get("m.mask"))
        assert restored.tolist() == [1.0, None, 3.0]


class _Tagged(np.ndarray):
    """A subclass carrying state a shard would drop."""

    unit = "m/s"


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("make", [lambda: np.matrix([[1.0, 2.0]]),
                                  lambda: np.arange(4.0).view(_Tagged)],
                         ids=["matrix", "custom-subclass"])
def test_other_subclasses_are_refused(make: Any) -> None:
    with pytest.raises(ShardFormatError, match=r"ndarray subclass.*np\.asarray"):
        codec.check_storable(make())
    with tiercache.TieredCache.from_config(_ram_only("1MiB")) as cache, \
            pytest.raises(ShardFormatError, match="subclass"):
        cache.put("x", make())


def test_memmap_is_a_plain_buffer_and_is_accepted(tmp_path: Path) -> None:
    mm = np.memmap(tmp_path / "w.bin", dtype=np.float32, mode="w+", shape=(8, 8))
    mm[:] = 1.5
    codec.check_storable(mm)
    codec.check_storable(mm[2:4])
    with tiercache.TieredCache.from_config(_ram_only("1MiB")) as cache:
        cache.put("w", mm)
        got = cache.get("w")
        assert type(got) is np.ndarray and (got == 1.5).all()


def test_trusted_code_can_still_hand_a_hit_to_tensorflow_without_a_copy() -> None:
    """The TensorFlow adapter exports a RAM hit through DLPack, which needs a writable
    array: it takes one from the buffer under the hit (``writable_view``), the
    documented way around the protection; numpy's own API still refuses."""
    from tiercache.models.runtime.tensorflow import _writable_alias, zero_copy_ok
    from tiercache.stores.memory import writable_view

    store = MemoryStore()
    for nbytes in (256, 2 * MIN_POOLED_BYTES):
        store.put("w", np.arange(nbytes // 4, dtype=np.float32).reshape(-1, 8))
        hit = store.get("w")
        assert hit is not None
        alias = writable_view(hit)
        assert alias is not None and alias.flags.writeable
        assert alias.ctypes.data == hit.ctypes.data and alias.shape == hit.shape
        assert alias.dtype == hit.dtype and np.array_equal(alias, hit)
        assert zero_copy_ok(hit) and _writable_alias(hit) is not None
    assert writable_view(np.zeros(3)) is None  # not a memory store's array


def test_a_dropped_large_shard_gives_its_buffer_back_to_the_pool() -> None:
    """The read-only memoryview holds the pooled buffer exactly as long as an array
    over it lives: once the store and every hit let go, the pool reuses it."""
    gc.collect()  # earlier tests' garbage frees its pool buffers now, not midway
    pool_buffer = codec.empty_aligned(2 * MIN_POOLED_BYTES)
    address = pool_buffer.ctypes.data
    del pool_buffer
    store = MemoryStore()
    store.put("k", np.ones(2 * MIN_POOLED_BYTES, np.uint8))
    hit = store.get("k")
    assert hit is not None and hit.ctypes.data == address  # the freed pool buffer, reused
    store.delete("k")
    gc.collect()
    other = codec.empty_aligned(2 * MIN_POOLED_BYTES)
    assert other.ctypes.data != address  # `hit` still lies over it
    assert (hit == 1).all()
    del hit, other
    gc.collect()
    assert codec.empty_aligned(2 * MIN_POOLED_BYTES).ctypes.data == address
