"""The policy lab: FIFO, CLOCK, 2Q, SIEVE, S3-FIFO, W-TinyLFU and OPT.

The generic contract (:class:`tiercache.testing.PolicyContract`) already runs for each of
them through ``tests/policies/test_policies.py`` (every name in ``available_policies()``).
This file adds:

* Exactness in count mode against libCacheSim, request by request, on random
  traces (uniform, Zipf, looping phases; several seeds and capacities): FIFO,
  CLOCK (libCacheSim's defaults and two other settings), SIEVE, 2Q (capacity
  >= 4) and S3-FIFO (capacity >= 20, and two non-default settings). Below those
  capacities libCacheSim refuses admissions that tiercache's protocol cannot
  refuse; the tests pin that difference down too. W-TinyLFU cannot match
  request by request (libCacheSim hashes into a counting Bloom filter and counts
  other events): its hit ratio must be within 2 points of libCacheSim's on Zipf
  traces, and beat LRU's.
* OPT: equal to libCacheSim's ``Belady`` request by request, equal to a
  brute-force optimum on tiny traces, never beaten by any registered policy
  (hypothesis); with ``schedule=`` on a loop longer than the cache, optimal
  (= OPT with the unrolled future) while LRU, LFU and ARC never hit, in count
  and byte mode; its position stays exact when requests are skipped, unknown
  keys interleave, or the engine reports a cursor.
* Hand-checked sequences for each policy, and ``check_invariants`` after every
  step of hypothesis runs with non-default settings.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Callable, Hashable, Sequence
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

import hypothesis.strategies as st
import libcachesim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.stateful import run_state_machine_as_test

from tiercache.policies import (
    ARCPolicy,
    CLOCKPolicy,
    FIFOPolicy,
    LFUPolicy,
    LRUPolicy,
    OPTPolicy,
    Policy,
    S3FIFOPolicy,
    SIEVEPolicy,
    TwoQPolicy,
    WTinyLFUPolicy,
    available_policies,
    get_policy_class,
)
from tiercache.policies.opt import NEVER
from tiercache.testing import ProtocolDriver, make_policy_machine
from tiercache.testing import make_trace as shared_make_trace

NEW_POLICIES: dict[str, type[Policy]] = {
    "fifo": FIFOPolicy, "clock": CLOCKPolicy, "2q": TwoQPolicy, "sieve": SIEVEPolicy,
    "s3fifo": S3FIFOPolicy, "wtinylfu": WTinyLFUPolicy, "opt": OPTPolicy}

INT64_MAX = 2**63 - 1

# ======================================================================================
# Traces and drivers
# ======================================================================================


def make_trace(kind: str, seed: int, n: int = 3000) -> list[int]:
    """The shared uniform / zipf / phases traces, salted for this file."""
    return shared_make_trace(kind, seed, n, salt="more-")


def zipf_trace(seed: int, n: int, universe: int, alpha: float) -> list[int]:
    rng = random.Random(f"zipf-{seed}-{alpha}")
    cum = list(accumulate(1.0 / (i + 1) ** alpha for i in range(universe)))
    ids = list(range(universe))
    rng.shuffle(ids)  # popularity unrelated to the id
    return [ids[i] for i in rng.choices(range(universe), cum_weights=cum, k=n)]


def hits_of(policy: Policy, capacity: int, trace: Sequence[Hashable],
            sizes: Sequence[int] | None = None) -> list[bool]:
    driver = ProtocolDriver(policy, capacity, check_purity=False)
    if sizes is None:
        return [bool(driver.request(key)) for key in trace]
    return [bool(driver.request(key, size)) for key, size in zip(trace, sizes, strict=True)]


def lcs_hits(factory: Callable[..., Any], capacity: int, trace: Sequence[int],
             **params: Any) -> list[bool]:
    # hashpower=12: the default (2**24 buckets) costs ~20 ms to allocate per cache
    cache_ = factory(cache_size=capacity, hashpower=12, **params)
    return [cache_.get(libcachesim.Request(obj_id=key, obj_size=1, clock_time=t))
            for t, key in enumerate(trace)]


def next_access(trace: Sequence[Hashable]) -> list[int]:
    """For each request, the index of the next request for the same key (INT64_MAX: none)."""
    out = [INT64_MAX] * len(trace)
    last: dict[Hashable, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        out[i] = last.get(trace[i], INT64_MAX)
        last[trace[i]] = i
    return out


def belady_hits(capacity: int, trace: Sequence[int]) -> list[bool]:
    cache_ = libcachesim.Belady(cache_size=capacity, hashpower=12)
    return [cache_.get(libcachesim.Request(obj_id=key, obj_size=1, clock_time=t,
                                           next_access_vtime=nxt))
            for t, (key, nxt) in enumerate(zip(trace, next_access(trace), strict=True))]


def assert_same(got: list[bool], want: list[bool], trace: Sequence[Hashable], what: str) -> None:
    assert len(got) == len(want) == len(trace)
    if got != want:
        i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
        pytest.fail(f"{what}: first difference at request {i} (key {trace[i]!r}): tiercache "
                    f"{'hit' if got[i] else 'miss'}, reference {'hit' if want[i] else 'miss'}; "
                    f"totals {sum(got)} vs {sum(want)}")


# ======================================================================================
# Exactness against libCacheSim (count mode)
# ======================================================================================

# name -> (tiercache factory, libCacheSim factory, libCacheSim params, capacities)
EXACT: dict[str, tuple[Callable[[int], Policy], Callable[..., Any], dict[str, Any],
                       tuple[int, ...]]] = {
    "fifo": (FIFOPolicy, libcachesim.FIFO, {}, (1, 2, 7, 32, 100)),
    "clock": (CLOCKPolicy, libcachesim.Clock, {}, (1, 2, 7, 32, 100)),
    "clock-2bit": (lambda c: CLOCKPolicy(c, n_bit_counter=2), libcachesim.Clock,
                   {"n_bit_counter": 2}, (2, 7, 32, 100)),
    "clock-init1": (lambda c: CLOCKPolicy(c, init_freq=1), libcachesim.Clock,
                    {"init_freq": 1}, (2, 7, 32, 100)),
    "sieve": (SIEVEPolicy, libcachesim.Sieve, {}, (1, 2, 7, 32, 100)),
    "2q": (TwoQPolicy, libcachesim.TwoQ, {}, (4, 5, 7, 32, 100)),
    "2q-ratios": (lambda c: TwoQPolicy(c, a_in_size_ratio=0.4, a_out_size_ratio=1.0),
                  libcachesim.TwoQ, {"a_in_size_ratio": 0.4, "a_out_size_ratio": 1.0},
                  (5, 32, 100)),
    "s3fifo": (S3FIFOPolicy, libcachesim.S3FIFO, {}, (20, 21, 32, 100, 257)),
    "s3fifo-t1": (lambda c: S3FIFOPolicy(c, move_to_main_threshold=1, small_size_ratio=0.2),
                  libcachesim.S3FIFO, {"move_to_main_threshold": 1, "small_size_ratio": 0.2},
                  (20, 32, 100)),
}
SEEDS = (0, 1, 2)
KINDS = ("uniform", "zipf", "phases")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(EXACT))
def test_hit_sequence_matches_libcachesim(name: str, kind: str) -> None:
    ours, theirs, params, capacities = EXACT[name]
    for capacity in capacities:
        for seed in SEEDS:
            trace = make_trace(kind, seed)
            got = hits_of(ours(capacity), capacity, trace)
            want = lcs_hits(theirs, capacity, trace, **params)
            assert_same(got, want, trace, f"{name} c={capacity} {kind} seed={seed}")
            if capacity >= 7:
                assert 0 < sum(got) < len(got)


def test_exactness_traces_separate_the_policies() -> None:
    """Guards the exactness test: on its traces the policies (and CLOCK's settings)
    decide differently, so matching libCacheSim's *own* variant is what is checked."""
    trace = make_trace("phases", 0)
    runs = {name: hits_of(make(32), 32, trace) for name, (make, _, _, _) in EXACT.items()}
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert runs[a] != runs[b], f"{a} and {b} decide identically"


def test_libcachesim_refusals_below_the_exact_capacities() -> None:
    """The documented deviations: libCacheSim's TwoQ caches nothing when Kin = int(c/4)
    is 0, nor its S3FIFO while int(c/10) == 1 (a key as large as S is refused);
    tiercache cannot refuse an admission, so it still hits."""
    trace = make_trace("uniform", 0)
    for capacity in (1, 2, 3):
        assert sum(lcs_hits(libcachesim.TwoQ, capacity, trace)) == 0
        assert sum(hits_of(TwoQPolicy(capacity), capacity, trace)) > 0
    for capacity in (10, 15, 19):
        assert sum(lcs_hits(libcachesim.S3FIFO, capacity, trace)) == 0
        assert sum(hits_of(S3FIFOPolicy(capacity), capacity, trace)) > 0


@pytest.mark.parametrize("alpha", [0.8, 1.0, 1.2])
def test_wtinylfu_hit_ratio_close_to_libcachesim(alpha: float) -> None:
    """Not exact by construction (see tiercache/policies/wtinylfu.py): within 2 points of
    libCacheSim's WTinyLFU on Zipf traces, and clearly better than LRU."""
    n = 20_000
    for capacity in (100, 400, 1000):
        trace = zipf_trace(capacity, n, 5000, alpha)
        ours = sum(hits_of(WTinyLFUPolicy(capacity), capacity, trace)) / n
        cache_ = libcachesim.WTinyLFU(cache_size=capacity, hashpower=14)
        theirs = sum(cache_.get(libcachesim.Request(obj_id=k, obj_size=1, clock_time=t))
                     for t, k in enumerate(trace)) / n
        lru = sum(hits_of(LRUPolicy(capacity), capacity, trace)) / n
        where = f"alpha={alpha} c={capacity}: ours {ours:.4f}, libCacheSim {theirs:.4f}"
        assert abs(ours - theirs) <= 0.02, where
        assert ours > lru + 0.005, f"{where}, LRU {lru:.4f}"


# ======================================================================================
# OPT
# ======================================================================================


@pytest.mark.parametrize("kind", KINDS)
def test_opt_matches_libcachesim_belady(kind: str) -> None:
    """Request by request: ties (only among keys never used again) cannot change hits."""
    for seed in SEEDS:
        trace = make_trace(kind, seed)
        for capacity in (1, 2, 7, 32, 100):
            got = hits_of(OPTPolicy(capacity, future=trace), capacity, trace)
            assert_same(got, belady_hits(capacity, trace), trace,
                        f"opt c={capacity} {kind} seed={seed}")


def test_opt_future_as_numpy_array_and_strings() -> None:
    trace = make_trace("zipf", 5)
    want = hits_of(OPTPolicy(16, future=trace), 16, trace)
    assert hits_of(OPTPolicy(16, future=np.asarray(trace, dtype=np.int64)), 16, trace) == want
    names = [f"blk.{k}" for k in trace]
    assert hits_of(OPTPolicy(16, future=names), 16, names) == want
    assert hits_of(OPTPolicy(16, future=tuple(names)), 16, names) == want


@cache
def _brute_force(trace: tuple[int, ...], capacity: int, i: int = 0,
                 resident: frozenset[int] = frozenset()) -> int:
    """Most hits any demand-paging cache of ``capacity`` keys can get on ``trace[i:]``."""
    if i == len(trace):
        return 0
    key = trace[i]
    if key in resident:
        return 1 + _brute_force(trace, capacity, i + 1, resident)
    if len(resident) < capacity:
        return _brute_force(trace, capacity, i + 1, resident | {key})
    return max(_brute_force(trace, capacity, i + 1, (resident - {v}) | {key}) for v in resident)


tiny_traces = st.lists(st.integers(0, 5), min_size=1, max_size=14)


@settings(max_examples=150, deadline=None)
@given(trace=tiny_traces, capacity=st.integers(1, 4))
def test_opt_equals_brute_force_optimum(trace: list[int], capacity: int) -> None:
    opt = OPTPolicy(capacity, future=trace)
    driver = ProtocolDriver(opt, capacity)
    hits = 0
    for key in trace:
        hits += bool(driver.request(key))
        driver.check()
    assert hits == _brute_force(tuple(trace), capacity)


@settings(max_examples=60, deadline=None)
@given(trace=st.lists(st.integers(0, 9), min_size=1, max_size=60), capacity=st.integers(1, 6))
def test_no_registered_policy_beats_opt(trace: list[int], capacity: int) -> None:
    best = sum(hits_of(OPTPolicy(capacity, future=trace), capacity, trace))
    for name in available_policies():
        hits = sum(hits_of(get_policy_class(name)(capacity), capacity, trace))
        assert hits <= best, f"{name} got {hits} hits, OPT {best}"


def test_opt_beats_every_builtin_on_a_real_trace() -> None:
    """Not only never beaten: strictly better than each builtin on a mixed trace."""
    trace = make_trace("phases", 3)
    best = sum(hits_of(OPTPolicy(32, future=trace), 32, trace))
    for name in NEW_POLICIES.keys() | {"lru", "lfu", "arc"}:
        if name != "opt":
            assert sum(hits_of(get_policy_class(name)(32), 32, trace)) < best, name


def loop(length: int, passes: int) -> list[str]:
    return [f"layer.{i}" for i in range(length)] * passes


@pytest.mark.parametrize(("length", "capacity"), [(10, 6), (30, 29), (30, 1), (7, 3)])
@pytest.mark.parametrize("mode", ["count", "bytes"])
def test_opt_schedule_is_optimal_on_a_loop(length: int, capacity: int, mode: str) -> None:
    """A decoder's cyclic scan longer than the cache: LRU/LFU/ARC never hit; OPT
    with the schedule equals OPT with the unrolled future (and libCacheSim's
    Belady), i.e. the optimum, in count and in byte mode."""
    passes = 12
    trace = loop(length, passes)
    schedule = trace[:length]
    if mode == "count":
        cap, sizes = capacity, None
    else:  # every shard 1000 bytes; the slack is too small for one more shard
        cap, sizes = capacity * 1000 + 999, [1000] * len(trace)
    with_schedule = hits_of(OPTPolicy(cap, schedule=schedule), cap, trace, sizes)
    with_future = hits_of(OPTPolicy(cap, future=trace), cap, trace, sizes)
    assert with_schedule == with_future
    ids = {k: i for i, k in enumerate(schedule)}
    assert with_future == belady_hits(capacity, [ids[k] for k in trace])
    # after the first pass, the optimum on a loop hits (C - 1) / (L - 1) of the reads
    later = sum(with_schedule[length:])
    assert abs(later - (capacity - 1) / (length - 1) * (passes - 1) * length) <= capacity
    for cls in (LRUPolicy, LFUPolicy, ARCPolicy):
        assert sum(hits_of(cls(cap), cap, trace, sizes)) == 0, cls.name


def test_opt_schedule_with_a_repeated_key_per_period() -> None:
    """Tied embeddings: the same key first and last in the period."""
    period = ["embed", *(f"layer.{i}" for i in range(8)), "embed"]
    trace = period * 10
    for capacity in (2, 4, 7):
        got = hits_of(OPTPolicy(capacity, schedule=period), capacity, trace)
        assert got == hits_of(OPTPolicy(capacity, future=trace), capacity, trace)


def test_opt_schedule_from_config_and_set_schedule(tmp_path: Path) -> None:
    """``policy = "opt"`` with ``policy_options = {schedule = [...]}`` builds a
    schedule-aware policy, as the engine builds it; ``set_schedule`` works later."""
    from tiercache.config import load_config

    schedule = [f"layer.{i}" for i in range(10)]
    toml = tmp_path / "tiers.toml"
    toml.write_text('[[tiers]]\nname = "ram"\nbackend = "memory"\ncapacity = "6KiB"\n'
                    'policy = "opt"\npolicy_options = { schedule = %s }\n'
                    % ("[" + ", ".join(f'"{k}"' for k in schedule) + "]"))
    assert tomllib.loads(toml.read_text())["tiers"][0]["policy_options"]["schedule"] == schedule
    tier = load_config(toml).tiers[0]
    policy = get_policy_class(tier.policy)(tier.capacity_bytes, **dict(tier.policy_options))
    assert isinstance(policy, OPTPolicy) and policy.mode == "schedule"
    trace, sizes = loop(10, 8), [1024] * 80
    from_config = hits_of(policy, tier.capacity_bytes, trace, sizes)
    later = OPTPolicy(tier.capacity_bytes)
    assert later.mode == "none"
    later.set_schedule(schedule)
    assert hits_of(later, tier.capacity_bytes, trace, sizes) == from_config
    assert from_config == hits_of(OPTPolicy(tier.capacity_bytes, future=trace),
                                  tier.capacity_bytes, trace, sizes)
    assert sum(from_config) > 30


def test_set_schedule_re_ranks_resident_keys() -> None:
    policy = OPTPolicy(3)
    driver = ProtocolDriver(policy, 3)
    for key in ("c", "x", "a"):  # no knowledge yet: LRU, so "c" would go first
        driver.request(key)
    assert policy.victim("b") == "c"
    policy.set_schedule(["a", "b", "c"])  # next uses: a -> 0, c -> 2, x -> never
    policy.check_invariants()
    assert policy.victim("b") == "x"
    driver.evict_one()
    assert policy.victim("b") == "c"
    policy.set_schedule(None)
    assert policy.mode == "none" and policy.victim("b") == "c"  # LRU again: c is oldest


def test_opt_skips_requests_it_never_sees() -> None:
    """A tier that does not see some requests (refused as too large, served by
    another tier) keeps exact time: OPT given the *full* trace decides like OPT
    given only what it sees, when the unseen requests are always for the same keys."""
    trace = make_trace("phases", 1)
    big = {k for k in set(trace) if k % 7 == 0}
    sizes = [200 if k in big else 1 for k in trace]
    seen = [k for k in trace if k not in big]
    for capacity in (5, 30):
        # future = the full trace; the keys in `big` are refused before on_miss
        full = OPTPolicy(capacity, future=trace)
        got = [h for h, k in zip(hits_of(full, capacity, trace, sizes), trace, strict=True)
               if k not in big]
        want = hits_of(OPTPolicy(capacity, future=seen), capacity, seen)
        assert got == want
        assert full.extra_stats()["skipped_requests"] == len(trace) - len(seen)
        assert full.time == len(trace) - 1 - next(
            i for i, k in enumerate(reversed(trace)) if k not in big)


def test_opt_schedule_skips_and_unknown_keys() -> None:
    """Keys outside the schedule are "never used again" and do not move time; a
    tier that sees only some layers skips the others; both stay optimal."""
    schedule = [f"layer.{i}" for i in range(12)]
    rng = random.Random(4)
    trace: list[str] = []
    for p in range(15):
        for k in schedule:
            if k != "layer.5":  # always served elsewhere: this tier never sees it
                trace.append(k)
            if rng.random() < 0.15:
                trace.append(f"adapter.{p}.{len(trace)}")  # one-off, not in the schedule
    for capacity in (3, 8):
        policy = OPTPolicy(capacity, schedule=schedule)
        driver = ProtocolDriver(policy, capacity)
        got = []
        for key in trace:
            got.append(bool(driver.request(key)))
            driver.check()
        assert got == hits_of(OPTPolicy(capacity, future=trace), capacity, trace)
        stats = policy.extra_stats()
        assert stats["unknown_requests"] == sum(k.startswith("adapter") for k in trace)
        assert stats["skipped_requests"] == 15  # layer.5, once per pass


def test_opt_on_cursor_keeps_time_for_a_tier_that_sees_few_requests() -> None:
    """The engine reports the loop position before each scheduled get; a tier
    whose policy only sees some gets then ranks exactly as if it saw them all."""
    schedule = [f"layer.{i}" for i in range(10)]
    policy = OPTPolicy(4, schedule=schedule)
    driver = ProtocolDriver(policy, 4)
    for p in range(5):
        for i, key in enumerate(schedule):
            policy.on_cursor(i)
            policy.on_cursor(i)  # a repeated report is a no-op
            hit = False
            if i % 3 != 1:  # the others are served by another tier
                hit = bool(driver.request(key))
            driver.check()
            # cursor-driven: time sits just before the cursor's request, or on it once
            # the tier served that request as a hit (no other hit or miss moves it)
            assert policy.time == 10 * p + i - (0 if hit else 1)
            if hit:  # ranked by its use after this one, at once
                assert policy.next_use(key) == 10 * (p + 1) + i

    with pytest.raises(ValueError, match="outside the schedule"):
        policy.on_cursor(10)
    other = OPTPolicy(3, schedule=["a", "b", "c"])
    for key in "abc":
        other.on_insert(key, 1)
    other.on_cursor(0)
    other.on_hit("b")  # not the cursor's request (a read off the loop): time stays
    assert other.time == -1 and other.next_use("a") == 0
    other.on_hit("a")
    assert other.time == 0 and other.next_use("a") == 3 and other.victim() == "a"
    OPTPolicy(4).on_cursor(3)  # no schedule: nothing to do
    OPTPolicy(4, future=[1, 2]).on_cursor(99)


def test_opt_schedule_repeated_read_does_not_advance() -> None:
    schedule = ["a", "b", "c", "d"]
    policy = OPTPolicy(2, schedule=schedule)
    driver = ProtocolDriver(policy, 2)
    driver.request("a")
    driver.request("b")
    assert policy.time == 1 and policy.next_use("a") == 4
    driver.request("b")  # the same layer read again: still at position 1
    assert policy.time == 1 and policy.next_use("b") == 5
    driver.request("c")  # evicts b (next use 5) rather than a (4)
    assert set(policy) == {"a", "c"} and policy.time == 2
    twice = OPTPolicy(2, schedule=["a", "a", "b"])  # listed twice in a row: advances
    twice_driver = ProtocolDriver(twice, 2)
    twice_driver.request("a")
    twice_driver.request("a")
    assert twice.time == 1 and twice.next_use("a") == 3


def test_opt_hand_checked_sequence() -> None:
    """Belady on a c=3 example: the victim is the key needed furthest away."""
    trace = ["a", "b", "c", "d", "a", "b", "e", "a", "b", "c", "d", "e"]
    policy = OPTPolicy(3, future=trace)
    driver = ProtocolDriver(policy, 3)
    for key in trace[:3]:
        driver.request(key)
    assert policy.victim("d") == "c"  # next uses: a 4, b 5, c 9
    driver.request("d")
    assert set(policy) == {"a", "b", "d"} and policy.next_use("d") == 10
    assert [bool(driver.request(k)) for k in trace[4:]] == [
        True, True, False, True, True, False, False, True]
    # at "c" (t=9) a and b are never used again: the tie goes to a (older last access)
    assert set(policy) == {"c", "d", "e"} and policy.next_use("a") == NEVER


def test_opt_without_knowledge_is_lru() -> None:
    trace = make_trace("zipf", 2)
    assert hits_of(OPTPolicy(20), 20, trace) == hits_of(LRUPolicy(20), 20, trace)


def test_opt_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not both"):
        OPTPolicy(4, future=[1], schedule=[1])
    with pytest.raises(ValueError, match="empty"):
        OPTPolicy(4, schedule=[])
    with pytest.raises(ValueError, match="list of keys"):
        OPTPolicy(4, schedule="layer.0")
    with pytest.raises(ValueError, match="unhashable"):
        OPTPolicy(4, schedule=cast(Any, [["a"]]))
    with pytest.raises(ValueError, match="unhashable"):
        OPTPolicy(4, future=cast(Any, [1, {}]))
    with pytest.raises(ValueError, match="one-dimensional"):
        OPTPolicy(4, future=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        OPTPolicy(4, futur=[1])
    assert OPTPolicy(4, future=[]).mode == "future"


# ======================================================================================
# Hand-checked behaviour of each policy
# ======================================================================================


def test_fifo_ignores_hits() -> None:
    driver = ProtocolDriver(FIFOPolicy(2), 2)
    assert [driver.request(k) for k in "abaac"] == [False, False, True, True, False]
    assert list(driver.policy) == ["b", "c"]


def test_clock_gives_a_second_chance() -> None:
    policy = CLOCKPolicy(3)
    driver = ProtocolDriver(policy, 3)
    for key in "abca":  # a referenced
        driver.request(key)
    assert policy.victim("d") == "b"
    driver.request("d")  # the hand clears a, evicts b; a moves behind c
    assert list(policy) == ["c", "a", "d"] and policy.counter("a") == 0
    assert policy.victim("e") == "c"


def hand_of(policy: SIEVEPolicy) -> Hashable | None:
    """``policy.hand``, read through a call: mypy keeps an attribute narrowed by one
    ``assert policy.hand == "c"`` across the driver calls that move the hand. O(1)."""
    return policy.hand


def test_sieve_keeps_survivors_in_place_and_the_hand_moves_on() -> None:
    policy = SIEVEPolicy(3)
    driver = ProtocolDriver(policy, 3)
    for key in "abca":
        driver.request(key)
    driver.request("d")  # a visited: cleared, stays in place; b evicted; hand -> c
    assert policy.queue() == ["a", "c", "d"] and hand_of(policy) == "c"
    driver.request("a")
    driver.request("e")  # hand at c (unvisited): c goes, even though a is older
    assert policy.queue() == ["a", "d", "e"] and hand_of(policy) == "d"


def test_sieve_removing_the_key_under_the_hand_moves_the_hand_newer() -> None:
    """libCacheSim's Sieve_remove_obj: the hand moves to the removed key's newer neighbour."""
    policy = SIEVEPolicy(4)
    driver = ProtocolDriver(policy, 4)
    for key in "abcda":
        driver.request(key)
    driver.request("e")  # a cleared in place, b evicted; hand -> c
    assert hand_of(policy) == "c"
    driver.remove("c")
    assert hand_of(policy) == "d" and policy.queue() == ["a", "d", "e"]
    driver.remove("e")  # not under the hand: the hand stays
    assert hand_of(policy) == "d"
    driver.remove("d")  # the newest: the next sweep starts at the tail again
    assert policy.hand is None and policy.victim() == "a"


def test_2q_ghost_hit_goes_to_am_and_a1in_hits_do_nothing() -> None:
    policy = TwoQPolicy(4)  # Kin = 1, Kout = 2
    driver = ProtocolDriver(policy, 4)
    for key in "abcda":  # a hit in A1in: no move
        driver.request(key)
    assert policy.lists() == {"A1in": ["a", "b", "c", "d"], "A1out": [], "Am": []}
    driver.request("e")  # |A1in| = 4 > Kin: a -> A1out
    driver.request("a")  # ghost hit: b -> A1out, a -> Am
    assert policy.lists() == {"A1in": ["c", "d", "e"], "A1out": ["b"], "Am": ["a"]}
    for key in "fg":  # c, d -> A1out (b trimmed: Kout = 2)
        driver.request(key)
    assert policy.lists() == {"A1in": ["e", "f", "g"], "A1out": ["c", "d"], "Am": ["a"]}
    policy.check_invariants()


def test_s3fifo_filters_one_hit_wonders_and_rescues_ghosts() -> None:
    policy = S3FIFOPolicy(20)  # S = 2, M = 18, G = 18
    driver = ProtocolDriver(policy, 20)
    for key in range(20):  # before the first eviction, S full -> new keys go to M
        driver.request(key)
    assert policy.lists()["S"] == [0, 1] and len(policy.lists()["M"]) == 18
    driver.request(0)
    driver.request(0)  # 0 hit twice in S
    driver.request(100)  # evict from S: 0 moves to M, 1 evicted into G
    assert policy.lists()["G"] == [1] and 0 in policy.lists()["M"]
    assert policy.lists()["S"] == [100]
    driver.request(1)  # ghost hit: straight into M
    assert 1 in policy.lists()["M"] and policy.lists()["G"] == []
    policy.check_invariants()


def test_wtinylfu_admits_by_frequency() -> None:
    policy = WTinyLFUPolicy(100)  # window 1, probation/protected share 99
    driver = ProtocolDriver(policy, 100)
    for key in range(100):
        driver.request(key)
    for _ in range(3):
        driver.request(50)  # 50 is frequent: probation -> protected
    assert 50 in policy.lists()["protected"]
    driver.request("new")  # window candidate 99 (freq 1) vs probation LRU 0 (freq 1): 99 loses
    assert 99 not in policy and 0 in policy
    for _ in range(3):
        policy.on_miss("hot", 1)  # "hot" requested often while not cached (admission aborted)
    driver.request("hot")
    driver.request("newer")  # candidate "hot" (freq 4) beats probation LRU 0 (freq 1)
    assert "hot" in policy and 0 not in policy
    assert policy.frequency("hot") == 4
    policy.check_invariants()


def test_wtinylfu_ages_its_counters() -> None:
    policy = WTinyLFUPolicy(10, sample_factor=1)  # halve every 10 recorded requests
    driver = ProtocolDriver(policy, 10)
    for _ in range(9):
        driver.request("a")
    assert policy.frequency("a") == 9
    driver.request("a")  # the 10th request: 10 -> 5
    assert policy.frequency("a") == 5 and policy.extra_stats()["agings"] == 1
    for _ in range(30):
        driver.request("a")
    assert policy.frequency("a") <= 15


def test_bad_options_are_value_errors() -> None:
    for make in (lambda: CLOCKPolicy(4, n_bit_counter=0), lambda: CLOCKPolicy(4, init_freq=2),
                 lambda: TwoQPolicy(4, a_in_size_ratio=1.5),
                 lambda: S3FIFOPolicy(20, move_to_main_threshold=4),
                 lambda: S3FIFOPolicy(20, ghost_size_ratio=-1),
                 lambda: WTinyLFUPolicy(10, sample_factor=0),
                 lambda: WTinyLFUPolicy(10, window_ratio=True)):
        with pytest.raises(ValueError):
            make()


def test_every_new_policy_is_registered() -> None:
    for name, cls in NEW_POLICIES.items():
        assert get_policy_class(name) is cls and cls.name == name


@pytest.mark.parametrize("name", sorted(NEW_POLICIES))
def test_module_docstring_cites_a_paper_and_states_complexity(name: str) -> None:
    import sys

    doc = sys.modules[NEW_POLICIES[name].__module__].__doc__ or ""
    assert "Complexity" in doc and "Not thread-safe" in doc.replace("\n", " ")
    assert any(year in doc for year in ("1966", "1968", "1994", "2017", "2023", "2024"))


# ======================================================================================
# Invariants after every step, non-default settings (hypothesis)
# ======================================================================================

FUTURE = [random.Random(9).randrange(14) for _ in range(200)]


class _OPTFuture(OPTPolicy):
    """OPT told a future that the random operations follow only loosely."""

    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, future=FUTURE, **options)


class _OPTSchedule(OPTPolicy):
    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, schedule=[3, 1, 4, 1, 5, 9, 2, 6, 0, 8], **options)


class _Clock3(CLOCKPolicy):
    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, n_bit_counter=3, init_freq=1, **options)


class _S3FIFOThreshold1(S3FIFOPolicy):
    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, move_to_main_threshold=1, small_size_ratio=0.3, **options)


class _WTinyLFUFastAging(WTinyLFUPolicy):
    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, window_ratio=0.3, sample_factor=1, **options)


class _TwoQWide(TwoQPolicy):
    def __init__(self, capacity: int, **options: Any) -> None:
        super().__init__(capacity, a_in_size_ratio=0.5, a_out_size_ratio=1.0, **options)


VARIANTS: list[type[Policy]] = [_OPTFuture, _OPTSchedule, _Clock3, _S3FIFOThreshold1,
                                _WTinyLFUFastAging, _TwoQWide]


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("capacity", "max_size"), [(4, 1), (12, 5)])
@pytest.mark.slow  # hypothesis state machines, ~6 s together
def test_invariants_of_variants_under_hypothesis(cls: type[Policy], capacity: int,
                                                 max_size: int) -> None:
    machine = make_policy_machine(cls, capacity, max_size)
    run_state_machine_as_test(machine, settings=settings(max_examples=40,
                                                         stateful_step_count=40,
                                                         deadline=None))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), capacity=st.integers(1, 5))
def test_opt_schedule_invariants_with_cursor_reports(data: st.DataObject, capacity: int) -> None:
    """Random mixes of scheduled requests, skips, repeats, unknown keys, cursor
    reports and removals: next uses stay exact (check_invariants recomputes them)."""
    schedule = data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=10), label="schedule")
    policy = OPTPolicy(capacity, schedule=schedule)
    driver = ProtocolDriver(policy, capacity)
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        op = data.draw(st.sampled_from(["request", "request", "cursor", "remove", "evict"]))
        if op == "request":
            driver.request(data.draw(st.integers(0, 9)))  # 8, 9: never in the schedule
        elif op == "cursor":
            policy.on_cursor(data.draw(st.integers(0, len(schedule) - 1)))
        elif op == "remove" and driver.sizes:
            keys = sorted(cast(dict[int, int], driver.sizes))  # ints: the requests above
            driver.remove(data.draw(st.sampled_from(keys)))
        elif op == "evict":
            driver.evict_one()
        driver.check()
