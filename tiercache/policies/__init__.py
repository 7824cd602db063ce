"""Eviction policies: one module per policy, all behind :class:`Policy`.

Built-in names: ``lru``, ``lfu``, ``arc``, ``fifo``, ``clock``, ``2q``, ``sieve``,
``s3fifo``, ``wtinylfu`` and ``opt`` (see docs/policies.md for the table of
papers, complexities and libCacheSim exactness). A tier's ``policy`` setting takes a
built-in name, a name registered with :func:`register_policy`, a name published
by an installed package under the entry-point group ``tiercache.policies``, or
``"package.module:ClassName"`` -- so a user's own policy needs no edit to
tiercache. See docs/policies.md for a guide to writing one.

Trust model: ``"module:Class"`` and entry points import and run Python code
from the environment; only put policy specs from trusted config files there.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

from ..loading import import_target
from .arc import ARCPolicy
from .base import Key, Policy, UnknownPolicyOptionError, policy_option_names
from .clock import CLOCKPolicy
from .fifo import FIFOPolicy
from .lfu import LFUPolicy
from .lru import LRUPolicy
from .opt import OPTPolicy
from .s3fifo import S3FIFOPolicy
from .sieve import SIEVEPolicy
from .twoq import TwoQPolicy
from .wtinylfu import WTinyLFUPolicy

__all__ = ["ARCPolicy", "CLOCKPolicy", "FIFOPolicy", "Key", "LFUPolicy", "LRUPolicy", "OPTPolicy",
           "Policy", "S3FIFOPolicy", "SIEVEPolicy", "TwoQPolicy", "UnknownPolicyOptionError",
           "WTinyLFUPolicy", "available_policies", "get_policy_class", "policy_option_names",
           "register_policy"]

ENTRY_POINT_GROUP = "tiercache.policies"
#: Added to the message when the module of a ``"module:Class"`` spec is not found.

_REGISTRY: dict[str, type[Policy]] = {cls.name: cls for cls in (
    LRUPolicy, LFUPolicy, ARCPolicy, FIFOPolicy, CLOCKPolicy, TwoQPolicy, SIEVEPolicy,
    S3FIFOPolicy, WTinyLFUPolicy, OPTPolicy)}


def register_policy(cls: type[Policy], name: str | None = None) -> type[Policy]:
    """Register ``cls`` under ``name`` (default ``cls.name``); usable as a decorator."""
    # Check the type first: a non-Policy class usually has no ``name`` attribute,
    # and reading it would raise AttributeError instead of the documented TypeError.
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"{cls!r} is not a subclass of tiercache.policies.Policy")
    key = (name or cls.name).lower()
    if not key:
        raise ValueError(f"{cls.__name__} has no name: set the class attribute `name` "
                         "or pass `name=`")
    _REGISTRY[key] = cls
    return cls


def _entry_point_names() -> dict[str, object]:
    return {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_policies() -> list[str]:
    """Sorted names accepted by :func:`get_policy_class` (besides ``module:Class``)."""
    return sorted(set(_REGISTRY) | set(_entry_point_names()))


def get_policy_class(spec: str) -> type[Policy]:
    """Resolve a policy spec (name, entry point or ``"module:Class"``) to its class.

    Raises :class:`LookupError` naming the known policies when ``spec`` is unknown,
    :class:`ImportError` when a ``module:Class`` cannot be loaded (a
    :class:`ModuleNotFoundError` with a PYTHONPATH hint when the module is not
    found), and :class:`TypeError` when it is not a :class:`Policy`. Every message
    names the spec and quotes each name in full.

    O(1) for a registered name; imports a module or reads entry points otherwise.
    Thread-safe as far as :mod:`importlib` is.
    """
    if ":" in spec:
        cls = import_target(spec, f"policy spec {spec!r}")
    else:
        name = spec.lower()
        if name in _REGISTRY:
            return _REGISTRY[name]
        eps = _entry_point_names()
        if name not in eps:
            names = available_policies()
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise LookupError(f"unknown policy {spec!r}; {hint}known policies: "
                              f"{', '.join(names)}, or 'package.module:ClassName'")
        try:
            cls = eps[name].load()  # type: ignore[attr-defined]
        except Exception as exc:  # the package's module is missing or raised
            raise ImportError(f"policy {spec!r}: its entry point ({ENTRY_POINT_GROUP}) cannot "
                              f"be loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"{spec!r} is {cls!r}, not a subclass of tiercache.policies.Policy")
    return cls
