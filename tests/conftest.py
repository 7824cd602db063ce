"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import three_tier_config


@pytest.fixture
def cfg3(tmp_path: Path) -> dict[str, Any]:
    """A RAM (64 KiB) / SSD lmdb (128 KiB) / HDD diskcache (4 MiB) config under tmp_path."""
    return three_tier_config(tmp_path)
