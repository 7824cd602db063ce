"""The contract every eviction policy must honour, as a reusable test-kit.

How to use it for a policy of your own (see docs/policies.md; needs the
``tiercache[testing]`` extra)::

    import pytest
    from tiercache.testing import PolicyContract

    class TestMyPolicyContract(PolicyContract):
        @pytest.fixture
        def policy_cls(self):
            return MyPolicy

The repository's ``tests/policies/test_policies.py`` runs it for every name in
:func:`tiercache.policies.available_policies`, so a newly registered policy is
covered without editing any test.

What the contract checks
------------------------
* ``victim()`` is pure: two calls answer the same resident key and nothing
  observable changes; a policy that receives extra ``victim()`` calls behaves
  exactly like one that does not.
* ``victim()`` on an empty policy raises :class:`LookupError`.
* ``in``, ``len`` and iteration agree with the inserts, removes and evictions
  made so far; ``victim()`` only ever names a resident key.
* ``on_remove`` keeps no ghost: re-inserting a removed key behaves exactly like
  inserting a key never seen before.
* ``check_invariants()`` holds after every step of random operation sequences,
  in count mode (every size 1) and byte mode (random sizes); the
  :class:`ProtocolDriver`, which follows the hook protocol of
  :mod:`tiercache.policies.base`, keeps the resident bytes within capacity.
* The same with hypothesis: :func:`make_policy_machine` builds a rule-based
  state machine that mirrors every operation into a dict model.

Cost: the whole contract replays a few thousand hooks per test and 3 x 75
hypothesis runs of 40 steps; about a second per test for the built-ins. Nothing
here is thread-safe, nor needs to be: each test builds its own policy and driver.

Policies may assume no more than the protocol promises. One assumption is
made beyond it: a policy treats keys only by equality and hashing (renaming a
key consistently changes nothing), which the "no ghost" check relies on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable
from itertools import accumulate
from typing import Any

from . import missing_extra

try:
    import hypothesis.strategies as st
    import pytest
    from hypothesis import settings
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        initialize,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )
except ImportError as exc:  # pragma: no cover - exercised in a child process
    raise missing_extra(exc, __name__) from exc

from ..policies import Policy

Key = Hashable

# --- the driver ---------------------------------------------------------------------


def observable_state(policy: Policy) -> tuple[Any, ...]:
    """Everything a caller can see of ``policy`` without calling a hook."""
    lists = getattr(policy, "lists", None)
    return (
        list(policy),
        len(policy),
        policy.extra_stats(),
        repr(policy),
        lists() if callable(lists) else None,
    )


class ProtocolDriver:
    """Drives a policy exactly as :mod:`tiercache.policies.base` prescribes.

    It owns the capacity accounting a tier would own (``sizes``, ``used``) and
    checks every answer the policy gives: each victim is resident, is not the
    incoming key, and a second ``victim()`` call returns the same key without
    changing the observable state.

    Every decision the policy made is appended to ``log`` (``("hit", key)``,
    ``("miss", key)``, ``("evict", key)``, ...), so two runs can be compared.
    """

    def __init__(self, policy: Policy, capacity: int, *, check_purity: bool = True) -> None:
        self.policy = policy
        self.capacity = capacity
        self.sizes: dict[Key, int] = {}
        self.used = 0
        self.check_purity = check_purity
        self.log: list[tuple[str, Key]] = []

    def _victim(self, incoming: Key | None) -> Key:
        policy = self.policy
        before = observable_state(policy) if self.check_purity else None
        victim = policy.victim(incoming)
        assert victim in self.sizes, f"victim {victim!r} is not resident"
        assert victim in policy, f"victim {victim!r} is not in the policy"
        assert incoming is None or victim != incoming, "victim() named the incoming key"
        if self.check_purity:
            assert observable_state(policy) == before, "victim() changed the policy's state"
            again = policy.victim(incoming)
            assert again == victim, f"victim() is not pure: {victim!r} then {again!r}"
            assert observable_state(policy) == before, "victim() changed the policy's state"
        return victim

    def _evict(self, victim: Key) -> None:
        self.policy.on_evict(victim)
        self.used -= self.sizes.pop(victim)
        self.log.append(("evict", victim))

    def request(self, key: Key, size: int = 1) -> bool | None:
        """Serve one request: ``True`` on a hit, ``False`` on an admitted miss,
        ``None`` when ``size`` exceeds the capacity (refused before any eviction)."""
        if key in self.sizes:
            assert key in self.policy
            self.policy.on_hit(key)
            self.log.append(("hit", key))
            return True
        assert key not in self.policy, f"{key!r} is in the policy but was never admitted"
        if size > self.capacity:
            self.log.append(("too-large", key))
            return None
        self.policy.on_miss(key, size)
        while self.used + size > self.capacity:
            self._evict(self._victim(key))
        self.policy.on_insert(key, size)
        self.sizes[key] = size
        self.used += size
        self.log.append(("miss", key))
        return False

    def warm_insert(self, key: Key, size: int = 1) -> bool:
        """Index a key that a persistent store already holds (a tier restarting):
        ``on_insert`` alone, only when it fits without eviction."""
        if key in self.sizes or self.used + size > self.capacity:
            return False
        self.policy.on_insert(key, size)
        self.sizes[key] = size
        self.used += size
        self.log.append(("warm", key))
        return True

    def remove(self, key: Key) -> None:
        """A resident key leaves for another reason than eviction (delete, promotion)."""
        self.policy.on_remove(key)
        self.used -= self.sizes.pop(key)
        self.log.append(("remove", key))

    def evict_one(self) -> Key | None:
        """Evict the policy's victim (no incoming key); ``None`` when empty."""
        if not self.sizes:
            with pytest.raises(LookupError):
                self.policy.victim()
            return None
        victim = self._victim(None)
        self._evict(victim)
        return victim

    def abort_miss(self, key: Key, size: int) -> Key | None:
        """A miss whose first demotion fails: ``on_miss`` and ``victim`` are
        called, then the admission is abandoned (no ``on_evict``, no ``on_insert``)."""
        if key in self.sizes or size > self.capacity:
            return None
        self.policy.on_miss(key, size)
        self.log.append(("abort", key))
        if self.used + size > self.capacity:
            return self._victim(key)
        return None

    def check(self) -> None:
        """The policy agrees with the driver's model; its own invariants hold."""
        policy = self.policy
        residents = list(policy)
        assert len(residents) == len(set(residents)), "iteration repeats a key"
        assert set(residents) == set(self.sizes), (
            f"policy holds {sorted(map(repr, residents))}, "
            f"model holds {sorted(map(repr, self.sizes))}")
        assert len(policy) == len(self.sizes)
        for key in self.sizes:
            assert key in policy
        assert self.used == sum(self.sizes.values()) <= self.capacity
        policy.check_invariants()


# --- random operation sequences --------------------------------------------------------

OPS = ("request", "request", "request", "request", "remove", "evict", "abort", "warm")


def random_ops(rng: random.Random, n: int, universe: int, max_size: int,
               ops: Iterable[str] = OPS) -> list[tuple[str, int, int]]:
    """``n`` random ``(op, key, size)`` triples over ``universe`` keys."""
    choices = list(ops)
    key_size = {k: rng.randint(1, max_size) for k in range(universe)}
    out = []
    for _ in range(n):
        key = rng.randrange(universe)
        # mostly stable sizes per key, sometimes a new size (a shard re-written)
        size = key_size[key] if rng.random() < 0.8 else rng.randint(1, max_size)
        out.append((rng.choice(choices), key, size))
    return out


def apply_op(driver: ProtocolDriver, op: str, key: Key, size: int,
             rng: random.Random | None = None) -> None:
    """Apply one op from :func:`random_ops` to ``driver`` (skipping impossible ones)."""
    if op == "request":
        driver.request(key, size)
    elif op == "remove":
        if driver.sizes:
            victim_pool = sorted(driver.sizes, key=repr)
            target = key if key in driver.sizes else victim_pool[
                (rng or random).randrange(len(victim_pool))]
            driver.remove(target)
    elif op == "evict":
        driver.evict_one()
    elif op == "abort":
        driver.abort_miss(key, size)
    elif op == "warm":
        driver.warm_insert(key, size)
    else:  # pragma: no cover - programming error in a test
        raise ValueError(op)


# --- the hypothesis state machine --------------------------------------------------------


def make_policy_machine(policy_cls: type[Policy], capacity: int, max_size: int,
                        extra_check: Callable[[Policy], None] | None = None,
                        ) -> type[RuleBasedStateMachine]:
    """A state machine that drives ``policy_cls`` with random hooks and mirrors
    every operation into a dict model (``key -> size``).

    ``max_size`` 1 is count mode; larger values give byte mode with random sizes
    (up to ``max_size``, which may exceed ``capacity`` to test refusals).
    ``extra_check(policy)`` runs after every step for policy-specific invariants.
    """
    keys = st.integers(min_value=0, max_value=max(6, 2 * capacity))
    sizes = st.integers(min_value=1, max_value=max_size)

    class PolicyMachine(RuleBasedStateMachine):
        driver: ProtocolDriver

        @initialize()
        def start(self) -> None:
            self.driver = ProtocolDriver(policy_cls(capacity), capacity)

        @rule(key=keys, size=sizes)
        def request(self, key: int, size: int) -> None:
            self.driver.request(key, size)

        @rule(key=keys, size=sizes)
        def warm_insert(self, key: int, size: int) -> None:
            self.driver.warm_insert(key, size)

        @precondition(lambda self: bool(self.driver.sizes))
        @rule(data=st.data())
        def hit(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.driver.sizes)))  # type: ignore[type-var]
            assert self.driver.request(key) is True

        @precondition(lambda self: bool(self.driver.sizes))
        @rule(data=st.data())
        def remove(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.driver.sizes)))  # type: ignore[type-var]
            self.driver.remove(key)
            assert key not in self.driver.policy

        @rule()
        def evict(self) -> None:
            victim = self.driver.evict_one()
            if victim is not None:
                assert victim not in self.driver.policy

        @rule(key=keys, size=sizes)
        def abort_miss(self, key: int, size: int) -> None:
            self.driver.abort_miss(key, size)

        @invariant()
        def consistent(self) -> None:
            if not hasattr(self, "driver"):
                return
            self.driver.check()
            if extra_check is not None:
                extra_check(self.driver.policy)

    PolicyMachine.__name__ = f"{policy_cls.__name__}Machine"
    return PolicyMachine


# --- the contract ----------------------------------------------------------------------


class PolicyContract:
    """Tests every policy must pass. Subclass it and provide a ``policy_cls`` fixture."""

    #: Hypothesis examples per state-machine run (keep the suite fast).
    machine_examples = 75

    # A subclass (or its module) provides the fixture ``policy_cls`` -> type[Policy].
    # It is deliberately not defined here: a class-level default would shadow a
    # module-level fixture of the test file.

    # -- construction and emptiness --
    def test_is_a_policy(self, policy_cls: type[Policy]) -> None:
        policy = policy_cls(10)
        assert isinstance(policy, Policy)
        assert len(policy) == 0 and list(policy) == [] and 0 not in policy
        assert isinstance(repr(policy), str)
        assert all(isinstance(v, (int, float)) for v in policy.extra_stats().values())
        policy.check_invariants()

    def test_unknown_option_is_rejected(self, policy_cls: type[Policy]) -> None:
        with pytest.raises(TypeError):
            policy_cls(10, no_such_option_xyz=1)

    def test_victim_of_empty_policy_raises_lookup_error(self, policy_cls: type[Policy]) -> None:
        policy = policy_cls(4)
        with pytest.raises(LookupError):
            policy.victim()
        with pytest.raises(LookupError):
            policy.victim("incoming")
        # empty again after removing and evicting everything
        driver = ProtocolDriver(policy, 4)
        for key in "abcdef":
            driver.request(key)
        driver.request("e")
        driver.remove("e")
        while driver.evict_one() is not None:
            driver.check()
        assert len(policy) == 0 and list(policy) == []
        with pytest.raises(LookupError):
            policy.victim("x")

    # -- victim() purity --
    @pytest.mark.parametrize("max_size", [1, 5])
    def test_victim_is_pure(self, policy_cls: type[Policy], max_size: int) -> None:
        rng = random.Random(7)
        capacity = 8 if max_size == 1 else 20
        driver = ProtocolDriver(policy_cls(capacity), capacity)  # checks purity on each victim
        checked = 0
        for op, key, size in random_ops(rng, 600, 3 * capacity, max_size):
            apply_op(driver, op, key, size, rng)
            if driver.sizes:
                for incoming in (None, key, "never-seen"):
                    if incoming in driver.sizes:
                        continue
                    before = observable_state(driver.policy)
                    first = driver.policy.victim(incoming)
                    assert driver.policy.victim(incoming) == first
                    assert observable_state(driver.policy) == before
                    assert first in driver.sizes
                    checked += 1
        assert checked > 500

    @pytest.mark.parametrize("max_size", [1, 5])
    def test_extra_victim_calls_change_no_decision(self, policy_cls: type[Policy],
                                                    max_size: int) -> None:
        """A policy asked ``victim()`` at arbitrary moments decides exactly like one never asked."""
        rng = random.Random(11)
        capacity = 6 if max_size == 1 else 15
        ops = random_ops(rng, 800, 3 * capacity, max_size)
        plain = ProtocolDriver(policy_cls(capacity), capacity, check_purity=False)
        probed = ProtocolDriver(policy_cls(capacity), capacity, check_purity=False)
        rng_a, rng_b, probe_rng = random.Random(3), random.Random(3), random.Random(5)
        for op, key, size in ops:
            apply_op(plain, op, key, size, rng_a)
            if probed.sizes and probe_rng.random() < 0.5:
                for _ in range(probe_rng.randint(1, 3)):
                    incoming = probe_rng.choice([None, key, -1])
                    if incoming not in probed.sizes:  # victim() is asked for non-residents
                        probed.policy.victim(incoming)
            apply_op(probed, op, key, size, rng_b)
        assert plain.log == probed.log
        assert list(plain.policy) == list(probed.policy)

    # -- membership --
    @pytest.mark.parametrize("max_size", [1, 4])
    def test_membership_len_iter_follow_the_hooks(self, policy_cls: type[Policy],
                                                  max_size: int) -> None:
        rng = random.Random(13)
        capacity = 10
        driver = ProtocolDriver(policy_cls(capacity), capacity)
        policy = driver.policy
        for op, key, size in random_ops(rng, 1500, 40, max_size):
            before = set(driver.sizes)
            apply_op(driver, op, key, size, rng)
            after = set(driver.sizes)
            for gone in before - after:
                assert gone not in policy, f"{gone!r} left but is still a member"
            for new in after - before:
                assert new in policy, f"{new!r} was inserted but is not a member"
            assert len(policy) == len(after)
            assert set(policy) == after
            if op == "evict" and before:
                assert len(after) == len(before) - 1
        kinds = {what for what, _ in driver.log}
        assert {"hit", "miss", "evict", "remove", "abort", "warm"} <= kinds, kinds

    def test_explicit_sequence(self, policy_cls: type[Policy]) -> None:
        policy = policy_cls(3)
        for key in "abc":
            policy.on_miss(key, 1)
            policy.on_insert(key, 1)
        assert set(policy) == {"a", "b", "c"} and len(policy) == 3
        policy.on_hit("b")
        assert "b" in policy
        policy.on_remove("b")
        assert "b" not in policy and len(policy) == 2 and set(policy) == {"a", "c"}
        victim = policy.victim("d")
        assert victim in {"a", "c"}
        policy.on_evict(victim)
        assert victim not in policy and len(policy) == 1
        policy.check_invariants()

    # -- no ghosts on remove --
    @pytest.mark.parametrize("max_size", [1, 4])
    def test_remove_keeps_no_ghost(self, policy_cls: type[Policy], max_size: int) -> None:
        """Re-inserting a removed key behaves exactly like inserting a brand-new key.

        Run A removes key ``k`` and later requests ``k`` again; run B is identical
        except that, from the removal on, every use of ``k`` is replaced by a key
        ``("fresh", k)`` never seen before. Any ghost of ``k`` kept by ``on_remove``
        would make the two runs decide differently.
        """
        capacity = 5 if max_size == 1 else 12
        for seed in range(12):
            rng = random.Random(seed)
            universe = 3 * capacity
            ops = random_ops(rng, 300, universe, max_size,
                             ops=("request", "request", "request", "evict", "abort"))
            cut = rng.randrange(50, 250)
            a = ProtocolDriver(policy_cls(capacity), capacity, check_purity=False)
            b = ProtocolDriver(policy_cls(capacity), capacity, check_purity=False)
            for op, key, size in ops[:cut]:
                apply_op(a, op, key, size)
                apply_op(b, op, key, size)
            if not a.sizes:
                continue
            k = sorted(a.sizes)[rng.randrange(len(a.sizes))]  # type: ignore[type-var]
            k_size = a.sizes[k]
            a.remove(k)
            b.remove(k)
            assert a.log == b.log
            start = len(a.log)
            fresh = ("fresh", k)

            def rename(key: Key, k: Key = k, fresh: Key = fresh) -> Key:
                return fresh if key == k else key

            tail: list[tuple[str, Key, int]] = [("request", k, k_size), *ops[cut:]]
            for tail_op, tail_key, tail_size in tail:
                apply_op(a, tail_op, tail_key, tail_size)
                apply_op(b, tail_op, rename(tail_key), tail_size)
                a.check()
                b.check()
            assert [(w, rename(x)) for w, x in a.log[start:]] == b.log[start:], f"seed {seed}"

    # -- invariants over random sequences --
    @pytest.mark.parametrize("max_size", [1, 3, 64])
    def test_invariants_hold_after_every_step(self, policy_cls: type[Policy],
                                              max_size: int) -> None:
        for seed, capacity in ((1, 1), (2, 7), (3, 64)):
            rng = random.Random(seed)
            if max_size > 1:
                capacity *= max_size // 2 + 1
            driver = ProtocolDriver(policy_cls(capacity), capacity)
            for op, key, size in random_ops(rng, 700, 40, max_size):
                apply_op(driver, op, key, size, rng)
                driver.check()

    @pytest.mark.parametrize("capacity", [1, 10, 100, 1000])
    def test_bytes_mode_stays_within_capacity(self, policy_cls: type[Policy],
                                              capacity: int) -> None:
        rng = random.Random(capacity)
        driver = ProtocolDriver(policy_cls(capacity), capacity)
        refused = admitted = 0
        for _ in range(1500):
            key = int(rng.paretovariate(1.2)) % 60
            size = rng.randint(1, max(1, capacity // 3)) if rng.random() < 0.95 else capacity + 1
            outcome = driver.request(key, size)
            refused += outcome is None
            admitted += outcome is False
            assert sum(driver.sizes[k] for k in driver.policy) <= capacity
            driver.check()
        assert admitted > 0 and refused > 0

    # -- hypothesis --
    @pytest.mark.parametrize(("capacity", "max_size"), [(4, 1), (12, 5), (10, 14)])
    def test_state_machine(self, policy_cls: type[Policy], capacity: int, max_size: int) -> None:
        machine = make_policy_machine(policy_cls, capacity, max_size,
                                      extra_check=self.extra_invariants)
        run_state_machine_as_test(
            machine, settings=settings(max_examples=self.machine_examples,
                                       stateful_step_count=40, deadline=None))

    def extra_invariants(self, policy: Policy) -> None:
        """Policy-specific invariants checked after every state-machine step (hook)."""


def make_trace(kind: str, seed: int, n: int, *, salt: str = "") -> list[int]:
    """A reproducible trace of object ids.

    ``uniform``: 150 objects, equally likely. ``zipf``: 1000 objects, Zipf(0.9).
    ``phases``: alternating phases of looping scans longer than most caches and
    of a skewed hot set, which pushes ARC's ``p`` both ways. ``salt`` varies the
    stream between test files.
    """
    rng = random.Random(f"{salt}{kind}-{seed}")
    if kind == "uniform":
        return [rng.randrange(150) for _ in range(n)]
    if kind == "zipf":
        cum = list(accumulate(1.0 / (i + 1) ** 0.9 for i in range(1000)))
        return rng.choices(range(1000), cum_weights=cum, k=n)
    out: list[int] = []
    while len(out) < n:
        if rng.random() < 0.5:
            start, length = rng.randrange(0, 400), rng.randrange(20, 160)
            out.extend(start + i for i in range(length))
            if rng.random() < 0.5:  # the same scan again: recency pays
                out.extend(start + i for i in range(length))
        else:
            hot = rng.sample(range(400), rng.randrange(3, 40))
            out.extend(rng.choice(hot) for _ in range(rng.randrange(50, 300)))
    return out[:n]
