"""Shared fixtures."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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


#: The fixtures that start a real redis-server: a test using one is a `redis` test.
REDIS_FIXTURES = frozenset({"redis_standalone", "redis_cluster", "redis_factory",
                            "redis_namespace"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a redis-server fixture ``redis`` (the test files say so
    too, with ``pytestmark``; this catches a new test elsewhere), so that
    ``-m "not redis"`` never starts a server; and mark ``slow`` the hypothesis state
    machine of every :class:`~tiercache.testing.PolicyContract` suite (~0.7 s per policy
    and capacity, 20 s for the built-ins): the kit is shipped, so it cannot carry this
    project's markers itself (a user's ``--strict-markers`` would refuse them). O(items)."""
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())) \
                and item.get_closest_marker("redis") is None:
            item.add_marker(pytest.mark.redis)
        cls = getattr(item, "cls", None)
        if (getattr(item, "originalname", "") == "test_state_machine" and cls is not None
                and any(base.__name__ == "PolicyContract" for base in cls.__mro__)):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1.2 MB tmpfs: a real full disk (root only; unmounted afterwards)."""
    mount = tmp_path / "small"
    mount.mkdir()
    # CI and `make test` run as root here: a refused mount is a failure, never a skip
    assert os.geteuid() == 0, "the full-disk test mounts a tmpfs and needs root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                          capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.decode().strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
