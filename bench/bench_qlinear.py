"""Where to dequantize, per matrix: numpy into a reused buffer, or inside the compiled step.

For SmolLM2's matrix shapes and types (Q4_1 576x576, 192x576, 1536x576, 576x1536;
Q8_0 1536x576 and the 49152x576 embedding / output head), random weights quantized
by gguf-py, and batches of 1, 4 and 16 rows, the median time of ``x @ W.T``:

``numpy``
    ``quant.dequantize`` into a reused float32 buffer, then an XLA matmul (what the
    decoder did for every stored shard before it multiplied by blocks);
``blocks``
    ``qlinear.quantized_linear`` under XLA on the uint8 blocks as stored (fused
    per-block sums up to ``FUSED_MAX_ROWS`` rows, in-graph dequantization above);
``float32``
    an XLA matmul by the float32 matrix (what a decoded tier serves);
``kernel``
    ``kernels.block_matmul``, the C kernel on the blocks as stored (what a native
    import runs on where the CPU has AVX-512; "-" where the extension is not built).

Usage::

    python bench/bench_qlinear.py                 # ~1 min on the 2-core VM
    python bench/bench_qlinear.py --repeat 200
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

SHAPES = [("Q4_1", 576, 576), ("Q4_1", 192, 576), ("Q4_1", 1536, 576), ("Q4_1", 576, 1536),
          ("Q8_0", 1536, 576), ("Q8_0", 49152, 576)]


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per cell (50)")
    parser.add_argument("--batches", default="1,4,16")
    args = parser.parse_args()
    import tensorflow as tf
    from gguf import GGMLQuantizationType, quants

    from tiercache.models import quant
    from tiercache.models.runtime import kernels
    from tiercache.models.runtime.qlinear import quantized_linear

    blocks_fn = tf.function(lambda x, b: quantized_linear(tf, x, b), jit_compile=True)
    matmul = tf.function(lambda x, w: tf.matmul(x, w, transpose_b=True), jit_compile=True)

    def numpy_way(x: object, blocks: np.ndarray, buffer: np.ndarray) -> object:
        return matmul(x, tf.constant(quant.dequantize(blocks, out=buffer)))
    rng = np.random.default_rng(0)
    print(f"machine {platform.node()} ({os.cpu_count()} CPUs), tensorflow {tf.__version__}, "
          f"median of {args.repeat} calls, microseconds")
    print(f"{'type':<5} {'rows x cols':>12} {'batch':>5} {'numpy':>9} {'blocks':>9} "
          f"{'float32':>9} {'kernel':>9} {'numpy/blocks':>13} {'blocks/kernel':>14}")
    for name, rows, cols in SHAPES:
        weights = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        raw = quants.quantize(weights, getattr(GGMLQuantizationType, name))
        blocks = np.ascontiguousarray(raw.reshape(rows, cols // 32, -1))
        exact = quant.dequantize(blocks)
        buffer = np.empty_like(exact)
        tb, tw = tf.constant(blocks), tf.constant(exact)
        for batch in (int(b) for b in args.batches.split(",")):
            xn = rng.standard_normal((batch, cols)).astype(np.float32)
            x = tf.constant(xn)
            cells = [median_us(partial(numpy_way, x, blocks, buffer), args.repeat),
                     median_us(partial(blocks_fn, x, tb), args.repeat),
                     median_us(partial(matmul, x, tw), args.repeat)]
            out = np.empty((batch, rows), np.float32)
            kernel = (median_us(partial(kernels.block_matmul, xn, blocks, out), args.repeat)
                      if kernels.built() else float("nan"))
            print(f"{name:<5} {f'{rows}x{cols}':>12} {batch:>5} {cells[0]:>9.0f} "
                  f"{cells[1]:>9.0f} {cells[2]:>9.0f} {kernel:>9.0f} "
                  f"{cells[0] / cells[1]:>12.2f}x {cells[1] / kernel:>13.2f}x")

if __name__ == "__main__":
    main()
