"""The ``tiercache`` command: a thin shell over the library.

Subcommands live in :mod:`tiercache.commands`, one module each. Every expected
failure (bad config, missing file, unreadable store) prints one line to
stderr and exits with status 2; no traceback reaches the user unless
``TIERCACHE_DEBUG=1`` is set. ``tiercache stats`` exits with status 1 when it
could read the cache but a tier is degraded.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .commands import COMMAND_MODULES
from .commands.stats import render_stats
from .errors import TierCacheError

__all__ = ["build_parser", "main", "render_stats"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiercache", description="Serve model weight shards from RAM/SSD/HDD tiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiercache`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("tiercache: interrupted", file=sys.stderr)
        return 130
    except (TierCacheError, OSError, ValueError, LookupError) as exc:
        if os.environ.get("TIERCACHE_DEBUG"):
            raise
        message = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0])
        print(f"tiercache: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
