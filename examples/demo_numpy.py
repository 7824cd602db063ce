"""Demo: a layer-by-layer numpy model whose weights exceed the RAM tier.

Writes deterministic synthetic weights (48 MiB) to a folder of .npy files (the
origin), opens a three-tier cache (16 MiB RAM, 24 MiB SSD on lmdb, 256 MiB HDD
on diskcache) and runs a small MLP-style loop over every layer for several
tokens. The first pass pulls weights from the origin into RAM and evictions
cascade down (demotions); later passes hit the lower tiers, which promote
often-used shards back up. The output is checked against the same loop run
on the original arrays, and per-tier statistics are printed.

Run with ``make demo`` (or ``python examples/demo.py [--workdir DIR]``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import tiercache
from tiercache.cli import render_stats
from tiercache.origins import NpyDirOrigin

DIM = 512
LAYERS = 24
TOKENS = 6


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Two DIM x DIM float32 matrices per layer plus an embedding: ~48 MiB."""
    rng = np.random.default_rng(seed)
    scale = np.float32(1 / np.sqrt(DIM))
    weights = {"embed": rng.standard_normal((DIM, DIM), dtype=np.float32) * scale}
    for layer in range(LAYERS):
        for part in ("up", "down"):
            weights[f"blk.{layer}.{part}.weight"] = (
                rng.standard_normal((DIM, DIM), dtype=np.float32) * scale)
    return weights


def forward(get: Callable[[str], np.ndarray], x: np.ndarray) -> np.ndarray:
    """One token: embed, then every layer's up/down projections with a residual."""
    fetch = get  # a callable key -> array
    h: np.ndarray = x @ fetch("embed")
    for layer in range(LAYERS):
        up = fetch(f"blk.{layer}.up.weight")
        down = fetch(f"blk.{layer}.down.weight")
        h = h + np.tanh(h @ up) @ down
        h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    return h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tiercache/demo", help="scratch folder (wiped)")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    weights = make_weights()
    total = sum(w.nbytes for w in weights.values())
    NpyDirOrigin.write(work / "origin", weights)

    config = {
        "mode": "exclusive",
        "origin": {"kind": "npy", "path": str(work / "origin")},
        "tiers": [
            {"name": "ram", "backend": "memory", "capacity": "16MiB", "policy": "arc"},
            {"name": "ssd", "backend": "lmdb", "path": str(work / "ssd"), "capacity": "24MiB",
             "policy": "lfu", "promote_after": 2},
            {"name": "hdd", "backend": "diskcache", "path": str(work / "hdd"),
             "capacity": "256MiB", "policy": "lru", "promote_after": 2},
        ],
    }
    x = np.random.default_rng(1).standard_normal((8, DIM), dtype=np.float32)
    expected = [forward(weights.__getitem__, x)]
    for _ in range(TOKENS - 1):
        expected.append(forward(weights.__getitem__, expected[-1]))

    print(f"weights: {len(weights)} shards, {total / 2**20:.0f} MiB; RAM tier 16 MiB, "
          f"SSD 24 MiB, HDD 256 MiB")
    with tiercache.open(config) as cache:
        h = x
        started = time.perf_counter()
        for token in range(TOKENS):
            h = forward(cache.get, h)
            if not np.array_equal(h, expected[token]):
                raise SystemExit(f"token {token}: output differs from the in-RAM run")
            print(f"token {token}: output equals the in-RAM run "
                  f"({time.perf_counter() - started:.2f} s so far)")
        stats = cache.stats()
        render_stats(stats)
    tiers = stats["tiers"]
    promoted = sum(t["promotions_in"] for t in tiers.values())
    demoted = sum(t["demotions_in"] for t in tiers.values())
    print(f"shards moved up (promotions): {promoted}; moved down (demotions): {demoted}")
    if not promoted or not demoted:
        raise SystemExit("expected shards to move both ways")


if __name__ == "__main__":
    main()
