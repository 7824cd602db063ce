"""The decoder's KV cache: preallocated per sequence, in length and batch buckets.

:class:`KVCache` holds the keys and values of ``rows`` sequences for every
layer in two 64-byte-aligned float32 numpy arrays, each laid out the way the
compiled step's attention multiplies by it, so that no layer copies or
transposes its cache inside the step:

- ``keys`` ``[n_layers, rows, n_kv_heads, head_dim, length]`` (positions last:
  scores are ``q @ keys``),
- ``values`` ``[n_layers, rows, n_kv_heads, length, head_dim]`` (``probs @
  values``).

(Measured on the 2-core VM, SmolLM2 at batch 16: the earlier one-array layout
``[.., 2, length, n_kv_heads, head_dim]`` made XLA transpose every layer's cache
at every step, ~5 ms of a 48 ms step.) ``rows`` is a batch bucket (1, 4, 16, 32,
64, ...) and ``length`` a length bucket (64, 128, 256, ... doubling, the last one
``context_length``), so the shapes the compiled step sees change only when a
bucket does; each layer's slabs ``keys[layer, rows]`` and ``values[layer, rows]``
are contiguous and aligned for a run of rows and reach TensorFlow zero-copy
(:func:`~tiercache.models.runtime.handoff.to_tensor`).

A step writes its new keys/values in place (:meth:`write`: two numpy assignments
for all layers, O(layers * rows * tokens * kv width)); a sequence that outgrows
the bucket moves to the next one with one copy (:meth:`reserve`: O(cache size),
at most log2(context / 64) times per sequence); sequences that leave a batch are
dropped by :meth:`keep`, which moves the survivors into a smaller batch bucket
when they fit one (one copy). :meth:`read_block` / :meth:`write_block` move a
row's positions in and out in the token-major block layout ``[n_layers, 2,
tokens, n_kv_heads, head_dim]`` of the prefix cache (:mod:`tiercache.models.prefix`).

Thread-safety: none (owned by one model, like the model itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .handoff import aligned_zeros

#: The smallest length bucket (positions); buckets double from here.
MIN_LENGTH_BUCKET = 64
#: Batch buckets: a batch of n rows runs as the smallest bucket >= n (then doubling).
BATCH_BUCKETS: tuple[int, ...] = (1, 4, 16, 32)


def length_bucket(needed: int, context_length: int) -> int:
    """The smallest length bucket that holds ``needed`` positions (capped at the context)."""
    if needed > context_length:
        raise ValueError(f"the sequence would exceed the context length "
                         f"({context_length} tokens)")
    bucket = MIN_LENGTH_BUCKET
    while bucket < needed:
        bucket *= 2
    return min(bucket, context_length)


def batch_bucket(rows: int) -> int:
    """The smallest batch bucket that holds ``rows`` sequences (1, 4, 16, 32, 64, 128, ...)."""
    if rows < 1:
        raise ValueError(f"a batch needs at least one sequence, got {rows}")
    for bucket in BATCH_BUCKETS:
        if rows <= bucket:
            return bucket
    bucket = BATCH_BUCKETS[-1]
    while bucket < rows:
        bucket *= 2
    return bucket


class KVCache:
    """Keys and values of ``rows`` sequences, preallocated. See the module docstring.

    Parameters
    ----------
    n_layers, n_kv_heads, head_dim:
        The architecture.
    rows:
        Sequences held (a batch bucket; unused rows are padding).
    context_length:
        The most positions a sequence may hold.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, rows: int,
                 context_length: int) -> None:
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.context_length = context_length
        #: Positions held per row (tokens written so far).
        self.lengths = np.zeros(rows, dtype=np.int64)
        self.keys, self.values = self._allocate(rows, length_bucket(1, context_length))
        #: Times the arrays were reallocated (growth or batch shrink).
        self.reallocations = 0

    @property
    def rows(self) -> int:
        """Rows (sequences) the arrays hold, padding included."""
        return int(self.keys.shape[1])

    @property
    def length(self) -> int:
        """The length bucket: positions each row can hold."""
        return int(self.values.shape[3])

    def _allocate(self, rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        n, heads, width = self.n_layers, self.n_kv_heads, self.head_dim
        return (aligned_zeros((n, rows, heads, width, length), np.float32),
                aligned_zeros((n, rows, heads, length, width), np.float32))

    def layer(self, layer: int, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Views of layer ``layer``'s keys ``[rows, n_kv, head_dim, length]`` and values
        ``[rows, n_kv, length, head_dim]`` (contiguous for a run of rows). O(1)."""
        return self.keys[layer, rows], self.values[layer, rows]

    def reset(self) -> None:
        """Forget every sequence (the memory is kept). O(rows)."""
        self.lengths[:] = 0

    def reserve(self, needed: int) -> None:
        """Make every row able to hold ``needed`` positions: grow to the length bucket
        that holds them with one copy of the live part; an empty cache (a new
        sequence) also shrinks to it, so a short prompt after a long one attends over
        a short bucket again. ``ValueError`` past the context."""
        bucket = length_bucket(needed, self.context_length)
        used = int(self.lengths.max()) if self.lengths.size else 0
        if bucket == self.length or (bucket < self.length and used):
            return
        keys, values = self._allocate(self.rows, bucket)
        keys[..., :used] = self.keys[..., :used]
        values[:, :, :, :used] = self.values[:, :, :, :used]
        self.keys, self.values = keys, values
        self.reallocations += 1

    def mask(self, rows: slice | None = None) -> np.ndarray:
        """Additive float32 mask ``[rows, length]``: 0 at the positions each row holds,
        ``-inf`` elsewhere. O(rows * length)."""
        lengths = self.lengths if rows is None else self.lengths[rows]
        held = np.arange(self.length)[None, :] < lengths[:, None]
        return np.where(held, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)

    def write(self, layers: slice, rows: slice, kv: np.ndarray) -> None:
        """Write the new keys/values ``kv`` (``[layers, rows, 2, T, n_kv, head_dim]``) of the
        ``rows`` at each row's current length (in place; :meth:`advance` moves on).
        ``ValueError`` when a row would pass the length bucket (call :meth:`reserve`)."""
        lengths = self.lengths[rows]
        steps = kv.shape[3]
        if lengths.size and int(lengths.max()) + steps > self.length:
            raise ValueError(f"KV cache bucket of {self.length} positions is full: "
                             "reserve() first")
        keys, values = self.keys[layers, rows], self.values[layers, rows]
        new_keys = kv[:, :, 0].transpose(0, 1, 3, 4, 2)    # [layers, rows, n_kv, hd, T]
        new_values = kv[:, :, 1].transpose(0, 1, 3, 2, 4)  # [layers, rows, n_kv, T, hd]
        if lengths.size == 1 or bool(np.all(lengths == lengths[0])):
            start = int(lengths[0]) if lengths.size else 0
            keys[..., start:start + steps] = new_keys
            values[:, :, :, start:start + steps] = new_values
            return
        for row, start in enumerate(lengths.tolist()):  # ragged rows: each at its length
            keys[:, row, ..., start:start + steps] = new_keys[:, row]
            values[:, row, :, start:start + steps] = new_values[:, row]

    def advance(self, rows: slice, steps: int) -> None:
        """Count ``steps`` new positions for the ``rows``. O(rows)."""
        self.lengths[rows] += steps

    def read_block(self, row: int, start: int, count: int) -> np.ndarray:
        """Row ``row``'s positions ``[start, start + count)`` as a new contiguous array in
        the prefix cache's block layout ``[n_layers, 2, count, n_kv, head_dim]``.
        O(layers * count * kv width)."""
        end = start + count
        block = np.empty((self.n_layers, 2, count, self.n_kv_heads, self.head_dim),
                         np.float32)
        block[:, 0] = self.keys[:, row, :, :, start:end].transpose(0, 3, 1, 2)
        block[:, 1] = self.values[:, row, :, start:end].transpose(0, 2, 1, 3)
        return block

    def write_block(self, row: int, start: int, block: np.ndarray) -> None:
        """Write ``block`` (``[n_layers, 2, count, n_kv, head_dim]``, the prefix cache's
        layout) at row ``row``'s positions from ``start``; the caller reserves the
        length. O(layers * count * kv width)."""
        end = start + block.shape[2]
        self.keys[:, row, :, :, start:end] = block[:, 0].transpose(0, 2, 3, 1)
        self.values[:, row, :, start:end] = block[:, 1].transpose(0, 2, 1, 3)

    def keep(self, live: Sequence[int], rows: int) -> None:
        """Keep only the rows ``live`` (in that order), in arrays of ``rows`` rows
        (a batch bucket >= len(live)); the rest become empty padding. One copy."""
        if list(live) == list(range(len(live))) and rows == self.rows:
            self.lengths[len(live):] = 0
            return
        keys, values = self._allocate(rows, self.length)
        index = np.asarray(live, dtype=np.int64)
        keys[:, :index.size] = self.keys[:, index]
        values[:, :index.size] = self.values[:, index]
        lengths = np.zeros(rows, dtype=np.int64)
        lengths[:index.size] = self.lengths[index]
        self.keys, self.values, self.lengths = keys, values, lengths
        self.reallocations += 1

    def nbytes(self) -> int:
        """Bytes the cache arrays hold."""
        return int(self.keys.nbytes + self.values.nbytes)
