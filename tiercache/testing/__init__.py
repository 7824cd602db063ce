"""The tiercache test kit: conformance suites for your own policy or store.

Install it with the ``testing`` extra (``pip install 'tiercache[testing]'``: pytest and
hypothesis), then subclass a contract in a test module of your own::

    import pytest
    from tiercache.testing import PolicyContract

    class TestMyPolicy(PolicyContract):
        @pytest.fixture
        def policy_cls(self):
            return MyPolicy

What it holds
-------------
:class:`PolicyContract`
    Every eviction policy's contract (pure ``victim()``, membership, no ghosts,
    invariants, a hypothesis state machine); with :class:`ProtocolDriver`,
    :func:`make_policy_machine`, :func:`random_ops`, :func:`apply_op` and
    :func:`make_trace` to replay your own sequences.
:class:`StoreContract`
    Every :class:`~tiercache.stores.base.Store`'s contract, gated by what the
    store declares (``persistent``, ``zero_copy``; every operation after ``close()``
    raises :class:`~tiercache.errors.CacheClosedError`); with :func:`assert_same`,
    :func:`assert_raise_closed`,
    :data:`ARRAYS` and :data:`NASTY_KEYS`.
:class:`CacheStateMachine`
    A hypothesis state machine that drives a whole
    :class:`~tiercache.TieredCache` and mirrors every operation into a dict.
:class:`FaultyStore`, :class:`Fault`
    A store wrapper that injects errors (``OSError(ENOSPC)``...) into chosen
    operations and keys. Needs neither pytest nor hypothesis.

Everything is imported on first use: ``import tiercache`` and ``import
tiercache.testing`` import neither pytest nor hypothesis, and asking for a
contract without them raises :class:`ImportError` naming the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache_machine import CacheStateMachine, three_tier_config
    from .faulty import OPS, Fault, FaultyStore
    from .policy_contract import (
        PolicyContract,
        ProtocolDriver,
        apply_op,
        make_policy_machine,
        make_trace,
        observable_state,
        random_ops,
    )
    from .store_contract import (
        ARRAYS,
        NASTY_KEYS,
        MakeStore,
        StoreContract,
        ViewStoreContract,
        assert_raise_closed,
        assert_same,
        files_under,
    )

#: Public name -> the submodule that defines it (imported on first access).
_WHERE = {
    "PolicyContract": "policy_contract", "ProtocolDriver": "policy_contract",
    "apply_op": "policy_contract", "make_policy_machine": "policy_contract",
    "make_trace": "policy_contract", "observable_state": "policy_contract",
    "random_ops": "policy_contract",
    "StoreContract": "store_contract", "ViewStoreContract": "store_contract",
    "ARRAYS": "store_contract",
    "NASTY_KEYS": "store_contract", "MakeStore": "store_contract",
    "assert_same": "store_contract", "files_under": "store_contract",
    "assert_raise_closed": "store_contract",
    "CacheStateMachine": "cache_machine", "three_tier_config": "cache_machine",
    "FaultyStore": "faulty", "Fault": "faulty", "OPS": "faulty",
}

__all__ = [
    "ARRAYS", "NASTY_KEYS", "OPS", "CacheStateMachine", "Fault", "FaultyStore", "MakeStore",
    "PolicyContract", "ProtocolDriver", "StoreContract", "ViewStoreContract", "apply_op",
    "assert_raise_closed", "assert_same",
    "files_under", "make_policy_machine", "make_trace", "observable_state", "random_ops",
    "three_tier_config",
]


def missing_extra(exc: ImportError, module: str) -> ImportError:
    """The error raised when ``module`` of the kit cannot import pytest or hypothesis.

    It names the missing package and the extra that installs it. O(1).
    """
    return ImportError(
        f"{module} needs pytest and hypothesis, which tiercache does not install by "
        f"default ({exc.name or exc} is missing): pip install 'tiercache[testing]'",
        name=exc.name)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access (PEP 562). O(1)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tiercache.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
