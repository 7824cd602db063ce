"""A/B of the TensorFlow decoder's modes in one process, with the matmul floor.

SmolLM2-135M imported as float32 into a 2 GiB memory tier (everything in
RAM), then in interleaved rounds: the matmul floor of one step (only the
products, weights resident, one ``tf.function``), this tree's decoder (whole
step in one XLA call -- the default when every shard is in memory -- and block
by block), and optionally an older decoder module (``--baseline
tree/tiercache/models/runtime/tensorflow.py``, e.g. from ``git worktree add
/tmp/base HEAD~n``), each generating ``--tokens`` greedy tokens; then batches
through :meth:`LlamaModel.generate_batch`. Prints medians of ms/token, their
ratio to the floor of the same round, the per-pass split and tokens/s.

Usage: ``python bench/bench_decoder_ab.py [--tokens 32] [--rounds 3]
[--batches 4,16] [--baseline PATH]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tiercache
from tiercache.models import DictSink, import_model
from tiercache.models.runtime.tensorflow import LlamaModel, tf_module, to_tensor

PROMPT_IDS = [504, 3575, 282, 4649, 314]  # "The capital of France is"


def load_baseline(path: str) -> Any:
    """An older ``runtime/tensorflow.py`` loaded inside this package (its relative imports)."""
    spec = importlib.util.spec_from_file_location("tiercache.models.runtime.baseline_tf", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="4,16")
    parser.add_argument("--baseline", help="an older runtime/tensorflow.py to compare with")
    args = parser.parse_args()
    tf = tf_module()
    sink = DictSink()
    manifest = import_model("smollm2", sink, dtype="float32", progress=False)
    hp = manifest.llama_hparams()
    cache = tiercache.open({"tiers": [{"name": "ram", "backend": "memory",
                                       "capacity": "2GiB"}]})
    for key, array in sink.arrays.items():
        cache.put(key, array)
    del sink
    models: dict[str, Any] = {}
    if args.baseline:
        models["baseline"] = load_baseline(args.baseline).LlamaModel(cache, hp)
    models["whole step (default)"] = LlamaModel(cache, hp)
    models["block by block"] = LlamaModel(cache, hp, group_layers=1)
    step_keys = [k for k in models["block by block"].schedule()[1:-2]]
    weights = [to_tensor(cache.get(k))[0] for k in step_keys if len(cache.get(k).shape) == 2]
    weights.append(to_tensor(cache.get("token_embd.weight"))[0])

    def products(x: Any) -> Any:
        return tf.add_n([tf.reduce_sum(tf.matmul(x[:, :w.shape[1]], w, transpose_b=True))
                         for w in weights])

    floor = tf.function(products)

    x = tf.ones([1, hp.ffn_dim])
    floor(x)
    for model in models.values():
        model.generate(PROMPT_IDS, 20)  # traces, compiles
    ms: dict[str, list[float]] = {name: [] for name in [*models, "floor"]}
    split: dict[str, list[tuple[float, float, float]]] = {name: [] for name in models}
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _ in range(args.tokens):
            floor(x).numpy()
        ms["floor"].append((time.perf_counter() - started) / args.tokens * 1e3)
        for name, model in models.items():
            model.timings.reset()
            model.generate(PROMPT_IDS, args.tokens + 1)
            t = model.timings
            ms[name].append(t.decode_s / t.decoded_tokens * 1e3)
            split[name].append((t.fetch_s / t.forward_passes * 1e3,
                                t.handoff_s / t.forward_passes * 1e3,
                                t.compute_s / t.forward_passes * 1e3))
    for name, values in ms.items():
        ratio = statistics.median(a / b for a, b in zip(values, ms["floor"], strict=True))
        line = f"batch 1 {name:22s} {statistics.median(values):6.1f} ms/token {ratio:4.2f}x floor"
        if name in split:
            f, h, c = (statistics.median(s[i] for s in split[name]) for i in range(3))
            line += f" (per pass: fetch {f:.2f} handoff {h:.2f} compute {c:.1f} ms)"
        print(line, [round(v, 1) for v in values])
    model = models["whole step (default)"]
    single = 1e3 / statistics.median(ms["whole step (default)"])
    for size in (int(b) for b in args.batches.split(",") if b):
        prompts = [[*PROMPT_IDS[:2 + i % 4], 10 + i] for i in range(size)]
        model.generate_batch(prompts, 4)
        rates: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            model.timings.reset()
            started = time.perf_counter()
            outs = model.generate_batch(prompts, args.tokens)
            wall = time.perf_counter() - started
            t = model.timings
            rates.append((t.decoded_tokens / t.decode_s, sum(map(len, outs)) / wall))
        decode = statistics.median(r[0] for r in rates)
        overall = statistics.median(r[1] for r in rates)
        print(f"batch {size:2d}: {decode:6.1f} tokens/s decoding ({decode / single:.1f}x batch 1), "
              f"{overall:6.1f} tokens/s with the prompt pass")
    print("traces:", model.traces())
    cache.close()


if __name__ == "__main__":
    main()
