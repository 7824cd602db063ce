"""Measure RedisStore reads against a plain redis-py GET of the same bytes.

Usage::

    .venv/bin/python bench/bench_redis.py --sizes 4MiB,64MiB --repeat 20

Starts its own ``redis-server`` on a free 127.0.0.1 port (``--save ""
--appendonly no``) and stops it at the end, unless ``--url`` names a server to
use. For every size it stores one random float32 shard twice: as a plain
Redis string (``SET plain <bytes>``) and through :class:`RedisStore` (chunked
at ``--chunk-size``, default 8 MiB, so 4 MiB shards are inline and 64 MiB ones
are 8 chunks), then times, in one run:

- ``redis-py GET`` of the plain string (the baseline: hiredis parser, bytes out);
- one GET of the plain string through the store's raw RESP reader straight into
  a preallocated buffer, no checksum (what a socket can do: the ceiling);
- ``RedisStore.get(key, out=buf)`` (the engine's hot path, checksum verified),
  ``get()`` (fresh page-aligned array), ``get(out=)`` with ``verify="never"``,
  and ``get(out=)`` with ``raw_reads=False`` (the redis-py fallback path);
- ``RedisStore.put``.

Redis and the client share this machine's cores, and the VM drifts, so every
timed call is paired with one baseline GET right before it; ``x redis-py`` is
median(baseline) / median(operation). Figures are medians over ``--repeat``
calls in GB/s (10**9 bytes/s), with the operation's 10th-90th percentile range.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import redis

from tiercache import codec
from tiercache.stores.redis import RedisStore
from tiercache.stores.redis.options import DEFAULT_CHUNK_BYTES
from tiercache.stores.redis.resp import RespConnection, pack_command
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
        """Median baseline time over median operation time (1.0: as fast as redis-py)."""
        return statistics.median(self.baseline_seconds) / statistics.median(self.seconds)


def measure(name: str, nbytes: int, fn: Callable[[], object], baseline: Callable[[], object],
            repeat: int, warmup: int = 2) -> Result:
    """Time ``repeat`` calls of ``fn``, each right after one timed baseline call."""
    for _ in range(warmup):
        baseline()
        fn()
    ops, bases = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        baseline()
        middle = time.perf_counter()
        fn()
        ops.append(time.perf_counter() - middle)
        bases.append(middle - start)
    return Result(name, nbytes, ops, bases)


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The given URL, or a throw-away local server's (stopped on exit)."""
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: `make redis-server-installed`, or pass --url")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="tiercache-bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def raw_get_into(address: tuple[str, int], key: bytes, dst: memoryview) -> Callable[[], None]:
    """One GET over a raw RESP connection into ``dst`` (no checksum): the socket ceiling."""
    conn = RespConnection(address, time.monotonic() + 10)

    def run() -> None:
        deadline = time.monotonic() + 60
        conn.send(pack_command(b"GET", key), deadline)
        assert conn.read_bulk_len(deadline) == dst.nbytes
        conn.read_into(dst, deadline, None)
        conn.expect_crlf(deadline)

    return run


def bench_size(url: str, nbytes: int, repeat: int, chunk_bytes: int) -> list[Result]:
    """All measurements for one shard size (float32 payload)."""
    src = codec.empty_aligned(nbytes).view(np.float32)
    src[:] = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    out = codec.empty_aligned(nbytes).view(np.float32)
    client = redis.Redis.from_url(url)
    client.set(b"plain", src.tobytes())

    def baseline() -> object:
        return client.get(b"plain")

    results = [measure("redis-py GET (baseline)", nbytes, baseline, baseline, repeat)]
    kwargs = client.connection_pool.connection_kwargs
    ceiling = raw_get_into((kwargs["host"], kwargs["port"]), b"plain", codec.byte_view(out).data)
    results.append(measure("raw RESP GET into buffer, no checksum (ceiling)", nbytes, ceiling,
                           baseline, repeat))
    stores = {name: RedisStore(url, namespace="bench", chunk_bytes=chunk_bytes, **options)
              for name, options in (("default", {}), ("never", {"verify": "never"}),
                                    ("redis-py", {"raw_reads": False}))}
    store = stores["default"]
    counter = iter(range(10**9))
    results.append(measure("RedisStore.put", nbytes, lambda: store.put(f"p{next(counter) % 2}",
                                                                       src), baseline, repeat))
    store.put("k", src)
    results.append(measure("**RedisStore.get(out=)**", nbytes, lambda: store.get("k", out=out),
                           baseline, repeat))
    assert np.array_equal(out, src)
    results.append(measure("RedisStore.get()", nbytes, lambda: store.get("k"), baseline, repeat))
    results.append(measure("RedisStore.get(out=) verify=never", nbytes,
                           lambda: stores["never"].get("k", out=out), baseline, repeat))
    results.append(measure("RedisStore.get(out=) raw_reads=False (redis-py path)", nbytes,
                           lambda: stores["redis-py"].get("k", out=out), baseline, repeat))
    assert np.array_equal(out, src)
    for key in ("k", "p0", "p1"):
        store.delete(key)
    client.delete(b"plain")
    for opened in stores.values():
        opened.close()
    client.close()
    return results


def format_table(results: list[Result], chunk_bytes: int) -> str:
    """Markdown table: operation, size, chunks, median GB/s, p10-p90 and paired ratio."""
    lines = ["| operation | size | median GB/s | p10-p90 GB/s | x redis-py GET |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.nbytes / 2**20:g} MiB | {r.gbps():.2f} | "
                     f"{r.gbps(0.9):.2f}-{r.gbps(0.1):.2f} | {r.ratio():.2f} |")
    return "\n".join(lines) + f"\n\nchunk size {chunk_bytes / 2**20:g} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4MiB,64MiB",
                        help="comma-separated shard sizes (default: 4MiB,64MiB)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per figure")
    parser.add_argument("--chunk-size", default=str(DEFAULT_CHUNK_BYTES),
                        help="RedisStore chunk size (default 8MiB)")
    parser.add_argument("--url", default=None,
                        help="use this server instead of starting one on 127.0.0.1")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    chunk_bytes = parse_size(args.chunk_size)
    with redis_server(args.url) as url:
        results = [r for size in sizes for r in bench_size(url, size, args.repeat, chunk_bytes)]
    print(f"# {' '.join(sys.argv)}")
    print(format_table(results, chunk_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
