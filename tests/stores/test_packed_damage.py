"""The packed store under damage and pressure: descriptors and maps stay bounded while the
data file grows, a damaged ``index.sqlite`` is one clear error (never a bare exception,
never wrong bytes), a full disk is reported as such, and a store closed under a reader
says so (issue 12)."""

from __future__ import annotations

import errno
import os
import random
import resource
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memcap import run_capped

import tiercache
from tiercache.errors import (
    CacheClosedError,
    CorruptShardError,
    MediumDamagedError,
    StoreError,
    TierCacheError,
)
from tiercache.origins import NpyDirOrigin
from tiercache.stores.packed import PackedStore
from tiercache.stores.packed.index import INDEX_NAME
from tiercache.testing import FaultyStore

KiB = 1024


def _value(i: int, n: int = 64) -> np.ndarray:
    return np.arange(n, dtype=np.float32) + i


def _same(got: np.ndarray | None, expected: np.ndarray) -> bool:
    """``np.array_equal``; ``None`` (no such shard) is never equal. O(n)."""
    return got is not None and np.array_equal(got, expected)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


# -- descriptors and memory maps (12.8) ----------------------------------------------------


def _alternate(folder: str, rounds: int) -> dict[str, Any]:  # runs in a capped child
    """Alternate put and get under RLIMIT_NOFILE=256; report growth of fds and maps."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    store = PackedStore(folder)
    store.put("warm", _value(-1))
    store.get("warm")
    fds, maps = _fds(), _maps()
    peak_fds = peak_maps = 0
    wrong = 0
    held = store.get_view("warm")  # a view the caller keeps: its mapping must stay valid
    for i in range(rounds):
        store.put(f"k{i}", _value(i))  # the data file grows: the next read remaps it
        got = store.get(f"k{i}")
        wrong += got is None or not np.array_equal(got, _value(i))
        if i % 100 == 0:
            peak_fds = max(peak_fds, _fds() - fds)
            peak_maps = max(peak_maps, _maps() - maps)
    held_ok = held is not None and np.array_equal(held, _value(-1))
    views = [store.get_view(f"k{i}") for i in range(0, rounds, rounds // 10)]
    views_ok = all(v is not None and np.array_equal(v, _value(i * (rounds // 10)))
                   for i, v in enumerate(views))
    del held, views
    after_release = _fds() - fds
    store.close()
    return {"peak_fds": peak_fds, "peak_maps": peak_maps, "wrong": wrong,
            "held_ok": held_ok, "views_ok": views_ok, "after_release": after_release}


def test_alternating_puts_and_gets_keep_descriptors_and_maps_bounded(tmp_path: Path) -> None:
    """Each read after a growth remaps the data file once; the superseded map is released
    with the last view over it (it used to leak one descriptor and one map per read, so
    under 256 descriptors the 250th acknowledged put read as missing)."""
    result = run_capped(_alternate, str(tmp_path / "tier"), 3000, timeout_s=120)
    assert result.ok, result.describe()
    report = result.value
    assert report["wrong"] == 0, report
    assert report["peak_fds"] <= 4, report
    assert report["peak_maps"] <= 16, report
    assert report["held_ok"] and report["views_ok"], report
    assert report["after_release"] <= 2, report


def test_a_view_outlives_remaps_and_its_map_goes_with_it(tmp_path: Path) -> None:
    """A view handed out before many remaps keeps its own mapping (right bytes); dropping
    it releases that mapping's descriptor."""
    with PackedStore(tmp_path / "tier") as store:
        store.put("first", _value(7, 4096))
        view = store.get_view("first")
        assert view is not None
        before = _fds()
        for i in range(40):
            store.put(f"k{i}", _value(i))
            assert _same(store.get_view(f"k{i}"), _value(i))
        assert _fds() - before <= 2  # the old map (and its fd) lives only through `view`
        assert np.array_equal(view, _value(7, 4096))
        assert store.get_view("first") is store.get_view("first")  # cached per mapping
        del view
        assert _fds() - before <= 1


# -- a damaged index (12.6) ----------------------------------------------------------------


def _base_store(folder: Path) -> dict[str, np.ndarray]:
    arrays = {f"blk.{i}.w": _value(i, 50 + i) for i in range(20)}
    with PackedStore(folder) as store:
        for key, array in arrays.items():
            store.put(key, array)
    return arrays  # closing the last connection checkpoints the WAL into index.sqlite


def _flip_trials(base: str, work: str, seed: int, trials: int) -> dict[str, Any]:
    """Open copies of ``base`` whose index has one seeded bit flipped (in a non-zero byte:
    zero bytes are mostly free space), list and read every key. Runs in a capped child;
    returns outcome counts and the messages of unexpected exceptions."""
    rng = random.Random(seed)
    arrays = {f"blk.{i}.w": _value(i, 50 + i) for i in range(20)}
    original = Path(base, INDEX_NAME).read_bytes()
    nonzero = [i for i, b in enumerate(original) if b]
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for trial in range(trials):
        folder = Path(work, f"t{trial}")
        shutil.copytree(base, folder)
        damaged = bytearray(original)
        offset = rng.choice(nonzero)
        damaged[offset] ^= 1 << rng.randrange(8)
        Path(folder, INDEX_NAME).write_bytes(damaged)
        try:
            store = PackedStore(folder)
            try:
                keys = list(store.keys())
                for key in keys:
                    try:
                        got = store.get(key)
                    except StoreError as exc:  # CorruptShardError, MediumDamagedError, ...
                        counts[f"get:{type(exc).__name__}"] += 1
                        continue
                    if got is None:
                        counts["get:miss"] += 1
                    elif key in arrays and np.array_equal(got, arrays[key]):
                        counts["get:right"] += 1
                    else:
                        counts["WRONG BYTES"] += 1
                        problems.append(f"trial {trial}: {key!r} read wrong bytes")
            finally:
                store.close()
            counts["opened"] += 1
        except MediumDamagedError as exc:
            counts["MediumDamagedError"] += 1
            if INDEX_NAME not in str(exc) and "index" not in str(exc):
                problems.append(f"trial {trial}: message names no index: {exc}")
        except StoreError as exc:
            counts[type(exc).__name__] += 1
        except Exception as exc:  # a bare exception is the bug under test
            counts[f"BARE {type(exc).__name__}"] += 1
            problems.append(f"trial {trial} (byte {offset}): {type(exc).__name__}: {exc}")
        shutil.rmtree(folder)
    return {"counts": dict(counts), "problems": problems}


def test_bit_flips_in_the_index_are_clear_errors_never_wrong_bytes(tmp_path: Path) -> None:
    """150 seeded one-bit flips of index.sqlite (it raised bare UnicodeDecodeError,
    TypeError and ValueError before): every outcome is a StoreError or a correct read."""
    base = tmp_path / "base"
    _base_store(base)
    (tmp_path / "work").mkdir()
    result = run_capped(_flip_trials, str(base), str(tmp_path / "work"), 1, 150,
                        limit_bytes=1 << 30, timeout_s=120)
    assert result.ok, result.describe()
    counts, problems = result.value["counts"], result.value["problems"]
    assert problems == [], (problems, counts)
    assert not any(k.startswith(("BARE", "WRONG")) for k in counts), counts
    assert counts.get("MediumDamagedError", 0) >= 20, counts  # the index's own damage
    assert counts.get("get:right", 0) > 0, counts


def _rewrite_row(folder: Path, sql: str, *args: Any) -> None:
    with sqlite3.connect(folder / INDEX_NAME) as con:
        con.execute(sql, args)
    con.close()


@pytest.mark.parametrize("sql, args, what", [
    ("UPDATE shards SET key = ? WHERE key = ?", ("blk.1.w", b"blk.1.w"), "type str"),
    ("UPDATE shards SET key = ? WHERE key = ?", (b"blk.\xff.w", b"blk.1.w"), "not UTF-8"),
    ("UPDATE shards SET offset = ? WHERE key = ?", ("12x", b"blk.1.w"), "offset '12x'"),
    ("UPDATE shards SET length = ? WHERE key = ?", (b"", b"blk.1.w"), "length b''"),
    ("UPDATE shards SET offset = ? WHERE key = ?", (-64, b"blk.1.w"), "offset -64"),
])
def test_an_impossible_row_makes_listing_raise_medium_damaged(
        tmp_path: Path, sql: str, args: tuple[Any, ...], what: str) -> None:
    folder = tmp_path / "tier"
    _base_store(folder)
    _rewrite_row(folder, sql, *args)
    with PackedStore(folder) as store:
        with pytest.raises(MediumDamagedError, match=INDEX_NAME) as info:
            list(store.keys())
        assert what in str(info.value)
        assert _same(store.get("blk.2.w"), _value(2, 52))  # other rows still read


def test_a_damaged_row_read_by_key_is_a_corrupt_entry(tmp_path: Path) -> None:
    folder = tmp_path / "tier"
    _base_store(folder)
    _rewrite_row(folder, "UPDATE shards SET offset = ? WHERE key = ?", b"\x00\x01", b"blk.3.w")
    with PackedStore(folder) as store:
        with pytest.raises(CorruptShardError, match=r"blk\.3\.w.*index row is damaged"):
            store.get("blk.3.w")
        assert store.delete("blk.3.w")  # the tier drops it like any corrupt entry
        assert store.get("blk.3.w") is None


@pytest.mark.parametrize("damage", ["generation-blob", "not-a-database", "no-generation"])
def test_a_damaged_index_is_medium_damaged_at_open(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "tier"
    _base_store(folder)
    if damage == "generation-blob":
        _rewrite_row(folder, "UPDATE meta SET value = ? WHERE name = 'generation'", b"\x02x")
    elif damage == "not-a-database":
        raw = bytearray((folder / INDEX_NAME).read_bytes())
        raw[:16] = b"garbage garbage!"
        (folder / INDEX_NAME).write_bytes(raw)
    else:  # shards in data.1.bin, but the generation row is lost: 0 is assumed
        with PackedStore(folder) as store:
            store.compact()
        _rewrite_row(folder, "DELETE FROM meta WHERE name = 'generation'")
    with pytest.raises(MediumDamagedError, match=INDEX_NAME):
        PackedStore(folder)


@pytest.mark.parametrize("damage", ["generation-blob", "not-a-database"])
def test_failed_opens_of_a_damaged_index_leak_nothing(tmp_path: Path, damage: str) -> None:
    """Tiers retry opens: each failed one closes its sqlite connection and epoch map."""
    folder = tmp_path / "tier"
    _base_store(folder)
    if damage == "generation-blob":
        _rewrite_row(folder, "UPDATE meta SET value = ? WHERE name = 'generation'", b"\x02x")
    else:
        raw = bytearray((folder / INDEX_NAME).read_bytes())
        raw[:16] = b"garbage garbage!"
        (folder / INDEX_NAME).write_bytes(raw)
    with pytest.raises(MediumDamagedError):
        PackedStore(folder, capacity_bytes=1 << 20)  # warm-up
    fds, maps = _fds(), _maps()
    for _ in range(20):
        with pytest.raises(MediumDamagedError):
            PackedStore(folder, capacity_bytes=1 << 20)  # the folder lock is released too
    assert _fds() - fds <= 1 and _maps() - maps <= 1


def test_compaction_drops_rows_past_the_end_of_the_data_file(tmp_path: Path) -> None:
    """Rows an OS crash left pointing at lost bytes no longer make every compaction fail."""
    folder = tmp_path / "tier"
    arrays = _base_store(folder)
    size = (folder / "data.0.bin").stat().st_size
    _rewrite_row(folder, "UPDATE shards SET offset = ? WHERE key = ?", size + 4096, b"blk.4.w")
    with PackedStore(folder) as store:
        store.compact()
        assert "blk.4.w" not in store
        for key, array in arrays.items():
            if key != "blk.4.w":
                assert _same(store.get(key), array)
        live, _file = store.disk_usage()
        assert live == sum(n for _k, _o, n in store.layout())


# -- the real error, not the cleanup's (12.15) ---------------------------------------------


def test_a_full_disk_is_reported_not_the_failed_rollback(small_fs: Path) -> None:
    """When the data bytes still fit but sqlite cannot grow its WAL, sqlite rolls the
    transaction back itself; the error used to be our ROLLBACK's 'no transaction is
    active' instead of the full disk."""
    messages: list[str] = []
    with PackedStore(small_fs / "tier") as store:
        for i in range(60):  # 32 KiB shards until the file system is full
            try:
                store.put(f"big{i}", _value(i, 8 * KiB))
            except StoreError:
                break
        for i in range(100):  # small shards: their bytes fit, the index's pages do not
            try:
                store.put(f"small{i}", _value(i, 4))
            except StoreError as exc:
                messages.append(str(exc))
        assert messages, "the file system never filled up"
        assert not any("rollback" in m for m in messages), messages[:3]
        assert all("full" in m or "No space" in m for m in messages), messages[:3]
        assert any("database or disk is full" in m for m in messages), messages[:3]


class _CommitFails:
    """A connection whose COMMIT fails, once :attr:`failing` is set, the way sqlite's does
    on a full disk: sqlite rolls the transaction back itself, then reports SQLITE_FULL."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.failing = False

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.failing:
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize("op", ["put", "delete", "compact"])
def test_every_write_reports_the_first_error(tmp_path: Path, op: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    connections: list[_CommitFails] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> Any:  # the index opens its connection here
        connections.append(_CommitFails(real_connect(*args, **kwargs)))
        return connections[-1]

    monkeypatch.setattr(sqlite3, "connect", connect)
    with PackedStore(tmp_path / "tier") as store:
        monkeypatch.undo()
        store.put("a", _value(1))
        (conn,) = connections
        conn.failing = True
        calls: dict[str, Callable[[], object]] = {
            "put": lambda: store.put("b", _value(2)), "delete": lambda: store.delete("a"),
            "compact": store.compact}
        with pytest.raises(StoreError, match="database or disk is full") as info:
            calls[op]()
        assert "rollback" not in str(info.value)
        conn.failing = False
        assert _same(store.get("a"), _value(1))  # nothing half-done
        assert store.get("b") is None


# -- closed under a reader (12.16) ---------------------------------------------------------


def test_reads_racing_close_raise_cache_closed_never_a_miss(tmp_path: Path) -> None:
    store = PackedStore(tmp_path / "tier")
    keys = [f"k{i}" for i in range(8)]
    for i, key in enumerate(keys):
        store.put(key, _value(i, 2048))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(5)

    def reader(n: int) -> None:
        start.wait()
        for round_ in range(5000):
            key = keys[(n + round_) % len(keys)]
            try:
                got = store.get_view(key) if round_ % 2 else store.get(key)
                outcome = "right" if got is not None and \
                    np.array_equal(got, _value(keys.index(key), 2048)) else "WRONG OR MISS"
            except CacheClosedError:
                outcome = "closed"
            except TierCacheError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with lock:
                outcomes[outcome] += 1
            if outcome == "closed":
                return

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    start.wait()
    store.close()
    for t in threads:
        t.join(30)
    assert set(outcomes) <= {"right", "closed"}, outcomes
    assert outcomes["closed"] == 4, outcomes  # every reader ran into the close
    for call in (lambda: store.get("k0"), lambda: store.info("k0"), store.keys,
                 lambda: store.put("x", _value(0))):
        with pytest.raises(CacheClosedError, match="closed"):
            call()


# -- faults injected into a zero-copy tier -------------------------------------------------


def test_faults_reach_the_views_of_a_wrapped_zero_copy_tier(tmp_path: Path) -> None:
    """FaultyStore keeps a zero-copy tier serving views (it used to hide get_view: every
    read raised NotImplementedError) and injects read faults into them."""
    arrays = {f"w{i}": _value(i, 16 * KiB) for i in range(3)}
    NpyDirOrigin.write(tmp_path / "origin", arrays)
    cfg = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "16KiB"},
        {"name": "ssd", "backend": "packed", "path": str(tmp_path / "ssd"),
         "capacity": "4MiB", "zero_copy": True}],
        "origin": {"kind": "npy", "path": str(tmp_path / "origin")}}
    with tiercache.open(cfg) as cache:
        tier = cache.tier("ssd")
        tier.store = wrapped = FaultyStore.wrap(tier.store)
        assert wrapped.zero_copy
        for key, array in arrays.items():
            cache.put(key, array, tier="ssd")
        view = cache.get("w0")
        assert np.array_equal(view, arrays["w0"]) and not view.flags.writeable  # a view
        fault = wrapped.fail(errno.EIO, ops={"get"}, keys={"w1"})
        assert np.array_equal(cache.get("w1"), arrays["w1"])  # served from the origin
        assert fault.fired >= 1 and wrapped.injected >= 1
        assert cache.stats()["tiers"]["ssd"]["degraded"]
        fault.clear()
        assert np.array_equal(cache.get("w2"), arrays["w2"])
