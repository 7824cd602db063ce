"""``tiercache simulate TRACE``: replay a trace through policies, or a whole tier layout.

Policy sweep (hit ratio per policy and capacity)::

    tiercache simulate OLTP.lis.zst --policy lru,arc --capacity 1000,5% [--json]
    tiercache simulate run.csv --policy lru,arc --capacity 1%,5%,10% --plot mrc.png

Tier layout (per-tier shares and per-request time on a virtual clock)::

    tiercache simulate run.csv --config tiers.toml [--model costs.toml] [--json]

A policy may carry constructor options, ``NAME(key=value, ...)``::

    tiercache simulate OLTP.lis.zst --policy "lru,2q,2q(a_in_size_ratio=0.1)" --capacity 1%

Results go to stdout (a table, or JSON with ``--json``); the progress goes to
stderr and only when stderr is a terminal (``--progress`` forces it: plain
lines of at most 100 columns when stderr is a file or a pipe).
"""

from __future__ import annotations

import argparse
import sys


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    from ..errors import SimulationError
    from ..sim import report
    from ..sim.policy_specs import split_policies
    from ..sim.replay import infer_unit, simulate
    from ..sim.traces import DEFAULT_MAX_REQUESTS, read_trace

    for flag, value in (("--limit", args.limit), ("--max-requests", args.max_requests)):
        if value is not None and value < 1:
            raise SimulationError(f"{flag} must be >= 1, got {value}")
    cap = DEFAULT_MAX_REQUESTS if args.max_requests is None else args.max_requests
    trace = read_trace(args.trace, args.format, limit=args.limit, max_requests=cap)
    if args.config is not None:
        return _run_tiers(args, trace)
    policies = split_policies(args.policy)
    capacities = _split(args.capacity) if args.capacity else []
    if not capacities:
        raise SimulationError("give --capacity (e.g. 1000, 64MiB or 1%,5%,10%), or --config "
                              "for a tier layout")
    if not policies:
        raise SimulationError("give --policy (e.g. lru,arc)")
    unit = infer_unit(capacities, args.unit)
    runs = len(policies) * len(capacities)
    with report.progress_bar(len(trace) * runs, enabled=args.progress, runs=runs,
                             description=f"{len(policies)} policies x {len(capacities)} "
                                         "capacities") as advance:
        results = simulate(trace, policies, capacities, unit, progress=advance)
    if args.csv:
        report.write_csv(results, args.csv)
    if args.plot:
        report.plot_mrc(results, args.plot, title=args.title)
    if args.json:
        print(report.to_json(results))
    else:
        report.render_table(results)
        for path, what in ((args.csv, "CSV"), (args.plot, "plot")):
            if path:
                print(f"{what} written to {path}", file=sys.stderr)
    return 0


def _run_tiers(args: argparse.Namespace, trace: object) -> int:
    from ..sim import report
    from ..sim.tiers import load_models, simulate_tiers
    from ..sim.traces import Trace

    assert isinstance(trace, Trace)
    models = load_models(args.model) if args.model else None
    from pathlib import Path

    label = f"{Path(trace.source).name} on {Path(args.config).name}"
    with report.progress_bar(len(trace), enabled=args.progress, description=label) as advance:
        result = simulate_tiers(trace, args.config, models=models,
                                object_size=args.object_size, progress=advance)
    if args.json:
        print(report.to_json(result))
    else:
        report.render_tier_table(result)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate", help="replay a trace through eviction policies or a tier layout",
        description="Replay a trace (CSV, ARC .lis or .npy; .zst/.gz allowed) through "
                    "eviction policies at several capacities, or through a whole tier "
                    "layout (--config) on a virtual clock. See docs/experiments.md.")
    p.add_argument("trace", help="the trace file (format from the extension)")
    p.add_argument("--policy", default="lru",
                   help="comma-separated policies: names or package.module:Class, each "
                        "optionally with options, NAME(key=value, ...): "
                        "--policy 'lru,2q(a_in_size_ratio=0.3)' (default: lru)")
    p.add_argument("--capacity",
                   help="comma-separated capacities: objects (1000), bytes (64MiB) or a "
                        "percentage of the distinct objects/bytes (5%%)")
    p.add_argument("--unit", choices=("objects", "bytes"),
                   help="count objects (every size 1) or bytes (the trace's sizes); default: "
                        "bytes when a capacity is a byte size, else objects")
    p.add_argument("--format", choices=("csv", "arc", "npy"),
                   help="trace format, overriding the file extension")
    p.add_argument("--limit", type=int, metavar="N",
                   help="read and replay only the first N requests (reading stops there)")
    p.add_argument("--max-requests", type=int, metavar="N",
                   help="refuse a trace of more than N requests, before holding them in "
                        "memory (default: 67108864, 512 MiB of keys)")
    p.add_argument("--json", action="store_true",
                   help="print JSON (one object per policy and capacity) instead of a table")
    p.add_argument("--csv", metavar="FILE", help="also write the results as CSV")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the miss-ratio curve")
    p.add_argument("--title", help="title of the plot")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: only when stderr is a terminal)")
    tiers = p.add_argument_group("tier layout (multi-tier simulation)")
    tiers.add_argument("--config", metavar="TIERS.toml",
                       help="simulate this cache layout instead of a policy sweep")
    tiers.add_argument("--model", metavar="COSTS.toml",
                       help="latency/bandwidth overrides per tier name, backend or origin")
    tiers.add_argument("--object-size", metavar="SIZE",
                       help="size of every object when the trace has no sizes (e.g. 64MiB)")
    p.set_defaults(func=run)
