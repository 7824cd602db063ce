"""How the float32 weights' layout changes XLA's matrix products at batch 1, 4 and 16.

One decode step's layer matrices (every block's seven projections, random
float32 of the model's shapes, resident as tensors) multiplied under XLA by
``rows`` input rows, three ways: ``x @ W.T`` with ``W`` stored ``[out, in]``
(the GGUF layout the decoder gets today), ``x @ W`` with ``W`` stored ``[in,
out]``, and ``x @ tf.transpose(W)`` (the transpose inside the function); plus
the output head alone. Medians of ``--repeat`` calls, in milliseconds.

Measured on the 2-core VM (docs/lab-notes/2026-12-05-llama-cpp-cap.md): at 16
rows ``[in, out]`` takes 22 ms against 35 for ``[out, in]``, at 4 rows 15-19
against 29-31, at 1 row about the same.

Usage::

    python bench/bench_weight_layout.py                 # SmolLM2's shapes, ~1 minute
    python bench/bench_weight_layout.py --rows 1,16 --repeat 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from tiercache.models.llama import LlamaHParams
from tiercache.models.runtime.tensorflow import tf_module

PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def smollm2_hparams() -> LlamaHParams:
    """SmolLM2-135M's shapes (30 blocks, width 576, ffn 1536, vocab 49152)."""
    return LlamaHParams(n_layers=30, dim=576, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                        vocab_size=49152, head_dim=64, context_length=2048)


def median_ms(fn: Any, args: tuple[Any, ...], repeat: int) -> float:
    fn(*args).numpy()  # compile
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args).numpy()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", default="1,4,16", help="input rows (batch sizes)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tf = tf_module()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    hp = smollm2_hparams()
    shapes = hp.tensor_shapes()
    rng = np.random.default_rng(0)
    out_in = [[rng.standard_normal(shapes[f"blk.0.{p}.weight"], dtype=np.float32) * 0.02
               for p in PROJECTIONS] for _ in range(hp.n_layers)]
    w_rows = [[tf.constant(w) for w in layer] for layer in out_in]
    w_cols = [[tf.constant(np.ascontiguousarray(w.T)) for w in layer] for layer in out_in]
    head = rng.standard_normal((hp.vocab_size, hp.dim), dtype=np.float32) * 0.02
    head_rows, head_cols = tf.constant(head), tf.constant(np.ascontiguousarray(head.T))

    def products(x: Any, weights: Any, how: str) -> Any:
        total = tf.zeros([])
        for layer in weights:
            for w in layer:  # each matrix gets an input of its width, one product each
                width = w.shape[0] if how == "in_out" else w.shape[1]
                h = tf.tile(x, [1, -(-width // x.shape[1])])[:, :width]
                if how == "out_in":
                    y = tf.matmul(h, w, transpose_b=True)
                elif how == "in_out":
                    y = tf.matmul(h, w)
                else:
                    y = tf.matmul(h, tf.transpose(w))
                total += tf.reduce_sum(y[:, :1])
        return total

    layers = {how: tf.function(lambda x, w, how=how: products(x, w, how), jit_compile=True)
              for how in ("out_in", "in_out", "transposed")}
    head_fns = {"out_in": tf.function(lambda x, w: tf.matmul(x, w, transpose_b=True),
                                      jit_compile=True),
                "in_out": tf.function(lambda x, w: tf.matmul(x, w), jit_compile=True)}
    print(f"{hp.n_layers} blocks x {len(PROJECTIONS)} projections, width {hp.dim}, "
          f"{args.threads} threads, medians of {args.repeat} (ms)")
    print(f"{'rows':>4} {'[out,in]':>9} {'[in,out]':>9} {'in-graph T':>11} "
          f"{'head [out,in]':>14} {'head [in,out]':>14}")
    for rows in (int(r) for r in args.rows.split(",")):
        x = tf.constant(rng.standard_normal((rows, hp.dim), dtype=np.float32))
        a = median_ms(layers["out_in"], (x, w_rows), args.repeat)
        b = median_ms(layers["in_out"], (x, w_cols), args.repeat)
        c = median_ms(layers["transposed"], (x, w_rows), args.repeat)
        d = median_ms(head_fns["out_in"], (x, head_rows), args.repeat)
        e = median_ms(head_fns["in_out"], (x, head_cols), args.repeat)
        print(f"{rows:>4} {a:>9.2f} {b:>9.2f} {c:>11.2f} {d:>14.2f} {e:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
