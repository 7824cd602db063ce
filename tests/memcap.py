"""Run a function in a child process under a memory cap, so hostile input cannot take
the machine down: a regression that allocates without bound fails the test instead.

Usage::

    from memcap import run_capped

    result = run_capped(parse_file, str(path), limit_bytes=1 << 30, timeout_s=60)
    assert result.ok, result.describe()          # returned normally
    assert result.error_type == "ModelFormatError"  # or: raised this exception type

The child is started with the ``fork`` method (fast; the test process must not hold
threads that matter), so ``func`` and its arguments are not pickled (a closure works); the
return value travels back through a pipe and must pickle. Before it calls the function the
child sets ``RLIMIT_AS`` to what it has mapped already (inherited from the test process:
~0.2 GB for numpy and tiercache, several GB once TensorFlow is imported) plus
``limit_bytes``: the cap is on what the call itself adds, so it holds the same way whatever
the test process imported before. A child killed by a signal (SIGBUS, SIGSEGV, SIGKILL) or
one that runs past ``timeout_s`` is reported as such.
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


def mapped_bytes() -> int:
    """The address space this process has mapped now (``VmSize``); 0 if unknown."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _child(conn: Any, limit_bytes: int, func: Callable[..., Any], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> None:
    cap = mapped_bytes() + limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
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
    """Call ``func(*args, **kwargs)`` in a forked child allowed ``limit_bytes`` more address
    space than it starts with; wait at most ``timeout_s``. O(the call)."""
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
    parent.close()
    if proc.is_alive():
        proc.kill()
        proc.join()
        if message is None:
            return CappedResult(ok=False, timed_out=True)
    if message is None:
        code = proc.exitcode
        return CappedResult(ok=False, signal=-code if code is not None and code < 0 else None,
                            error_type=None if code is not None and code < 0 else "NoResult",
                            error_message=f"child exited with {code} and sent nothing")
    if message[0] == "ok":
        return CappedResult(ok=True, value=message[1])
    return CappedResult(ok=False, error_type=message[1], error_message=message[2],
                        error_traceback=message[3])
