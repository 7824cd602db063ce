"""The eviction-policy interface shared by tiers and the simulator.

A policy keeps **metadata only** (keys and sizes, never values), so the same
class drives a real tier and a trace replay. The caller (a :class:`~tiercache.core.tier.Tier`
or the simulator) owns capacity accounting and calls the hooks in this order
when it admits a key that is not resident::

    policy.on_miss(key, size)            # once: adaptive policies learn here
    while used + size > capacity:
        v = policy.victim(key)           # pure: no side effect
        ... move v's bytes down a tier ...
        policy.on_evict(v)               # only after the bytes are safe
        used -= size_of(v)
    policy.on_insert(key, size)

A hit on a resident key calls ``on_hit(key)``; a resident key that leaves for
another reason than eviction (delete, promotion out of the tier) calls
``on_remove(key)``. Because ``victim()`` has no side effect, a failed
demotion never loses data: the caller simply does not call ``on_evict``
(nor ``on_insert``: the admission is abandoned after ``on_miss``).

Two more sequences are allowed: ``victim()`` + ``on_evict`` to shed a key with
no incoming one (e.g. a tier shrinking), and ``on_insert`` *without*
``on_miss`` while there is room, when a tier re-indexes what a persistent store
already holds after a restart. ``victim(incoming)`` is only asked with a
non-resident ``incoming``. The contract test-kit :mod:`tiercache.testing`
(``PolicyContract``) checks all of this for every registered policy; see docs/policies.md.

Thread-safety: policies are not thread-safe; the owner serialises calls.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

Key = Hashable

#: The hooks a replay fast path reimplements: a subclass that overrides any of
#: them gets the generic (hook-calling) replay instead of its parent's fast path.
REPLAY_HOOKS: tuple[str, ...] = ("__contains__", "__len__", "on_miss", "on_insert", "on_hit",
                                 "on_remove", "on_evict", "victim")


def policy_option_names(cls: type) -> list[str]:
    """The ``policy_options`` a policy class takes: the keyword parameters of the
    ``__init__`` methods along its MRO (but ``capacity``), down to the first one without
    ``**options`` or to :class:`Policy`'s own, which takes none.

    Sorted. O(len(MRO)); pure, thread-safe.
    """
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", ()):
        init = vars(klass).get("__init__")
        if init is None:
            continue
        if klass is Policy:
            break
        try:
            params = list(inspect.signature(init).parameters.values())[1:]  # minus self
        except (TypeError, ValueError):  # a builtin with no signature
            break
        names.update(p.name for p in params if p.name != "capacity"
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(names)


def unknown_option_message(cls: type, unknown: Iterable[str]) -> str:
    """``"unknown option 'x' for TwoQPolicy; did you mean 'y'? ..."``: names the first
    unknown option, suggests the closest known one (:func:`difflib.get_close_matches`)
    and lists what the class takes. O(len(options)); pure, thread-safe."""
    bad = sorted(unknown)
    known = policy_option_names(cls)
    cls_name = getattr(cls, "__name__", repr(cls))
    more = f" (and {', '.join(repr(b) for b in bad[1:])})" if len(bad) > 1 else ""
    message = f"unknown option {bad[0]!r}{more} for {cls_name}"
    if not known:
        return f"{message}: it takes no options"
    close = difflib.get_close_matches(bad[0], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{message}{hint} (its options: {', '.join(known)})"


class UnknownPolicyOptionError(TypeError):
    """A policy was given an option (a ``policy_options`` key) it does not take.

    A :class:`TypeError`, as Python raises for an unexpected keyword argument.
    ``options`` holds the unknown names, sorted; the message suggests the closest
    known option.
    """

    def __init__(self, cls: type, unknown: Iterable[str]) -> None:
        self.options = sorted(unknown)
        super().__init__(unknown_option_message(cls, self.options))


class Policy(ABC):
    """Base class of every eviction policy.

    Parameters
    ----------
    capacity:
        The capacity of the cache the policy serves, in the unit of the sizes
        passed to :meth:`on_insert` (bytes in a tier, 1 per object in count
        mode). Policies that do not need it (LRU) may ignore it.
    **options:
        Policy-specific settings from the ``policy_options`` table of a tier.
    """

    #: Registry name (``"lru"``); set by each subclass.
    name: ClassVar[str] = ""
    #: Capability: the policy uses a declared schedule, i.e. its :meth:`set_schedule`
    #: and :meth:`on_cursor` do something (``opt``). Callers may skip both hooks when it
    #: is ``False``; a layout advisor counts such a tier as knowing the loop's order. A
    #: subclass that overrides either hook without declaring it gets ``True``.
    uses_schedule: ClassVar[bool] = False
    #: Capability: the constructor takes ``future=``, the whole request sequence (an
    #: offline policy such as ``opt``); the simulator then passes the trace it replays
    #: and refuses to build the policy without one. A subclass whose ``__init__`` has a
    #: ``future`` parameter but does not declare this gets ``True`` (and a
    #: :class:`DeprecationWarning`).
    needs_future: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Derive the capabilities a subclass written before they were declared implies
        (see :attr:`uses_schedule`, :attr:`needs_future`). O(1) per class definition."""
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "uses_schedule" not in own and ("set_schedule" in own or "on_cursor" in own):
            cls.uses_schedule = True
        init = own.get("__init__")
        if "needs_future" not in own and not cls.needs_future and init is not None:
            try:
                takes_future = "future" in inspect.signature(init).parameters
            except (TypeError, ValueError):  # no signature to read
                takes_future = False
            if takes_future:
                warnings.warn(f"{cls.__qualname__} takes `future=` but does not declare "
                              "`needs_future = True`; set it (the inference from the "
                              "signature will go)", DeprecationWarning, stacklevel=3)
                cls.needs_future = True

    def __init__(self, capacity: int, **options: Any) -> None:
        if options:  # a subclass passes on what its own parameters did not take
            raise UnknownPolicyOptionError(type(self), options)
        self.capacity = capacity

    # --- queries -----------------------------------------------------------------
    @abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is resident (ghost entries do not count)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of resident keys."""

    @abstractmethod
    def __iter__(self) -> Iterator[Key]:
        """Resident keys, in no guaranteed order."""

    # --- hooks -------------------------------------------------------------------
    def admits(self, key: Key, size: int, free: int) -> bool:
        """Optional admission test for a shard that *may* move into this cache (a
        promotion or a prefetch, never an explicit put): return ``False`` to leave
        it where it is. ``free`` is the room left without evicting. Default: admit.
        Pure; O(1) for the built-ins."""
        return True

    def on_miss(self, key: Key, size: int) -> None:  # noqa: B027 - optional hook
        """``key`` (not resident) is about to be admitted. Adaptive policies learn here."""

    @abstractmethod
    def on_insert(self, key: Key, size: int) -> None:
        """``key`` of ``size`` units became resident."""

    @abstractmethod
    def on_hit(self, key: Key) -> None:
        """Resident ``key`` was read."""

    @abstractmethod
    def on_remove(self, key: Key) -> None:
        """Resident ``key`` left for a reason other than eviction (no ghost is kept)."""

    def on_evict(self, key: Key) -> None:
        """Resident ``key`` was evicted. Ghost-keeping policies override this."""
        self.on_remove(key)

    # --- optional schedule hooks (see ``uses_schedule``) ---------------------------------
    def set_schedule(self, schedule: Sequence[Key] | None) -> None:  # noqa: B027 - optional
        """The loop's declared order changed: ``schedule`` is one period of it (keys in
        request order), ``None`` when it is withdrawn. The engine calls it on every
        tier's policy when :meth:`tiercache.TieredCache.declare_schedule` is called and
        when a tier is rebuilt. Default: ignore it (O(1)); ``opt`` re-ranks its keys."""

    def on_cursor(self, position: int) -> None:  # noqa: B027 - optional hook
        """The loop is about to request position ``position`` of the declared schedule
        (called before the lookup of a key in it). Default: ignore it (O(1)); ``opt``
        moves its clock there."""

    @abstractmethod
    def victim(self, incoming: Key | None = None) -> Key:
        """The resident key to evict next to make room for ``incoming``.

        Must not change any state. Raises :class:`LookupError` when empty.
        """

    # --- trace replay ---------------------------------------------------------------
    def replay_count(self, keys: Sequence[Key]) -> npt.NDArray[np.bool_]:
        """Serve ``keys`` in count mode, the policy being the whole cache; return the hits.

        Count mode: every object has size 1 and :attr:`capacity` counts objects.
        Each request is a hit if the key is resident (``on_hit``), else it is
        admitted exactly as :mod:`tiercache.policies.base` prescribes
        (``on_miss``, then ``victim`` + ``on_evict`` while full, then
        ``on_insert``). The policy itself is the residency index (``in``,
        ``len``), so a replay resumes where the last one stopped: replaying a
        trace in chunks gives the same hits and the same final state as
        replaying it at once. The policy must hold count-mode state (every
        resident size 1) when this is called.

        This generic version calls the hooks; LRU and ARC override it with
        fast paths that must give the identical hit sequence and final state
        (``tests/sim/test_sim_replay.py`` checks it).

        Parameters
        ----------
        keys:
            The requested keys, in order (Python ints are fastest).

        Returns
        -------
        numpy.ndarray
            ``bool`` array, ``True`` where the request hit.

        Complexity: O(len(keys)) hook calls. Not thread-safe.
        """
        hits = bytearray(len(keys))
        capacity = self.capacity
        used = len(self)
        on_hit, on_miss, victim, on_evict, on_insert = (
            self.on_hit, self.on_miss, self.victim, self.on_evict, self.on_insert)
        for i, key in enumerate(keys):
            if key in self:
                on_hit(key)
                hits[i] = 1
                continue
            if capacity < 1:  # larger than the whole cache: refused, as a tier does
                continue
            on_miss(key, 1)
            while used + 1 > capacity:
                on_evict(victim(key))
                used -= 1
            on_insert(key, 1)
            used += 1
        return np.frombuffer(hits, dtype=np.bool_)

    def replay_bytes(self, keys: Sequence[Key], sizes: Sequence[int],
                     resident: MutableMapping[Key, int] | None = None,
                     ) -> npt.NDArray[np.bool_]:
        """Serve ``keys`` with their ``sizes`` (byte mode), the policy being the whole cache.

        The caller's ``resident`` mapping (key -> size) is the capacity
        accounting a tier would keep; pass the same mapping again to continue a
        replay in chunks (``None``: a fresh one, and the policy must be empty).
        A request is a hit if its key is resident, whatever its size now; a
        miss larger than :attr:`capacity` is refused before ``on_miss``, like
        :meth:`tiercache.core.tier.Tier.admit` does, and stays a miss.

        Returns a ``bool`` array of hits. Complexity: O(len(keys) + len(resident))
        plus the hook calls. Not thread-safe.
        """
        if resident is None:
            if len(self):
                raise ValueError(f"{type(self).__name__} is not empty: pass the `resident` "
                                 "mapping of the replay it continues")
            resident = {}
        if len(keys) != len(sizes):
            raise ValueError(f"{len(keys)} keys but {len(sizes)} sizes")
        hits = bytearray(len(keys))
        capacity = self.capacity
        used = sum(resident.values())
        for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
            if key in resident:
                self.on_hit(key)
                hits[i] = 1
                continue
            if size > capacity:
                continue
            self.on_miss(key, size)
            while used + size > capacity:
                gone = self.victim(key)
                self.on_evict(gone)
                used -= resident.pop(gone)
            self.on_insert(key, size)
            resident[key] = size
            used += size
        return np.frombuffer(hits, dtype=np.bool_)

    def _hooks_are(self, cls: type[Policy]) -> bool:
        """Whether this object's class uses ``cls``'s own :data:`REPLAY_HOOKS` (a fast path
        written for ``cls`` is then exact for it). O(1)."""
        own = type(self)
        return all(getattr(own, name) is getattr(cls, name) for name in REPLAY_HOOKS)

    # --- introspection ------------------------------------------------------------
    def check_invariants(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`AssertionError` if the policy's own invariants are broken."""

    def extra_stats(self) -> dict[str, float]:
        """Policy-specific figures for reports (ARC reports ``p``)."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} capacity={self.capacity} resident={len(self)}>"
