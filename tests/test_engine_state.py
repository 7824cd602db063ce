"""A hypothesis state machine mirroring every cache operation into a dict.

After each step: every get returns the last value put (or a miss for a deleted
key), each tier's bytes stay within its capacity, in exclusive mode a key lives
in at most one tier, and every policy's own invariants hold. The bottom tier is
large enough that nothing is evicted out of the hierarchy, so nothing may go
missing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from helpers import three_tier_config
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tiercache

KEYS = st.sampled_from([f"k{i}" for i in range(12)] + ["../escape", "a/b", "ü"])
DTYPES = st.sampled_from(["float32", "float16", "int8", "int64", "bool"])


class CacheMachine(RuleBasedStateMachine):
    mode = "exclusive"
    policies = ("lru", "lfu", "arc")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tiercache-sm-"))
        cfg = three_tier_config(self.root, mode=self.mode, ram="8KiB", ssd="24KiB",
                                hdd="2MiB", ram_policy=self.policies[0],
                                ssd_policy=self.policies[1], hdd_policy=self.policies[2],
                                promote_after=2)
        self.config = cfg
        self.cache = tiercache.open(cfg)
        self.model: dict[str, np.ndarray] = {}

    def teardown(self) -> None:
        self.cache.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(key=KEYS, n=st.integers(0, 3000), dtype=DTYPES, seed=st.integers(0, 2**16),
          tier=st.sampled_from([None, None, "ssd", "hdd"]))
    def put(self, key: str, n: int, dtype: str, seed: int, tier: str | None) -> None:
        rng = np.random.default_rng(seed)
        array = (rng.standard_normal(n) * 50).astype(dtype)
        self.cache.put(key, array, tier=tier)
        self.model[key] = array.copy()

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        got = self.cache.get(key, None)
        if key in self.model:
            assert got is not None, f"{key!r} went missing"
            want = self.model[key]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want)
        else:
            assert got is None

    @rule(key=KEYS)
    def get_into(self, key: str) -> None:
        if key not in self.model:
            return
        want = self.model[key]
        out = np.empty_like(want)
        assert self.cache.get(key, out=out) is out
        assert np.array_equal(out, want)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.cache.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def reopen(self) -> None:
        self.cache.close()
        self.cache = tiercache.open(self.config)

    @invariant()
    def invariants_hold(self) -> None:
        self.cache.check_invariants()
        assert set(self.cache.keys()) == set(self.model)


class InclusiveCacheMachine(CacheMachine):
    mode = "inclusive"
    policies = ("arc", "lru", "lfu")


TestExclusive = CacheMachine.TestCase
TestExclusive.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestInclusive = InclusiveCacheMachine.TestCase
TestInclusive.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
