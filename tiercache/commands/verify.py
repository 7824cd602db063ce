"""``tiercache verify CONFIG [--json] [--repair]``: scrub every tier, report per tier.

Reads every shard of every tier in full and checks its header and payload
checksum (:meth:`tiercache.TieredCache.verify`). Prints, per tier, how many
entries were checked, ok, corrupt and unreadable (plus leftover files of
interrupted writes, and bytes held beyond a lowered capacity). When a model was
imported into the cache (its manifest, ``<config stem>.model.json``, is next to
the config, or ``--manifest`` names it), every tensor it lists must be held by a
tier or the origin: missing ones are counted and named. With ``--repair``
corrupt entries and leftover files are deleted and a tier whose medium is too
damaged to open is emptied and reopened; without it the cache is opened
read-only and nothing is changed on disk.

Exit status: 0 when every entry checked out, 1 when corruption, unreadable
entries, a damaged medium or missing shards were found (even if ``--repair``
removed them: something went wrong on that medium), 2 for a bad config or a
cache that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..units import format_size

#: Exit status when corrupt or unreadable entries were found.
EXIT_CORRUPT = 1


def render_report(report: dict[str, Any]) -> None:
    """Print a per-tier table of :meth:`TieredCache.verify` output with rich."""
    from rich.console import Console
    from rich.table import Table

    title = "tiercache verify" + (" --repair" if report["repair"] else "")
    table = Table(title=title)
    for col in ("tier", "backend", "checked", "ok", "corrupt", "unreadable", "repaired",
                "orphans", "state"):
        table.add_column(col, justify="left" if col in ("tier", "backend", "state")
                         else "right")
    for name, t in report["tiers"].items():
        state = "degraded" if t["degraded"] else "ok"
        if t.get("over_capacity_bytes"):
            state += f", {format_size(t['over_capacity_bytes'])} over capacity"
        table.add_row(name, t["backend"], str(t["checked"]), str(t["ok"]), str(t["corrupt"]),
                      str(t["unreadable"]), str(t["repaired"]), str(t["orphans"]), state)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)
    for name, t in report["tiers"].items():
        for what in ("corrupt", "unreadable"):
            keys = t[f"{what}_keys"]
            if keys:
                shown = ", ".join(repr(k) for k in keys[:10])
                more = f" (+{t[what] - 10} more)" if t[what] > 10 else ""
                console.print(f"{name}: {what}: {shown}{more}", markup=False)
    missing = report.get("missing", 0)
    if missing:
        shown = ", ".join(repr(k) for k in report["missing_keys"][:10])
        more = f" (+{missing - 10} more)" if missing > 10 else ""
        console.print(f"missing: {missing} shard(s) of the model's manifest are in no tier "
                      f"and no origin: {shown}{more}; import the model again", markup=False)
    damaged = any(t["corrupt"] or t["unreadable"] for t in report["tiers"].values())
    if report["ok"]:
        verdict = "no corruption found, no shard missing"
    elif damaged:
        verdict = "CORRUPTION FOUND"
        if report["repair"]:
            verdict += " (corrupt entries removed)"
        if missing:
            verdict += f"; {missing} SHARD(S) MISSING"
    else:
        verdict = f"{missing} SHARD(S) MISSING"
    console.print(verdict, markup=False)


def _manifest_keys(args: argparse.Namespace) -> list[str] | None:
    """The shard keys of the model imported into this cache, if its manifest is there."""
    from ..models import load_manifest, manifest_path_for_config

    path = Path(args.manifest) if args.manifest else manifest_path_for_config(args.config)
    if not path.exists():
        if args.manifest:
            raise FileNotFoundError(f"--manifest {path}: no such file")
        return None
    manifest = load_manifest(path)
    return list(manifest.tensors)  # keys as stored (the import prefix included)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..core.cache import TieredCache

    cfg = load_config(args.config)
    expected = _manifest_keys(args)
    # without --repair: read-only (nothing deleted, created or recorded; entries with a
    # damaged header are kept for the scan to report)
    with TieredCache.from_config(cfg, drop_corrupt=args.repair,
                                 read_only=not args.repair) as cache:
        report = cache.verify(repair=args.repair, orphan_min_age_s=args.orphan_age,
                              expected_keys=expected)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render_report(report)
    return 0 if report["ok"] else EXIT_CORRUPT


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify", help="read and check every shard of every tier (exit 1 if corrupt)",
        description="Scrub every tier: read each shard and check its header and payload "
                    "checksum. Exit status 0: all good; 1: corrupt or unreadable entries "
                    "found; 2: bad config.")
    p.add_argument("config", help="the cache's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--repair", action="store_true",
                   help="delete corrupt entries and leftover files of interrupted writes")
    p.add_argument("--manifest", help="the imported model's manifest whose shards must all be "
                   "present (default: <config stem>.model.json next to the config, if any)")
    p.add_argument("--orphan-age", type=float, default=60.0, metavar="SECONDS",
                   help="only count/remove leftover files older than this (default 60)")
    p.set_defaults(func=run)
