"""The buffer pool recycles a buffer only when no array references it."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from tiercache.buffers import MIN_POOLED_BYTES, PAGE_BYTES, BufferPool

N = 4 * MIN_POOLED_BYTES


def test_buffer_is_reused_after_the_last_view_dies() -> None:
    pool = BufferPool()
    a = pool.acquire(N)
    address = a.ctypes.data
    assert address % 4096 == 0
    typed = a.view(np.float32).reshape(-1, 4)
    del a
    b = pool.acquire(N)
    assert b.ctypes.data != address  # `typed` still views the first buffer
    del typed
    c = pool.acquire(N)
    assert c.ctypes.data == address
    assert pool.reused == 1


def test_exported_buffers_keep_it_alive() -> None:
    pool = BufferPool()
    a = pool.acquire(N)
    a[:] = 7
    address = a.ctypes.data
    mv = a.data
    del a
    b = pool.acquire(N)
    b[:] = 1
    assert b.ctypes.data != address
    assert mv[0] == 7 and mv[N - 1] == 7  # never overwritten while exported


def test_budget_is_respected_and_free_buffers_are_released() -> None:
    pool = BufferPool(max_bytes=3 * N)
    held = [pool.acquire(N) for _ in range(5)]  # only 3 tracked, 2 untracked
    assert pool.stats()["tracked_bytes"] <= 3 * N
    del held
    big = pool.acquire(2 * N)  # needs the free buffers released to be tracked
    assert pool.stats()["tracked_bytes"] <= 3 * N
    assert big.nbytes == 2 * N


def test_small_and_empty_buffers_are_aligned() -> None:
    pool = BufferPool()
    for n in (0, 1, 4095, MIN_POOLED_BYTES - 1, MIN_POOLED_BYTES, N + 3):
        buf = pool.acquire(n)
        assert buf.nbytes == n and buf.flags.writeable
        assert buf.ctypes.data % 4096 == 0


def test_allocated_nbytes_is_the_raw_buffer_behind_acquire() -> None:
    pool = BufferPool()
    for nbytes in (0, 1, 4096, MIN_POOLED_BYTES - 1, MIN_POOLED_BYTES, MIN_POOLED_BYTES + 1,
                   3 * MIN_POOLED_BYTES + 5):
        buffer = pool.acquire(nbytes)
        raw = buffer.base
        assert isinstance(raw, np.ndarray) and raw.flags.owndata
        assert raw.nbytes == BufferPool.allocated_nbytes(nbytes), nbytes
        assert BufferPool.allocated_nbytes(nbytes) >= nbytes + PAGE_BYTES - 1


def test_pages_resident_follows_the_page_cache(tmp_path: Path) -> None:
    """mincore's answer: anonymous memory is resident; a mapped file's pages are after
    a read and are not once the kernel dropped them (fdatasync, then DONTNEED)."""
    from tiercache.buffers import pages_resident

    assert pages_resident(np.ones(1 << 18, np.float32))
    assert pages_resident(np.empty(0, np.float32))
    path = tmp_path / "w.bin"
    np.arange(8 << 20, dtype=np.float32).tofile(path)  # 32 MiB: beyond read-ahead
    with open(path, "rb") as f:
        os.fdatasync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(mapped, np.float32)
        assert not pages_resident(view)
        assert float(view[: 1 << 18].sum()) > 0  # touch the first MiB
        assert pages_resident(view[1000: 1 << 18]) and not pages_resident(view)
        del view
        mapped.close()
