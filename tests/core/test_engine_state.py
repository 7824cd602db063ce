"""The engine's state machine, from the shipped kit (:class:`tiercache.testing.CacheStateMachine`).

After each step: every get returns the last value put (or a miss for a deleted
key), each tier's bytes stay within its capacity, in exclusive mode a key lives
in at most one tier, and every policy's own invariants hold. The bottom tier is
large enough that nothing is evicted out of the hierarchy, so nothing may go
missing. Run in exclusive mode (LRU / LFU / ARC) and inclusive mode (ARC / LRU / LFU).
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from tiercache.testing import CacheStateMachine

pytestmark = pytest.mark.slow  # about 40 s: 2 x 100 hypothesis runs of 40 steps


class InclusiveCacheMachine(CacheStateMachine):
    mode = "inclusive"
    policies = ("arc", "lru", "lfu")


TestExclusive = CacheStateMachine.TestCase
TestExclusive.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestInclusive = InclusiveCacheMachine.TestCase
TestInclusive.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
