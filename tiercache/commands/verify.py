"""``tiercache verify CONFIG [--json] [--repair]``: scrub every tier, report per tier.

Reads every shard of every tier in full and checks its header and payload
checksum (:meth:`tiercache.TieredCache.verify`). Prints, per tier, how many
entries were checked, ok, corrupt and unreadable (plus leftover files of
interrupted writes). With ``--repair`` corrupt entries and leftover files are
deleted; without it nothing is changed on disk (entries with a damaged header
are not dropped at open either).

Exit status: 0 when every entry checked out, 1 when corruption or unreadable
entries were found (even if ``--repair`` removed them: something went wrong on
that medium), 2 for a bad config or a cache that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    verdict = "no corruption found" if report["ok"] else "CORRUPTION FOUND"
    if not report["ok"] and report["repair"]:
        verdict += " (corrupt entries removed)"
    console.print(verdict, markup=False)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine import TieredCache

    cfg = load_config(args.config)
    # keep entries with a damaged header for the scan to report (and --repair to remove)
    with TieredCache.from_config(cfg, drop_corrupt=args.repair) as cache:
        report = cache.verify(repair=args.repair, orphan_min_age_s=args.orphan_age)
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
    p.add_argument("--orphan-age", type=float, default=60.0, metavar="SECONDS",
                   help="only count/remove leftover files older than this (default 60)")
    p.set_defaults(func=run)
