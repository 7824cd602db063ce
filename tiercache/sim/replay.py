"""Replay a trace through eviction policies: hit ratios per (policy, capacity).

The policies are the very classes a tier uses (:mod:`tiercache.policies`),
driven through their replay methods:

* **count mode** (``unit="objects"``): every object has size 1 and the
  capacity counts objects -- :meth:`Policy.replay_count`. LRU and ARC override
  it with inlined fast paths (~8.7M and ~2.7M requests/s on the 2-core VM) that give the
  same hits and final state as the generic hook-calling loop.
* **byte mode** (``unit="bytes"``): sizes from the trace, capacity in bytes --
  :meth:`Policy.replay_bytes`, the generic hook protocol with a tier's
  capacity accounting (a miss larger than the capacity is refused, as
  :meth:`tiercache.core.tier.Tier.admit` refuses it).

Both are cold-start: every request counts, a first touch is a miss. A policy
that declares ``needs_future`` (the offline optimum, OPT) gets the
trace's keys as that argument: the read-only int64 array ``trace.keys``,
whose elements equal (and hash like) the Python ints the hooks receive.

Capacities are given as a count (``1000``), a byte size (``"64MiB"``, bytes
mode) or a percentage (``"5%"``) of the trace's distinct objects (count
mode) or of the distinct objects' bytes (byte mode). Without an explicit
unit, a byte-size capacity selects byte mode.

Policy specs (``"2q(a_in_size_ratio=0.3)"``, ``"module:Class"``) are read by
:mod:`tiercache.sim.policy_specs`.

Thread-safety: every function builds its own policies; results are
immutable. Several simulations may run in parallel threads, though the GIL
serialises them.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import PolicyError, SimulationError
from ..policies import Policy
from ..units import format_size, parse_percent, parse_size
from .policy_specs import PolicySpec, load_policy, make_policy, parse_policy_spec
from .traces import Trace, read_trace

__all__ = ["CHUNK_REQUESTS", "ProgressFn", "SimResult", "SimResults", "Unit", "capacity_text",
           "infer_unit", "parse_capacity", "replay", "replay_hits", "resolve_capacity",
           "simulate"]

Unit = Literal["objects", "bytes"]
UNITS: tuple[Unit, ...] = ("objects", "bytes")
#: Called with the number of requests just replayed (for progress bars).
ProgressFn = Callable[[int], None]
#: Requests replayed per call into a policy: bounds the Python-int copy of the
#: keys held at once and sets how often progress is reported.
CHUNK_REQUESTS = 1 << 18

_COUNT_RE = re.compile(r"^\s*[0-9]+\s*$")
CapacityKind = Literal["count", "bytes", "percent"]


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimResult:
    """The outcome of replaying one trace through one policy at one capacity.

    ``hit_ratio`` is hits / requests; ``byte_hit_ratio`` the bytes of the hit
    requests / all requested bytes (equal to ``hit_ratio`` for a trace without
    sizes). Immutable.
    """

    policy: str
    capacity: int
    unit: Unit
    requests: int
    hits: int
    bytes_requested: int
    bytes_hit: int
    capacity_spec: str = ""
    trace: str = ""
    seconds: float = 0.0
    policy_stats: Mapping[str, float] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def miss_ratio(self) -> float:
        return 1.0 - self.hit_ratio if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: policy, capacity, unit, requests, hits, hit_ratio, byte_hit_ratio."""
        return {"policy": self.policy, "capacity": self.capacity, "unit": self.unit,
                "requests": self.requests, "hits": self.hits, "hit_ratio": self.hit_ratio,
                "byte_hit_ratio": self.byte_hit_ratio}


class SimResults(list[SimResult]):
    """A list of :class:`SimResult` with DataFrame-friendly views.

    ``pandas.DataFrame(results.to_records())`` gives one row per (policy, capacity).
    """

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per result (the keys of :meth:`SimResult.to_dict`). O(n)."""
        return [r.to_dict() for r in self]

    def to_dataframe(self) -> Any:
        """A ``pandas.DataFrame`` of :meth:`to_records`. O(n).

        pandas is not a dependency of tiercache: it is imported here, and an
        :class:`ImportError` naming the install command is raised without it.
        """
        try:
            import pandas as pd  # type: ignore[import-not-found, import-untyped, unused-ignore]
        except ImportError:
            raise ImportError("SimResults.to_dataframe needs pandas, which tiercache does not "
                              "install: pip install pandas (or use to_records(), a list of "
                              "dicts)") from None
        return pd.DataFrame(self.to_records())

    def policies(self) -> list[str]:
        """Policy names in first-seen order."""
        return list(dict.fromkeys(r.policy for r in self))

    def by_policy(self) -> dict[str, list[SimResult]]:
        """Results grouped by policy, each list sorted by capacity."""
        out: dict[str, list[SimResult]] = {}
        for r in self:
            out.setdefault(r.policy, []).append(r)
        return {p: sorted(rs, key=lambda r: r.capacity) for p, rs in out.items()}

    def get(self, policy: str, capacity: int) -> SimResult:
        """The result for ``policy`` at ``capacity`` (KeyError if absent)."""
        for r in self:
            if r.policy == policy and r.capacity == capacity:
                return r
        raise KeyError(f"no result for policy {policy!r} at capacity {capacity}")


# --- capacities ----------------------------------------------------------------------------


def parse_capacity(spec: int | str) -> tuple[CapacityKind, float]:
    """Classify a capacity: ``1000`` -> count, ``"64MiB"`` -> bytes, ``"5%"`` -> percent.

    Returns ``(kind, value)`` (value: a number, or a fraction in (0, 1] for a
    percentage). Raises :class:`SimulationError` for anything else. O(1).
    """
    if isinstance(spec, bool):
        raise SimulationError(f"capacity must be a number, a size or a percentage, got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise SimulationError(f"capacity must be >= 1, got {spec}")
        return "count", float(spec)
    if not isinstance(spec, str):
        raise SimulationError(f"capacity must be a number, a size or a percentage, got {spec!r}")
    try:
        fraction = parse_percent(spec)
    except ValueError as exc:
        raise SimulationError(f"capacity {spec!r}: {exc}") from None
    if fraction is not None:
        return "percent", fraction
    if _COUNT_RE.match(spec):
        value = int(spec)
        if value < 1:
            raise SimulationError(f"capacity must be >= 1, got {spec!r}")
        return "count", float(value)
    try:
        return "bytes", float(parse_size(spec))
    except ValueError as exc:
        raise SimulationError(f"capacity {spec!r} is not a count (1000), a byte size "
                              f"(64MiB) or a percentage (5%): {exc}") from None


def infer_unit(capacities: Iterable[int | str], unit: str | None = None) -> Unit:
    """The unit a list of capacities implies: ``bytes`` if one is a byte size, else
    ``objects``; an explicit ``unit`` is checked against them. O(len)."""
    kinds = {parse_capacity(c)[0] for c in capacities}
    if unit is None:
        return "bytes" if "bytes" in kinds else "objects"
    if unit not in UNITS:
        raise SimulationError(f"unit must be 'objects' or 'bytes', got {unit!r}")
    if unit == "objects" and "bytes" in kinds:
        raise SimulationError("a byte-size capacity (like 64MiB) needs --unit bytes; "
                              "in count mode give a number of objects or a percentage")
    return unit


def resolve_capacity(spec: int | str, trace: Trace, unit: Unit) -> int:
    """The capacity ``spec`` stands for on ``trace`` in ``unit`` (objects or bytes).

    Percentages are of :attr:`Trace.distinct_objects` (objects) or
    :attr:`Trace.distinct_bytes` (bytes), rounded, at least 1. O(1) after the
    trace's distinct figures are computed (O(n log n) once).
    """
    kind, value = parse_capacity(spec)
    if kind == "bytes" and unit == "objects":
        raise SimulationError(f"capacity {spec!r} is a byte size; use unit 'bytes' for it")
    if kind == "percent":
        base = trace.distinct_objects if unit == "objects" else trace.distinct_bytes
        return max(1, round(value * base))
    return int(value)


# --- replay ----------------------------------------------------------------------------


def replay_hits(trace: Trace, policy: Policy, unit: Unit = "objects", *,
                progress: ProgressFn | None = None,
                chunk_requests: int = CHUNK_REQUESTS) -> npt.NDArray[np.bool_]:
    """Serve every request of ``trace`` through ``policy``; the per-request hits.

    ``policy`` should be fresh (its ``capacity`` is the cache size in
    ``unit``). The trace is fed in chunks of ``chunk_requests`` (keys converted
    to Python ints per chunk); ``progress(n)`` is called after each. Count mode
    uses :meth:`Policy.replay_count` (fast paths for LRU and ARC), byte mode
    :meth:`Policy.replay_bytes`. Complexity: O(len(trace)) policy work; memory
    O(chunk) plus the policy's. Not thread-safe for one ``policy``.
    """
    if unit not in UNITS:
        raise SimulationError(f"unit must be 'objects' or 'bytes', got {unit!r}")
    if unit == "bytes" and trace.sizes is None:
        raise SimulationError(f"trace {trace.source} has no sizes, so it cannot be replayed in "
                              "bytes; use unit 'objects' (every object counts 1)")
    n = len(trace)
    hits = np.zeros(n, dtype=np.bool_)
    resident: dict[Any, int] = {}
    step = max(1, chunk_requests)
    for start in range(0, n, step):
        stop = min(n, start + step)
        keys = trace.keys[start:stop].tolist()
        if unit == "objects":
            hits[start:stop] = policy.replay_count(keys)
        else:
            assert trace.sizes is not None
            hits[start:stop] = policy.replay_bytes(keys, trace.sizes[start:stop].tolist(),
                                                   resident)
        if progress is not None:
            progress(stop - start)
    return hits


def replay(trace: Trace | str | os.PathLike[str], policy: PolicySpec = "lru",
           capacity: int | str = "10%", unit: str | None = None, *,
           progress: ProgressFn | None = None, fmt: str | None = None,
           policy_options: Mapping[Any, Any] | None = None) -> SimResult:
    """Replay ``trace`` through one policy at one capacity. See :func:`simulate`."""
    results = simulate(trace, [policy], [capacity], unit, progress=progress, fmt=fmt,
                       policy_options=policy_options)
    return results[0]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, int, type)):
        return [value]
    return list(value)


@dataclass(frozen=True)
class _Plan:
    """One policy of a sweep: its label, class and constructor options."""

    label: str
    cls: type[Policy]
    options: dict[str, Any]


def _option_keys(spec: PolicySpec, label: str, cls: type[Policy]) -> list[Any]:
    """The ``policy_options`` keys that address ``spec``: its label, its name without
    options, and for a class spec the class itself."""
    keys: list[Any] = [label]
    if isinstance(spec, type):
        keys += [spec, spec.__name__]
    else:
        keys.append(parse_policy_spec(spec)[0])
    return keys


def _per_policy(policy_options: Mapping[Any, Any], specs: Sequence[PolicySpec],
                labels: Sequence[str], classes: Sequence[type[Policy]]) -> bool:
    """Whether ``policy_options`` is keyed by policy (``{"2q": {...}}``) rather than one
    set of options for every policy (the older form). Raises for a mixture."""
    nested = [isinstance(v, Mapping) for v in policy_options.values()]
    if not any(nested):
        return False
    addressed = {k for s, lb, c in zip(specs, labels, classes, strict=True)
                 for k in _option_keys(s, lb, c)}
    strays = [k for k in policy_options if k not in addressed]
    if all(nested) and not strays:
        return True
    known = sorted({lb for lb in labels} | {parse_policy_spec(s)[0] for s in specs
                                             if isinstance(s, str)})
    if all(nested):
        stray = str(strays[0])
        close = difflib.get_close_matches(stray, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SimulationError(f"policy_options has options for policy {stray!r}, which is not "
                              f"simulated{hint} (policies: {', '.join(known)})")
    raise SimulationError("policy_options mixes per-policy tables ({'2q': {...}}) with plain "
                          "options; key every option by its policy's name "
                          f"(policies: {', '.join(known)})")


def _plans(specs: Sequence[PolicySpec],
           policy_options: Mapping[Any, Any] | None) -> list[_Plan]:
    """Load every policy and settle its options: ``policy_options`` (per policy, or
    one table for all), then the spec's own ``name(key=value)`` options on top."""
    loaded = [load_policy(s) for s in specs]
    labels = [label for label, _ in loaded]
    classes = [cls for _, cls in loaded]
    table = dict(policy_options or {})
    per_policy = bool(table) and _per_policy(table, specs, labels, classes)
    plans = []
    for spec, (label, cls) in zip(specs, loaded, strict=True):
        if per_policy:
            options: dict[str, Any] = {}
            for key in reversed(_option_keys(spec, label, cls)):  # the exact label wins
                options.update(table.get(key, {}))
        else:
            options = dict(table)
        if isinstance(spec, str):
            options.update(parse_policy_spec(spec)[1])
        plans.append(_Plan(label, cls, options))
    return plans


def _construct(plan: _Plan, capacity: int, future: npt.NDArray[np.int64],
               shared_options: bool) -> Policy:
    """``make_policy`` for one plan, its errors naming the policy as written."""
    try:
        return make_policy(plan.cls, capacity, future, **plan.options)
    except (PolicyError, ValueError) as exc:
        hint = ("; policy_options without policy names goes to every policy -- key it by "
                "name ({'2q': {...}}) or write the options into the spec, "
                "2q(a_in_size_ratio=0.3)") if shared_options else ""
        raise PolicyError(f"policy {plan.label!r}: {exc}{hint}") from None


def simulate(trace: Trace | str | os.PathLike[str],
             policies: PolicySpec | Sequence[PolicySpec] = "lru",
             capacities: int | str | Sequence[int | str] = "10%",
             unit: str | None = None, *, progress: ProgressFn | None = None,
             fmt: str | None = None,
             policy_options: Mapping[Any, Any] | None = None) -> SimResults:
    """Replay ``trace`` through every policy at every capacity.

    Parameters
    ----------
    trace:
        A :class:`Trace` or a trace file (read with :func:`read_trace`, ``fmt``
        overriding the format).
    policies:
        Names (``"lru"``), ``"module:Class"`` specs or :class:`Policy` classes. A
        spec string may carry its options: ``"2q(a_in_size_ratio=0.3)"`` (see
        :func:`parse_policy_spec`); its label in the results is the spec as given,
        so ``["2q", "2q(a_in_size_ratio=0.1)"]`` compares two settings.
    capacities:
        Counts, byte sizes (``"64MiB"``) or percentages (``"5%"``); see
        :func:`resolve_capacity`.
    unit:
        ``"objects"`` (count mode) or ``"bytes"``; default: ``"bytes"`` when a
        capacity is a byte size, else ``"objects"``.
    progress:
        Called with the number of requests replayed, as the runs advance
        (``len(trace) * runs`` in all). If it also has a ``start_run(policy,
        capacity, trace, requests)`` method (as :func:`~tiercache.sim.report.progress_bar`'s
        callback has), that is called before each run with the policy label, the
        capacity as text (``"1,000"``, ``"64.0 MiB"``, ``"1,869 (1%)"``), the trace's
        file name and the run's request count.
    policy_options:
        Constructor options keyed by policy: ``{"2q": {"a_in_size_ratio": 0.3}}``.
        A key is a policy's label (the spec as given), its name without options
        (``"2q"``, ``"examples.my_policy:MRUPolicy"``) or, for a class, the class or
        its ``__name__``; options written in the spec itself win. A mapping of plain
        options (``{"a_in_size_ratio": 0.3}``, the older form) goes to every policy.

    Returns
    -------
    SimResults
        One :class:`SimResult` per (policy, capacity), policies outermost, in
        the order given.

    Every policy is constructed at the first capacity before any replay, so a
    bad option fails at once (:class:`~tiercache.errors.PolicyError` naming the
    policy; an unknown option is reported as :mod:`tiercache.policies` reports
    it, with the closest known option).

    Complexity: O(len(trace)) per run (each run is one cold-start replay).
    Thread-safety: builds its own policies; see the module docstring.
    """
    if not isinstance(trace, Trace):
        trace = read_trace(trace, fmt)
    specs = _as_list(policies)
    caps = _as_list(capacities)
    if not specs:
        raise SimulationError("no policy to simulate")
    if not caps:
        raise SimulationError("no capacity to simulate")
    chosen = infer_unit(caps, unit)
    if chosen == "bytes" and trace.sizes is None:
        raise SimulationError(f"trace {trace.source} has no sizes, so byte capacities mean "
                              "nothing for it; give object counts or percentages")
    plans = _plans(specs, policy_options)
    shared = bool(policy_options) and len(plans) > 1 and not any(
        isinstance(v, Mapping) for v in (policy_options or {}).values())
    resolved = [(str(c), resolve_capacity(c, trace, chosen)) for c in caps]
    # every policy at the first capacity now: a bad option fails before any replay
    first: list[Policy | None] = [_construct(p, resolved[0][1], trace.keys, shared)
                                  for p in plans]
    sizes = trace.sizes_or_ones()
    bytes_requested = trace.total_bytes
    start_run = getattr(progress, "start_run", None)
    trace_name = Path(trace.source).name
    results = SimResults()
    for i, plan in enumerate(plans):
        for j, (spec_text, capacity) in enumerate(resolved):
            policy = first[i] if j == 0 else _construct(plan, capacity, trace.keys, shared)
            first[i] = None
            assert policy is not None
            if start_run is not None:
                start_run(plan.label, capacity_text(capacity, chosen, spec_text), trace_name,
                          len(trace))
            started = time.perf_counter()
            hits = replay_hits(trace, policy, chosen, progress=progress)
            seconds = time.perf_counter() - started
            results.append(SimResult(
                policy=plan.label, capacity=capacity, unit=chosen, requests=len(trace),
                hits=int(np.count_nonzero(hits)), bytes_requested=bytes_requested,
                bytes_hit=int(sizes[hits].sum()), capacity_spec=spec_text,
                trace=trace.source, seconds=seconds,
                policy_stats=dict(policy.extra_stats())))
    return results


def capacity_text(capacity: int, unit: Unit, spec: str = "") -> str:
    """A resolved capacity for people: ``"1,000"``, ``"64.0 MiB"``, ``"1,869 (1%)"``. O(1)."""
    size = format_size(capacity) if unit == "bytes" else f"{capacity:,}"
    return f"{size} ({spec})" if spec.endswith("%") else size
