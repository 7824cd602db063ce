"""Matrix products straight on ggml blocks, inside the compiled decode step.

A natively imported shard of type Q4_0, Q4_1 or Q8_0 is a uint8 array
``[rows, blocks, block_bytes]`` (:mod:`tiercache.models.quant`); the decoder
hands it to TensorFlow as it is stored, and :func:`quantized_linear` computes
``h @ W.T`` from the blocks without a float32 copy of ``W`` in numpy:

- few rows of ``h`` (a one-token step of a small batch): per block, the sum of
  quantized values times the matching inputs, scaled by the block's ``d``
  (``y = sum_b d_b * sum_j q_bj x_bj``; Q4_1 adds ``sum_b m_b * sum_j x_bj``,
  Q4_0 subtracts ``8 d_b sum_j x_bj``). Under XLA this is one fused pass over
  the blocks: for a 1536 x 576 Q4_1 tensor, 206 us against 977 us for numpy
  dequantization into a reused buffer + matmul (float32 weights: 152 us);
- more rows (a batch of 16, a prompt): the blocks are dequantized inside the
  compiled function and multiplied once (819 us against 1,265 us in numpy).

(2-core VM, ``python bench/bench_qlinear.py``, 2026-12-05.)

The result equals dequantize-then-multiply up to float rounding (the sums run
in another order), not bit for bit: ``quant.dequantize`` stays the exact
reference (gguf-py's values), and the decoder's eager path (``compile=False``)
uses it. Other block types (K-quants, Q5) are decoded in numpy as before.

Functions of TensorFlow tensors, traced into the caller's ``tf.function``; no
state. Thread-safety: pure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quant import COMPUTED_AS_STORED, GGML_TYPES

#: Block types :func:`quantized_linear` computes on, by block bytes.
TF_BLOCK_TYPES: dict[int, str] = {GGML_TYPES[name].block_bytes: name
                                  for name in sorted(COMPUTED_AS_STORED)}
#: Up to this many rows of ``h``, the fused per-block sums; above, dequantize + matmul
#: (measured crossing points on the 2-core VM: Q8_0's fused sums lose from 4 rows on).
FUSED_MAX_ROWS: dict[str, int] = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 1}

__all__ = ["FUSED_MAX_ROWS", "TF_BLOCK_TYPES", "dequantized", "is_tf_block", "quantized_linear"]


def is_tf_block(dtype: Any, shape: tuple[int, ...]) -> bool:
    """Whether a shard of this numpy dtype and shape is a block tensor
    :func:`quantized_linear` computes on (uint8 ``[rows, blocks, 18 | 20 | 34]``). O(1)."""
    return dtype == np.uint8 and len(shape) == 3 and int(shape[2]) in TF_BLOCK_TYPES


def _f16(tf: Any, blocks: Any, at: int) -> Any:
    """The float16 field at byte ``at`` of every block as float32, ``[rows, blocks]``."""
    return tf.cast(tf.bitcast(blocks[..., at:at + 2], tf.float16), tf.float32)


def _fields(tf: Any, blocks: Any) -> tuple[str, Any, Any, Any]:
    """``(type, d, m, quants)``: scales ``[rows, nb]``, Q4_1's minima (else None), and
    the quantized values as float32 ``[rows, nb, 32]`` in element order (Q4: low
    nibbles then high ones, unsigned 0..15; Q8_0: signed)."""
    name = TF_BLOCK_TYPES[int(blocks.shape[-1])]
    d = _f16(tf, blocks, 0)
    if name == "Q8_0":
        q = tf.cast(tf.bitcast(blocks[..., 2:], tf.int8), tf.float32)
        return name, d, None, q
    qs = blocks[..., 4:] if name == "Q4_1" else blocks[..., 2:]
    q = tf.cast(tf.concat([tf.bitwise.bitwise_and(qs, 15), tf.bitwise.right_shift(qs, 4)],
                          axis=-1), tf.float32)
    return name, d, (_f16(tf, blocks, 2) if name == "Q4_1" else None), q


def dequantized(tf: Any, blocks: Any) -> Any:
    """The float32 matrix ``[rows, blocks * 32]`` of a Q4_0/Q4_1/Q8_0 block tensor."""
    name, d, m, q = _fields(tf, blocks)
    if name == "Q4_0":
        q = q - 8.0
    w = q * d[..., None]
    if m is not None:
        w = w + m[..., None]
    rows, nb = blocks.shape[0], blocks.shape[1]
    return tf.reshape(w, [rows, nb * 32])


def quantized_linear(tf: Any, x: Any, blocks: Any) -> Any:
    """``x @ W.T`` for ``x`` ``[n, in]`` (static ``n``) and ``W`` the Q4_0/Q4_1/Q8_0
    block tensor ``blocks`` ``[out, in / 32, block_bytes]`` (uint8); ``[n, out]``.
    O(n * out * in)."""
    n = x.shape[0]
    if n is None or n > FUSED_MAX_ROWS[TF_BLOCK_TYPES[int(blocks.shape[-1])]]:
        return tf.matmul(x, dequantized(tf, blocks), transpose_b=True)
    name, d, m, q = _fields(tf, blocks)
    nb = blocks.shape[1]
    xb = tf.reshape(x, [-1, 1, nb, 32])                            # [n, 1, nb, 32]
    inner = tf.reduce_sum(q[None] * xb, axis=-1)                    # [n, out, nb]
    y = tf.reduce_sum(inner * d[None], axis=-1)                     # [n, out]
    if name == "Q8_0":
        return y
    sums = tf.reduce_sum(tf.reshape(x, [-1, nb, 32]), axis=-1)      # [n, nb]
    if name == "Q4_1":
        return y + tf.matmul(sums, m, transpose_b=True)
    return y - 8.0 * tf.matmul(sums, d, transpose_b=True)           # Q4_0: q - 8
