"""Concurrency: threads around one cache, processes around one lmdb tier, fork safety.

1. The loop (scheduled gets), the prefetcher, a writer and two extra readers
   hammer one memory / lmdb / diskcache cache with 10,000 random operations.
   Every value read is one that was put for its key (values carry their
   ``(key, version)``, see crash_worker.value), ``check_invariants`` holds
   throughout, and afterwards every key holds exactly its last value.
2. A writer process and two reader processes share one lmdb environment
   (``multiprocessing`` with spawn; py-lmdb cannot open an environment twice in
   one process): readers only ever see whole, valid values or misses.
3. An lmdb store used in a forked child refuses to work (lmdb environments
   must not cross fork()), and a store opened in the child works.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from crash_worker import value, version_of
from helpers import three_tier_config

import tiercache
from tiercache.errors import StoreError
from tiercache.stores.lmdb_store import LmdbStore

TOTAL_OPS = 10_000


@pytest.mark.slow
def test_loop_prefetcher_writer_and_readers_keep_every_invariant(tmp_path: Path) -> None:
    keys = [f"blk.{i}.w" for i in range(30)]
    schedule = keys[:20]
    put_versions: dict[str, set[int]] = {k: set() for k in keys}
    last: dict[str, int | None] = dict.fromkeys(keys)
    versions_lock = threading.Lock()
    errors: list[str] = []
    counts = {"loop": 0, "writer": 0, "reader": 0, "checks": 0}
    stop = threading.Event()

    def check(key: str, got: Any, who: str) -> None:
        if got is None:
            return
        version = version_of(key, np.asarray(got))
        with versions_lock:
            ok = version is not None and version in put_versions[key]
        if not ok:
            errors.append(f"{who}: {key} returned bytes that were never put (version {version})")

    with tiercache.open(three_tier_config(tmp_path, ram="96KiB", ssd="192KiB",
                                          hdd="4MiB")) as cache:
        for i, key in enumerate(keys):  # every key starts with a value
            put_versions[key].add(i)
            cache.put(key, value(key, i))
            last[key] = i
        cache.declare_schedule(schedule)
        cache.start_prefetcher(depth=4)

        def guarded(name: str, body: Any) -> Any:
            def run() -> None:
                try:
                    body()
                except BaseException as exc:  # reported below
                    errors.append(f"{name}: {exc!r}")
                    stop.set()
            return threading.Thread(target=run, name=name)

        def loop() -> None:
            for n in range(3000):
                key = schedule[n % len(schedule)]
                check(key, cache.get(key, None), "loop")
                counts["loop"] += 1

        def writer() -> None:
            rng = random.Random(1)
            for n in range(2000):
                key = rng.choice(keys)
                if rng.random() < 0.85:
                    version = 1000 + n
                    with versions_lock:
                        put_versions[key].add(version)
                    cache.put(key, value(key, version), tier=rng.choice([None, None, "ssd"]))
                    last[key] = version
                else:
                    cache.delete(key)
                    last[key] = None
                counts["writer"] += 1

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(2500):
                key = rng.choice(keys)
                r = rng.random()
                if r < 0.7:
                    check(key, cache.get(key, None), "reader")
                elif r < 0.85:
                    cache.prefetch(key)
                else:
                    _ = key in cache
                counts["reader"] += 1

        def checker() -> None:
            while not stop.is_set():
                cache.check_invariants()
                counts["checks"] += 1
                time.sleep(0.005)

        workers = [guarded("loop", loop), guarded("writer", writer),
                   guarded("reader-1", lambda: reader(2)), guarded("reader-2", lambda: reader(3))]
        watcher = guarded("checker", checker)
        watcher.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=300)
        stop.set()
        watcher.join(timeout=60)
        cache.stop_prefetcher()
        assert not errors, "\n".join(errors[:10])
        assert sum(counts[k] for k in ("loop", "writer", "reader")) == TOTAL_OPS
        assert counts["checks"] > 0
        cache.check_invariants()
        for key in keys:  # quiescent: each key holds exactly its last value
            got = cache.get(key, None)
            if last[key] is None:
                assert got is None, key
            else:
                assert got is not None and version_of(key, np.asarray(got)) == last[key], key
        loop_stats = cache.stats()["loop"]
        assert loop_stats["gets"] >= 3000 and loop_stats["prefetched"] > 0  # readers count too


# -- several processes, one lmdb environment -------------------------------------------------

N_KEYS = 24


def _writer(path: str, ops: int, seed: int, out: Any) -> None:  # pragma: no cover - subprocess
    store = LmdbStore(path)
    rng = random.Random(seed)
    for n in range(ops):
        key = f"k{rng.randrange(N_KEYS)}"
        if rng.random() < 0.85:
            store.put(key, value(key, n))
        else:
            store.delete(key)
    store.close()
    out.put(("writer", ops, []))


def _reader(path: str, seed: int, done: Any, out: Any) -> None:  # pragma: no cover - subprocess
    store = LmdbStore(path)
    rng = random.Random(seed)
    reads, hits, bad = 0, 0, []
    while not done.is_set() or reads < 200:
        key = f"k{rng.randrange(N_KEYS)}"
        try:
            got = store.get(key)
        except Exception as exc:
            bad.append(f"{key}: {exc!r}")
            continue
        reads += 1
        if got is not None:
            hits += 1
            if version_of(key, got) is None:
                bad.append(f"{key}: bytes that were never put")
    store.close()
    out.put(("reader", reads, bad, hits))


@pytest.mark.slow
def test_processes_share_one_lmdb_tier_without_corruption(tmp_path: Path) -> None:
    path = str(tmp_path / "shared")
    LmdbStore(path).close()  # create it before the readers start
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    done = ctx.Event()
    readers = [ctx.Process(target=_reader, args=(path, s, done, out)) for s in (1, 2)]
    writer = ctx.Process(target=_writer, args=(path, 1500, 7, out))
    for p in readers:
        p.start()
    writer.start()
    writer.join(240)
    done.set()
    for p in readers:
        p.join(120)
    results = [out.get(timeout=10) for _ in range(3)]
    assert writer.exitcode == 0 and all(p.exitcode == 0 for p in readers)
    problems = [b for r in results for b in r[2]]
    assert problems == [], problems[:10]
    reader_results = [r for r in results if r[0] == "reader"]
    assert all(r[1] >= 200 for r in reader_results)
    assert sum(r[3] for r in reader_results) > 0  # they did see the writer's values
    with LmdbStore(path) as store:  # and the environment is sound afterwards
        for key in store.keys():
            got = store.get(key)
            assert got is not None and version_of(key, got) is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_an_lmdb_store_refuses_to_cross_a_fork(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "t")
    store.put("k", value("k", 1))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 0
        try:
            store.get("k")
            code = 1  # must not work
        except StoreError as exc:
            code = 0 if "fork" in str(exc) else 2
        store.close()  # must not close the parent's environment
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    got = store.get("k")
    assert got is not None and version_of("k", got) == 1  # the parent's store still works
    store.close()
