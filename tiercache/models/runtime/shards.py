"""What the TensorFlow decoder checks about its weight shards: their shapes, their
layout, and whether all of them are in memory (so the whole step may run in one call).

Functions of arrays, manifests and providers; no TensorFlow import. Thread-safety:
pure (a provider's answers are snapshots).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ...buffers import pages_resident
from ...errors import ModelFormatError
from ...spare_memory import spare_memory_bytes
from ..manifest import IN_OUT, ModelManifest
from . import MappingProvider
from .handoff import ShardDecoder
from .qlinear import is_tf_block

__all__ = ["WHOLE_STEP_BYTES_PER_LAYER", "Form", "check_shard", "every_shard_in_memory",
           "in_out_flags", "room_for_whole_step", "transposed_keys"]

#: Spare memory per layer the whole step needs before the decoder switches to it: the
#: first call of a compiled variant of the whole step (a batch and length bucket)
#: peaked at 39-50 MiB per layer over the process before it, and the variant kept
#: 36-47 MiB per layer (SmolLM2 native, batch 1 and 16; float32 12-13 MiB; 2-core VM,
#: 2026-12-05, ``bench/bench_step_memory.py``: docs/performance.md). Block by block, a
#: variant keeps 4-10 MiB per layer.
WHOLE_STEP_BYTES_PER_LAYER = 64 << 20

#: How a weight goes to the functions: float32 ``[out, in]`` (False), ggml blocks as
#: stored (True), or float32 ``[in, out]`` (``"in_out"``: a manifest's layout, which
#: the compiled step gets as its static ``in_out`` argument).
Form = bool | Literal["in_out"]


def room_for_whole_step(n_layers: int) -> bool:
    """Whether this process can spare what compiling the whole step of ``n_layers``
    blocks takes (:data:`WHOLE_STEP_BYTES_PER_LAYER` each; the host's available memory
    and the room left in its memory cgroups: :func:`~tiercache.spare_memory.spare_memory_bytes`).
    O(cgroup depth) file reads."""
    return spare_memory_bytes() >= n_layers * WHOLE_STEP_BYTES_PER_LAYER


def every_shard_in_memory(provider: Any, keys: Iterable[str],
                          seen: Mapping[str, np.ndarray], *, raw_blocks: bool = False,
                          decoded: Collection[str] = ()) -> bool:
    """Whether ``provider`` holds every shard of ``keys`` in memory, as float32 -- or,
    with ``raw_blocks``, as Q4_0/Q4_1/Q8_0 blocks the compiled step computes on (no
    decoded buffer: see the loop's comment): in a memory tier, or as a verified view of
    a zero-copy tier whose pages are all in the page cache -- ``seen`` maps a key to the
    array its last fetch returned, what ``mincore`` is asked about; keys in ``decoded``
    are decoded whatever they arrive as. O(shards + pages)."""

    def ready(key: str, dtype: Any, shape: tuple[int, ...]) -> bool:
        return dtype == np.float32 or (raw_blocks and key not in decoded
                                       and is_tf_block(dtype, shape))

    if isinstance(provider, MappingProvider):
        return all(isinstance(a, np.ndarray) and ready(k, a.dtype, a.shape)
                   for k, a in provider.arrays.items())
    where, tier = getattr(provider, "where", None), getattr(provider, "tier", None)
    if where is None or tier is None:
        return False
    for key in keys:
        names = where(key)
        if not names:
            return False
        top = tier(names[0])
        if not getattr(top, "holds_arrays", False):
            # a zero-copy tier's view costs no memory of its own; it runs in the
            # whole step when it is verified, float32 and wholly in the page cache
            # (else reading it would wait for the disk: block by block, the
            # prefetcher overlaps that wait with compute)
            view = seen.get(key)
            if not (getattr(top, "zero_copy", False) and top.viewed(key)
                    and view is not None and ready(key, view.dtype, view.shape)
                    and pages_resident(view)):
                return False
            continue
        # a stored (quantized, float16) shard would need a decoded buffer of its own for
        # the whole step: memory no tier counts. Only float32 shards (a float32 import, a
        # decoded memory tier) run the whole step; others stream block by block.
        info = top.info(key)
        if info is None or not ready(key, np.dtype(info.dtype), tuple(info.shape)):
            return False
    return True


def transposed_keys(manifest: ModelManifest) -> frozenset[str]:
    """Shard keys of ``manifest``'s float matrices stored ``[inputs, outputs]`` (its
    tensor names are the keys, key prefix included). O(tensors)."""
    return frozenset(name for name, info in manifest.tensors.items() if info.layout == IN_OUT)


def check_shard(key: str, array: object, expected: tuple[int, ...] | None) -> np.ndarray:
    """``array``, checked: :class:`ModelFormatError` naming ``key`` unless it is a float
    or quantized-block array whose logical shape is ``expected`` (when known). O(1)."""
    if not isinstance(array, np.ndarray):
        raise ModelFormatError(f"shard {key!r} is a {type(array).__name__}, not an array")
    if array.dtype.kind not in "fu":
        raise ModelFormatError(f"shard {key!r} has dtype {array.dtype}, expected floats "
                               "or a quantized block layout")
    try:
        shape = ShardDecoder.logical_shape(array)
    except ValueError as err:  # quant's ModelFormatError is one
        raise ModelFormatError(f"shard {key!r}: {err}") from None
    if expected is not None and shape != expected:
        raise ModelFormatError(f"shard {key!r} has shape {shape}, the model "
                               f"expects {expected}: the cache holds another model")
    return array


def in_out_flags(forms: Sequence[Form], per_block: int) -> tuple[tuple[bool, ...], ...]:
    """Per block (``per_block`` shards each, in order), which shards are ``in_out``
    matrices: the compiled step's static ``in_out`` argument. O(len(forms))."""
    return tuple(tuple(form == IN_OUT for form in forms[i:i + per_block])
                 for i in range(0, len(forms), per_block))
