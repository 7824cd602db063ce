"""The policy lab: replay recorded traces through eviction policies and tier layouts.

>>> from tiercache import sim
>>> oltp = "data/traces/arc/OLTP.lis.zst"                                # doctest: +SKIP
>>> results = sim.simulate(oltp, ["lru", "arc"], [1000, "5%"])          # doctest: +SKIP
>>> results.to_records()[0]                                             # doctest: +SKIP
{'policy': 'lru', 'capacity': 1000, 'unit': 'objects', 'requests': 914145, ...}
>>> sim.plot_mrc(results, "mrc.png")                                    # doctest: +SKIP

* :mod:`~tiercache.sim.traces` -- CSV / ARC ``.lis`` / ``.npy`` readers (``.zst``, ``.gz``);
* :mod:`~tiercache.sim.replay` -- one trace through many policies and capacities;
* :mod:`~tiercache.sim.policy_specs` -- ``"2q(a_in_size_ratio=0.3)"`` policy specs;
* :mod:`~tiercache.sim.tiers` -- a whole TOML layout on a virtual clock;
* :mod:`~tiercache.sim.report` -- tables, CSV/JSON, miss-ratio-curve plots.

``tiercache simulate`` is the command-line face of the same functions; see
docs/experiments.md. Nothing here imports matplotlib until a plot is drawn.
"""

from __future__ import annotations

from .policy_specs import load_policy, make_policy, parse_policy_spec
from .replay import (
    SimResult,
    SimResults,
    parse_capacity,
    replay,
    replay_hits,
    resolve_capacity,
    simulate,
)
from .report import plot_mrc, progress_bar, render_table, render_tier_table, to_json, write_csv
from .tiers import DEFAULT_MODELS, TierModel, TierSimResult, simulate_tiers
from .traces import Trace, detect_format, read_trace, write_trace_csv

__all__ = [
    "DEFAULT_MODELS",
    "SimResult",
    "SimResults",
    "TierModel",
    "TierSimResult",
    "Trace",
    "detect_format",
    "load_policy",
    "make_policy",
    "parse_capacity",
    "parse_policy_spec",
    "plot_mrc",
    "progress_bar",
    "read_trace",
    "render_table",
    "render_tier_table",
    "replay",
    "replay_hits",
    "resolve_capacity",
    "simulate",
    "simulate_tiers",
    "to_json",
    "write_csv",
    "write_trace_csv",
]
