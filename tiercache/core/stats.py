"""Per-tier counters and get-latency percentiles.

:class:`TierStats` is a plain mutable record owned by one tier; the engine
updates it under its lock and :meth:`TierStats.as_dict` renders it. Latency is
kept in a fixed ring of the most recent samples, so p50/p99 describe recent
behaviour and recording costs O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_WINDOW = 8192


@dataclass
class LatencyWindow:
    """The last :data:`LATENCY_WINDOW` latencies, in seconds. O(1) to record."""

    _samples: list[float] = field(default_factory=lambda: [0.0] * LATENCY_WINDOW)
    count: int = 0

    def record(self, seconds: float) -> None:
        self._samples[self.count % LATENCY_WINDOW] = seconds
        self.count += 1

    def percentiles(self, *qs: float) -> list[float | None]:
        """Percentiles (0..100) of the window; ``None`` when nothing was recorded."""
        n = min(self.count, LATENCY_WINDOW)
        if n == 0:
            return [None for _ in qs]
        values = np.asarray(self._samples[:n])
        return [float(v) for v in np.percentile(values, qs)]


@dataclass
class TierStats:
    """Counters of one tier. Not thread-safe by itself: the engine's lock guards it."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    evictions: int = 0
    promotions_in: int = 0
    promotions_out: int = 0
    demotions_in: int = 0
    demotions_out: int = 0
    dropped: int = 0
    #: Evictions that wrote nothing: a copy of the same version already lived below.
    clean_drops: int = 0
    corrupt: int = 0
    errors: int = 0
    skipped_too_large: int = 0
    bypassed: int = 0
    #: Admissions skipped because the tier was degraded and not yet due for a retry.
    skipped_degraded: int = 0
    #: Times the tier left the degraded state (a retry succeeded).
    recoveries: int = 0
    #: Entries found missing from the medium although indexed (file or folder removed).
    lost: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency.percentiles(50, 99)
        return {
            "hits": self.hits, "misses": self.misses,
            "hit_ratio": self.hits / (self.hits + self.misses) if self.hits + self.misses else 0.0,
            "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
            "evictions": self.evictions,
            "promotions_in": self.promotions_in, "promotions_out": self.promotions_out,
            "demotions_in": self.demotions_in, "demotions_out": self.demotions_out,
            "dropped": self.dropped, "clean_drops": self.clean_drops,
            "corrupt": self.corrupt, "errors": self.errors,
            "skipped_too_large": self.skipped_too_large, "bypassed": self.bypassed,
            "skipped_degraded": self.skipped_degraded, "recoveries": self.recoveries,
            "lost": self.lost,
            "get_latency_p50_s": p50, "get_latency_p99_s": p99,
        }


@dataclass
class LoopStats:
    """How well the cache kept up with a loop that declared its schedule.

    ``stalls`` counts scheduled gets whose shard was not in the top tier when
    asked for, and ``stall_s`` the time the loop spent on them (its own reads and
    waits for in-flight prefetches, the latter also in ``prefetch_wait_s``).
    ``staged_hits`` counts gets served by a copy the prefetcher read but the top
    tier did not admit (held until that get, within the prefetcher's byte budget).
    ``released`` / ``released_bytes``: shards whose page-cache copy was let go after
    use (a loop larger than memory: :mod:`tiercache.serving.keep`).
    """

    gets: int = 0
    stalls: int = 0
    stall_s: float = 0.0
    prefetch_wait_s: float = 0.0
    prefetched: int = 0
    prefetched_bytes: int = 0
    staged_hits: int = 0
    released: int = 0
    released_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"gets": self.gets, "stalls": self.stalls, "stall_s": self.stall_s,
                "prefetch_wait_s": self.prefetch_wait_s, "prefetched": self.prefetched,
                "prefetched_bytes": self.prefetched_bytes, "staged_hits": self.staged_hits,
                "released": self.released, "released_bytes": self.released_bytes}
