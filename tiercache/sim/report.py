"""Reports of simulation results: terminal tables, CSV, JSON, miss-ratio curves, progress.

* :func:`render_table` / :func:`render_tier_table` print rich tables;
* :func:`to_json`, :func:`write_csv`, :func:`write_json` export the records;
* :func:`plot_mrc` draws miss ratio against capacity, one line per policy,
  to a PNG (matplotlib, imported lazily, drawn through the Agg canvas: no
  display and no global pyplot state);
* :func:`progress_bar` is a context manager yielding a progress callback that
  draws on **stderr** only (so ``--json`` on stdout stays clean), and only
  when asked or when stderr is a terminal: a bar labelled with the run (policy,
  capacity, trace) on a terminal, plain lines of at most 100 columns elsewhere.

Thread-safety: the functions share no state; a progress bar belongs to the
thread that opened it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..units import format_size
from .replay import ProgressFn, SimResult, capacity_text
from .tiers import TierSimResult

__all__ = ["PLAIN_WIDTH", "plot_mrc", "progress_bar", "render_table", "render_tier_table",
           "run_label", "to_json", "write_csv", "write_json"]

RECORD_FIELDS = ("policy", "capacity", "unit", "requests", "hits", "hit_ratio",
                 "byte_hit_ratio")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(stderr=stderr, width=160)
    return console


def _capacity_text(r: SimResult) -> str:
    return capacity_text(r.capacity, r.unit, r.capacity_spec)


def render_table(results: Sequence[SimResult], *, title: str | None = None,
                 console: Any = None) -> None:
    """Print one row per (policy, capacity): hits, hit ratio, byte hit ratio, speed."""
    from rich.table import Table

    if title is None and results:
        title = f"{Path(results[0].trace).name}: {results[0].requests:,} requests"
    table = Table(title=title)
    for col, justify in (("policy", "left"), ("capacity", "right"), ("unit", "left"),
                         ("hits", "right"), ("hit ratio", "right"),
                         ("byte hit ratio", "right"), ("req/s", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in results:
        rate = "-" if r.seconds <= 0 else f"{r.requests_per_s / 1e6:.2f}M"
        table.add_row(r.policy, _capacity_text(r), r.unit, f"{r.hits:,}",
                      f"{100 * r.hit_ratio:.2f}%", f"{100 * r.byte_hit_ratio:.2f}%", rate)
    (console or _console()).print(table)


def _fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def render_tier_table(result: TierSimResult, *, console: Any = None) -> None:
    """Print a multi-tier prediction: per tier share, hit ratio, traffic; then times."""
    from rich.table import Table

    table = Table(title=f"{Path(result.trace).name} on {Path(result.config).name} "
                        f"({result.mode}): {result.requests:,} requests")
    for col in ("tier", "backend", "policy", "capacity", "served", "hit ratio", "evictions",
                "promo in/out", "demo in/out", "read", "written", "busy"):
        table.add_column(col, justify="left" if col in ("tier", "backend", "policy")
                         else "right")
    for t in (*result.tiers, result.origin):
        cap = format_size(t.capacity_bytes) if t.capacity_bytes else "-"
        table.add_row(t.name, t.backend, t.policy, cap, f"{100 * t.share:.2f}%",
                      f"{100 * t.hit_ratio:.2f}%" if t.name != "origin" else "-",
                      str(t.evictions), f"{t.promotions_in}/{t.promotions_out}",
                      f"{t.demotions_in}/{t.demotions_out}", format_size(t.bytes_read),
                      format_size(t.bytes_written), _fmt_s(t.busy_s))
    console = console or _console()
    console.print(table)
    console.print(f"virtual time: total {_fmt_s(result.total_s)}, per request mean "
                  f"{_fmt_s(result.mean_s)}, p50 {_fmt_s(result.p50_s)}, "
                  f"p99 {_fmt_s(result.p99_s)}, max {_fmt_s(result.max_s)}")


def to_json(results: Sequence[SimResult] | TierSimResult, *, indent: int | None = 2) -> str:
    """JSON text: one object for a single result, else a list of objects."""
    if isinstance(results, TierSimResult):
        return json.dumps(results.to_dict(), indent=indent)
    records = [r.to_dict() for r in results]
    return json.dumps(records[0] if len(records) == 1 else records, indent=indent)


def write_json(results: Sequence[SimResult] | TierSimResult,
               path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_json` to ``path``."""
    file = Path(path)
    file.write_text(to_json(results) + "\n", encoding="utf-8")
    return file


def write_csv(results: Sequence[SimResult], path: str | os.PathLike[str]) -> Path:
    """Write one CSV row per result with the JSON record's columns, plus
    ``capacity_spec``, ``trace`` and ``seconds``. O(n)."""
    file = Path(path)
    fields = (*RECORD_FIELDS, "capacity_spec", "trace", "seconds")
    with file.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in results:
            writer.writerow({**r.to_dict(), "capacity_spec": r.capacity_spec,
                             "trace": r.trace, "seconds": f"{r.seconds:.6f}"})
    return file


def plot_mrc(results: Sequence[SimResult], path: str | os.PathLike[str], *,
             title: str | None = None, log_x: bool | None = None, dpi: int = 120) -> Path:
    """Draw the miss-ratio curve (miss ratio vs capacity, one line per policy) to a PNG.

    ``log_x`` defaults to a log axis when the capacities span more than a
    factor of 20. Needs matplotlib (the ``sim`` extra), imported here only.
    Returns the path written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'tiercache[sim]'") from exc
    if not results:
        raise ValueError("nothing to plot: no results")
    file = Path(path)
    groups: dict[str, list[SimResult]] = {}
    for r in results:
        groups.setdefault(r.policy, []).append(r)
    capacities = [r.capacity for r in results]
    if log_x is None:
        log_x = max(capacities) > 20 * min(capacities)
    fig = Figure(figsize=(7.0, 4.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    styles = ("-", "--", "-.", ":")  # so that policies with equal curves stay visible
    for i, (policy, group) in enumerate(groups.items()):
        group = sorted(group, key=lambda r: r.capacity)
        ax.plot([r.capacity for r in group], [100 * r.miss_ratio for r in group],
                marker=markers[i % len(markers)], linestyle=styles[i % len(styles)],
                label=policy, linewidth=1.6, markersize=5)
    unit = results[0].unit
    ax.set_xlabel("cache size (bytes)" if unit == "bytes" else "cache size (objects)")
    ax.set_ylabel("miss ratio (%)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="policy")
    first = results[0]
    ax.set_title(title or f"Miss-ratio curve: {Path(first.trace).name} "
                          f"({first.requests:,} requests)")
    fig.tight_layout()
    fig.savefig(file, format="png")
    return file


#: Width of the plain progress lines written when stderr is not a terminal.
PLAIN_WIDTH = 100


def _shorten(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters (``"exam...licy"``). O(len)."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 3 + 1) // 2
    return f"{text[:head]}...{text[len(text) - (width - 3 - head):]}"


def run_label(policy: str, capacity: str, trace: str, run: int, runs: int | None,
              width: int = 70) -> str:
    """``"[2/6] arc, capacity 1,000, OLTP.lis.zst"``; a long trace name, then a long
    policy label, is cut in the middle so that the whole fits in ``width`` columns
    (room for the counts beside it) where it can. O(len)."""
    prefix = f"[{run}/{runs}]" if runs else f"[{run}]"
    room = width - len(prefix) - len(capacity) - len(" , capacity , ")
    if len(policy) + len(trace) > room:
        trace = _shorten(trace, max(16, room - len(policy)))
    if len(policy) + len(trace) > room:
        policy = _shorten(policy, max(12, room - len(trace)))
    return f"{prefix} {policy}, capacity {capacity}, {trace}"


class _Progress:
    """The callback :func:`progress_bar` yields: ``advance(n)`` and ``start_run(...)``
    (see :func:`tiercache.sim.replay.simulate`). Not thread-safe (one sweep)."""

    def __init__(self, total: int, runs: int | None, description: str) -> None:
        self.total = total
        self.runs = runs
        self.description = description
        self.run = 0
        self.run_requests = total
        self.run_done = 0

    def start_run(self, policy: str, capacity: str, trace: str, requests: int) -> None:
        self.run += 1
        self.run_requests = requests
        self.run_done = 0
        self._started(run_label(policy, capacity, trace, self.run, self.runs))

    def __call__(self, n: int) -> None:
        self.run_done += n
        self._advanced(n)

    def _started(self, label: str) -> None:
        raise NotImplementedError

    def _advanced(self, n: int) -> None:
        raise NotImplementedError


class _RichProgress(_Progress):
    """A rich bar per run on a terminal (redrawn in place, transient)."""

    def __init__(self, total: int, runs: int | None, description: str, progress: Any) -> None:
        super().__init__(total, runs, description)
        self.progress = progress
        self.task = progress.add_task(description, total=total)

    def _started(self, label: str) -> None:
        self.progress.reset(self.task, total=self.run_requests, description=label)

    def _advanced(self, n: int) -> None:
        self.progress.advance(self.task, n)


class _PlainProgress(_Progress):
    """Occasional whole lines (at most one per ``interval_s`` within a run, plus one as
    each run starts and a last one), each at most :data:`PLAIN_WIDTH` columns: for a
    stderr that is a file or a pipe, where a redrawn bar would be garbage."""

    def __init__(self, total: int, runs: int | None, description: str, file: IO[str],
                 interval_s: float) -> None:
        super().__init__(total, runs, description)
        self.file = file
        self.interval_s = interval_s
        self.label = description
        self.started = self.last = time.monotonic()
        self.done = 0

    def _line(self, text: str) -> None:
        print(_shorten(text, PLAIN_WIDTH), file=self.file, flush=True)

    def _started(self, label: str) -> None:
        self.label = label
        self.last = time.monotonic()
        self._line(f"{label}: {self.run_requests:,} requests")

    def _advanced(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval_s and self.run_done < self.run_requests:
            self.last = now
            share = 100 * self.run_done / max(1, self.run_requests)
            self._line(f"{self.label}: {self.run_done:,} of {self.run_requests:,} "
                       f"({share:.0f}%)")

    def finish(self) -> None:
        self._line(f"{self.description}: done, {self.done:,} requests in "
                   f"{time.monotonic() - self.started:.1f} s")


@contextmanager
def progress_bar(total: int, *, enabled: bool | None = None, description: str = "replaying",
                 runs: int | None = None, file: IO[str] | None = None,
                 interval_s: float = 10.0) -> Iterator[ProgressFn | None]:
    """A progress callback for :func:`~tiercache.sim.replay.simulate`, or ``None``.

    Draws on ``file`` (default stderr) only, so ``--json`` on stdout stays clean.
    ``enabled=None`` draws only when that stream is a terminal. On a terminal: a
    rich bar per run, labelled ``[2/6] arc, capacity 1,000, OLTP.lis.zst`` (run,
    policy, capacity, trace; ``runs`` gives the ``/6``), with counts in thousands
    (``456,789/914,145``), elapsed and remaining time, never wrapped. Elsewhere
    (``enabled=True`` into a file or pipe): plain lines of at most
    :data:`PLAIN_WIDTH` columns -- one as each run starts, at most one per
    ``interval_s`` seconds within a run, one at the end.

    The callback is ``advance(n)``, with a ``start_run(policy, capacity, trace,
    requests)`` method that :func:`simulate` calls before each run. O(1) per call;
    belongs to the thread that opened it.
    """
    stream = sys.stderr if file is None else file
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    if enabled is None:
        enabled = terminal
    if not enabled or total <= 0:
        yield None
        return
    if not terminal:
        plain = _PlainProgress(total, runs, description, stream, interval_s)
        yield plain
        plain.finish()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    progress = Progress(
        TextColumn("{task.description}",
                   table_column=Column(no_wrap=True, overflow="ellipsis", min_width=20)),
        BarColumn(bar_width=24),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}",
                   table_column=Column(no_wrap=True, justify="right")),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(file=stream), transient=True)
    with progress:
        yield _RichProgress(total, runs, description, progress)
