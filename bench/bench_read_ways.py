"""Ways of reading a model's shards from a cold disk, uncapped and under a memory cap.

A 420 MB file cut into SmolLM2-float32-sized pieces (30 blocks x the seven
projections, page-aligned), read in that order, page cache dropped before each
pass, four ways: page faults of a mapping alone (what the packed store's views
get once a shard was seen), page faults after ``posix_fadvise(WILLNEED)``
``--depth`` pieces ahead, ``madvise(MADV_POPULATE_READ)`` of the pieces ahead on
two threads, and ``O_DIRECT`` reads into a reused ring of buffers on two
threads. Then the same passes in a cgroup v1 memory group capped at the
process's own memory + 128 MiB (a RAM tier, allocated) + ``--slack-mib``, as
bench/bench_cold.py caps its children. Prints GB/s (median of ``--repeat``
passes) and MB read per pass.

Needs root (``drop_caches``, cgroups) and Linux 5.14+ for ``MADV_POPULATE_READ``.
The lab note docs/lab-notes/2026-12-05-llama-cpp-cap.md quotes it.

Usage::

    sudo python bench/bench_read_ways.py                 # ~2 minutes
    sudo python bench/bench_read_ways.py --depth 9 --repeat 5
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as bs

MIB = 1 << 20
PAGE = 4096
MADV_POPULATE_READ = 22


def pieces() -> tuple[list[int], list[int], int]:
    """Sizes and page-aligned offsets of one float32 SmolLM2 pass; the file size."""
    per_block = [576 * 576, 192 * 576, 192 * 576, 576 * 576, 1536 * 576, 1536 * 576,
                 576 * 1536]
    sizes = [4 * n for _ in range(30) for n in per_block]
    offsets, end = [], 0
    for size in sizes:
        end = -(-end // PAGE) * PAGE
        offsets.append(end)
        end += size
    return sizes, offsets, end


def one_pass(path: Path, how: str, depth: int) -> float:
    """Seconds for one pass read ``how``."""
    sizes, offsets, _ = pieces()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    data = np.frombuffer(mapping, np.uint8)
    base = data.ctypes.data
    direct = os.open(path, os.O_RDONLY | os.O_DIRECT) if how == "direct" else -1
    ring = [mmap.mmap(-1, 4 * MIB) for _ in range(depth + 3)] if how == "direct" else []
    free = list(range(len(ring)))
    pool = ThreadPoolExecutor(2)

    def populate(i: int) -> int:
        start = offsets[i] // PAGE * PAGE
        libc.madvise(base + start, offsets[i] + sizes[i] - start, MADV_POPULATE_READ)
        return -1

    def read_direct(i: int, slot: int) -> int:
        start = offsets[i] // PAGE * PAGE
        length = -(-(offsets[i] + sizes[i] - start) // PAGE) * PAGE
        view, done = memoryview(ring[slot]), 0
        while done < length:
            got = os.preadv(direct, [view[done:length]], start + done)
            if got <= 0:
                break
            done += got
        return slot

    started = time.perf_counter()
    ahead: dict[int, Future[int] | None] = {}
    checksum = 0
    for i in range(len(sizes)):
        for j in range(i + 1, min(i + 1 + depth, len(sizes))):
            if j in ahead or how == "faults":
                continue
            if how == "willneed":
                os.posix_fadvise(fd, offsets[j], sizes[j], os.POSIX_FADV_WILLNEED)
                ahead[j] = None
            elif how == "populate":
                ahead[j] = pool.submit(populate, j)
            else:
                ahead[j] = pool.submit(read_direct, j, free.pop())
        pending = ahead.pop(i, None)
        if how == "direct":
            slot = pending.result() if pending is not None else read_direct(i, free.pop())
            checksum += int(np.frombuffer(ring[slot], np.uint8)[:sizes[i]:PAGE].sum())
            free.append(slot)
            continue
        if pending is not None:
            pending.result()
        checksum += int(data[offsets[i]:offsets[i] + sizes[i]:PAGE].sum())  # every page
    elapsed = time.perf_counter() - started
    pool.shutdown()
    del data
    mapping.close()
    os.close(fd)
    if direct >= 0:
        os.close(direct)
    if checksum < 0:  # keeps the reads from being skipped
        raise AssertionError
    return elapsed


def child(args: argparse.Namespace) -> None:
    """Run the passes (in a capped group when ``--group``), print one line per way."""
    ram_tier = None
    if args.group:
        group = Path(args.group)
        (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
        ram_tier = np.ones(128 * MIB // 8)  # the RAM tier's memory, touched
        stat = bs.cgroup_stat(group)
        limit = stat.get("total_rss", stat.get("rss", 0)) + args.slack_mib * MIB
        (group / "memory.limit_in_bytes").write_text(f"{limit}\n")
    _, _, total = pieces()
    for how in ("faults", "willneed", "populate", "direct"):
        times, reads = [], []
        for _ in range(args.repeat):
            bs.drop_caches()
            before = bs.read_bytes()
            times.append(one_pass(Path(args.file), how, args.depth))
            reads.append((bs.read_bytes() - before) / 1e6)
        print(f"{'capped' if args.group else 'uncapped':<9} {how:<9} "
              f"{total / statistics.median(times) / 1e9:6.2f} GB/s  "
              f"{statistics.median(reads):6.0f} MB read/pass  "
              f"(passes {', '.join(f'{t * 1e3:.0f}' for t in times)} ms)", flush=True)
    del ram_tier


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--depth", type=int, default=6, help="pieces read ahead")
    parser.add_argument("--repeat", type=int, default=3, help="passes per way")
    parser.add_argument("--slack-mib", type=int, default=160)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.file:
        child(args)
        return
    _, _, total = pieces()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1]) as tmp:
        path = Path(tmp) / "pieces.bin"
        with path.open("wb") as fh:
            rng = np.random.default_rng(0)
            for start in range(0, total, 64 * MIB):
                fh.write(rng.integers(0, 255, min(64 * MIB, total - start),
                                      dtype=np.uint8).tobytes())
        base = [sys.executable, __file__, "--file", str(path), "--depth", str(args.depth),
                "--repeat", str(args.repeat), "--slack-mib", str(args.slack_mib)]
        print(f"{total / 1e6:.0f} MB in {len(pieces()[0])} pieces, {args.depth} ahead, "
              f"medians of {args.repeat} passes; cap: own memory + 128 MiB + "
              f"{args.slack_mib} MiB", flush=True)
        subprocess.run(base, check=True)
        group = Path(bs.CGROUP_MEMORY_ROOT) / f"tiercache-bench-read-ways-{os.getpid()}"
        group.mkdir()
        try:
            subprocess.run([*base, "--group", str(group)], check=True)
        finally:
            bs.remove_group(group)


if __name__ == "__main__":
    main()
