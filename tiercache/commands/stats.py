"""``tiercache stats CONFIG``: per-tier residency and counters as a table or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..units import format_size


def _fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def render_stats(stats: dict[str, Any]) -> None:
    """Print a per-tier table of :meth:`TieredCache.stats` output with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tiercache ({stats['mode']} mode)")
    columns = ["tier", "backend", "policy", "shards", "resident", "capacity", "hits", "misses",
               "promo in/out", "demo in/out", "evictions", "read", "written", "p50", "p99"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("tier", "backend", "policy") else "right")
    for name, t in stats["tiers"].items():
        table.add_row(
            name, t["backend"], t["policy"],
            str(t["resident_count"]), format_size(t["resident_bytes"]),
            format_size(t["capacity_bytes"]), str(t["hits"]), str(t["misses"]),
            f"{t['promotions_in']}/{t['promotions_out']}",
            f"{t['demotions_in']}/{t['demotions_out']}", str(t["evictions"]),
            format_size(t["bytes_read"]), format_size(t["bytes_written"]),
            _fmt_latency(t["get_latency_p50_s"]), _fmt_latency(t["get_latency_p99_s"]))
    origin = stats.get("origin")
    if origin:
        table.add_row("origin", origin["kind"], "-", "-", "-", "-", str(origin["hits"]), "-",
                      "-", "-", "-", format_size(origin["bytes_read"]), "-",
                      _fmt_latency(origin["get_latency_p50_s"]),
                      _fmt_latency(origin["get_latency_p99_s"]))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine import TieredCache

    cfg = load_config(args.config)
    with TieredCache.from_config(cfg) as cache:
        stats = cache.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        render_stats(stats)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="print per-tier residency and counters of a cache")
    p.add_argument("config", help="the cache's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
