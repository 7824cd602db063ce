"""The shipped test kit, :mod:`tiercache.testing`, used as a user would use it.

* A toy policy and a toy store defined outside the package (in a temporary folder,
  with their own test module and no conftest of ours) pass the contracts imported
  from ``tiercache.testing``, run by a separate pytest process.
* The view contract is gated by what a store declares: a store that does not
  declare ``zero_copy`` has no view tests (it does not subclass
  :class:`ViewStoreContract`; one that does fails its fixture); one that declares
  it but serves writable copies fails them. Nothing is skipped.
* ``import tiercache`` imports neither pytest nor hypothesis; without them, asking
  for a contract raises an ImportError that names the ``tiercache[testing]`` extra,
  while :class:`~tiercache.testing.FaultyStore` still imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TOY_POLICY = '''
from collections import OrderedDict

from tiercache.policies import Policy


class ToyFIFO(Policy):
    """First in, first out: a policy written by a user, outside tiercache."""

    name = "toy-fifo"

    def __init__(self, capacity, **options):
        super().__init__(capacity, **options)
        self._order = OrderedDict()

    def __contains__(self, key):
        return key in self._order

    def __len__(self):
        return len(self._order)

    def __iter__(self):
        return iter(self._order)

    def on_insert(self, key, size):
        self._order[key] = size

    def on_hit(self, key):
        pass  # FIFO ignores hits

    def on_remove(self, key):
        del self._order[key]

    def victim(self, incoming=None):
        if not self._order:
            raise LookupError("empty")
        return next(iter(self._order))
'''

TOY_POLICY_TEST = '''
import pytest

from tiercache.testing import PolicyContract
from toy_policy import ToyFIFO


class TestToyFIFO(PolicyContract):
    machine_examples = 10

    @pytest.fixture
    def policy_cls(self):
        return ToyFIFO
'''

TOY_STORE_TEST = '''
import numpy as np
import pytest

from tiercache.stores.memory import MemoryStore
from tiercache.testing import StoreContract, ViewStoreContract


class ToyStore(MemoryStore):
    backend = "toy"


class CopyingViews(MemoryStore):
    """Declares zero-copy views but hands out writable copies: must fail the view tests."""

    backend = "toy-views"
    zero_copy = True

    def get_view(self, key):
        array = self.get(key)
        return None if array is None else np.array(array)


class TestToyStore(StoreContract):
    @pytest.fixture
    def store_dir(self):
        return None

    @pytest.fixture
    def make_store(self):
        return lambda verify="always": ToyStore()


class TestCopyingViews(TestToyStore, ViewStoreContract):
    @pytest.fixture
    def make_store(self):
        return lambda verify="always": CopyingViews()


class TestUndeclaredViews(ViewStoreContract):
    @pytest.fixture
    def make_store(self):
        return lambda verify="always": ToyStore()
'''


def _run_pytest(folder: Path, *args: str) -> dict[str, str]:
    """Run pytest on ``folder`` in a child process; return {test id: outcome}."""
    report = folder / "report.json"
    plugin = folder / "outcomes_plugin.py"
    plugin.write_text(textwrap.dedent(f'''
        import json
        OUTCOMES = {{}}
        def pytest_runtest_logreport(report):
            if report.when == "call" or report.outcome != "passed":
                OUTCOMES[report.nodeid] = report.outcome
        def pytest_sessionfinish(session):
            with open({str(report)!r}, "w") as f:
                json.dump(OUTCOMES, f)
    '''))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "outcomes_plugin",
         "--rootdir", str(folder), "-c", os.devnull, *args, str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert report.exists(), f"pytest did not finish:\n{proc.stdout}\n{proc.stderr}"
    (folder / "output.txt").write_text(proc.stdout + proc.stderr)
    outcomes: dict[str, str] = json.loads(report.read_text())
    return outcomes


def proc_output(folder: Path) -> str:
    """What the child pytest printed (for a failure message)."""
    return (folder / "output.txt").read_text()[-4000:]


def test_a_toy_policy_outside_the_package_passes_the_contract(tmp_path: Path) -> None:
    (tmp_path / "toy_policy.py").write_text(TOY_POLICY)
    (tmp_path / "test_toy_policy.py").write_text(TOY_POLICY_TEST)
    outcomes = _run_pytest(tmp_path)
    from tiercache.testing import PolicyContract
    contract = {name for name in dir(PolicyContract) if name.startswith("test_")}
    ran = {nodeid.split("::")[-1].split("[")[0] for nodeid in outcomes}
    assert ran == contract, f"missing: {contract - ran}"
    assert len(outcomes) >= 20
    failed = {nodeid: outcome for nodeid, outcome in outcomes.items() if outcome != "passed"}
    assert failed == {}, proc_output(tmp_path)


def test_the_store_contract_is_gated_by_declared_capabilities(tmp_path: Path) -> None:
    (tmp_path / "test_toy_store.py").write_text(TOY_STORE_TEST)
    outcomes = _run_pytest(tmp_path, "-k", "view or roundtrip or missing")
    view_tests = {"test_view_roundtrip_read_only", "test_view_of_missing_is_none",
                  "test_view_outlives_overwrite_and_delete"}

    def outcome(cls: str, test: str) -> str:
        return outcomes[f"test_toy_store.py::{cls}::{test}"]

    # no zero_copy declared: no view tests, nothing skipped, the others pass
    assert not any("TestToyStore::test_view" in nodeid for nodeid in outcomes)
    assert "skipped" not in outcomes.values()
    assert outcome("TestToyStore", "test_missing") == "passed"
    # the view contract on a store that does not declare zero_copy fails, never skips
    assert {outcome("TestUndeclaredViews", t) for t in view_tests} == {"failed"}
    # zero_copy declared: the view tests run, and writable copies fail one
    assert outcome("TestCopyingViews", "test_view_roundtrip_read_only") == "failed"
    assert outcome("TestCopyingViews", "test_view_of_missing_is_none") == "passed"
    assert outcome("TestCopyingViews", "test_missing") == "passed"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_import_tiercache_imports_no_test_framework() -> None:
    proc = _python("""
        import sys
        import tiercache
        import tiercache.testing
        from tiercache.testing import FaultyStore
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("pytest", "hypothesis")))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_contract_without_pytest_names_the_extra() -> None:
    proc = _python("""
        import sys
        sys.modules["pytest"] = None       # as if pytest were not installed
        sys.modules["hypothesis"] = None
        from tiercache.testing import FaultyStore   # needs neither
        for name in ("PolicyContract", "StoreContract", "CacheStateMachine"):
            try:
                getattr(__import__("tiercache.testing", fromlist=[name]), name)
            except ImportError as exc:
                print(name, exc)
            else:
                print(name, "imported")
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    for line in lines:
        assert "pip install 'tiercache[testing]'" in line, line
