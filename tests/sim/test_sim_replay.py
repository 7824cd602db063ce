"""Replay: fast paths equal the generic hook path, count mode equals libCacheSim,
capacities, byte mode, offline policies (future=), results and user policies."""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import libcachesim
import numpy as np
import pytest

from tiercache.errors import PolicyError, SimulationError
from tiercache.policies import ARCPolicy, Key, LFUPolicy, LRUPolicy, Policy
from tiercache.sim import Trace, replay, replay_hits, resolve_capacity, simulate
from tiercache.sim.policy_specs import parse_policy_spec, split_policies
from tiercache.sim.replay import infer_unit, parse_capacity
from tiercache.testing import ProtocolDriver

ROOT = Path(__file__).resolve().parents[2]


def random_trace(seed: int, n: int = 3000) -> list[int]:
    """Mixed workloads: uniform, skewed, and scans (which move ARC's p both ways)."""
    rng = random.Random(seed)
    universe = rng.choice([8, 40, 150, 600])
    out: list[int] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.3:
            out.extend(rng.randrange(universe) for _ in range(rng.randrange(10, 200)))
        elif kind < 0.6:
            hot = [rng.randrange(universe) for _ in range(rng.randrange(2, 20))]
            out.extend(rng.choice(hot) for _ in range(rng.randrange(10, 200)))
        else:
            start = rng.randrange(universe)
            out.extend(range(start, start + rng.randrange(5, 120)))
    return out[:n]


def generic_hits(policy: Policy, keys: Sequence[Key]) -> list[bool]:
    hits: list[bool] = Policy.replay_count(policy, keys).tolist()
    return hits


def state(policy: Policy) -> Any:
    if isinstance(policy, ARCPolicy):
        return policy.lists(), policy.p, policy.extra_stats()
    if isinstance(policy, LRUPolicy):
        return policy.entries()
    return list(policy)


# --- the fast paths are the generic path ------------------------------------------------------


@pytest.mark.parametrize("cls", [LRUPolicy, ARCPolicy])
@pytest.mark.parametrize("seed", range(12))
def test_fast_path_equals_generic_hook_replay(cls: type[Policy], seed: int) -> None:
    keys = random_trace(seed)
    capacity = random.Random(seed).choice([1, 2, 3, 7, 16, 50, 200])
    fast, slow = cls(capacity), cls(capacity)
    got = fast.replay_count(keys).tolist()
    want = generic_hits(slow, keys)
    assert got == want
    assert state(fast) == state(slow), "same hits but a different final state"
    fast.check_invariants()
    assert 0 < sum(got) < len(got)


@pytest.mark.parametrize("cls", [LRUPolicy, ARCPolicy])
def test_fast_path_in_chunks_and_from_a_warm_state(cls: type[Policy]) -> None:
    keys = random_trace(99, 6000)
    whole = cls(25)
    want = whole.replay_count(keys).tolist()
    chunked = cls(25)
    got: list[bool] = []
    cuts = [0, 1, 2, 500, 501, 2999, 6000]
    for a, b in itertools.pairwise(cuts):
        got += chunked.replay_count(keys[a:b]).tolist()
    assert got == want and state(chunked) == state(whole)
    # warm state built by the hooks (a ProtocolDriver), then both replays continue it
    warm_fast, warm_slow = cls(25), cls(25)
    for policy in (warm_fast, warm_slow):
        driver = ProtocolDriver(policy, 25, check_purity=False)
        for key in keys[:1000]:
            driver.request(key)
    assert warm_fast.replay_count(keys[1000:]).tolist() == generic_hits(warm_slow, keys[1000:])
    assert state(warm_fast) == state(warm_slow)


def test_generic_replay_equals_the_protocol_driver() -> None:
    """The base-class replay is the hook protocol (for a policy without a fast path)."""
    keys = random_trace(5)
    driver = ProtocolDriver(LFUPolicy(20), 20, check_purity=False)
    want = [bool(driver.request(k)) for k in keys]
    assert LFUPolicy(20).replay_count(keys).tolist() == want


class CountingLRU(LRUPolicy):
    """Overrides a hook: must not take LRU's fast path (which would skip the override)."""

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, **options)
        self.hit_calls = 0

    def on_hit(self, key: Key) -> None:
        self.hit_calls += 1
        super().on_hit(key)


def test_a_subclass_that_overrides_a_hook_gets_the_generic_replay() -> None:
    policy = CountingLRU(10)
    hits = policy.replay_count(random_trace(3))
    assert policy.hit_calls == int(hits.sum()) > 0


def test_fast_path_falls_back_on_byte_mode_state() -> None:
    """A policy holding sizes other than 1 replays through the hooks (no silent mix-up)."""
    for cls in (LRUPolicy, ARCPolicy):
        a, b = cls(100), cls(100)
        for p in (a, b):
            p.on_miss("big", 40)
            p.on_insert("big", 40)
        keys = random_trace(8, 500)
        assert a.replay_count(keys).tolist() == generic_hits(b, keys)
        assert state(a) == state(b)


# --- count mode equals libCacheSim, request by request ------------------------------------------


LIBCACHESIM = {"lru": libcachesim.LRU, "arc": libcachesim.ARC}


@pytest.mark.parametrize("name", ["lru", "arc"])
@pytest.mark.parametrize("seed", range(6))
def test_count_mode_matches_libcachesim(name: str, seed: int) -> None:
    keys = random_trace(100 + seed, 4000)
    capacity = [2, 10, 33, 64, 128, 300][seed]
    trace = Trace(np.array(keys))
    policy = {"lru": LRUPolicy, "arc": ARCPolicy}[name](capacity)
    got = replay_hits(trace, policy, "objects", chunk_requests=777).tolist()
    cache = LIBCACHESIM[name](cache_size=capacity, hashpower=12)
    want = [cache.get(libcachesim.Request(obj_id=k, obj_size=1, clock_time=t))
            for t, k in enumerate(keys)]
    if got != want:
        i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
        pytest.fail(f"{name} c={capacity}: request {i} (key {keys[i]}) tiercache "
                    f"{'hit' if got[i] else 'miss'}, libCacheSim {'hit' if want[i] else 'miss'}")
    assert 0 < sum(got) < len(got)


# --- capacities and units ---------------------------------------------------------------------


def test_capacity_specs() -> None:
    trace = Trace(np.array([1, 2, 3, 1, 2, 4, 5, 6, 7, 8]), np.array([10] * 10))
    assert trace.distinct_objects == 8 and trace.distinct_bytes == 80
    assert parse_capacity(1000) == ("count", 1000.0)
    assert parse_capacity("64MiB") == ("bytes", 64 * 2**20)
    assert parse_capacity("25%") == ("percent", 0.25)
    assert resolve_capacity("25%", trace, "objects") == 2
    assert resolve_capacity("25%", trace, "bytes") == 20
    assert resolve_capacity("1%", trace, "objects") == 1  # at least one
    assert resolve_capacity("3", trace, "bytes") == 3
    assert infer_unit(["1%", 100]) == "objects"
    assert infer_unit(["1%", "1KiB"]) == "bytes"
    for bad in (0, -3, "0", "abc", "150%", True, 1.5):
        with pytest.raises(SimulationError):
            parse_capacity(cast(Any, bad))  # deliberately the wrong types too
    with pytest.raises(SimulationError, match="needs --unit bytes"):
        infer_unit(["64MiB"], "objects")
    with pytest.raises(SimulationError, match="no sizes"):
        simulate(Trace(np.array([1, 2])), "lru", "1KiB")


def test_byte_mode_counts_bytes_and_refuses_objects_larger_than_the_cache() -> None:
    #            a   b    a   big  a   b
    keys = np.array([1, 2, 1, 3, 1, 2])
    sizes = np.array([40, 50, 40, 500, 40, 50])
    r = replay(Trace(keys, sizes), "lru", 100, "bytes")
    # a, b miss; a hits; big (500 > 100) is refused and evicts nothing; a and b hit
    assert (r.hits, r.requests, r.bytes_hit, r.bytes_requested) == (3, 6, 130, 720)
    assert r.byte_hit_ratio == pytest.approx(130 / 720) and r.hit_ratio == 0.5
    # count mode on the same trace: 2 objects fit; big evicts b (LRU), a hits twice
    c = replay(Trace(keys, sizes), "lru", 2, "objects")
    assert c.hits == 2 and c.bytes_hit == 80


def test_byte_mode_equals_the_protocol_driver_for_every_builtin() -> None:
    rng = random.Random(4)
    keys = random_trace(4, 2000)
    size_of = {k: rng.choice([1, 5, 20, 64]) for k in set(keys)}
    sizes = [size_of[k] for k in keys]
    trace = Trace(np.array(keys), np.array(sizes))
    for cls in (LRUPolicy, LFUPolicy, ARCPolicy):
        driver = ProtocolDriver(cls(300), 300, check_purity=False)
        want = [bool(driver.request(k, s)) for k, s in zip(keys, sizes, strict=True)]
        got = replay_hits(trace, cls(300), "bytes", chunk_requests=333).tolist()
        assert got == want, cls.__name__


# --- offline policies, results, user policies ---------------------------------------------------


class FutureLRU(LRUPolicy):
    """An 'offline' policy: records the future it was given."""

    name = "future-lru"
    needs_future = True
    seen: list[Any] = []  # noqa: RUF012 - test probe

    def __init__(self, capacity: int, *, future: Sequence[Key], **options: Any) -> None:
        super().__init__(capacity, **options)
        FutureLRU.seen.append(list(future))


def test_policies_taking_future_get_the_trace_keys() -> None:
    FutureLRU.seen.clear()
    trace = Trace.from_keys(["x", "y", "x", "z"])
    results = simulate(trace, [FutureLRU, "lru"], [1, 2])
    assert FutureLRU.seen == [[0, 1, 0, 2], [0, 1, 0, 2]]
    assert [r.policy for r in results] == ["future-lru", "future-lru", "lru", "lru"]
    assert results.get("future-lru", 2).hits == results.get("lru", 2).hits == 1


def test_results_are_records_and_json_ready() -> None:
    trace = Trace(np.array(random_trace(1, 1000)))
    results = simulate(trace, ["lru", "arc"], ["10%", 5])
    records = results.to_records()
    assert len(records) == 4
    assert set(records[0]) == {"policy", "capacity", "unit", "requests", "hits", "hit_ratio",
                               "byte_hit_ratio"}
    assert records[0]["policy"] == "lru" and records[0]["unit"] == "objects"
    assert results[0].capacity_spec == "10%"
    assert results.policies() == ["lru", "arc"]
    assert [r.capacity for r in results.by_policy()["arc"]] == sorted(
        [results[2].capacity, results[3].capacity])
    assert "p" in results.get("arc", 5).policy_stats


def test_user_policy_by_module_and_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    loop = list(range(10)) * 20  # a cyclic scan longer than the cache
    results = simulate(Trace(np.array(loop)), ["lru", "examples.my_policy:MRUPolicy"], [6])
    assert results.get("lru", 6).hits == 0
    assert results.get("examples.my_policy:MRUPolicy", 6).hits > 80
    with pytest.raises(PolicyError, match="nope"):
        simulate(Trace(np.array(loop)), ["nope"], [6])


# --- per-policy options -----------------------------------------------------------------------


class SLRU(LRUPolicy):
    """A user policy with an option of its own (LRU underneath: same hits)."""

    name = "slru"
    made: list[float] = []  # noqa: RUF012 - test probe

    def __init__(self, capacity: int, *, protected: float = 0.8, **options: Any) -> None:
        super().__init__(capacity, **options)
        SLRU.made.append(protected)


def test_per_policy_options_reach_only_their_policy() -> None:
    """Before: one dict went to every policy, so ["lru", SLRU] with SLRU options raised."""
    SLRU.made.clear()
    trace = Trace(np.array(random_trace(4, 2000)))
    results = simulate(trace, ["lru", SLRU], [10, 50],
                       policy_options={"slru": {"protected": 0.5}})
    assert SLRU.made == [0.5, 0.5]
    assert results.get("slru", 50).hits == results.get("lru", 50).hits
    SLRU.made.clear()
    simulate(trace, ["lru", SLRU], [10], policy_options={SLRU: {"protected": 0.25}})
    simulate(trace, [SLRU], [10], policy_options={"protected": 0.125})  # the older form
    assert SLRU.made == [0.25, 0.125]


def test_options_in_the_spec_and_by_name() -> None:
    trace = Trace(np.array(random_trace(5, 3000)))
    results = simulate(trace, ["2q", "2q(a_in_size_ratio=0.05)", "2q(a_in_size_ratio=0.5)"],
                       [40])
    assert results.policies() == ["2q", "2q(a_in_size_ratio=0.05)", "2q(a_in_size_ratio=0.5)"]
    hits = [r.hits for r in results]
    assert len(set(hits)) == 3, hits  # three different settings, three outcomes
    keyed = simulate(trace, ["lru", "2q"], [40], policy_options={"2q": {"a_in_size_ratio": 0.5}})
    assert keyed.get("2q", 40).hits == hits[2]
    # the spec's own options win over policy_options
    both = simulate(trace, ["2q(a_in_size_ratio=0.05)"], [40],
                    policy_options={"2q": {"a_in_size_ratio": 0.5}})
    assert both[0].hits == hits[1]


def test_unknown_option_names_the_policy_and_the_closest_option() -> None:
    trace = Trace(np.array(random_trace(6, 500)))
    with pytest.raises(PolicyError, match=r"policy '2q\(a_in_size_rati=0.3\)'.*unknown option "
                                          r"'a_in_size_rati'.*did you mean 'a_in_size_ratio'"):
        simulate(trace, ["lru", "2q(a_in_size_rati=0.3)"], [10])
    with pytest.raises(PolicyError, match=r"policy 'slru'.*unknown option 'protectd'.*did you "
                                          r"mean 'protected'"):
        simulate(trace, ["lru", SLRU], [10], policy_options={"slru": {"protectd": 0.5}})
    with pytest.raises(PolicyError, match=r"policy 'lru'.*unknown option 'protected'.*key it "
                                          r"by name"):
        simulate(trace, ["lru", SLRU], [10], policy_options={"protected": 0.5})
    with pytest.raises(SimulationError, match=r"options for policy 'slr', which is not "
                                              r"simulated; did you mean 'slru'"):
        simulate(trace, ["lru", SLRU], [10], policy_options={"slr": {"protected": 0.5}})
    with pytest.raises(SimulationError, match="mixes per-policy tables"):
        simulate(trace, ["lru", SLRU], [10], policy_options={"slru": {}, "protected": 1})


def test_a_bad_option_fails_before_any_replay() -> None:
    calls: list[int] = []
    trace = Trace(np.array(random_trace(7, 2000)))
    with pytest.raises(PolicyError, match="unknown option"):
        simulate(trace, ["lru", "arc", "2q(nope=1)"], [10, 20], progress=calls.append)
    assert calls == []


@pytest.mark.parametrize(("spec", "name", "options"), [
    ("lru", "lru", {}),
    (" 2q( a_in_size_ratio = 0.3 ) ", "2q", {"a_in_size_ratio": 0.3}),
    ("x(a=1, b=-2.5, c=true, d=False, e=word, f='a,b', g=\"q\")", "x",
     {"a": 1, "b": -2.5, "c": True, "d": False, "e": "word", "f": "a,b", "g": "q"}),
    ("examples.my_policy:MRUPolicy(k=1e3)", "examples.my_policy:MRUPolicy", {"k": 1000.0}),
    ("s3fifo()", "s3fifo", {}),
])
def test_parse_policy_spec(spec: str, name: str, options: dict[str, Any]) -> None:
    got_name, got = parse_policy_spec(spec)
    assert got_name == name and got == options
    assert [type(v) for v in got.values()] == [type(v) for v in options.values()]


@pytest.mark.parametrize(("spec", "match"), [
    ("2q(a_in_size_ratio=0.3", "do not end with '\\)'"),
    ("2q(0.3)", "'0.3' has no key"),
    ("2q(a=[1, 2])", "'a' = '\\[1, 2\\]' is not an int, float, bool or string"),
    ("2q(a=1, a=2)", "'a' is given twice"),
    ("(a=1)", "no policy name"),
    ("2q(a=1)x", "do not end with"),
    ("2q(**k)", "'\\*\\*' is not an option"),
    ("2q(a=1; b=2)", "cannot parse the options 'a=1; b=2'"),
    ("2q(a=__import__('os'))", "is not an int, float, bool or string"),
])
def test_bad_policy_specs_are_clear(spec: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match) as info:
        parse_policy_spec(spec)
    assert str(info.value).startswith(f"policy spec {spec.strip()!r}: ")
    assert "NAME(key=value, ...)" in str(info.value)


def test_split_policies_respects_parentheses_and_quotes() -> None:
    assert split_policies("lru, 2q(a=1, b='x,y'),arc,") == ["lru", "2q(a=1, b='x,y')", "arc"]
    for bad, match in (("lru,2q(a=1", "'\\(' is not closed"), ("lru)", "closes nothing"),
                       ("x(a='b)", "quote is not closed")):
        with pytest.raises(PolicyError, match=match):
            split_policies(bad)


def test_to_dataframe_without_pandas_names_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    results = simulate(Trace(np.array(random_trace(8, 300))), "lru", [10])
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(ImportError, match=r"to_dataframe needs pandas.*pip install pandas"):
        results.to_dataframe()
