"""What a compiled variant of the decode step costs in memory and compile time, by how
many blocks one call runs.

``LlamaModel(group_layers=g)`` traces one function per (group size, batch bucket,
length bucket); ``g = n_layers`` is the whole step in one call, which the default
(``group_layers=None``) switches to once every shard is in memory -- and, since
this was measured, only when the process can spare
``n_layers x shards.WHOLE_STEP_BYTES_PER_LAYER`` (``tiercache.spare_memory``).

For SmolLM2-135M imported native (92 MiB of ggml blocks) and float32 (513 MiB),
each configuration in a fresh child process (so that each starts from the same
memory), every weight in a dict of 64-byte aligned arrays (a memory tier's
form; constant values: the figures are about memory and time, not tokens):

``first call s``
    the first ``generate`` of 2 tokens: the prompt pass and the step traced and
    compiled;
``kept MiB``
    the process's resident memory after that call minus before it, after
    ``malloc_trim`` (what the variants keep: TensorFlow's graphs, XLA's
    executables, the allocator's pools);
``peak MiB``
    the highest resident memory seen during the first call, minus before;
``ms/step``
    median decode step of 24 more tokens.

Usage::

    python bench/bench_step_memory.py                 # ~3 minutes on the 2-core VM
    python bench/bench_step_memory.py --groups 1,6,30 --batches 1,16
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

MIB = 1 << 20


def aligned_filled(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    """An array whose data starts on an ``align``-byte boundary (zero-copy handoff),
    every page written (untouched pages would all read the kernel's one zero page):
    floats 0.01, bytes 0x11 (ggml blocks with small scales and nibbles of 1)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    out: np.ndarray = raw[offset:offset + nbytes].view(dtype).reshape(shape)
    out[...] = 0.01 if dtype.kind == "f" else 0x11
    return out


def child(manifest_path: str, group: int, batch: int, threads: int) -> dict[str, float]:
    import psutil

    from tiercache.models.manifest import load_manifest
    from tiercache.models.runtime import MappingProvider
    from tiercache.models.runtime.tensorflow import LlamaModel, tf_module

    tf = tf_module()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    manifest = load_manifest(manifest_path)
    arrays = {k: aligned_filled(t.stored_shape, t.dtype) for k, t in manifest.tensors.items()}
    model = LlamaModel.from_manifest(MappingProvider(arrays), manifest, group_layers=group)
    process = psutil.Process()

    def rss() -> int:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return int(process.memory_info().rss)

    prompts = [[1, 2, 3, 4, 5]] * batch
    before = rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    model.generate_batch(prompts, 2)
    first = time.perf_counter() - started
    done.set()
    sampler.join()
    kept = rss() - before
    model.timings.reset()
    model.generate_batch(prompts, 24)
    t = model.timings
    return {"first_call_s": first, "kept_mib": kept / MIB, "peak_mib": (peak[0] - before) / MIB,
            "ms_per_step": t.decode_s / max(1, t.decoded_tokens // batch) * 1e3}


def import_layouts(folder: Path) -> dict[str, str]:
    import tiercache
    from tiercache.models import CacheSink, import_model

    out = {}
    for dtype in ("native", "float32"):
        tier = {"name": "ssd", "backend": "packed", "path": str(folder / dtype / "packed"),
                "capacity": 4 << 30, "policy": "lru"}
        with tiercache.open({"tiers": [tier]}) as cache:
            manifest = import_model("smollm2", CacheSink(cache, "ssd"), dtype=dtype,
                                    progress=False)
        out[dtype] = str(manifest.save(folder / dtype / "model.json"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="1,30", help="blocks per call (default 1,30)")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--dtypes", default="native,float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--child", nargs=4, metavar=("MANIFEST", "GROUP", "BATCH", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        manifest, group, batch, threads = args.child
        print("RESULT " + json.dumps(child(manifest, int(group), int(batch), int(threads))))
        return
    rows = []
    print(f"machine {platform.node()} ({os.cpu_count()} CPUs), {args.threads} threads")
    print(f"{'layout':<8} {'blocks/call':>11} {'batch':>5} {'first call s':>12} "
          f"{'kept MiB':>9} {'peak MiB':>9} {'ms/step':>8}")
    with tempfile.TemporaryDirectory(prefix="tiercache-step-memory-") as tmp:
        manifests = import_layouts(Path(tmp))
        for dtype in args.dtypes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for group in (int(g) for g in args.groups.split(",")):
                    done = subprocess.run(
                        [sys.executable, __file__, "--child", manifests[dtype], str(group),
                         str(batch), str(args.threads)],
                        capture_output=True, text=True, check=False)
                    line = next((ln for ln in done.stdout.splitlines()
                                 if ln.startswith("RESULT ")), None)
                    if line is None:
                        print(f"{dtype} g={group} b={batch} failed:\n{done.stderr[-2000:]}")
                        continue
                    r = json.loads(line[7:])
                    rows.append({"dtype": dtype, "group": group, "batch": batch, **r})
                    print(f"{dtype:<8} {group:>11} {batch:>5} {r['first_call_s']:>12.1f} "
                          f"{r['kept_mib']:>9.0f} {r['peak_mib']:>9.0f} "
                          f"{r['ms_per_step']:>8.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
