"""How much memory this process can still take without the kernel reclaiming for it.

The smaller of the host's available memory (``psutil``) and the room left in
every memory cgroup above the process (v2 ``memory.max``, v1
``memory.limit_in_bytes``), where a group's room is its limit minus its usage
plus its inactive file pages (page cache the kernel drops first). A process in
a container or a capped service sees its cap here, which the host's figure
does not show.

Used by the decoder before it compiles the whole decode step in one call: each
such variant keeps memory of its own (tens of MiB per layer on the 2-core VM:
docs/performance.md), and under a cap that counts the page cache a compile can
evict the very pages the run reads.

O(depth of the cgroup path) small file reads (~0.1 ms). Thread-safety: pure
(reads files; a snapshot).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil

__all__ = ["cgroup_room_bytes", "spare_memory_bytes"]

#: A v1 limit at or above this means "no limit" (the kernel writes ~2^63 rounded to pages).
_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    return None


def _stat_field(path: Path, field: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == field:
                return int(value)
    return 0


def _group_room(folder: Path, v2: bool) -> int | None:
    """Room left in one group folder, or None without a limit there."""
    if v2:
        limit = _read_int(folder / "memory.max")
        usage = _read_int(folder / "memory.current")
        inactive = _stat_field(folder / "memory.stat", "inactive_file")
    else:
        limit = _read_int(folder / "memory.limit_in_bytes")
        usage = _read_int(folder / "memory.usage_in_bytes")
        inactive = _stat_field(folder / "memory.stat", "total_inactive_file")
    if limit is None or limit >= _UNLIMITED or usage is None:
        return None
    return max(0, limit - usage + inactive)


def cgroup_room_bytes(proc_cgroup: str | Path = "/proc/self/cgroup",
                      root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The least room left in the memory cgroups holding this process (its own group
    and every parent up to ``root``), or None when none of them has a limit (or
    there are no cgroups to read)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    found: list[tuple[Path, bool]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            found.append((root / path.lstrip("/"), True))
        elif "memory" in controllers.split(","):
            found.append((root / "memory" / path.lstrip("/"), False))
    rooms: list[int] = []
    for folder, v2 in found:
        base = root if v2 else root / "memory"
        while True:
            room = _group_room(folder, v2)
            if room is not None:
                rooms.append(room)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(rooms) if rooms else None


def spare_memory_bytes() -> int:
    """Memory this process can take now: ``min(host available, cgroup room)``."""
    spare = int(psutil.virtual_memory().available)
    room = cgroup_room_bytes()
    return spare if room is None else min(spare, room)
