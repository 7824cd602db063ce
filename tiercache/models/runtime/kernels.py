"""Matrix products on ggml blocks in C: ``x @ W.T`` for Q4_0, Q4_1 and Q8_0 shards.

:func:`block_matmul` calls the ``_qmatmul`` extension (``_qmatmul.c``, built at
install; optional): each block of 32 weights is decoded in registers with the
reference formulas and multiplied by four rows of ``x`` at once, so the float32
matrix is never written -- the cost that bounds TensorFlow's path at several rows
(it dequantizes every block into memory before a product; performance.md, "what
did not help"). On the 2-core VM (AVX-512, 2 threads, 2026-12-05, ``python
bench/bench_qlinear.py``, medians of 50 calls) a 1536 x 576 Q4_1 product at 16 rows
takes 113 us against 498 us for TensorFlow's blocks under XLA and 271 us for an XLA
float32 product (those cells include a call's dispatch, ~0.1 ms); at one row 19 us.

The result equals ``x @ quant.dequantize(W).T`` up to float rounding (the decoded
weights are equal bit for bit; the sums run in another order). Outputs are split
between threads (OpenMP in the extension, ``threads`` of them, default the CPUs
this process may use), with the GIL released. In a child made by ``fork`` the
products run on one thread (GNU OpenMP's thread pool does not survive a fork).

:func:`available` says whether the fast kernel runs here (the extension built and
the CPU has AVX-512); the plain-C kernel (``plain=True``) is the same arithmetic
without vectors, kept for machines without AVX-512 and for the tests.

Cost: O(rows * outputs * inputs). Thread-safety: pure; concurrent calls must not
share ``out``.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from ..manifest import ModelManifest
from ..quant import GGML_TYPES

_extension: ModuleType | None
try:
    from . import _qmatmul as _extension  # type: ignore[attr-defined,no-redef]
except ImportError:  # pragma: no cover - an install without a C compiler
    _extension = None

#: The extension's type codes, by block bytes.
KERNEL_TYPES: dict[int, int] = {GGML_TYPES[name].block_bytes: code
                                for code, name in enumerate(("Q4_0", "Q4_1", "Q8_0"))}

__all__ = ["KERNEL_TYPES", "attend_one_token", "available", "block_matmul",
           "block_matmul_lean", "built", "is_kernel_block", "suits", "wanted"]

#: Threads per product: the CPUs this process may run on (1 in a forked child).
_threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _one_thread_after_fork() -> None:
    global _threads
    _threads = 1


os.register_at_fork(after_in_child=_one_thread_after_fork)


def built() -> bool:
    """Whether the extension was built (a C compiler at install). O(1)."""
    return _extension is not None


def available() -> bool:
    """Whether :func:`block_matmul`'s vector kernel runs here (built, AVX-512). O(1)."""
    return _extension is not None and bool(_extension.has_avx512())


def wanted(kernels: bool | None, compile: bool = True) -> bool:
    """A decoder's ``kernels`` argument checked: ``None`` means no; ``ValueError`` for
    ``True`` without the extension or with ``compile=False`` (the eager path, for
    debugging, is TensorFlow's). ``True`` runs the plain-C kernel where the CPU has no
    AVX-512 (correct, slower). O(1)."""
    if kernels and not compile:
        raise ValueError("kernels=True and compile=False: the eager path is TensorFlow's")
    if kernels and not built():
        raise ValueError("kernels=True, but tiercache's C extension was not built (no C "
                         "compiler at install): reinstall with gcc available")
    return bool(kernels)


def suits(manifest: ModelManifest, compile: bool = True) -> bool:
    """Whether a model imported as ``manifest`` should run on the kernel: it runs here,
    ``compile`` is on, and the first block's query matrix is kept as Q4_0/Q4_1/Q8_0
    blocks (a native import of such a GGUF). O(1)."""
    info = manifest.tensors.get(f"{manifest.key_prefix}blk.0.attn_q.weight")  # keys as stored
    return (compile and available() and info is not None
            and info.encoding in ("Q4_0", "Q4_1", "Q8_0"))


def is_kernel_block(array: np.ndarray) -> bool:
    """Whether ``array`` is a Q4_0/Q4_1/Q8_0 block shard (uint8 ``[rows, blocks,
    18 | 20 | 34]``, C-contiguous) the kernel multiplies by. O(1)."""
    return (array.dtype == np.uint8 and array.ndim == 3
            and int(array.shape[2]) in KERNEL_TYPES and array.flags.c_contiguous)


def block_matmul(x: np.ndarray, blocks: np.ndarray, out: np.ndarray | None = None, *,
                 threads: int | None = None, plain: bool = False) -> np.ndarray:
    """``x @ W.T`` for float32 ``x`` ``[M, K]`` and ``W`` the block shard ``blocks``
    ``[N, K / 32, block_bytes]``; returns ``out`` (float32 ``[M, N]``, allocated when
    None). Raises :class:`RuntimeError` when the extension is not built, and
    :class:`ValueError` on a shape, dtype or layout it does not take. O(M * N * K)."""
    if _extension is None:
        raise RuntimeError("tiercache's _qmatmul extension is not built (no C compiler at "
                           "install): reinstall with gcc available")
    if not is_kernel_block(blocks):
        raise ValueError(f"not a Q4_0/Q4_1/Q8_0 block shard: dtype {blocks.dtype}, shape "
                         f"{blocks.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n_in = (x.shape if x.ndim == 2 else (-1, -1))
    n_out, n_blocks = int(blocks.shape[0]), int(blocks.shape[1])
    if x.ndim != 2 or n_in != n_blocks * 32:
        raise ValueError(f"x must be [rows, {n_blocks * 32}], got {x.shape}")
    if out is None:
        out = np.empty((rows, n_out), dtype=np.float32)
    elif (out.shape != (rows, n_out) or out.dtype != np.float32
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape "
                         f"{(rows, n_out)}")
    _extension.qmatmul(x, blocks, out, KERNEL_TYPES[int(blocks.shape[2])], rows, n_in, n_out,
                       threads or _threads, plain)
    return out


def block_matmul_lean(x: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """:func:`block_matmul` for the decoder's own arrays, without its Python checks (~2.5
    us a call, ~0.5 ms a SmolLM2 token): ``x`` must be a C-contiguous float32 ``[M, K]``
    and ``blocks`` a kernel block shard (:func:`is_kernel_block`). The extension still
    checks every buffer's size against the shapes (``ValueError``), so a wrong call
    cannot read or write out of bounds. O(M * N * K)."""
    rows, n_out = x.shape[0], blocks.shape[0]
    out = np.empty((rows, n_out), dtype=np.float32)
    _extension.qmatmul(x, blocks, out, KERNEL_TYPES[blocks.shape[2]],  # type: ignore[union-attr]
                       rows, x.shape[1], n_out, _threads, False)
    return out


def attend_one_token(q: np.ndarray, k: np.ndarray, v: np.ndarray, keys: np.ndarray,
                     values: np.ndarray, mask: np.ndarray, scale: float, *,
                     threads: int | None = None) -> np.ndarray:
    """Grouped-query attention of one new token per row, in C: ``q`` ``[B, 1, heads, hd]``,
    the new ``k``/``v`` ``[B, 1, kv, hd]``, the cache's ``keys`` ``[B, kv, hd, S]`` and
    ``values`` ``[B, kv, S, hd]``, the additive ``mask`` ``[B, S]``; returns ``[B, 1,
    heads * hd]``: ``softmax(scale * q . [keys | k] + [mask | 0]) @ [values | v]`` per
    head, the new token attending to itself. (numpy's batched matmuls over 48 small
    matrices took ~190 us a layer at batch 16 in the decode loop, this ~20.)
    ``ValueError`` on shapes that do not match. O(B * heads * S * hd)."""
    if _extension is None:
        raise RuntimeError("tiercache's _qmatmul extension is not built")
    b, t, heads, hd = q.shape
    kv, s = int(keys.shape[1]), int(keys.shape[3])
    shapes = {"k": (k.shape, (b, 1, kv, hd)), "v": (v.shape, (b, 1, kv, hd)),
              "keys": (keys.shape, (b, kv, hd, s)), "values": (values.shape, (b, kv, s, hd)),
              "mask": (mask.shape, (b, s))}
    for name, (got, want) in shapes.items():
        if tuple(got) != want:
            raise ValueError(f"{name} must be {want}, got {tuple(got)}")
    if t != 1 or heads % kv:
        raise ValueError(f"q must be [rows, 1, a multiple of {kv} heads, {hd}], got {q.shape}")
    out = np.empty((b, 1, heads * hd), dtype=np.float32)
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v, keys, values, mask)]
    _extension.attend(*arrays, out, b, heads, kv, hd, s, float(scale), threads or _threads)
    return out
