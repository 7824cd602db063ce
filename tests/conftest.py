"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import three_tier_config
from redis_fixtures import (  # noqa: F401 - fixtures for the Redis tier tests
    redis_cluster,
    redis_factory,
    redis_namespace,
    redis_standalone,
)


@pytest.fixture
def cfg3(tmp_path: Path) -> dict[str, Any]:
    """A RAM (64 KiB) / SSD lmdb (128 KiB) / HDD diskcache (4 MiB) config under tmp_path."""
    return three_tier_config(tmp_path)
