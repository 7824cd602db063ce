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

__all__ = ["cgroup_room_bytes", "page_cache_room_bytes", "spare_memory_bytes"]

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


def _group_room(folder: Path, v2: bool, *, for_cache: bool = False) -> int | None:
    """Room left in one group folder, or None without a limit there: its limit minus
    its usage plus its inactive file pages; ``for_cache``: its limit minus its
    anonymous memory (what the page cache may hold there, its own pages included)."""
    if v2:
        limit = _read_int(folder / "memory.max")
        usage = _read_int(folder / "memory.current")
        inactive = _stat_field(folder / "memory.stat", "inactive_file")
        anon = _stat_field(folder / "memory.stat", "anon")
    else:
        limit = _read_int(folder / "memory.limit_in_bytes")
        usage = _read_int(folder / "memory.usage_in_bytes")
        inactive = _stat_field(folder / "memory.stat", "total_inactive_file")
        anon = _stat_field(folder / "memory.stat", "total_rss")
    if limit is None or limit >= _UNLIMITED or usage is None:
        return None
    return max(0, limit - anon) if for_cache else max(0, limit - usage + inactive)


def cgroup_room_bytes(proc_cgroup: str | Path = "/proc/self/cgroup",
                      root: str | Path = "/sys/fs/cgroup", *,
                      for_cache: bool = False) -> int | None:
    """The least room left in the memory cgroups holding this process (its own group
    and every parent up to ``root``), or None when none of them has a limit (or
    there are no cgroups to read). ``for_cache``: the most the page cache can hold
    there (limit minus anonymous memory), see :func:`page_cache_room_bytes`."""
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
            room = _group_room(folder, v2, for_cache=for_cache)
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


def page_cache_room_bytes() -> int | None:
    """The most file pages the memory cgroups holding this process let the page cache
    keep for it (the least ``limit - anonymous memory`` among them: what is left
    once the processes' own memory is counted), or None where no group has a limit
    (the host then reclaims by its own measure). Used to size the set of shards a
    loop larger than memory keeps in the page cache (:mod:`tiercache.serving.keep`).
    O(depth of the cgroup path) small file reads."""
    return cgroup_room_bytes(for_cache=True)
