"""The medium's side of a tier: what the engine may ask of a tier's store, and nothing else.

:class:`TierMedium` is a base of :class:`~tiercache.core.tier.Tier`: every access to
the store from outside the tier goes through these thin methods (no bookkeeping),
so the tier stays the only door to its store.

Thread-safety: as the store's methods (the engine serialises calls that change state).
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreError
from ..stores.base import ShardInfo, Store
from ..stores.memory import MemoryStore


class TierMedium:
    """Read-through accessors of a tier's ``store``."""

    store: Store
    name: str

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def holds_arrays(self) -> bool:
        """Whether the medium keeps the arrays themselves (a :class:`MemoryStore`): a
        hit returns the stored, read-only array. O(1)."""
        return isinstance(self.store, MemoryStore)

    @property
    def persistent(self) -> bool:
        """Whether the medium outlives the process (disk, Redis)."""
        return self.store.persistent

    @property
    def shared(self) -> bool:
        """Whether other processes write the medium too (Redis)."""
        return self.store.shared

    def stored_size(self, array: np.ndarray) -> int:
        """Bytes ``array`` would take here (what the capacity counts). O(1)."""
        return self.store.stored_size(array)

    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape, size and write sequence of ``key`` on the medium, indexed or
        not (no payload read). May raise StoreError / CorruptShardError."""
        return self.store.info(key)

    def medium_has(self, key: str) -> bool:
        """Whether the medium holds ``key`` (indexed or not: a shared store). O(1) I/O."""
        return key in self.store

    def medium_keys(self) -> list[str]:
        """Every key the medium holds, indexed or not (for scrubbing). O(n)."""
        return list(self.store.keys())

    def viewed(self, key: str) -> bool:
        """Whether the store holds a verified view of ``key`` already (:meth:`Store.viewed`)."""
        return self.store.viewed(key)

    def release(self, key: str) -> int:
        """Let go of ``key``'s page-cache copy after use (:meth:`Store.release`): bytes."""
        return self.store.release(key)

    def read_once(self, key: str) -> np.ndarray | None:
        """A private copy of ``key`` that leaves no page-cache copy behind
        (:meth:`Store.read_once`). May raise StoreError / CorruptShardError."""
        try:
            return self.store.read_once(key)
        except OSError as exc:
            raise StoreError(f"tier {self.name}: reading {key!r} once failed ({exc})") from exc

    def page_evictions(self) -> int:
        """Bytes read before that the page cache lost (:meth:`Store.page_evictions`)."""
        return self.store.page_evictions()

    def needs_check(self, key: str) -> bool:
        """Whether the next zero-copy view of ``key`` verifies it first (see
        :meth:`Store.needs_check`). O(1)."""
        return self.store.needs_check(key)

    def check(self, key: str, out: np.ndarray) -> np.ndarray | None:
        """Read ``key`` into ``out`` verifying its checksum whatever ``verify`` says
        (scrubbing). Raises CorruptShardError / StoreError."""
        return self.store.check(key, out)

    def sweep_orphans(self, *, remove: bool, min_age_s: float) -> int:
        """Count (and with ``remove`` delete) leftovers of interrupted writes."""
        return self.store.sweep_orphans(remove=remove, min_age_s=min_age_s)
