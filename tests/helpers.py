"""Test helpers: small three-tier configs on real folders, deterministic shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tiercache.testing import three_tier_config as kit_three_tier_config


def three_tier_config(root: Path, *, mode: str = "exclusive", ram: str = "64KiB",
                      ssd: str = "128KiB", hdd: str = "4MiB", ram_policy: str = "lru",
                      ssd_policy: str = "lru", hdd_policy: str = "lru",
                      promote_after: Any = 2, origin: Path | None = None) -> dict[str, Any]:
    """The test kit's RAM (memory) / SSD (lmdb) / HDD (diskcache) config rooted at
    ``root`` (:func:`tiercache.testing.three_tier_config`), with an ``.npy`` origin."""
    cfg = kit_three_tier_config(root, mode=mode, ram=ram, ssd=ssd, hdd=hdd,
                                ram_policy=ram_policy, ssd_policy=ssd_policy,
                                hdd_policy=hdd_policy, promote_after=promote_after)
    if origin is not None:
        cfg["origin"] = {"kind": "npy", "path": str(origin)}
    return cfg


def shard(seed: int, nbytes: int = 16 * 1024, dtype: str = "float32") -> np.ndarray:
    """A deterministic array of about ``nbytes`` bytes."""
    dt = np.dtype(dtype)
    n = max(1, nbytes // dt.itemsize)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 100).astype(dt).reshape(-1, 4) if n % 4 == 0 else \
        (rng.standard_normal(n) * 100).astype(dt)
