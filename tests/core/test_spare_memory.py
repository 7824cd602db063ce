"""The room left in memory cgroups, read from fake cgroup trees (v1 and v2)."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tiercache import spare_memory
from tiercache.spare_memory import cgroup_room_bytes, spare_memory_bytes

MIB = 1 << 20


def _group(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_v2_room_is_limit_minus_usage_plus_inactive_file(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/app/worker\n")
    root = tmp_path / "fs"
    _group(root / "app" / "worker", {"memory.max": f"{600 * MIB}\n",
                                     "memory.current": f"{500 * MIB}\n",
                                     "memory.stat": f"anon 1\ninactive_file {30 * MIB}\n"})
    assert cgroup_room_bytes(proc, root) == 130 * MIB


def test_the_page_cache_room_is_limit_minus_anonymous_memory(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/capped\n")
    root = tmp_path / "fs"
    _group(root / "memory" / "capped", {
        "memory.limit_in_bytes": f"{426 * MIB}\n", "memory.usage_in_bytes": f"{420 * MIB}\n",
        "memory.stat": f"total_rss {266 * MIB}\ntotal_cache {154 * MIB}\n"
                       f"total_inactive_file {9 * MIB}\nrss 1\n"})
    assert cgroup_room_bytes(proc, root, for_cache=True) == 160 * MIB
    assert cgroup_room_bytes(proc, root) == 15 * MIB
    proc.write_text("0::/app\n")
    _group(root / "app", {"memory.max": f"{100 * MIB}", "memory.current": f"{90 * MIB}",
                          "memory.stat": f"anon {70 * MIB}\ninactive_file 0\n"})
    assert cgroup_room_bytes(proc, root, for_cache=True) == 30 * MIB
    (root / "app" / "memory.max").write_text("max\n")
    assert cgroup_room_bytes(proc, root, for_cache=True) is None


def test_the_tightest_group_on_the_path_wins(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/app/worker\n")
    root = tmp_path / "fs"
    _group(root / "app" / "worker", {"memory.max": "max\n", "memory.current": "1\n"})
    _group(root / "app", {"memory.max": f"{100 * MIB}", "memory.current": f"{90 * MIB}",
                          "memory.stat": "inactive_file 0\n"})
    assert cgroup_room_bytes(proc, root) == 10 * MIB


def test_v1_memory_controller_and_its_unlimited_value(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/capped\n3:cpu,cpuacct:/\n0::/\n")
    root = tmp_path / "fs"
    group = root / "memory" / "capped"
    _group(group, {"memory.limit_in_bytes": f"{643 * MIB}\n",
                   "memory.usage_in_bytes": f"{640 * MIB}\n",
                   "memory.stat": f"total_inactive_file {2 * MIB}\ninactive_file 99\n"})
    _group(root / "memory", {"memory.limit_in_bytes": "9223372036854771712\n",
                             "memory.usage_in_bytes": "5\n"})
    assert cgroup_room_bytes(proc, root) == 5 * MIB
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_room_bytes(proc, root) is None  # no limit anywhere


@pytest.mark.parametrize("text", ["", "garbage\n", "0::/missing\n"])
def test_no_cgroup_to_read_means_no_limit(tmp_path: Path, text: str) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text(text)
    assert cgroup_room_bytes(proc, tmp_path / "fs") is None
    assert cgroup_room_bytes(tmp_path / "absent", tmp_path / "fs") is None


def test_spare_memory_is_the_smaller_of_host_and_cgroup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = psutil.virtual_memory().available
    monkeypatch.setattr(spare_memory, "cgroup_room_bytes", lambda: 7 * MIB)
    assert spare_memory_bytes() == 7 * MIB
    monkeypatch.setattr(spare_memory, "cgroup_room_bytes", lambda: None)
    assert 0 < spare_memory_bytes() <= 2 * host
