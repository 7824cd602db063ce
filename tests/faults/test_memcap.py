"""The memory-capped child that hostile-input tests run in (tests/memcap.py)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from memcap import mapped_bytes, run_capped


def _allocate(nbytes: int) -> int:
    return int(np.ones(nbytes, dtype=np.uint8).sum())


def test_a_call_within_the_cap_returns_its_value() -> None:
    result = run_capped(_allocate, 10 << 20, limit_bytes=256 << 20, timeout_s=60)
    assert result.ok and result.value == 10 << 20, result.describe()


def test_an_allocation_past_the_cap_is_a_memory_error_in_the_child_only() -> None:
    before = mapped_bytes()
    result = run_capped(_allocate, 2 << 30, limit_bytes=256 << 20, timeout_s=60)
    assert not result.ok and result.error_type == "MemoryError", result.describe()
    assert mapped_bytes() < before + (1 << 30)  # the test process never held it


def test_the_cap_is_on_what_the_call_adds() -> None:
    """A 64 MiB cap holds the same way whatever the test process has mapped already."""
    assert mapped_bytes() > 64 << 20  # numpy and pytest alone map more than the cap
    result = run_capped(_allocate, 32 << 20, limit_bytes=64 << 20, timeout_s=60)
    assert result.ok, result.describe()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _sleep() -> None:
    time.sleep(30)


def _raise() -> None:
    raise ValueError("bad input")


def test_a_signal_a_timeout_and_an_exception_are_reported() -> None:
    killed = run_capped(_die, timeout_s=60)
    assert killed.signal == signal.SIGKILL and "signal 9" in killed.describe()
    slow = run_capped(_sleep, timeout_s=0.5)
    assert slow.timed_out and slow.describe() == "child timed out"
    raised = run_capped(_raise, timeout_s=60)
    assert (raised.error_type, raised.error_message) == ("ValueError", "bad input")
    assert "_raise" in (raised.error_traceback or "")
