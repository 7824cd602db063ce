"""Worker for tests/faults/test_crash.py: a writer that gets SIGKILLed, and the checker after it.

Run as ``python tests/crash_worker.py zygote ROOT``. The *zygote* imports
everything once and then, per line ``RUN round seed mode expect.json`` on its
stdin, forks a child (so a round costs a fork, not a Python start-up) and
reports on its stdout::

    PID <pid>                 the child started
    CHECKED <json>            the child reopened the cache after the last kill and
                              checked every key against expect.json (see below)
    B put <key> <version>     an operation begins ...
    A put <key> <version>     ... and was acknowledged (also B/A del <key>, get <key>)
    BAD <text>                a get returned bytes it must not have
    EXIT <pid> <status>       the child died (waitpid status)

The child opens the 3-tier cache (memory / lmdb / diskcache, see
:func:`config`) *after* the fork -- lmdb environments must never cross a
fork -- checks it, then runs random puts, gets and deletes until it is
killed: by the test after a random delay (mode ``timed``), or by itself at
a random instrumented point inside a store write, a demotion, a promotion,
an eviction or an lmdb compaction (mode ``self``; SIGKILL too).

Values are derived from ``(key, version)`` (:func:`value`) and carry both in
their first 16 bytes, so any bytes read can be checked in full and traced to
the put that wrote them. expect.json maps each key to the last acknowledged
version (``null`` after a delete) and the version of a put that was in flight
when the writer died (or ``null``); the check accepts a miss, the
acknowledged version or the in-flight one -- nothing else, and no exception.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any, cast

import numpy as np

N_KEYS = 40
MAX_OPS = 5000


def config(root: Path) -> dict[str, Any]:
    """The cache under test: small tiers so every round demotes, promotes and evicts."""
    return {
        "mode": "exclusive",
        "tiers": [
            {"name": "ram", "backend": "memory", "capacity": "48KiB", "policy": "lru"},
            {"name": "ssd", "backend": "lmdb", "path": str(root / "ssd"),
             "capacity": "160KiB", "policy": "arc", "promote_after": 1},
            {"name": "hdd", "backend": "diskcache", "path": str(root / "hdd"),
             "capacity": "768KiB", "policy": "lru", "promote_after": 2},
        ],
    }


def keys() -> list[str]:
    return [f"layer{i}/w" for i in range(N_KEYS)]


def _key_id(key: str) -> int:
    return zlib.crc32(key.encode())


def value(key: str, version: int) -> np.ndarray:
    """The bytes put for ``(key, version)``: 512 B .. 40 KiB, self-describing."""
    kid = _key_id(key)
    rng = np.random.default_rng([kid, version])
    n = int(rng.integers(512, 40 * 1024))
    data = rng.integers(0, 256, n, dtype=np.uint8)
    data[:16] = np.frombuffer(np.array([kid, version], dtype="<u8").tobytes(), np.uint8)
    return data


def version_of(key: str, array: np.ndarray) -> int | None:
    """The version ``array`` holds if it is exactly ``value(key, version)``, else None."""
    if array.dtype != np.uint8 or array.ndim != 1 or array.size < 16:
        return None
    kid, version = (int(x) for x in np.frombuffer(array[:16].tobytes(), dtype="<u8"))
    if kid != _key_id(key):
        return None
    return version if np.array_equal(array, value(key, version)) else None


# -- the child -----------------------------------------------------------------------------


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: survives SIGKILL intact


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill_points(rng: random.Random, probability: float) -> None:
    """Wrap internal steps so that each call SIGKILLs this process with ``probability``."""
    from tiercache.core import cache as engine
    from tiercache.core import tier
    from tiercache.stores import diskcache_store, lmdb_env, lmdb_store

    def maybe() -> None:
        if rng.random() < probability:
            _die()

    def around(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            maybe()
            result = original(*args, **kwargs)
            maybe()
            return result

        setattr(owner, name, wrapped)

    around(tier.Tier, "_forget")                 # between a demotion below and the delete above
    around(tier.Tier, "admit")
    around(engine.TieredCache, "_demote")
    around(engine.TieredCache, "_promote")
    around(lmdb_store.LmdbStore, "put")
    around(lmdb_store.LmdbStore, "delete")
    around(lmdb_env, "fsync_path")            # inside a compaction: copied / renamed
    around(diskcache_store.DiskcacheStore, "put")
    around(diskcache_store.DiskcacheStore, "delete")
    original_write_all = diskcache_store.write_all

    def write_all(fd: int, data: memoryview) -> None:  # die half-way through a value file
        if data.nbytes > 1 and rng.random() < probability:
            os.write(fd, data[: data.nbytes // 2])
            _die()
        original_write_all(fd, data)

    diskcache_store.write_all = write_all


def _install_disk_full(rng: random.Random, probability: float) -> None:
    """Make the disk tiers fail like a full disk, with ``probability`` per call: an lmdb
    put that *committed* and is then reported failed (ENOSPC in the compaction after
    the commit, issue 12 item 2), an lmdb or diskcache put that fails before writing,
    and deletes the medium refuses (a stale entry stays behind, pending)."""
    import errno

    from tiercache.stores import diskcache_store, lmdb_store

    def full() -> OSError:
        return OSError(errno.ENOSPC, "No space left on device (injected)")

    def after(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if rng.random() < probability:
                raise full()  # it landed, but the caller is told it failed
            return result

        setattr(owner, name, wrapped)

    def before(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if rng.random() < probability:
                raise full()
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    after(lmdb_store.LmdbStore, "put")
    before(lmdb_store.LmdbStore, "put")
    before(lmdb_store.LmdbStore, "delete")
    before(diskcache_store.DiskcacheStore, "put")
    before(diskcache_store.DiskcacheStore, "delete")


def _check(cache: Any, expect: dict[str, dict[str, int | None]]) -> tuple[dict[str, Any],
                                                                         dict[str, int | None]]:
    """Check every key against ``expect``; return a summary and what each key holds now."""
    summary: dict[str, Any] = {"keys": 0, "miss": 0, "acked": 0, "inflight": 0, "bad": []}
    now: dict[str, int | None] = {}
    for key in keys():
        summary["keys"] += 1
        rule = expect.get(key, {"acked": None, "inflight": None})
        try:
            got = cache.get(key, None)
        except Exception as exc:  # never acceptable: a miss or the right bytes
            summary["bad"].append(f"{key}: get raised {exc!r}")
            continue
        if got is None:
            summary["miss"] += 1
            now[key] = None
            continue
        version = version_of(key, np.asarray(got))
        now[key] = version
        if version is not None and version == rule["acked"]:
            summary["acked"] += 1
        elif version is not None and version == rule["inflight"]:
            summary["inflight"] += 1
        else:
            summary["bad"].append(f"{key}: got version {version}, allowed {rule} or a miss")
    cache.check_invariants()
    report = cache.verify(repair=False, orphan_min_age_s=0.0)
    summary["corrupt"] = sum(t["corrupt"] + t["unreadable"] for t in report["tiers"].values())
    summary["orphans"] = sum(t["orphans"] for t in report["tiers"].values())
    summary["errors"] = sum(t.stats.corrupt + t.stats.errors for t in cache.tiers)
    summary["duplicates"] = cache.duplicates_dropped
    summary["now"] = now
    return summary, now


def child(root: Path, round_no: int, seed: int, mode: str, expect_file: Path) -> None:
    import tiercache
    from tiercache.errors import TierCacheError
    from tiercache.stores import lmdb_env, lmdb_store

    lmdb_env.COMPACT_SLACK_BYTES = 64 * 1024  # compact often, so kills land inside one too
    compact = lmdb_store.LmdbStore.compact

    def announced_compact(self: Any) -> int:
        _say("N compact")
        return compact(self)

    cast(Any, lmdb_store.LmdbStore).compact = announced_compact
    rng = random.Random(seed)
    expect = json.loads(expect_file.read_text()) if expect_file.exists() else {}
    cache = tiercache.open(config(root))
    summary, model = _check(cache, expect)
    _say("CHECKED " + json.dumps(summary))
    if mode == "checkonly":
        cache.close()
        return
    if mode in ("self", "diskfull"):
        _install_kill_points(rng, probability=0.004)
    if mode == "diskfull":
        _install_disk_full(rng, probability=0.03)
    names = keys()
    for op in range(MAX_OPS):
        key = rng.choice(names)
        r = rng.random()
        if r < 0.45:
            version = round_no * 1_000_000 + op
            _say(f"B put {key} {version}")
            try:
                cache.put(key, value(key, version))
            except TierCacheError:  # served here, not durable: stays "in flight" for the check
                model[key] = version
                continue
            model[key] = version
            _say(f"A put {key} {version}")
        elif r < 0.55:
            _say(f"B del {key}")
            try:
                cache.delete(key)
            except TierCacheError:  # gone here, not durably: stays "in flight" for the check
                model[key] = None
                continue
            model[key] = None
            _say(f"A del {key}")
        else:
            got = cache.get(key, None)
            if got is not None:
                seen = version_of(key, np.asarray(got))
                if seen is None or seen != model.get(key):
                    _say(f"BAD get {key} returned version {seen}, last put {model.get(key)}")
    time.sleep(60)  # out of work: wait for the kill


# -- the zygote ----------------------------------------------------------------------------


def zygote(root: Path) -> None:
    import tiercache  # noqa: F401 - import everything once, before forking
    from tiercache.stores import diskcache_store, lmdb_store  # noqa: F401

    _say("READY")
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "QUIT":
            return
        _cmd, round_no, seed, mode, expect_file = parts
        pid = os.fork()
        if pid == 0:  # the child: open everything now, after the fork
            code = 0
            try:
                child(root, int(round_no), int(seed), mode, Path(expect_file))
            except BaseException as exc:
                _say(f"ERROR {exc!r}")
                code = 3
            os._exit(code)
        _say(f"PID {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"EXIT {pid} {status}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "zygote":
        raise SystemExit("usage: crash_worker.py zygote ROOT")
    zygote(Path(sys.argv[2]))
