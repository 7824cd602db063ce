"""Stand-ins for a tier whose medium cannot be used as it is.

:class:`DamagedStore` takes the place of a disk store whose medium failed to open
because it is damaged (:class:`~tiercache.errors.MediumDamagedError`: a truncated
lmdb map, an unreadable SQLite index, ...). The tier stays in the hierarchy,
*degraded*: it holds nothing, every write fails with the damage as the reason,
and reads fall through to the other tiers and the origin. Nothing on the medium
is touched, so ``tiercache verify`` can report it and ``verify --repair`` can
empty the folder and open a fresh store there.

:class:`AbsentStore` stands for a disk tier whose folder does not exist, opened by
a read-only command (``stats``, ``verify``): it holds nothing and creates
nothing.

Thread-safety: stateless after construction; safe from any thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..codec import stored_nbytes
from ..errors import StoreError
from .base import ShardInfo, Store


class _EmptyStore(Store):
    """A persistent stand-in that holds nothing: no keys, no info."""

    persistent = True

    def __init__(self, backend: str, path: Path | None) -> None:
        self.backend = backend  # type: ignore[misc]  # per instance: stands in for any backend
        self.path = path

    def info(self, key: str) -> ShardInfo | None:
        return None

    def keys(self) -> Iterator[str]:
        return iter(())

    def stored_size(self, array: np.ndarray) -> int:
        return stored_nbytes(array)


class DamagedStore(_EmptyStore):
    """A persistent medium that could not be opened; every operation fails or is empty.

    Parameters
    ----------
    backend:
        The configured backend name (reported in stats).
    path:
        The tier's folder.
    reason:
        Why the medium cannot be used (the :class:`MediumDamagedError` message).
    """

    def __init__(self, backend: str, path: Path | None, reason: str) -> None:
        super().__init__(backend, path)
        self.reason = reason

    def _fail(self) -> StoreError:
        return StoreError(f"medium damaged: {self.reason}")

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        raise self._fail()

    def put(self, key: str, array: np.ndarray) -> int:
        raise self._fail()

    def delete(self, key: str) -> bool:
        raise self._fail()

    def check_health(self) -> str | None:
        return f"medium damaged: {self.reason}"

    def reopen(self) -> None:
        raise self._fail()


class AbsentStore(_EmptyStore):
    """An empty, read-only stand-in for a disk tier whose folder does not exist yet."""

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        return None

    def put(self, key: str, array: np.ndarray) -> int:
        raise StoreError(f"tier folder {self.path} does not exist and the cache was opened "
                         "read-only")

    def delete(self, key: str) -> bool:
        return False
