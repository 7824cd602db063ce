"""A hypothesis state machine mirroring every cache operation into a dict.

:class:`CacheStateMachine` opens a three-tier cache (RAM memory / SSD lmdb /
HDD diskcache, in a fresh temporary folder), applies random ``put`` (to the top
or to a chosen tier), ``get``, ``get(out=...)``, ``delete`` and close-and-reopen
steps to it and to a ``dict`` model. After each step: every get returns the last
value put (or a miss for a deleted key), the cache's keys are the model's, and
:meth:`~tiercache.TieredCache.check_invariants` holds (each tier's bytes within
its capacity, in exclusive mode a key in at most one tier, every policy's own
invariants). The bottom tier is large enough that nothing is evicted out of the
hierarchy, so nothing may go missing.

Use it by subclassing (needs the ``tiercache[testing]`` extra)::

    from hypothesis import settings
    from tiercache.testing import CacheStateMachine

    class MyPolicyMachine(CacheStateMachine):
        policies = ("mine", "lru", "lru")   # RAM, SSD, HDD; any registered name or
        mode = "inclusive"                  # "package.module:Class" spec

    TestMyPolicyInACache = MyPolicyMachine.TestCase
    TestMyPolicyInACache.settings = settings(max_examples=50, deadline=None)

Override :meth:`CacheStateMachine.make_config` to drive another hierarchy. Each
run owns its cache and folder; a machine is driven by one thread.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import missing_extra

try:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
except ImportError as exc:  # pragma: no cover - exercised in a child process
    raise missing_extra(exc, __name__) from exc

import tiercache

#: Keys the machine uses: a dozen plain ones and three that must not escape a folder.
KEYS = st.sampled_from([f"k{i}" for i in range(12)] + ["../escape", "a/b", "ü"])
#: Shard dtypes the machine puts.
DTYPES = st.sampled_from(["float32", "float16", "int8", "int64", "bool"])


def three_tier_config(root: Path, *, mode: str = "exclusive", ram: str = "64KiB",
                      ssd: str = "128KiB", hdd: str = "4MiB", ram_policy: str = "lru",
                      ssd_policy: str = "lru", hdd_policy: str = "lru",
                      promote_after: Any = 2) -> dict[str, Any]:
    """A RAM (memory) / SSD (lmdb) / HDD (diskcache) config dict rooted at ``root``.

    The SSD and HDD tiers live in ``root / "ssd"`` and ``root / "hdd"``. O(1).
    """
    return {
        "mode": mode,
        "tiers": [
            {"name": "ram", "backend": "memory", "capacity": ram, "policy": ram_policy},
            {"name": "ssd", "backend": "lmdb", "path": str(root / "ssd"), "capacity": ssd,
             "policy": ssd_policy, "promote_after": promote_after},
            {"name": "hdd", "backend": "diskcache", "path": str(root / "hdd"), "capacity": hdd,
             "policy": hdd_policy, "promote_after": promote_after},
        ],
    }


class CacheStateMachine(RuleBasedStateMachine):
    """Random operations on a real :class:`~tiercache.TieredCache`, checked against a dict.

    Attributes
    ----------
    mode:
        ``"exclusive"`` or ``"inclusive"``.
    policies:
        The policy names (or ``"module:Class"`` specs) of the RAM, SSD and HDD tiers.

    Notes
    -----
    Each step costs what the cache operation costs (shards are at most 3000
    elements); :meth:`reopen` re-indexes the persistent tiers. Not thread-safe:
    hypothesis drives one machine from one thread.
    """

    mode = "exclusive"
    policies: tuple[str, str, str] = ("lru", "lfu", "arc")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tiercache-sm-"))
        self.config = self.make_config(self.root)
        self.cache = tiercache.open(self.config)
        self.model: dict[str, np.ndarray] = {}

    def make_config(self, root: Path) -> dict[str, Any]:
        """The cache under test, in the empty folder ``root``. Override to change it.

        Default: RAM 8 KiB, SSD 24 KiB, HDD 2 MiB (nothing leaves the HDD), the
        three :attr:`policies`, :attr:`mode`, ``promote_after = 2``.
        """
        ram, ssd, hdd = self.policies
        return three_tier_config(root, mode=self.mode, ram="8KiB", ssd="24KiB", hdd="2MiB",
                                 ram_policy=ram, ssd_policy=ssd, hdd_policy=hdd,
                                 promote_after=2)

    def teardown(self) -> None:
        """Close the cache and remove its folder."""
        self.cache.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(key=KEYS, n=st.integers(0, 3000), dtype=DTYPES, seed=st.integers(0, 2**16),
          tier=st.sampled_from([None, None, "ssd", "hdd"]))
    def put(self, key: str, n: int, dtype: str, seed: int, tier: str | None) -> None:
        """Put a random shard of ``n`` elements, to the top or to ``tier``."""
        rng = np.random.default_rng(seed)
        array = (rng.standard_normal(n) * 50).astype(dtype)
        self.cache.put(key, array, tier=tier)
        self.model[key] = array.copy()

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        """A get answers the model's value, or ``None`` for a key not in it."""
        got = self.cache.get(key, None)
        if key in self.model:
            assert got is not None, f"{key!r} went missing"
            want = self.model[key]
            assert got.dtype == want.dtype and got.shape == want.shape, (
                f"{key!r}: got {got.dtype}{got.shape}, put {want.dtype}{want.shape}")
            assert np.array_equal(got, want), f"{key!r}: the values differ from those put"
        else:
            assert got is None, f"{key!r} was deleted (or never put) but a get found it"

    @rule(key=KEYS)
    def get_into(self, key: str) -> None:
        """A get into a caller's buffer fills and returns that buffer."""
        if key not in self.model:
            return
        want = self.model[key]
        out = np.empty_like(want)
        assert self.cache.get(key, out=out) is out, f"{key!r}: get(out=) returned another array"
        assert np.array_equal(out, want), f"{key!r}: get(out=) filled other values"

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        """A delete answers whether the key was present."""
        assert self.cache.delete(key) == (key in self.model), f"delete({key!r})"
        self.model.pop(key, None)

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def reopen(self) -> None:
        """Close the cache and open it again from the same config."""
        self.cache.close()
        self.cache = tiercache.open(self.config)

    @invariant()
    def invariants_hold(self) -> None:
        """The cache's own invariants; its keys are the model's."""
        self.cache.check_invariants()
        assert set(self.cache.keys()) == set(self.model), (
            f"cache keys {sorted(self.cache.keys())} != model keys {sorted(self.model)}")
