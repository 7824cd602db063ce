"""Origin digests: the default namespace of a remote (redis) tier names the model's content.

Thread-safety: the memo is guarded by a lock; every function is safe to call from
any thread.
"""

from __future__ import annotations

import os
import threading

import xxhash

__all__ = ["file_digest", "origin_digest"]

#: (realpath, size, mtime_ns, inode, device) -> xxh3_128 hex of the file's bytes.
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 1 << 16
_DIGEST_CHUNK = 8 << 20


def file_digest(path: str | os.PathLike[str]) -> str:
    """The xxh3-128 hex digest of a file's bytes, memoised in the process per
    (realpath, size, mtime_ns, inode, device), so validating the same config again
    costs a ``stat``.

    O(file size) the first time (page-cache speed, one reused 8 MiB buffer), O(1)
    after. Thread-safe (two threads may both hash a new file; both get the same
    answer). Raises :class:`OSError` when the file cannot be read.
    """
    real = os.path.realpath(path)
    before = os.stat(real)
    ident = (real, before.st_size, before.st_mtime_ns, before.st_ino, before.st_dev)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(ident)
    if known is not None:
        return known
    hasher = xxhash.xxh3_128()
    buf = bytearray(min(_DIGEST_CHUNK, max(before.st_size, 1)))
    view = memoryview(buf)
    with open(real, "rb") as fh:
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    digest = hasher.hexdigest()
    after = os.stat(real)
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        with _DIGESTS_LOCK:  # a file changing while it is read is not remembered
            if len(_DIGESTS) >= _DIGESTS_MAX:
                _DIGESTS.clear()
            _DIGESTS[ident] = digest
    return digest


def origin_digest(kind: str, path: str | os.PathLike[str]) -> str | None:
    """A digest of an origin's *content*: equal for two origins exactly when they serve
    the same bytes (whatever their file names or folders).

    ``safetensors``: the whole file. ``npy``: the sorted (file name, bytes) of the
    ``.npy`` files in the folder (other files are not shards and do not count).
    ``None`` for a ``"module:Class"`` origin, which has no bytes tiercache can read.

    O(total bytes) the first time per file, a ``stat`` per file after
    (:func:`file_digest`). Thread-safe. Raises :class:`OSError` when a file cannot
    be read.
    """
    hasher = xxhash.xxh3_128()
    hasher.update(f"tiercache-origin\0{kind}\0".encode())
    if kind == "safetensors":
        hasher.update(file_digest(path).encode())
    elif kind == "npy":
        with os.scandir(path) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".npy") and e.is_file())
        for name in names:
            encoded = os.fsencode(name)
            hasher.update(len(encoded).to_bytes(8, "little") + encoded)
            hasher.update(file_digest(os.path.join(path, name)).encode())
    else:
        return None
    return str(hasher.hexdigest())
