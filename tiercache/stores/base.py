"""The storage-medium interface: shards in, shards out, no policy logic.

A :class:`Store` keeps named numpy arrays on one medium (process memory, an
lmdb environment, a diskcache directory, ...). It does not decide what to
keep: the :class:`~tiercache.core.tier.Tier` that owns it does. Disk stores keep
each shard as raw array bytes behind a small header (see
:mod:`tiercache.codec`) -- never pickle -- and verify the checksum on read.

Thread-safety: every method may be called from several threads at once; a
store serialises what its medium needs serialised.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

import numpy as np

from ..codec import ShardHeader
from ..errors import StoreError

VerifyMode = Literal["always", "never"]


def check_verify_mode(verify: str) -> None:
    """Raise :class:`ValueError` unless ``verify`` is ``"always"`` or ``"never"``."""
    if verify not in ("always", "never"):
        raise ValueError(f"verify must be 'always' or 'never', got {verify!r}")


def file_identity_problem(path: Path, identity: tuple[int, int] | None) -> str | None:
    """Why the file a store opened at ``path`` (``(st_dev, st_ino)`` = ``identity``) is
    no longer usable -- removed, unreadable, or replaced by another file -- or
    ``None``. One ``stat``; what :meth:`Store.check_health` of a disk store reports."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} was removed (folder deleted?)"
    except OSError as exc:
        return f"cannot stat {path} ({exc})"
    if (st.st_dev, st.st_ino) != identity:
        return f"{path} was replaced by another file"
    return None


#: Name of the lock file :func:`lock_tier_folder` keeps in a tier folder.
LOCK_FILE_NAME = ".tiercache.lock"


class LockHandle:
    """An exclusive ``flock`` on a tier folder's lock file, held until :meth:`release`.

    Returned by :func:`lock_tier_folder`. The lock belongs to the open file
    description: it is released when :meth:`release` closes the descriptor (or when
    the process exits, even by SIGKILL). The descriptor is close-on-exec; a forked
    child shares the parent's lock until both have closed it.

    Thread-safety: :meth:`release` may be called from any thread, any number of
    times. O(1).
    """

    def __init__(self, path: Path, fd: int) -> None:
        #: The lock file.
        self.path = path
        self._fd: int | None = fd
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        """Whether the lock is still held (not yet released). O(1)."""
        return self._fd is not None

    def fileno(self) -> int | None:
        """The lock file's descriptor while held (close-on-exec), else ``None``. O(1)."""
        return self._fd

    def release(self) -> None:
        """Unlock and close the lock file (the file stays, with the last holder's pid).
        Idempotent. O(1)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the description drops the flock

    def __repr__(self) -> str:
        return f"LockHandle({str(self.path)!r}, held={self.held})"


def lock_tier_folder(path: Path) -> LockHandle:
    """Take the exclusive lock that makes this process the only user of tier folder ``path``.

    Creates ``path`` if missing, opens ``path/.tiercache.lock`` (close-on-exec), takes
    a non-blocking exclusive ``fcntl.flock`` on it and writes this process's pid into
    it (for the message another process gets). Hold the handle for the store's
    lifetime; :meth:`LockHandle.release` it on close and before a reopen.

    Raises :class:`~tiercache.errors.StoreError` when another open file description
    holds the lock -- another process, or another store on the same folder in this
    process -- naming the folder and the holder's pid, or when the lock file cannot
    be created (read-only folder, ...). The kernel drops the lock of a process that
    dies, so a crash never leaves the folder locked.

    Thread-safe. O(1): one ``open``, one ``flock``, one small write.
    """
    lock_path = Path(path) / LOCK_FILE_NAME
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"tier folder {path}: cannot create the lock file {lock_path} "
                         f"({exc}); check the folder is writable") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            if holder == os.getpid():
                raise StoreError(f"tier folder {path} is in use by another store of this "
                                 f"process (pid {holder}); open each tier folder once (close "
                                 "the other cache or store first)") from None
            who = f"pid {holder}" if holder is not None else "pid unknown"
            raise StoreError(f"tier folder {path} is in use by another process ({who}); a "
                             "disk tier belongs to one process -- give each worker its own "
                             "folder or share through a redis tier") from None
        raise StoreError(f"tier folder {path}: cannot lock {lock_path} ({exc})") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message; a full disk must not stop the store opening
    return LockHandle(lock_path, fd)


def _read_pid(fd: int) -> int | None:
    """The pid recorded in an open lock file, or ``None`` if unreadable. O(1)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class ShardInfo:
    """What a store knows of a shard without reading its payload."""

    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    stored_nbytes: int  # bytes it occupies in the store (header included): what capacity counts
    #: When it was written (:func:`tiercache.codec.next_write_sequence`); 0 if unknown.
    sequence: int = 0
    #: xxh3_64 of the payload as recorded in its header; ``None`` if unknown (memory).
    payload_checksum: int | None = None

    @classmethod
    def from_header(cls, header: ShardHeader) -> ShardInfo:
        """The info a decoded shard header gives. O(1)."""
        return cls(header.dtype, header.shape, header.accounted_nbytes, header.sequence,
                   header.payload_checksum)


class Store(ABC):
    """Abstract storage medium for shards (named numpy arrays)."""

    #: Backend name used in the TOML ``backend`` key.
    backend: ClassVar[str] = ""
    #: Whether contents survive :meth:`close` and a process restart.
    persistent: ClassVar[bool] = False
    #: Whether :meth:`get_view` serves zero-copy views of the medium (what a tier's
    #: ``zero_copy = true`` needs).
    zero_copy: ClassVar[bool] = False
    #: Whether other processes may add, replace and delete shards at any time (a server
    #: shared by many workers, such as Redis). Such a store is located by backend options
    #: (a URL) rather than a path; the engine looks there for keys its index lacks, and
    #: never deletes shards it did not index to make room.
    shared: ClassVar[bool] = False

    @abstractmethod
    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Return the shard stored under ``key``, or ``None`` if absent.

        With ``out``, fill that C-contiguous writable array (its dtype and shape
        must equal the shard's, else :class:`ValueError`) and return it; this is
        the fast path, no allocation. Without ``out``, return a new array
        (memory stores return their own read-only array: no copy). Raises
        :class:`~tiercache.errors.CorruptShardError` if the stored bytes fail
        their integrity check; the store leaves the entry in place.
        """

    @abstractmethod
    def put(self, key: str, array: np.ndarray) -> int:
        """Store a copy of ``array`` under ``key`` (replacing any old value).

        Returns the bytes it occupies in the store, equal to :meth:`stored_size`
        of the array. Atomic: a concurrent or later reader sees the old value,
        the new one or nothing, never a mix.
        """

    def get_view(self, key: str) -> np.ndarray | None:
        """A read-only, zero-copy array over the stored bytes (e.g. a memory map), or
        ``None`` if absent. Valid for as long as it is referenced, even if the key is
        overwritten or evicted meanwhile. Only stores with :attr:`zero_copy`."""
        raise NotImplementedError(f"the {self.backend} store does not serve zero-copy views")

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A store written for an earlier version that overrides :meth:`willneed` (and
        not :meth:`advise`) keeps working: its ``willneed`` becomes its ``advise``,
        with a :class:`DeprecationWarning`. O(1) per class."""
        super().__init_subclass__(**kwargs)
        if "willneed" in cls.__dict__ and "advise" not in cls.__dict__:
            warnings.warn(f"{cls.__qualname__}.willneed is deprecated: name the method "
                          "advise (Store.advise)", DeprecationWarning, stacklevel=2)
            cls.advise = cls.__dict__["willneed"]  # type: ignore[method-assign]

    def advise(self, key: str) -> int:
        """Ask the medium to read ``key``'s bytes ahead (e.g. into the page cache)
        without waiting for them, before a :meth:`get_view`; return the bytes advised
        (0 if absent or if the store has nothing to do). Must not block on I/O: the
        prefetcher calls it on the loop's thread for zero-copy tiers. Default:
        nothing, 0."""
        return 0

    def willneed(self, key: str) -> int:
        """Deprecated name of :meth:`advise` (raises a :class:`DeprecationWarning`)."""
        warnings.warn("Store.willneed is deprecated: use Store.advise", DeprecationWarning,
                      stacklevel=2)
        return self.advise(key)

    def release(self, key: str) -> int:
        """Let go of ``key``'s bytes after use: drop them from this process's mappings
        and from the OS page cache, so that a loop larger than memory keeps the pages
        it chose to keep instead of the kernel's least recently used ones (see
        :mod:`tiercache.serving.keep`). Views handed out stay valid: touching them
        again reads the medium. A hint, never an error: the bytes released (0 when
        the store has nothing to drop). Default: nothing, 0."""
        return 0

    def read_once(self, key: str) -> np.ndarray | None:
        """A private copy of ``key`` for a single use, read so that nothing of it stays
        behind in the page cache where the medium can arrange that (the prefetcher
        streams the shards its keep set releases this way: they never crowd out the
        pages the loop keeps, and reading them ahead of use overlaps the loop's
        compute; :mod:`tiercache.serving.keep`). ``None`` if absent. Default:
        :meth:`get`."""
        return self.get(key)

    def page_evictions(self) -> int:
        """Bytes of shards this process had read that :meth:`advise` found no longer
        (wholly) in the page cache, since the store opened: the kernel evicted them
        before their next use, so the page cache does not hold what the loop keeps
        there. Cumulative. Default: 0 (a store that cannot tell)."""
        return 0

    def needs_check(self, key: str) -> bool:
        """Whether the next :meth:`get_view` of ``key`` would first verify its checksum
        (read the whole shard): the prefetcher then does that on its own thread
        instead of on the loop's. O(1). Default: ``False``."""
        return False

    def viewed(self, key: str) -> bool:
        """Whether this process already holds a verified view of ``key`` (mapped, read
        ahead once): :meth:`advise` would have nothing left to do, so the loop skips
        it. A hint -- the next :meth:`get_view` still checks. O(1). Default: ``False``."""
        return False

    def adopt(self, key: str, array: np.ndarray) -> int:
        """Like :meth:`put`, but a store that keeps arrays in memory may keep ``array``
        itself instead of a copy. The caller hands the array over and must not
        write to it afterwards. Default: :meth:`put`.
        """
        return self.put(key, array)

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was present."""

    @abstractmethod
    def info(self, key: str) -> ShardInfo | None:
        """Dtype, shape and stored size of ``key`` without reading the payload."""

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every stored key (a snapshot; safe to mutate the store while iterating)."""

    @abstractmethod
    def stored_size(self, array: np.ndarray) -> int:
        """Bytes ``array`` would occupy once put (what the tier's capacity counts)."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.info(key) is not None

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Like :meth:`get`, but always verify the payload checksum, whatever the
        store's ``verify`` setting (used by scrubbing). Default: :meth:`get`."""
        return self.get(key, out)

    def check_health(self) -> str | None:
        """Why the medium is unusable as opened (its folder was removed, its file
        replaced, the environment panicked), or ``None`` when it looks fine.

        Cheap (a ``stat`` at most): tiers call it before writes and after
        failures. A store that returns a reason needs :meth:`reopen`. Default:
        always healthy.
        """
        return None

    def reopen(self) -> None:  # noqa: B027 - nothing to reopen in volatile stores
        """Close the medium and open it again at the same place (creating its folder),
        after :meth:`check_health` reported a problem. Whatever the old medium held
        may be gone. Raises :class:`~tiercache.errors.StoreError` if it cannot be
        opened. Default: nothing to do.
        """

    def sweep_orphans(self, *, remove: bool = False, min_age_s: float = 60.0) -> int:
        """Count (and with ``remove``, delete) leftovers no entry refers to, e.g. value
        files of writes interrupted by a crash, older than ``min_age_s`` seconds.
        Default: a store that cannot leak such leftovers returns 0. O(files).
        """
        return 0

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release the medium. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
