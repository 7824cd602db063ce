"""The pytest markers ``redis``, ``tf`` and ``slow`` (issue 13): registered, strict, and
applied so that the inner loop (``make test-fast``) starts no redis-server, imports no
TensorFlow and skips the long campaigns, while ``make test`` still runs everything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAST = "not tf and not redis and not slow"


def _collect(*args: str) -> tuple[list[str], str]:
    """The test ids pytest collects with ``args`` and its summary line (a child process,
    collection only)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p",
                           "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"})
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    return [line for line in lines if "::" in line], lines[-1] if lines else ""


def test_the_markers_are_registered_and_strict() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pytest_options = options["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in pytest_options["addopts"].split()
    names = {line.split(":", 1)[0] for line in pytest_options["markers"]}
    assert names == {"redis", "tf", "slow"}


def test_make_test_fast_deselects_the_three_and_make_test_runs_all() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    fast = re.search(r"^test-fast:.*\n\t(.*)$", makefile, re.M)
    assert fast is not None and f'-m "{FAST}"' in fast.group(1)
    pytest_target = re.search(r"^pytest:.*\n\t(.*)$", makefile, re.M)
    assert pytest_target is not None and '-m "' not in pytest_target.group(1)


def test_the_inner_loop_leaves_out_redis_tests_and_the_policy_state_machines() -> None:
    """Redis tests by file and by fixture, the contract's state machines by the conftest
    rule (10 policies x 3 capacities, + MRU's 3); everything else of those files stays in."""
    files = ["tests/stores/test_redis_tier.py", "tests/policies/test_policies.py"]
    fast, summary = _collect("-m", FAST, *files)
    assert fast and all("test_policies.py::" in t for t in fast)
    assert not any("::test_state_machine[" in t for t in fast)
    collected = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", summary)
    assert collected is not None, summary
    kept, total, deselected = map(int, collected.groups())
    assert kept == len(fast) and kept + deselected == total
    assert deselected >= 33 + 10  # the state machines and test_redis_tier's tests
