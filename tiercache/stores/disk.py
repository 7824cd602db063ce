"""The shared base of the disk stores (lmdb, diskcache, packed): a folder one process owns.

What every disk store does alike lives here: it keeps its shards in a folder
(:attr:`DiskStore.path`, created if missing), checks its ``verify`` mode, takes the
folder's lock (:func:`~tiercache.stores.base.lock_tier_folder`) when it is a tier's
store, remembers the identity (``st_dev``, ``st_ino``) of the one file that says
"this is still the medium I opened" for :meth:`DiskStore.check_health`, and
reopens by closing its medium, taking the folder lock again and opening the medium
now at the path. A subclass supplies only how to open and close its medium
(:meth:`DiskStore._open_medium`, :meth:`DiskStore._close_medium`) and whether it is
closed (:meth:`DiskStore._medium_closed`).

Thread-safety: the base holds no lock of its own; each store serialises its
opens, closes and reopens as its medium needs (documented there).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import codec
from .base import (
    LockHandle,
    Store,
    VerifyMode,
    check_verify_mode,
    file_identity_problem,
    lock_tier_folder,
)

__all__ = ["DiskStore"]


class DiskStore(Store):
    """A persistent store keeping its shards in a folder it owns.

    Parameters
    ----------
    path:
        The store's folder; created if missing.
    verify:
        ``"always"`` checks the payload checksum on reads; ``"never"`` skips it
        (:class:`ValueError` for anything else).
    capacity_bytes:
        The tier's capacity, if the store is a tier's; decides ``exclusive``'s default.
    exclusive:
        Hold the folder's lock while open (one process owns a tier folder). Default:
        when ``capacity_bytes`` is given, as for a tier's store; ``False`` for a
        reader beside the owner (``tiercache stats`` / ``verify``).

    A subclass calls ``super().__init__`` first, sets up its own state, then calls
    :meth:`_open`. Capacity counts :func:`tiercache.codec.stored_nbytes` (header plus
    payload).
    """

    persistent: ClassVar[bool] = True
    #: The file (relative to :attr:`path`) whose identity :meth:`check_health` compares
    #: with the one opened: a replaced or removed file means the medium is gone.
    identity_file: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike[str], *, verify: VerifyMode = "always",
                 capacity_bytes: int | None = None, exclusive: bool | None = None) -> None:
        check_verify_mode(verify)
        #: The store's folder.
        self.path = Path(path)
        self.verify: VerifyMode = verify
        self._exclusive = capacity_bytes is not None if exclusive is None else exclusive
        self._folder_lock: LockHandle | None = None
        #: ``(st_dev, st_ino)`` of :attr:`identity_file` as opened.
        self._identity: tuple[int, int] | None = None
        #: Why the medium reported itself unusable (a panicked environment), or ``None``.
        self._broken: str | None = None

    # -- what a subclass supplies ------------------------------------------------------
    @abstractmethod
    def _open_medium(self) -> None:
        """Open the medium at :attr:`path` (the folder lock already held if exclusive) and
        :meth:`_remember_identity`; close whatever it opened when it fails. Raises
        :class:`~tiercache.errors.StoreError` (or MediumDamagedError)."""

    @abstractmethod
    def _close_medium(self) -> None:
        """Drop the open medium for a :meth:`reopen` (errors suppressed). Idempotent."""

    @abstractmethod
    def _medium_closed(self) -> bool:
        """Whether the store is closed (or its last reopen failed). O(1)."""

    # -- the shared skeleton -----------------------------------------------------------
    def _open(self) -> None:
        """Take the folder lock when exclusive, then open the medium; a failed open
        releases the lock again (the caller discards the store). O(open)."""
        if self._exclusive:
            self._folder_lock = lock_tier_folder(self.path)  # StoreError: someone has it
        try:
            self._open_medium()
        except BaseException:
            self._release_folder()
            raise

    def _release_folder(self) -> None:
        """Release the folder lock if held. Idempotent. O(1)."""
        lock, self._folder_lock = self._folder_lock, None
        if lock is not None:
            lock.release()

    def _remember_identity(self, st: os.stat_result) -> None:
        """Record the opened :attr:`identity_file`'s ``stat`` for :meth:`check_health`."""
        self._identity = (st.st_dev, st.st_ino)

    def reopen(self) -> None:
        """Close the medium and open the one now at :attr:`path` (created if missing),
        releasing the folder lock and taking it again (the folder may be a new one).
        When opening fails the lock stays held (the tier retries; :meth:`close`
        releases it). Raises :class:`~tiercache.errors.StoreError` on failure."""
        self._close_medium()
        if self._exclusive:
            self._release_folder()
            self._folder_lock = lock_tier_folder(self.path)
        self._open_medium()

    def check_health(self) -> str | None:
        """Why the store is unusable -- closed, broken, its folder removed or its
        :attr:`identity_file` replaced (the medium would go on working on the unlinked
        file) -- or ``None``. One ``stat``. Thread-safe."""
        if self._medium_closed():
            return f"{self.backend} store {self.path} is closed"
        if self._broken is not None:
            return self._broken
        return file_identity_problem(self.path / self.identity_file, self._identity)

    def _where(self, key: str) -> str:
        """``"<backend> store <path>, key <key>"``: how messages name a shard. O(1)."""
        return f"{self.backend} store {self.path}, key {key!r}"

    def stored_size(self, array: np.ndarray) -> int:
        """Header plus payload bytes of ``array`` (what capacity counts). O(1)."""
        codec.check_storable(array)
        return codec.stored_nbytes(array)
