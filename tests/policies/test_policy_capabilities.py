"""Declared policy capabilities and optional hooks (issue 13).

The base :class:`~tiercache.policies.Policy` declares the schedule hooks as no-ops and
says what a policy can do with ClassVars (``uses_schedule``, ``needs_future``) instead
of callers probing with ``getattr`` or reading constructor signatures; policies written
before that keep working. Also: the policies are one plain package folder.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import tiercache
import tiercache.policies as policies_module
from tiercache.advice import knows_schedule
from tiercache.errors import SimulationError
from tiercache.policies import LRUPolicy, OPTPolicy, Policy, available_policies, get_policy_class
from tiercache.sim.policy_specs import make_policy

POLICY_DIR = Path(policies_module.__file__).parent


class _Empty(Policy):
    """The smallest policy: only the abstract methods (what a user writes)."""

    name = "cap-empty"

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self.keys: dict[Any, int] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys)

    def on_insert(self, key: Any, size: int) -> None:
        self.keys[key] = size

    def on_hit(self, key: Any) -> None:
        pass

    def on_remove(self, key: Any) -> None:
        del self.keys[key]

    def victim(self, incoming: Any = None) -> Any:
        return next(iter(self.keys))


def test_the_schedule_hooks_are_declared_no_ops_on_every_policy() -> None:
    """Every policy has ``set_schedule``/``on_cursor``; only ``opt`` uses them."""
    policy = _Empty(4)
    policy.on_insert("a", 1)
    policy.set_schedule(["a", "b"])
    policy.set_schedule(None)
    policy.on_cursor(1)
    assert list(policy) == ["a"] and policy.keys == {"a": 1}
    users = [name for name in available_policies() if get_policy_class(name).uses_schedule]
    assert users == ["opt"]
    for name in available_policies():
        cls = get_policy_class(name)
        assert callable(cls.set_schedule) and callable(cls.on_cursor), name
    assert not _Empty.uses_schedule and not _Empty.needs_future
    assert OPTPolicy.uses_schedule and OPTPolicy.needs_future


def test_knows_schedule_reads_the_declared_capability() -> None:
    """With no-op hooks on the base class, "has set_schedule" no longer tells anything."""
    assert knows_schedule("opt")
    assert not knows_schedule("lru")
    assert not knows_schedule("s3fifo")
    assert not knows_schedule(f"{__name__}:_Empty")


def test_a_policy_that_overrides_a_schedule_hook_uses_the_schedule() -> None:
    """A policy written before the ClassVar existed (it just defined the hooks) counts as
    schedule-aware; an explicit declaration wins."""

    class Legacy(LRUPolicy):
        seen: ClassVar[list[object]] = []

        def on_cursor(self, position: int) -> None:
            Legacy.seen.append(position)

    class Declared(LRUPolicy):
        uses_schedule = False

        def set_schedule(self, schedule: Any) -> None:
            pass

    class Child(Legacy):
        pass

    assert Legacy.uses_schedule and Child.uses_schedule
    assert not Declared.uses_schedule
    assert not LRUPolicy.uses_schedule


def test_needs_future_is_declared_and_the_simulator_reads_it() -> None:
    """make_policy passes ``future=`` to a class that declares ``needs_future`` (even one
    whose constructor only has ``**options``), and to no other."""

    class Offline(_Empty):
        needs_future = True
        got: ClassVar[list[Any]] = []

        def __init__(self, capacity: int, **options: Any) -> None:
            Offline.got.append(options.pop("future"))
            super().__init__(capacity, **options)

    keys = np.arange(5, dtype=np.int64)
    make_policy(Offline, 3, future=keys)
    assert Offline.got[-1] is keys
    with pytest.raises(SimulationError, match="Offline needs the future"):
        make_policy(Offline, 3)
    assert isinstance(make_policy(LRUPolicy, 3, future=keys), LRUPolicy)  # not passed on
    assert OPTPolicy.needs_future
    assert make_policy(OPTPolicy, 3, future=[1, 2, 1]).extra_stats()["time"] == -1


def test_a_legacy_policy_taking_future_still_gets_it_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="Legacy takes `future=` but does not declare"):

        class Legacy(_Empty):
            got: ClassVar[list[Any]] = []

            def __init__(self, capacity: int, future: Any = None, **options: Any) -> None:
                Legacy.got.append(future)
                super().__init__(capacity, **options)

    assert Legacy.needs_future
    make_policy(Legacy, 2, future=[7, 8])
    assert Legacy.got == [[7, 8]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Subclass(Legacy):  # inherits the capability: no second warning
            pass

    assert Subclass.needs_future


def test_policy_modules_touch_no_private_name_of_another_object() -> None:
    """opt.py once ranked with ``oracle._after(oracle._occ[key], ...)``; each object is
    reached through its public methods (``self._x``/``cls._x`` only)."""
    found = []
    for path in sorted(POLICY_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("self", "cls"))):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not found, "private names reached from outside their object:\n" + "\n".join(found)


def test_policies_are_one_plain_package_folder() -> None:
    """No ``tiercache/policies -> ../policies`` symlink: grep sees each policy once."""
    package = Path(tiercache.__file__).parent
    assert not (package / "policies").is_symlink()
    assert package / "policies" == POLICY_DIR
    assert POLICY_DIR.resolve() == (package / "policies").resolve()
    assert not (package.parent / "policies").exists()
    assert {p.stem for p in POLICY_DIR.glob("*.py")} >= {"base", "lru", "arc", "opt"}
