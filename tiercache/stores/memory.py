"""In-process store: shards held as read-only numpy arrays in a dict.

A hit costs one dict lookup and returns the stored array itself (read-only,
no copy). ``put`` copies the caller's array into a fresh page-aligned buffer so
later writes by the caller never change the cached value.

Thread-safety: dict operations are atomic under the GIL; safe from any thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..codec import check_storable, empty_aligned
from .base import ShardInfo, Store


class MemoryStore(Store):
    """Volatile RAM store. Capacity counts ``array.nbytes``."""

    backend = "memory"
    persistent = False

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        array = self._arrays.get(key)
        if array is None or out is None:
            return array
        if out.dtype != array.dtype or out.shape != array.shape:
            raise ValueError(f"out has dtype {out.dtype} shape {out.shape}; shard {key!r} is "
                             f"{array.dtype} {array.shape}")
        np.copyto(out, array)
        return out

    def put(self, key: str, array: np.ndarray) -> int:
        check_storable(array)
        copy = empty_aligned(array.nbytes).view(array.dtype).reshape(array.shape)
        np.copyto(copy, array)
        copy.flags.writeable = False
        self._arrays[key] = copy
        return copy.nbytes

    def adopt(self, key: str, array: np.ndarray) -> int:
        """Keep ``array`` itself (no copy); the caller must not write to it afterwards.

        Used by the engine when it promotes a freshly read, private buffer.
        """
        check_storable(array)
        array.flags.writeable = False
        self._arrays[key] = array
        return array.nbytes

    def delete(self, key: str) -> bool:
        return self._arrays.pop(key, None) is not None

    def info(self, key: str) -> ShardInfo | None:
        array = self._arrays.get(key)
        if array is None:
            return None
        return ShardInfo(array.dtype, array.shape, array.nbytes)

    def keys(self) -> Iterator[str]:
        return iter(list(self._arrays))

    def stored_size(self, array: np.ndarray) -> int:
        return int(array.nbytes)

    def __contains__(self, key: object) -> bool:
        return key in self._arrays

    def close(self) -> None:
        self._arrays.clear()
