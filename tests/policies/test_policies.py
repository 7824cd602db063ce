"""Eviction policies: the contract, exactness against independent references,
ARC against a transliteration of Figure 4, and loading user policies.

* :class:`TestContract` runs :class:`tiercache.testing.PolicyContract` for every name in
  :func:`available_policies`, so a newly registered policy is covered at once.
* Exactness: LRU, LFU and ARC in count mode make the same hit/miss decision as
  libCacheSim (``libcachesim.LRU/LFU/ARC``) and as small references written here
  (list-based LRU, scan-based LFU with explicit timestamps) on every request of
  random traces, for several seeds, distributions and capacities; ARC also
  matches ``tests/reference_arc.py`` (Figure 4 of Megiddo & Modha, FAST 2003)
  in hits, ``p`` and the four lists after every request.
* User policies: ``examples/my_policy.py`` by ``module:Class``, a policy
  published under the entry-point group ``tiercache.policies``, and
  :func:`register_policy`.
"""

from __future__ import annotations

import random
import sys
import textwrap
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol, cast

import libcachesim
import pytest
from reference_arc import ReferenceARC

import tiercache.policies as policies_module
from tiercache.policies import (
    ARCPolicy,
    LFUPolicy,
    LRUPolicy,
    Policy,
    available_policies,
    get_policy_class,
    register_policy,
)
from tiercache.testing import PolicyContract, ProtocolDriver, apply_op, random_ops
from tiercache.testing import make_trace as shared_make_trace

ROOT = Path(__file__).resolve().parents[2]

# ======================================================================================
# The contract, for every registered policy
# ======================================================================================


def arc_invariants(policy: Policy) -> None:
    """ARC's invariants, computed here from its raw lists rather than trusting
    ARCPolicy.check_invariants or its running size totals."""
    if not isinstance(policy, ARCPolicy):
        return
    c = policy.capacity
    tables = policy.sizes()
    size = {name: sum(table.values()) for name, table in tables.items()}
    stats = policy.extra_stats()
    for name in tables:
        assert stats[f"{name.lower()}_size"] == size[name], f"|{name}| bookkeeping is off"
    lists = policy.lists()
    assert lists == {name: list(table) for name, table in tables.items()}
    everything = [key for keys in lists.values() for key in keys]
    assert len(everything) == len(set(everything)), f"a key is in two ARC lists: {lists}"
    assert set(policy) == set(lists["T1"]) | set(lists["T2"])
    assert len(policy) == len(lists["T1"]) + len(lists["T2"])
    t1, t2, b1, b2 = size["T1"], size["T2"], size["B1"], size["B2"]
    assert t1 + b1 <= c, f"|T1|+|B1| = {t1}+{b1} > c = {c}"
    assert t1 + t2 + b1 + b2 <= 2 * c, f"directory {t1 + t2 + b1 + b2} > 2c = {2 * c}"
    assert 0 <= policy.p <= c, f"p = {policy.p} outside [0, {c}]"
    assert stats["p"] == policy.p


class TestContract(PolicyContract):
    """The contract for every name in available_policies()."""

    @pytest.fixture(params=available_policies())
    def policy_cls(self, request: pytest.FixtureRequest) -> type[Policy]:
        return get_policy_class(request.param)

    def extra_invariants(self, policy: Policy) -> None:
        arc_invariants(policy)


def test_every_builtin_is_covered_by_the_contract() -> None:
    assert {"lru", "lfu", "arc"} <= set(available_policies())


# ======================================================================================
# Independent references (count mode: every size is 1)
# ======================================================================================


class ReferenceLRU:
    """LRU over a plain list: index 0 is the least recently used. O(c) per request."""

    def __init__(self, c: int) -> None:
        self.c = c
        self.order: list[Hashable] = []

    def request(self, x: Hashable) -> bool:
        if x in self.order:
            self.order.remove(x)
            self.order.append(x)
            return True
        if len(self.order) == self.c:
            del self.order[0]
        self.order.append(x)
        return False


class ReferenceLFU:
    """In-cache LFU by full scan: count 1 on insert, +1 per hit, forgotten on
    eviction; the victim has the smallest (count, time of last access)."""

    def __init__(self, c: int) -> None:
        self.c = c
        self.clock = 0
        self.count: dict[Hashable, int] = {}
        self.last_access: dict[Hashable, int] = {}

    def request(self, x: Hashable) -> bool:
        self.clock += 1
        if x in self.count:
            self.count[x] += 1
            self.last_access[x] = self.clock
            return True
        if len(self.count) == self.c:
            victim = min(self.count, key=lambda k: (self.count[k], self.last_access[k]))
            del self.count[victim], self.last_access[victim]
        self.count[x] = 1
        self.last_access[x] = self.clock
        return False


POLICY_CLASSES: dict[str, type[Policy]] = {"lru": LRUPolicy, "lfu": LFUPolicy, "arc": ARCPolicy}
LIBCACHESIM = {"lru": libcachesim.LRU, "lfu": libcachesim.LFU, "arc": libcachesim.ARC}


class Reference(Protocol):
    def request(self, x: Hashable) -> bool: ...


REFERENCES: dict[str, Callable[[int], Reference]] = {
    "lru": ReferenceLRU, "lfu": ReferenceLFU, "arc": ReferenceARC}

TRACE_LEN = 4000
SEEDS = (0, 1, 2, 3)
CAPACITIES = (1, 2, 7, 32, 100)
TRACE_KINDS = ("uniform", "zipf", "phases")


def make_trace(kind: str, seed: int, n: int = TRACE_LEN) -> list[int]:
    return shared_make_trace(kind, seed, n)


def tiercache_hits(name: str, capacity: int, trace: list[int]) -> list[bool]:
    driver = ProtocolDriver(POLICY_CLASSES[name](capacity), capacity, check_purity=False)
    return [bool(driver.request(key)) for key in trace]


def libcachesim_hits(name: str, capacity: int, trace: list[int]) -> list[bool]:
    # hashpower=12: the default (2**24 buckets) costs ~20 ms to allocate per cache
    cache = LIBCACHESIM[name](cache_size=capacity, hashpower=12)
    return [cache.get(libcachesim.Request(obj_id=key, obj_size=1, clock_time=t))
            for t, key in enumerate(trace)]


def reference_hits(name: str, capacity: int, trace: list[int]) -> list[bool]:
    ref = REFERENCES[name](capacity)
    return [ref.request(key) for key in trace]


def assert_same_decisions(got: list[bool], want: list[bool], trace: list[int], what: str) -> None:
    assert len(got) == len(want) == len(trace)
    if got != want:
        i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
        pytest.fail(f"{what}: first difference at request {i} (key {trace[i]}): tiercache "
                    f"says {'hit' if got[i] else 'miss'}, reference says "
                    f"{'hit' if want[i] else 'miss'}; totals {sum(got)} vs {sum(want)} hits")


@pytest.mark.parametrize("kind", TRACE_KINDS)
@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("name", ["lru", "lfu", "arc"])
def test_hit_sequence_matches_libcachesim(name: str, capacity: int, kind: str) -> None:
    for seed in SEEDS:
        trace = make_trace(kind, seed)
        got = tiercache_hits(name, capacity, trace)
        want = libcachesim_hits(name, capacity, trace)
        assert_same_decisions(got, want, trace, f"{name} c={capacity} {kind} seed={seed}")
        if capacity >= 2:  # the trace exercises both outcomes
            assert 0 < sum(got) < len(got)


@pytest.mark.parametrize("kind", TRACE_KINDS)
@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("name", ["lru", "lfu", "arc"])
def test_hit_sequence_matches_simple_reference(name: str, capacity: int, kind: str) -> None:
    for seed in SEEDS:
        trace = make_trace(kind, seed)
        got = tiercache_hits(name, capacity, trace)
        want = reference_hits(name, capacity, trace)
        assert_same_decisions(got, want, trace, f"{name} c={capacity} {kind} seed={seed}")


def test_policies_really_differ_on_these_traces() -> None:
    """Guards the exactness tests: the traces separate LRU, LFU and ARC."""
    trace = make_trace("phases", 0)
    results = {name: tiercache_hits(name, 32, trace) for name in POLICY_CLASSES}
    assert results["lru"] != results["lfu"]
    assert results["lru"] != results["arc"]
    assert results["lfu"] != results["arc"]


@pytest.mark.parametrize("kind", TRACE_KINDS)
@pytest.mark.parametrize("capacity", CAPACITIES)
def test_arc_matches_figure4_request_by_request(capacity: int, kind: str) -> None:
    """Hit, victim, p and the four lists equal Figure 4's after every request."""
    p_values: set[float] = set()
    for seed in SEEDS:
        trace = make_trace(kind, seed)
        ref = ReferenceARC(capacity)
        policy = ARCPolicy(capacity)
        driver = ProtocolDriver(policy, capacity, check_purity=False)
        for t, key in enumerate(trace):
            want = ref.request(key)
            n_log = len(driver.log)
            got = driver.request(key)
            where = f"c={capacity} {kind} seed={seed} request {t} (key {key})"
            assert got == want, f"{where}: hit {got} vs Figure 4 {want}"
            assert policy.p == ref.p, f"{where}: p {policy.p} vs Figure 4 {ref.p}"
            evicted = [k for what, k in driver.log[n_log:] if what == "evict"]
            assert evicted == ([] if ref.last_evicted is None else [ref.last_evicted]), where
            assert policy.lists() == {"T1": ref.T1, "T2": ref.T2, "B1": ref.B1, "B2": ref.B2}, \
                where
            p_values.add(policy.p)
    if capacity >= 7 and kind == "phases":
        assert len(p_values) > 5, "the traces hardly move p: the comparison proves little"


def test_arc_p_moves_both_ways_on_phase_traces() -> None:
    """Guards the Figure 4 comparison: Cases II and III both occur."""
    ref = ReferenceARC(32)
    ups = downs = 0
    for key in make_trace("phases", 0):
        before = ref.p
        ref.request(key)
        ups += ref.p > before
        downs += ref.p < before
    assert ups > 10 and downs > 10


def test_reference_arc_sanity() -> None:
    """The transliteration itself, on a hand-checked sequence (c = 2)."""
    ref = ReferenceARC(2)
    assert [ref.request(x) for x in "abab"] == [False, False, True, True]
    assert (ref.T1, ref.T2, ref.B1, ref.B2) == ([], ["a", "b"], [], [])
    assert ref.request("c") is False  # Case IV-B: directory 2 >= c, REPLACE takes T2's LRU
    assert (ref.T1, ref.T2, ref.B1, ref.B2) == (["c"], ["b"], [], ["a"])
    assert ref.request("a") is False  # Case III: p stays 0; REPLACE takes T1's LRU (|T1| > p)
    assert (ref.T1, ref.T2, ref.B1, ref.B2, ref.p) == ([], ["b", "a"], ["c"], [], 0.0)
    assert ref.request("c") is False  # Case II: p = min(0 + 1, 2) = 1
    assert ref.p == 1.0
    assert (ref.T1, ref.T2, ref.B1, ref.B2) == ([], ["a", "c"], [], ["b"])


# ======================================================================================
# ARC specifics
# ======================================================================================


def _arc_driver(capacity: int) -> tuple[ARCPolicy, ProtocolDriver]:
    policy = ARCPolicy(capacity)
    return policy, ProtocolDriver(policy, capacity)


def test_arc_removed_key_comes_back_as_case_iv_into_t1() -> None:
    policy, driver = _arc_driver(4)
    for key in "abcd":
        driver.request(key)
    driver.request("a")  # a -> T2
    for key in "ef":  # two evictions: ghosts in B1
        driver.request(key)
    assert policy.lists()["B1"] and "a" in policy.lists()["T2"]
    p_before = policy.p
    driver.remove("a")
    assert all("a" not in keys for keys in policy.lists().values()), "remove kept a ghost"
    driver.request("a")
    lists = policy.lists()
    assert lists["T1"][-1] == "a" and "a" not in lists["T2"], lists
    assert policy.p == p_before, "a removed key re-inserted must not adapt p"


def test_arc_evicted_key_is_a_ghost_and_adapts_p() -> None:
    policy, driver = _arc_driver(2)
    for key in "aabc":  # a -> T2; c: REPLACE moves b (|T1| = 1 > p = 0) into B1
        driver.request(key)
    assert policy.lists() == {"T1": ["c"], "T2": ["a"], "B1": ["b"], "B2": []}
    driver.request("b")  # Case II: p = 1; |T1| = 1 is not > p, so REPLACE moves a to B2
    assert policy.p == 1.0
    assert policy.lists() == {"T1": ["c"], "T2": ["b"], "B1": [], "B2": ["a"]}


def test_arc_case_iv_a_drops_t1_lru_without_keeping_a_ghost() -> None:
    policy, driver = _arc_driver(3)
    for key in "abcd":  # T1 = c when d arrives: Case IV-A, T1 full
        driver.request(key)
    assert policy.lists() == {"T1": ["b", "c", "d"], "T2": [], "B1": [], "B2": []}


def test_arc_byte_mode_p_step_scales_with_the_request_size() -> None:
    policy, driver = _arc_driver(100)
    driver.request("a", 40)
    driver.request("b", 40)
    driver.request("b")  # b -> T2
    driver.request("c", 40)  # REPLACE: |T1| = 40 > p = 0, so a (40) -> B1
    assert policy.lists()["B1"] == ["a"]
    driver.request("a", 30)  # Case II with |B1| = 40 >= |B2| = 0: p += 30 * 1
    assert policy.p == 30.0
    assert "a" in policy.lists()["T2"]
    arc_invariants(policy)
    policy.check_invariants()


def test_arc_victim_leaves_room_for_a_large_incoming_t1_key() -> None:
    """Byte-mode Case IV-A: T1 alone must leave room for the incoming key."""
    policy, driver = _arc_driver(100)
    driver.request("t2", 30)
    driver.request("t2")  # -> T2
    driver.request("x", 60)  # T1 = 60
    policy.on_miss("big", 50)
    assert policy.victim("big") == "x"  # |T1| + 50 > 100: T1's LRU must go
    policy.p = 100.0  # even when p says "keep T1"
    assert policy.victim("big") == "x"
    assert policy.victim(None) == "t2"


# ======================================================================================
# User policies: module:Class, entry points, register_policy
# ======================================================================================

MRU_SPEC = "examples.my_policy:MRUPolicy"


@pytest.fixture
def repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[Policy]]:
    registry = dict(policies_module._REGISTRY)
    monkeypatch.setattr(policies_module, "_REGISTRY", registry)
    return registry


def _unique_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    name = f"tc_user_policy_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


class TestMRUExampleContract(PolicyContract):
    """The contract, run on examples/my_policy.py loaded by its module:Class spec."""

    @pytest.fixture
    def policy_cls(self, repo_on_path: None) -> type[Policy]:
        return get_policy_class(MRU_SPEC)


def test_example_policy_loads_by_module_and_class(repo_on_path: None) -> None:
    cls = get_policy_class(MRU_SPEC)
    assert issubclass(cls, Policy) and cls.__name__ == "MRUPolicy" and cls.name == "mru"
    assert cls.__module__ == "examples.my_policy"


def test_example_mru_beats_lru_on_a_cyclic_scan(repo_on_path: None) -> None:
    """The example's raison d'etre: a loop over 10 layers with room for 6."""
    trace = list(range(10)) * 20
    mru = ProtocolDriver(get_policy_class(MRU_SPEC)(6), 6)
    lru = ProtocolDriver(LRUPolicy(6), 6)
    hits = [bool(mru.request(k)) for k in trace]
    lru_hits = sum(bool(lru.request(k)) for k in trace)
    assert lru_hits == 0
    later_passes = [sum(hits[i:i + 10]) for i in range(10, len(trace), 10)]
    assert min(later_passes) >= 5, later_passes  # 5 or 6 of the 6 slots hit on every pass
    policy = mru.policy
    assert policy.victim() == trace[-1]  # the most recently used


def test_module_class_spec_from_a_user_module(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    module = _unique_module(tmp_path, monkeypatch, """
        from tiercache.policies import LRUPolicy

        class Outer:
            class Nested(LRUPolicy):
                name = "nested"

        class Mine(LRUPolicy):
            name = "mine"

        NOT_A_CLASS = 42
    """)
    assert get_policy_class(f"{module}:Mine").__name__ == "Mine"
    assert get_policy_class(f"{module}:Outer.Nested").__name__ == "Nested"
    with pytest.raises(TypeError, match="not a subclass"):
        get_policy_class(f"{module}:Outer")
    with pytest.raises(TypeError, match="not a subclass"):
        get_policy_class(f"{module}:NOT_A_CLASS")
    with pytest.raises(ImportError, match="no attribute"):
        get_policy_class(f"{module}:Missing")
    with pytest.raises(ImportError):
        get_policy_class("tc_no_such_module_xyz:Policy")
    with pytest.raises(ImportError, match=r"package\.module:ClassName"):
        get_policy_class(f"{module}:")


def test_non_policy_class_is_a_type_error(clean_registry: dict[str, type[Policy]]) -> None:
    with pytest.raises(TypeError, match="not a subclass"):
        get_policy_class("collections:OrderedDict")
    with pytest.raises(TypeError, match="not a subclass"):
        register_policy(cast(Any, OrderedDict))  # deliberately not a Policy subclass
    with pytest.raises(TypeError, match="not a subclass"):
        register_policy(cast(Any, len))
    assert "ordereddict" not in clean_registry


def test_unknown_name_is_a_lookup_error_listing_the_known_ones() -> None:
    with pytest.raises(LookupError) as info:
        get_policy_class("no-such-policy")
    message = str(info.value)
    assert "no-such-policy" in message
    for name in available_policies():
        assert name in message
    assert "module:ClassName" in message


def test_builtin_names_are_case_insensitive() -> None:
    assert get_policy_class("lru") is LRUPolicy
    assert get_policy_class("LFU") is LFUPolicy
    assert get_policy_class("Arc") is ARCPolicy


def test_register_policy(clean_registry: dict[str, type[Policy]]) -> None:
    @register_policy
    class Fifoish(LRUPolicy):
        name = "Fifoish"

        def on_hit(self, key: Hashable) -> None:  # no reordering on a hit
            pass

    assert Fifoish.__name__ == "Fifoish"  # the decorator returns the class
    assert "fifoish" in available_policies()
    assert get_policy_class("fifoish") is Fifoish
    assert get_policy_class("FIFOISH") is Fifoish

    assert register_policy(Fifoish, name="Other") is Fifoish
    assert get_policy_class("other") is Fifoish

    class Nameless(LRUPolicy):
        name = ""

    with pytest.raises(ValueError, match="no name"):
        register_policy(Nameless)
    register_policy(Nameless, name="nameless")
    assert get_policy_class("nameless") is Nameless


def test_register_policy_can_be_undone(monkeypatch: pytest.MonkeyPatch,
                                       clean_registry: dict[str, type[Policy]]) -> None:
    register_policy(LRUPolicy, name="temporary")
    assert "temporary" in available_policies()
    monkeypatch.undo()  # what the fixture does after each test
    assert "temporary" not in available_policies()


def test_entry_point_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _unique_module(tmp_path, monkeypatch, """
        from tiercache.policies import LRUPolicy

        class EntryPointPolicy(LRUPolicy):
            name = "from_ep"

        class NotAPolicy:
            pass
    """)
    dist = tmp_path / "tc_ep_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tc-ep-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tiercache.policies]\n"
        f"From_EP = {module}:EntryPointPolicy\n"
        f"broken_ep = {module}:NotAPolicy\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert {"from_ep", "broken_ep"} <= set(available_policies())
    cls = get_policy_class("from_ep")
    assert cls.__name__ == "EntryPointPolicy" and issubclass(cls, LRUPolicy)
    assert get_policy_class("FROM_EP") is cls
    with pytest.raises(TypeError, match="not a subclass"):
        get_policy_class("broken_ep")
    driver = ProtocolDriver(cls(3), 3)
    for op, key, size in random_ops(random.Random(0), 100, 8, 1):
        apply_op(driver, op, key, size, random.Random(1))
        driver.check()

    monkeypatch.undo()  # the distribution leaves sys.path: its entry points go with it
    assert "from_ep" not in available_policies()
    with pytest.raises(LookupError):
        get_policy_class("from_ep")
