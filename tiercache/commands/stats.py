"""``tiercache stats CONFIG``: per-tier residency and counters as a table or JSON.

The table fits 100 columns: paired counters share a column (``hits/miss``,
``used/cap``, ``promo/demo``, ``bytes r/w``, ``p50/p99``; see :data:`COLUMNS`). A tier
whose medium failed -- degraded, or with errors while the cache opened (a
Redis server that is down: the tier then indexes 0 shards) -- shows
``DEGRADED`` in the ``state`` column and gets a line with its reason under the
table, and the command exits with status 1 (0 when every tier is healthy, 2 on
a bad config).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

#: Width of the table when the output is not a terminal (piped, captured).
TABLE_WIDTH = 100
#: Exit status of ``tiercache stats`` when a tier is degraded.
EXIT_DEGRADED = 1
#: The table's columns. Paired counters share one: ``hits/miss`` (gets served here /
#: gets that went past), ``promo/demo`` (shards promoted into / demoted into this tier:
#: a tier's promotions and demotions *out* are its neighbours' *in*), ``used/cap``
#: (resident / capacity bytes), ``bytes r/w`` (read / written), ``p50/p99`` (get latency).
COLUMNS = ("tier", "backend", "policy", "state", "shards", "used/cap", "hits/miss",
           "promo/demo", "evict", "bytes r/w", "p50/p99")


def _fmt_latency(seconds: float | None) -> str:
    """A latency in at most 5 characters: ``123µs``, ``4.5ms``, ``987ms``, ``1.5s``."""
    if seconds is None:
        return "-"
    for scale, unit in ((1e6, "µs"), (1e3, "ms"), (1.0, "s")):
        value = seconds * scale
        if value < 9.95:
            return f"{value:.1f}{unit}"
        if value < 999.5 or unit == "s":
            return f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def _short(value: float, units: tuple[str, ...], base: float) -> str:
    """``value`` in at most 4 characters (5 past the last unit): ``999``, ``1.2k``, ``12k``."""
    n = float(value)
    for i, unit in enumerate(units):
        if n < 999.5 or i == len(units) - 1:
            if i == 0:
                return f"{n:.0f}{unit}"
            return f"{n:.1f}{unit}" if n < 9.95 else f"{n:.0f}{unit}"
        n /= base
    raise AssertionError("unreachable")


def _size(nbytes: float) -> str:
    """A binary size in at most 4 characters: ``512B``, ``4.5K``, ``128M``, ``1.0G``."""
    return _short(nbytes, ("B", "K", "M", "G", "T", "P"), 1024.0)


def _count(n: int) -> str:
    """A counter in at most 4 characters: ``999``, ``1.2k``, ``46M``."""
    if n < 10_000:
        return str(n)
    return _short(n, ("", "k", "M", "G", "T"), 1000.0)


def tier_problem(tier: dict[str, Any]) -> str | None:
    """Why a tier of :meth:`TieredCache.stats` is unhealthy, or ``None`` if it is not.

    Degraded (``degraded_reason``), else errors counted (``errors``: e.g. a
    shared store that could not be listed when the cache opened). O(1).
    """
    if tier.get("degraded"):
        return str(tier.get("degraded_reason") or "degraded")
    errors = int(tier.get("errors") or 0)
    if errors:
        return f"{errors} I/O error{'s' if errors != 1 else ''} (see the warnings logged above)"
    return None


def degraded_tiers(stats: dict[str, Any]) -> dict[str, str]:
    """Tier name -> reason, for every unhealthy tier (:func:`tier_problem`). O(tiers)."""
    problems = {name: tier_problem(t) for name, t in stats["tiers"].items()}
    return {name: why for name, why in problems.items() if why is not None}


def render_stats(stats: dict[str, Any], *, loop: bool | None = None,
                 file: TextIO | None = None) -> None:
    """Print a per-tier table of :meth:`TieredCache.stats` output with rich.

    Parameters
    ----------
    stats:
        ``cache.stats()``.
    loop:
        Print the loop statistics (scheduled gets, stalls, prefetches). Default:
        only when the loop made scheduled gets (a schedule was declared and used).
    file:
        Where to print (default stdout). Off a terminal the table is
        :data:`TABLE_WIDTH` (100) columns wide.

    Lines for the origin (if any) and for each degraded tier follow the table.
    O(tiers). Not thread-safe with respect to ``file``.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tiercache ({stats['mode']} mode)", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=0)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("tier", "backend", "policy", "state")
                         else "right", no_wrap=True)
    problems = degraded_tiers(stats)
    for name, t in stats["tiers"].items():
        table.add_row(
            name, t["backend"], t["policy"], "DEGRADED" if name in problems else "ok",
            _count(t["resident_count"]),
            f"{_size(t['resident_bytes'])}/{_size(t['capacity_bytes'])}",
            f"{_count(t['hits'])}/{_count(t['misses'])}",
            f"{_count(t['promotions_in'])}/{_count(t['demotions_in'])}",
            _count(t["evictions"]),
            f"{_size(t['bytes_read'])}/{_size(t['bytes_written'])}",
            f"{_fmt_latency(t['get_latency_p50_s'])}/{_fmt_latency(t['get_latency_p99_s'])}")
    out = file if file is not None else sys.stdout
    console = Console(file=out)
    if not console.is_terminal:  # piped or captured: a fixed width, not rich's 80 columns
        console = Console(file=out, width=TABLE_WIDTH)
    console.print(table)
    origin = stats.get("origin")
    if origin:
        console.print(f"origin ({origin['kind']}): {origin['hits']} gets served, "
                      f"{_size(origin['bytes_read'])} read, p50/p99 "
                      f"{_fmt_latency(origin['get_latency_p50_s'])}/"
                      f"{_fmt_latency(origin['get_latency_p99_s'])}", markup=False,
                      highlight=False)
    kv = [(name, t) for name, t in stats["tiers"].items() if t.get("kv_blocks")
          or t.get("kv_capacity_bytes") is not None]
    if kv:  # the attention KV blocks' share of each tier (tiercache.models.prefix)
        console.print("KV blocks: " + "; ".join(
            f"{name} {_count(t['kv_blocks'])} ({_size(t['kv_bytes'])}"
            + (f" of {_size(t['kv_capacity_bytes'])} allowed" if t.get("kv_capacity_bytes")
               is not None else "")
            + (f", {100 * t['kv_bytes'] / t['resident_bytes']:.0f}% of the tier's bytes"
               if t["resident_bytes"] else "") + ")"
            for name, t in kv), markup=False, highlight=False, soft_wrap=True)
    for name, why in problems.items():  # one line each, however long the reason
        console.print(f"tier {name} degraded: {why}", markup=False, highlight=False,
                      soft_wrap=True)
    loop_stats = stats.get("loop")
    show_loop = loop if loop is not None else bool(loop_stats and loop_stats.get("gets"))
    if show_loop and loop_stats:
        console.print(
            f"loop: {loop_stats['gets']} scheduled gets, {loop_stats['stalls']} not in the top "
            f"tier ({loop_stats['stall_s'] * 1e3:.1f} ms), {loop_stats['prefetched']} "
            "prefetched", markup=False, highlight=False)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..core.cache import TieredCache

    cfg = load_config(args.config)
    with TieredCache.from_config(cfg, read_only=True) as cache:  # changes nothing
        stats = cache.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        render_stats(stats, loop=False)  # a freshly opened cache has no loop
    return EXIT_DEGRADED if degraded_tiers(stats) else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="print per-tier residency and counters of a cache "
                       "(exit status 1 when a tier is degraded)")
    p.add_argument("config", help="the cache's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
