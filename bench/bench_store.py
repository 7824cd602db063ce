"""Measure store read and write throughput against a plain ``np.copyto``.

Usage::

    .venv/bin/python bench/bench_store.py --sizes 4MiB,64MiB --repeat 40

For every size it times, in one run: ``get(key, out=buf)`` and plain
``get(key)`` for the lmdb, diskcache and memory stores (warm page cache: the
key has been read before timing starts), the same ``get(out=)`` with
``verify="never"`` (what the checksum costs), lmdb ``get(out=)`` with the
pre-tuning verify loop (hash every destination chunk after copying it), and
``put`` throughput, both for new keys (the store and the page cache grow) and
for overwrites cycling over four keys (steady state: freed pages are reused).

The baseline is ``np.copyto`` of the same bytes into a preallocated,
page-aligned buffer. Shared VMs drift by tens of percent within a minute, so
every timed call of an operation is paired with one baseline call right
before it, and ``x copyto`` is the ratio of the two medians. Figures are
medians over ``--repeat`` calls in GB/s (10**9 bytes/s), with the
10th-90th percentile range of the operation itself.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiercache import codec
from tiercache.stores.base import Store, VerifyMode
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.lmdb_store import LmdbStore
from tiercache.stores.memory import MemoryStore
from tiercache.units import parse_size


@dataclass(frozen=True)
class Result:
    """One measured operation at one size, with its paired baseline timings."""

    name: str
    nbytes: int
    seconds: list[float]
    baseline_seconds: list[float]

    def gbps(self, q: float = 0.5) -> float:
        """Throughput at latency quantile ``q`` (0.5: median), GB/s."""
        ordered = sorted(self.seconds)
        latency = ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
        return self.nbytes / latency / 1e9

    def ratio(self) -> float:
        """Median baseline time over median operation time (1.0: as fast as copyto)."""
        return statistics.median(self.baseline_seconds) / statistics.median(self.seconds)


class Bench:
    """Times operations on ``nbytes``-byte shards, each call paired with a baseline copy."""

    def __init__(self, src: np.ndarray, repeat: int) -> None:
        self.src = src
        self.repeat = repeat
        self.scratch = codec.empty_aligned(src.nbytes).view(src.dtype).reshape(src.shape)
        self.results: list[Result] = []

    def baseline(self) -> None:
        np.copyto(self.scratch, self.src)

    def measure(self, name: str, fn: Callable[[], object], warmup: int = 2) -> None:
        """Time ``repeat`` calls of ``fn``, each right after one untimed-for-``fn`` baseline."""
        for _ in range(warmup):
            self.baseline()
            fn()
        ops, bases = [], []
        for _ in range(self.repeat):
            start = time.perf_counter()
            self.baseline()
            middle = time.perf_counter()
            fn()
            ops.append(time.perf_counter() - middle)
            bases.append(middle - start)
        self.results.append(Result(name, self.src.nbytes, ops, bases))


@contextmanager
def hash_destination_after_copy() -> Iterator[None]:
    """Temporarily use the pre-tuning verify loop (copy a chunk, then hash the copy)."""
    saved = codec.HASH_SOURCE_FIRST_MAX_BYTES
    codec.HASH_SOURCE_FIRST_MAX_BYTES = -1
    try:
        yield
    finally:
        codec.HASH_SOURCE_FIRST_MAX_BYTES = saved


def bench_store(bench: Bench, name: str, make: Callable[[VerifyMode], Store],
                out: np.ndarray) -> None:
    """put, get(out=), get() (plus lmdb's pre-tuning loop and verify=never) for one store."""
    src = bench.src
    store = make("always")
    fresh, cycle = iter(range(10**9)), iter(range(10**9))
    bench.measure(f"{name} put (new key)", lambda: store.put(f"p{next(fresh)}", src))
    bench.measure(f"{name} put (overwrite)", lambda: store.put(f"o{next(cycle) % 4}", src))
    store.put("k", src)
    bench.measure(f"{name} get(out=)", lambda: store.get("k", out=out))
    assert np.array_equal(out, src)
    bench.measure(f"{name} get()", lambda: store.get("k"))
    if name == "lmdb":
        with hash_destination_after_copy():
            bench.measure("lmdb get(out=) [before: hash dst after copy]",
                          lambda: store.get("k", out=out))
    store.close()
    if store.persistent:  # same directory, reopened without payload checks
        unverified = make("never")
        bench.measure(f"{name} get(out=) verify=never", lambda: unverified.get("k", out=out))
        assert np.array_equal(out, src)
        unverified.close()


def bench_size(nbytes: int, repeat: int, workdir: Path) -> list[Result]:
    """All measurements for shards of ``nbytes`` bytes (float32 payload)."""
    src = codec.empty_aligned(nbytes).view(np.float32)
    src[:] = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    out = codec.empty_aligned(nbytes).view(np.float32)
    bench = Bench(src, repeat)
    bench.measure("np.copyto (baseline)", lambda: np.copyto(out, src))

    def lmdb(verify: VerifyMode, sync: bool = True) -> Store:
        return LmdbStore(workdir / f"lmdb-{nbytes}-{sync}", verify=verify, sync=sync)

    def disk(verify: VerifyMode) -> Store:
        return DiskcacheStore(workdir / f"dc-{nbytes}", verify=verify)

    def memory(verify: VerifyMode) -> Store:
        return MemoryStore()

    for name, make in (("lmdb", lmdb), ("diskcache", disk), ("memory", memory)):
        bench_store(bench, name, make, out)
    unsynced = lmdb("always", sync=False)
    fresh, cycle = iter(range(10**9)), iter(range(10**9))
    bench.measure("lmdb put (new key) sync=False", lambda: unsynced.put(f"p{next(fresh)}", src))
    bench.measure("lmdb put (overwrite) sync=False",
                  lambda: unsynced.put(f"o{next(cycle) % 4}", src))
    unsynced.close()
    return bench.results


def format_table(results: list[Result]) -> str:
    """Markdown table: operation, size, median GB/s, p10-p90 range, paired ratio to copyto."""
    lines = ["| operation | size | median GB/s | p10-p90 GB/s | x copyto |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.nbytes / 2**20:g} MiB | {r.gbps():.2f} | "
                     f"{r.gbps(0.9):.2f}-{r.gbps(0.1):.2f} | {r.ratio():.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4MiB,64MiB",
                        help="comma-separated shard sizes (default: 4MiB,64MiB)")
    parser.add_argument("--repeat", type=int, default=40, help="timed calls per figure")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to create the stores (default: a temporary directory)")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tiercache-bench-", dir=args.dir))
    try:
        results = [r for size in sizes for r in bench_size(size, args.repeat, workdir)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"# {' '.join(sys.argv)}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
