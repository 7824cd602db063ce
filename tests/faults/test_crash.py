"""Crash safety: SIGKILL a writer at random points, reopen, and check every key.

A zygote process (tests/crash_worker.py) forks one writer per round; the writer
reopens the cache left by the previous kill, checks every key, then runs random
puts, gets and deletes on a memory / lmdb / diskcache cache until it is killed
-- after a random delay (odd rounds) or by itself at a random point inside a
store write, demotion, promotion, eviction or lmdb compaction (even rounds).

Guarantee checked (docs/reliability.md): after a kill, reopening never raises,
and every key reads as a miss, the last acknowledged version, or the version of
the put in flight at the kill -- never older bytes, never mixed bytes. The
tiers pass ``check_invariants`` and a full ``verify`` scrub finds nothing.

``TIERCACHE_CRASH_ROUNDS`` sets the number of kills (default 120);
``TIERCACHE_CRASH_SEED`` the seed of the rounds' choices (default 20240611: the
suite is deterministic up to the kills' timing; another seed for a soak run);
``TIERCACHE_CRASH_REPORT`` names a JSON file to write the figures to.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROUNDS = int(os.environ.get("TIERCACHE_CRASH_ROUNDS", "120"))
SEED = int(os.environ.get("TIERCACHE_CRASH_SEED", "20240611"))
WORKER = Path(__file__).resolve().parents[1] / "crash_worker.py"
LINE_TIMEOUT_S = 60.0

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
    pytest.mark.slow,
]


class Zygote:
    """The worker zygote subprocess and a thread turning its stdout into a queue."""

    def __init__(self, root: Path, stderr: Path) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "zygote", str(root)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.next() == "READY"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = LINE_TIMEOUT_S) -> str:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise AssertionError("the zygote died; see its stderr")
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.send("QUIT")
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self._stderr.close()


def _apply(base: dict[str, int | None], log: list[str]) -> dict[str, dict[str, int | None]]:
    """Expectations after a round: each key's last acknowledged version and in-flight put."""
    acked = dict(base)
    inflight: dict[str, int | None] = {}
    for line in log:
        phase, op, key, *rest = line.split(" ")
        version = int(rest[0]) if rest else None
        if phase == "B":
            inflight[key] = version if op == "put" else None
        elif phase == "A":
            acked[key] = version if op == "put" else None
            inflight.pop(key, None)
    return {k: {"acked": acked.get(k), "inflight": inflight.get(k)}
            for k in set(acked) | set(inflight)}


def test_sigkill_anywhere_leaves_right_bytes_or_a_miss(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    zygote = Zygote(tmp_path / "cache", tmp_path / "worker-stderr.txt")
    expect_file = tmp_path / "expect.json"
    figures: dict[str, Any] = {"kills": 0, "timed_kills": 0, "self_kills": 0,
                               "diskfull_kills": 0, "checks": 0,
                               "keys_checked": 0, "acked": 0, "inflight": 0, "miss": 0,
                               "duplicates_dropped": 0, "orphan_files_seen": 0,
                               "compactions": 0, "ops_acknowledged": 0}
    failures: list[str] = []
    expect: dict[str, dict[str, int | None]] = {}
    previous_log: list[str] = []  # the last killed round's B/A lines, for a failure's message
    previous_mode = "none"
    started = time.perf_counter()
    try:
        for round_no in range(ROUNDS + 1):
            last = round_no == ROUNDS
            mode = "checkonly" if last else ("timed", "self", "diskfull")[round_no % 3]
            expect_file.write_text(json.dumps(expect))
            zygote.send(f"RUN {round_no + 1} {rng.getrandbits(32)} {mode} {expect_file}")
            pid = int(zygote.next().split()[1])
            log: list[str] = []
            checked: dict[str, Any] | None = None
            status: int | None = None
            deadline: float | None = None
            killed = False
            while status is None:
                timeout = LINE_TIMEOUT_S
                if checked is not None and mode == "timed" and not killed:
                    if deadline is None:
                        deadline = time.monotonic() + rng.uniform(0.005, 0.5)
                    timeout = max(0.0, deadline - time.monotonic())
                try:
                    line = zygote.next(timeout=timeout)
                except queue.Empty:
                    if killed or checked is None or mode != "timed":
                        raise AssertionError(f"round {round_no}: the worker hangs") from None
                    os.kill(pid, signal.SIGKILL)  # the timed kill is due
                    killed = True
                    continue
                kind = line.split(" ", 1)[0]
                if kind == "CHECKED":
                    checked = json.loads(line.split(" ", 1)[1])
                elif kind in ("B", "A"):
                    log.append(line)
                elif kind == "N":
                    figures["compactions"] += 1
                elif kind in ("BAD", "ERROR"):
                    failures.append(f"round {round_no}: {line}")
                elif kind == "EXIT":
                    status = int(line.split()[2])
            assert checked is not None, (f"round {round_no}: the child died before checking: "
                                         f"{failures[-1:]}")
            for bad in checked["bad"]:  # with what the killed round did to that key
                key = bad.split(":", 1)[0]
                history = [line for line in previous_log if f" {key} " in f"{line} "][-12:]
                failures.append(f"round {round_no}: {bad}; round {round_no - 1} ({previous_mode})"
                                f" on {key}: {' | '.join(history) or 'nothing'}")
            if checked["corrupt"]:
                failures.append(f"round {round_no}: verify found {checked['corrupt']} bad entries")
            if checked["errors"]:
                failures.append(f"round {round_no}: {checked['errors']} errors on open")
            figures["checks"] += 1
            for name in ("acked", "inflight", "miss"):
                figures[name] += checked[name]
            figures["keys_checked"] += checked["keys"]
            figures["duplicates_dropped"] += checked["duplicates"]
            figures["orphan_files_seen"] = max(figures["orphan_files_seen"], checked["orphans"])
            figures["ops_acknowledged"] += sum(1 for line in log if line.startswith("A "))
            if last:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
                break
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                f"round {round_no}: the writer ended with status {status}, not by SIGKILL; "
                f"see {tmp_path / 'worker-stderr.txt'}")
            figures["kills"] += 1
            figures[f"{mode}_kills"] += 1
            expect = _apply(checked["now"], log)
            previous_log, previous_mode = log, mode
    finally:
        zygote.close()
    figures["seconds"] = round(time.perf_counter() - started, 1)
    report = os.environ.get("TIERCACHE_CRASH_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=2))
    print("crash test figures:", json.dumps(figures))
    assert not failures, "\n".join(failures[:20])
    assert figures["kills"] >= ROUNDS
    assert figures["acked"] + figures["inflight"] > 0  # the check saw real data, not only misses
