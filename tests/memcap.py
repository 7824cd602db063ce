"""Run a function in a child process under a memory cap, so hostile input cannot take
the machine down: a regression that allocates without bound fails the test instead.

Usage::

    from memcap import run_capped

    result = run_capped(parse_file, str(path), limit_bytes=1 << 30, timeout_s=60)
    assert result.ok, result.describe()          # returned normally
    assert result.error_type == "ModelFormatError"  # or: raised this exception type

The function must be importable by name from the child (a module-level function of a test
module or of tiercache); its arguments and return value must pickle. The child is started
with the ``fork`` method (fast; the test process must not hold threads that matter) and
gets ``RLIMIT_AS`` = ``limit_bytes`` before it calls the function. A child killed by a signal
(SIGBUS, SIGSEGV, SIGKILL) or one that runs past ``timeout_s`` is reported as such.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Default cap: far above what parsing a small hostile file needs, far below the machine.
DEFAULT_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class CappedResult:
    """What happened in the child: a value, an exception, a signal or a timeout."""

    ok: bool
    value: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    signal: int | None = None
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return "child timed out"
        if self.signal is not None:
            return f"child killed by signal {self.signal}"
        if self.error_type is not None:
            return f"{self.error_type}: {self.error_message}\n{self.error_traceback}"
        return f"returned {self.value!r}"


def _child(conn: Any, limit_bytes: int, func: Callable[..., Any], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    try:
        value = func(*args, **kwargs)
    except BaseException as exc:  # report every failure, MemoryError included
        conn.send(("error", type(exc).__name__, str(exc)[:2000], traceback.format_exc()[-4000:]))
    else:
        try:
            conn.send(("ok", value))
        except Exception as exc:  # an unpicklable result
            conn.send(("error", type(exc).__name__, str(exc)[:2000], ""))
    conn.close()


def run_capped(func: Callable[..., Any], *args: Any, limit_bytes: int = DEFAULT_LIMIT_BYTES,
               timeout_s: float = 120.0, **kwargs: Any) -> CappedResult:
    """Call ``func(*args, **kwargs)`` in a forked child under ``RLIMIT_AS``. O(the call)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, limit_bytes, func, args, kwargs))
    proc.start()
    child.close()
    message = None
    if parent.poll(timeout_s):
        try:
            message = parent.recv()
        except EOFError:
            message = None
    proc.join(5 if message is not None else 0.1)
    if proc.is_alive():
        proc.kill()
        proc.join()
        if message is None:
            return CappedResult(ok=False, timed_out=True)
    parent.close()
    if message is None:
        code = proc.exitcode
        return CappedResult(ok=False, signal=-code if code is not None and code < 0 else None,
                            error_type=None if code is not None and code < 0 else "NoResult",
                            error_message=f"child exited with {code} and sent nothing")
    if message[0] == "ok":
        return CappedResult(ok=True, value=message[1])
    return CappedResult(ok=False, error_type=message[1], error_message=message[2],
                        error_traceback=message[3])
