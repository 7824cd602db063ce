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
  :meth:`tiercache.tier.Tier.admit` refuses it).

Both are cold-start: every request counts, a first touch is a miss. A policy
whose constructor takes ``future`` (the offline optimum, OPT) gets the
trace's keys as that argument: the read-only int64 array ``trace.keys``,
whose elements equal (and hash like) the Python ints the hooks receive.

Capacities are given as a count (``1000``), a byte size (``"64MiB"``, bytes
mode) or a percentage (``"5%"``) of the trace's distinct objects (count
mode) or of the distinct objects' bytes (byte mode). Without an explicit
unit, a byte-size capacity selects byte mode.

Thread-safety: every function builds its own policies; results are
immutable. Several simulations may run in parallel threads, though the GIL
serialises them.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import PolicyError, SimulationError
from ..policies import Policy, get_policy_class
from ..units import parse_percent, parse_size
from .traces import Trace, read_trace

__all__ = ["CHUNK_REQUESTS", "ProgressFn", "SimResult", "SimResults", "Unit", "load_policy",
           "make_policy", "parse_capacity", "replay", "replay_hits", "resolve_capacity",
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
PolicySpec = str | type[Policy]


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
        """A ``pandas.DataFrame`` of :meth:`to_records` (needs pandas, imported lazily)."""
        import pandas as pd  # type: ignore[import-not-found, import-untyped, unused-ignore]

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


# --- policies ------------------------------------------------------------------------------


def load_policy(spec: PolicySpec) -> tuple[str, type[Policy]]:
    """``(label, class)`` for a policy name, ``"module:Class"`` spec or class.

    The label is the spec as given (or the class's ``name``). Raises
    :class:`~tiercache.errors.PolicyError` naming the spec when it cannot be
    loaded.
    """
    if isinstance(spec, type):
        if not issubclass(spec, Policy):
            raise PolicyError(f"{spec!r} is not a subclass of tiercache.policies.Policy")
        return spec.name or spec.__name__, spec
    try:
        return spec, get_policy_class(spec)
    except (LookupError, ImportError, TypeError, ValueError) as exc:
        # get_policy_class names the spec and adds the PYTHONPATH hint for a missing module
        raise PolicyError(str(exc)) from None


def _takes_future(cls: type[Policy]) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return "future" in params


def make_policy(cls: type[Policy], capacity: int,
                future: Sequence[Any] | npt.NDArray[Any] | None = None,
                **options: Any) -> Policy:
    """Construct ``cls(capacity, **options)``, adding ``future=`` when the constructor
    takes it (offline policies such as OPT get the trace's key sequence)."""
    if _takes_future(cls):
        if future is None:
            raise SimulationError(f"{cls.__name__} needs the future (future=): it is an "
                                  "offline policy and can only replay a whole trace")
        options["future"] = future
    try:
        return cls(capacity, **options)
    except TypeError as exc:
        raise PolicyError(f"cannot construct {cls.__name__}({capacity}): {exc}") from None


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
           policy_options: Mapping[str, Any] | None = None) -> SimResult:
    """Replay ``trace`` through one policy at one capacity. See :func:`simulate`."""
    results = simulate(trace, [policy], [capacity], unit, progress=progress, fmt=fmt,
                       policy_options=policy_options)
    return results[0]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, int, type)):
        return [value]
    return list(value)


def simulate(trace: Trace | str | os.PathLike[str],
             policies: PolicySpec | Sequence[PolicySpec] = "lru",
             capacities: int | str | Sequence[int | str] = "10%",
             unit: str | None = None, *, progress: ProgressFn | None = None,
             fmt: str | None = None,
             policy_options: Mapping[str, Any] | None = None) -> SimResults:
    """Replay ``trace`` through every policy at every capacity.

    Parameters
    ----------
    trace:
        A :class:`Trace` or a trace file (read with :func:`read_trace`, ``fmt``
        overriding the format).
    policies:
        Names (``"lru"``), ``"module:Class"`` specs or :class:`Policy` classes.
    capacities:
        Counts, byte sizes (``"64MiB"``) or percentages (``"5%"``); see
        :func:`resolve_capacity`.
    unit:
        ``"objects"`` (count mode) or ``"bytes"``; default: ``"bytes"`` when a
        capacity is a byte size, else ``"objects"``.
    progress:
        Called with the number of requests replayed, as the runs advance
        (``len(trace) * runs`` in all).
    policy_options:
        Keyword arguments for every policy's constructor.

    Returns
    -------
    SimResults
        One :class:`SimResult` per (policy, capacity), policies outermost, in
        the order given.

    Complexity: O(len(trace)) per run (each run is one cold-start replay).
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
    loaded = [load_policy(s) for s in specs]
    resolved = [(str(c), resolve_capacity(c, trace, chosen)) for c in caps]
    sizes = trace.sizes_or_ones()
    bytes_requested = trace.total_bytes
    results = SimResults()
    for label, cls in loaded:
        for spec_text, capacity in resolved:
            policy = make_policy(cls, capacity, trace.keys, **dict(policy_options or {}))
            started = time.perf_counter()
            hits = replay_hits(trace, policy, chosen, progress=progress)
            seconds = time.perf_counter() - started
            results.append(SimResult(
                policy=label, capacity=capacity, unit=chosen, requests=len(trace),
                hits=int(np.count_nonzero(hits)), bytes_requested=bytes_requested,
                bytes_hit=int(sizes[hits].sum()), capacity_spec=spec_text,
                trace=trace.source, seconds=seconds,
                policy_stats=dict(policy.extra_stats())))
    return results
