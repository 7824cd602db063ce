"""A fault-injecting :class:`~tiercache.stores.base.Store` wrapper, for testing failure paths.

:class:`FaultyStore` forwards every call to a real store (lmdb, diskcache,
memory...) and, while a :class:`Fault` is active, raises the error it names
instead: by default a raw :class:`OSError` with a chosen ``errno``
(``ENOSPC``, ``EIO``, ``EACCES``...), exactly what a store that forgot to
convert its driver's errors would let through, so tiers and the engine are
tested against the worst case. Faults select operations and keys, can fire
a limited number of times or with a probability, and are switched off with
:meth:`Fault.clear` or :meth:`FaultyStore.heal`::

    store = FaultyStore.wrap(LmdbStore(path))
    full = store.fail(errno.ENOSPC, ops={"put"})
    ...                       # every put raises OSError(ENOSPC)
    full.clear()              # the disk has room again

Not registered as a backend: wrap a tier's store in a test
(``tier.store = FaultyStore.wrap(tier.store)``).

Zero-copy reads (:meth:`FaultyStore.get_view`, :meth:`FaultyStore.advise`) count
as ``get`` operations.

Thread-safety: the fault list is guarded by a lock; the wrapped store's own
thread-safety applies to the forwarded calls.
"""

from __future__ import annotations

import errno as errno_module
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..stores.base import ShardInfo, Store

#: Operations a fault can target.
OPS = frozenset({"get", "put", "delete", "info", "keys", "contains", "reopen", "health"})


@dataclass
class Fault:
    """One injected failure. Build with :meth:`FaultyStore.fail`; stop with :meth:`clear`.

    Attributes
    ----------
    errno:
        The ``errno`` of the :class:`OSError` raised (ignored with ``error``).
    ops:
        Operations it applies to (a subset of :data:`OPS`).
    keys:
        Keys it applies to; ``None`` means every key (and key-less operations).
    remaining:
        Times it may still fire; ``None`` means unlimited.
    probability:
        Chance that a matching call fails (seeded ``rng``, reproducible).
    error:
        Build the exception to raise instead of an OSError (e.g. a driver error).
    fired:
        How many calls it failed so far.
    """

    errno: int
    ops: frozenset[str]
    keys: frozenset[str] | None
    remaining: int | None
    probability: float
    error: Callable[[], BaseException] | None
    rng: random.Random
    active: bool = True
    fired: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        """Switch the fault off (the medium is healthy again). Idempotent."""
        self.active = False

    def _matches(self, op: str, key: str | None) -> bool:
        if not self.active or op not in self.ops:
            return False
        if self.keys is not None and key not in self.keys:
            return False
        with self._lock:
            if self.remaining is not None and self.remaining <= 0:
                return False
            if self.probability < 1.0 and self.rng.random() >= self.probability:
                return False
            if self.remaining is not None:
                self.remaining -= 1
            self.fired += 1
        return True

    def exception(self, op: str, key: str | None) -> BaseException:
        if self.error is not None:
            return self.error()
        what = f"injected fault in {op}" + (f" of {key!r}" if key is not None else "")
        return OSError(self.errno, os.strerror(self.errno), what)


class FaultyStore(Store):
    """Wraps ``inner`` and raises injected errors on chosen operations and keys.

    Use :meth:`wrap`, which gives the wrapper the inner store's ``backend``,
    ``persistent`` and ``shared`` flags (tiers look at them). ``health`` faults make
    :meth:`check_health` report the fault instead of raising.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        #: Total calls failed by injected faults.
        self.injected = 0

    @classmethod
    def wrap(cls, inner: Store) -> FaultyStore:
        """A wrapper whose class reports ``inner``'s backend name, persistence, sharing and
        zero-copy views (a ``zero_copy`` tier reads through :meth:`get_view`)."""
        sub: type[FaultyStore] = type(
            f"Faulty{type(inner).__name__}", (cls,),
            {"backend": inner.backend, "persistent": inner.persistent, "shared": inner.shared,
             "zero_copy": inner.zero_copy})
        return sub(inner)

    # -- control -------------------------------------------------------------------------

    def fail(self, errno: int = errno_module.EIO, *, ops: Iterable[str] = OPS,
             keys: Iterable[str] | None = None, times: int | None = None,
             probability: float = 1.0, seed: int = 0,
             error: Callable[[], BaseException] | None = None) -> Fault:
        """Start failing: every matching call raises until the fault is cleared.

        ``ops`` restricts the operations (see :data:`OPS`), ``keys`` the keys,
        ``times`` the number of failures, ``probability`` makes it intermittent.
        Returns the :class:`Fault` (call ``.clear()`` to stop it). O(1).
        """
        ops = frozenset(ops)
        unknown = ops - OPS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)} (known: {sorted(OPS)})")
        fault = Fault(errno, ops, frozenset(keys) if keys is not None else None, times,
                      probability, error, random.Random(seed))
        with self._lock:
            self._faults.append(fault)
        return fault

    def heal(self) -> None:
        """Clear every fault. O(faults)."""
        with self._lock:
            for fault in self._faults:
                fault.clear()
            self._faults.clear()

    def _check(self, op: str, key: str | None = None) -> None:
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            if fault._matches(op, key):
                with self._lock:
                    self.injected += 1
                raise fault.exception(op, key)

    # -- Store API, forwarded ------------------------------------------------------------

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        self._check("get", key)
        return self.inner.get(key, out)

    def check(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        self._check("get", key)
        return self.inner.check(key, out)

    def get_view(self, key: str) -> np.ndarray | None:
        self._check("get", key)
        return self.inner.get_view(key)

    def advise(self, key: str) -> int:
        self._check("get", key)
        return self.inner.advise(key)

    def needs_check(self, key: str) -> bool:
        return self.inner.needs_check(key)

    def put(self, key: str, array: np.ndarray) -> int:
        self._check("put", key)
        return self.inner.put(key, array)

    def adopt(self, key: str, array: np.ndarray) -> int:
        self._check("put", key)
        return self.inner.adopt(key, array)

    def delete(self, key: str) -> bool:
        self._check("delete", key)
        return self.inner.delete(key)

    def info(self, key: str) -> ShardInfo | None:
        self._check("info", key)
        return self.inner.info(key)

    def keys(self) -> Iterator[str]:
        self._check("keys")
        return self.inner.keys()

    def __contains__(self, key: object) -> bool:
        self._check("contains", key if isinstance(key, str) else None)
        return key in self.inner

    def stored_size(self, array: np.ndarray) -> int:
        return self.inner.stored_size(array)

    def check_health(self) -> str | None:
        try:
            self._check("health")
        except BaseException as exc:  # a health fault is reported, not raised
            return f"injected: {exc}"
        return self.inner.check_health()

    def reopen(self) -> None:
        self._check("reopen")
        self.inner.reopen()

    def sweep_orphans(self, *, remove: bool = False, min_age_s: float = 60.0) -> int:
        return self.inner.sweep_orphans(remove=remove, min_age_s=min_age_s)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"<FaultyStore over {self.inner!r}, {len(self._faults)} fault(s)>"
