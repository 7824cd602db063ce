"""Build a tier from its configuration: store, policy, capacity, promotion rule.

One factory for the cache and the simulator. A medium too damaged to open gives
a degraded tier holding nothing instead of an error.

Thread-safety: builds new objects only.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import TierConfig
from ..errors import (
    MediumDamagedError,
)
from ..policies import get_policy_class
from ..stores import open_store
from ..stores.base import Store
from ..stores.damaged import AbsentStore, DamagedStore
from .tier import PromotionRule, Tier

log = logging.getLogger("tiercache")

def tier_from_config(cfg: TierConfig, store: Store) -> Tier:
    """The tier ``cfg`` describes over an already opened ``store``: its policy (with
    its options), capacity, promotion rule and zero-copy reads (when the store can).
    The one place a Tier is assembled, for caches and for the simulator. O(1)."""
    policy = get_policy_class(cfg.policy)(cfg.capacity_bytes, **dict(cfg.policy_options))
    tier = Tier(cfg.name, store, policy, cfg.capacity_bytes, PromotionRule(cfg.promote_after),
                kv_capacity_bytes=cfg.kv_capacity_bytes)
    tier.zero_copy = cfg.zero_copy and store.zero_copy
    return tier


def build_tier(cfg: TierConfig, *, drop_corrupt: bool = True, read_only: bool = False) -> Tier:
    """Create the store and policy of one configured tier (creates its folder).

    ``drop_corrupt=False`` leaves entries with a damaged header in place (not
    indexed) for :meth:`TieredCache.verify` to report; see :meth:`Tier.load_existing`.
    ``read_only`` creates nothing: a disk tier whose folder does not exist opens
    empty, and a disk tier's folder lock is not taken (a reader beside the process
    that owns the cache, e.g. ``tiercache stats`` while a server runs). A medium
    too damaged to open (:class:`MediumDamagedError`) gives a *degraded* tier that
    holds nothing (:class:`DamagedStore`) instead of an error: the cache still
    opens and serves from its other tiers and the origin.
    """
    def new_tier(store: Store) -> Tier:
        return tier_from_config(cfg, store)

    if read_only and cfg.path is not None and not cfg.path.exists():
        return new_tier(AbsentStore(cfg.backend, cfg.path))
    try:
        store = open_store(cfg.backend, cfg.path, verify=cfg.verify,
                           capacity_bytes=cfg.capacity_bytes, options=cfg.options,
                           exclusive=False if read_only else None)
    except MediumDamagedError as exc:
        return _damaged_tier(new_tier, cfg, exc)
    tier = new_tier(store)
    if store.persistent:
        try:
            tier.load_existing(drop_corrupt=drop_corrupt)
        except MediumDamagedError as exc:
            store.close()
            return _damaged_tier(new_tier, cfg, exc)
        except BaseException:
            store.close()
            raise
    return tier


def _damaged_tier(new_tier: Any, cfg: TierConfig, exc: MediumDamagedError) -> Tier:
    log.warning("tier %s: its medium is damaged and cannot be used (%s); serving from the "
                "other tiers -- `tiercache verify --repair` empties and reopens it", cfg.name, exc)
    tier: Tier = new_tier(DamagedStore(cfg.backend, cfg.path, str(exc)))
    tier.mark_damaged(str(exc))
    return tier
