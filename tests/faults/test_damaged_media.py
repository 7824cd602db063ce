"""Damaged media: a truncated or bit-flipped lmdb ``data.mdb`` or diskcache ``cache.db``.

Every trial opens the damaged store, lists its keys and reads every key in a *child
process* under a memory cap (``memcap.run_capped``): a truncated lmdb file used to kill the
process with SIGBUS once mapped, which would take pytest down with it. What must hold:

- the child exits normally (no signal, no timeout) and raises nothing but tiercache's own
  errors, each naming the store's folder: :class:`MediumDamagedError` for the medium as a
  whole (truncated or garbled file, an undecodable key in the listing), ``CorruptShardError``
  for one shard, ``StoreError`` for an entry the medium cannot find;
- a read never returns bytes other than the ones put under that key.

Both stores *raise* :class:`MediumDamagedError` for an undecodable key rather than skipping
it: neither lmdb nor sqlite checksums its own pages, so the index around a flipped key
cannot be trusted either (the engine opens such a tier degraded; ``verify --repair``
empties it). Trials are deterministic: fixed offsets, every bit of chosen regions, and
seeded random bits.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memcap import run_capped

from tiercache.errors import MediumDamagedError, TierCacheError
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.lmdb_meta import check_data_file
from tiercache.stores.lmdb_store import LmdbStore

#: Small map: the child's address space is capped (the default map reserves 4 GiB).
MAP_BYTES = 64 << 20
PAGE = 4096


def shard_values() -> dict[str, np.ndarray]:
    """40 shards: inline-sized (< 2 KiB) and overflow/file-sized ones, plus odd keys."""
    rng = np.random.default_rng(3)
    out: dict[str, np.ndarray] = {}
    for i in range(40):
        n = int(rng.integers(1, 1800)) if i % 2 else int(rng.integers(3000, 40000))
        out[f"key-{i:03d}-\u00e9"] = rng.integers(0, 255, n, dtype=np.uint8)
    out[""] = np.arange(3, dtype=np.int32)  # lmdb files it under a digest
    out["x" * 600] = np.arange(100, dtype=np.int64)  # ditto (too long for an lmdb key)
    return out


def open_store(kind: str, path: Path) -> LmdbStore | DiskcacheStore:
    if kind == "lmdb":
        return LmdbStore(path, map_size_bytes=MAP_BYTES, sync=False)
    return DiskcacheStore(path)


def build(kind: str, path: Path) -> Path:
    """A store holding :func:`shard_values`, without stale pages; return its data file."""
    with open_store(kind, path) as store:
        for key, value in shard_values().items():
            store.put(key, value)
        if isinstance(store, LmdbStore):
            store.compact()  # no free pages left: every byte of the file is live
    return path / ("data.mdb" if kind == "lmdb" else "cache.db")


def probe(kind: str, path: Path) -> dict[str, Any]:
    """Open, list and read everything; return what happened (run in the child)."""
    put = shard_values()
    outcome: dict[str, Any] = {"error": None, "wrong": [], "read": 0, "refused": 0}
    try:
        with open_store(kind, path) as store:
            for key in list(store.keys()):
                try:
                    got = store.get(key)
                except TierCacheError as exc:
                    if str(path) not in str(exc):
                        outcome["wrong"].append(f"{key!r}: error without the folder: {exc}")
                    outcome["refused"] += 1
                    continue
                if got is None:
                    continue
                outcome["read"] += 1
                want = put.get(key)
                if want is None or got.dtype != want.dtype or not np.array_equal(got, want):
                    outcome["wrong"].append(f"{key!r}: bytes that were not put")
    except TierCacheError as exc:
        outcome["error"] = (type(exc).__name__, str(exc))
    return outcome


def run_trials(kind: str, original: Path, work: Path,
               trials: list[tuple[str, int]] | list[tuple[str, int, bytes]]
               ) -> list[dict[str, Any]]:
    """Copy ``original``, damage it (``("cut", size)``, ``("flip", bit)`` or ``("poke",
    offset, new bytes)``) and probe it,
    one trial after another inside ONE capped child (the child records each trial's
    start, so a signal names the trial). Returns the outcomes."""
    progress = work / "progress.txt"
    name = "data.mdb" if kind == "lmdb" else "cache.db"

    def all_trials() -> list[dict[str, Any]]:
        results = []
        for n, (how, where, *rest) in enumerate(trials):
            assert isinstance(how, str) and isinstance(where, int)
            folder = work / f"t{n}"
            shutil.copytree(original, folder)
            progress.write_text(f"{n} {how} {where}")
            target = folder / name
            if how == "cut":
                os.truncate(target, where)
            elif how == "poke":
                with open(target, "r+b") as f:
                    f.seek(where)
                    poke = rest[0]
                    assert isinstance(poke, bytes)
                    f.write(poke)
            else:
                with open(target, "r+b") as f:
                    f.seek(where // 8)
                    byte = f.read(1)[0]
                    f.seek(where // 8)
                    f.write(bytes([byte ^ (1 << (where % 8))]))
            result = probe(kind, folder)
            result["trial"] = (how, where)
            results.append(result)
            shutil.rmtree(folder)
        return results

    capped = run_capped(all_trials, limit_bytes=MAP_BYTES + (512 << 20), timeout_s=240)
    where = progress.read_text() if progress.exists() else "?"
    assert capped.ok, f"trial {where}: {capped.describe()}"
    return list(capped.value)


def check(results: list[dict[str, Any]], name: str) -> dict[str, int]:
    """Assert every trial ended well; return counts of how they ended."""
    counts: dict[str, int] = {}
    for r in results:
        assert not r["wrong"], (r["trial"], r["wrong"])
        if r["error"] is not None:
            kind, message = r["error"]
            assert kind in ("MediumDamagedError", "StoreError", "CorruptShardError"), r
            if kind == "MediumDamagedError":
                assert name in message, message  # names the file
        end = r["error"][0] if r["error"] else ("refused some" if r["refused"] else "clean")
        counts[end] = counts.get(end, 0) + 1
    reads = sum(r["read"] for r in results)
    print(f"{name}: {len(results)} trials, {counts}, {reads} reads right")
    return counts


# -- lmdb: truncation (SIGBUS once mapped) ------------------------------------------------------


def test_a_truncated_lmdb_file_is_medium_damage_not_sigbus(tmp_path: Path) -> None:
    data = build("lmdb", tmp_path / "orig")
    size = data.stat().st_size
    cuts = [1, 100, PAGE - 1, PAGE, PAGE + 152, 2 * PAGE, 2 * PAGE + 1, 3 * PAGE, size // 3,
            size // 2, size - 2 * PAGE, size - PAGE, size - 1]
    results = run_trials("lmdb", tmp_path / "orig", tmp_path / "work",
                         [("cut", c) for c in cuts])
    for r in results:
        assert r["error"] is not None and r["error"][0] == "MediumDamagedError", r
        assert "data.mdb" in r["error"][1], r
    truncated = [r for r in results if r["trial"][1] >= 2 * PAGE]
    assert all("truncated" in r["error"][1] for r in truncated), truncated


def test_check_data_file_reads_the_meta_pages(tmp_path: Path) -> None:
    data = build("lmdb", tmp_path / "s")
    size = data.stat().st_size
    assert check_data_file(data) == size
    assert check_data_file(tmp_path / "missing.mdb") == 0
    raw = bytearray(data.read_bytes())
    last_pg = max(struct.unpack_from("<Q", raw, meta + 136)[0] for meta in (0, PAGE))
    assert (last_pg + 1) * PAGE == size  # compacted: the file holds exactly the used pages
    bad = tmp_path / "bad.mdb"
    for offset, value, message in [(16, 0x12345678, "magic"), (40, 3000, "page size"),
                                   (PAGE + 128, size, "root page")]:
        damaged = bytearray(raw)
        struct.pack_into("<Q" if offset % 8 == 0 else "<I", damaged, offset, value)
        bad.write_bytes(bytes(damaged))
        with pytest.raises(MediumDamagedError, match=message) as info:
            check_data_file(bad)
        assert str(bad) in str(info.value)


def test_an_lmdb_file_truncated_under_an_open_store_fails_its_reopen(tmp_path: Path) -> None:
    data = build("lmdb", tmp_path / "s")

    def reopen_after_cut() -> str:
        store = LmdbStore(tmp_path / "s", map_size_bytes=MAP_BYTES)
        os.truncate(data, data.stat().st_size // 2)
        try:
            store.reopen()
        except MediumDamagedError as exc:
            return str(exc)
        finally:
            store.close()
        return "reopened"

    capped = run_capped(reopen_after_cut, limit_bytes=MAP_BYTES + (512 << 20), timeout_s=60)
    assert capped.ok, capped.describe()
    assert "truncated" in capped.value and "data.mdb" in capped.value


# -- bit flips ----------------------------------------------------------------------------------


def key_bits(data: Path, key: str, copies: int) -> list[int]:
    """Every bit of the first ``copies`` copies of ``key`` (its UTF-8 bytes) in the file:
    lmdb keeps a key in the ``hdr`` and the ``data`` tree, sqlite in its table and its
    index."""
    raw = data.read_bytes()
    starts = [m.start() for m in re.finditer(re.escape(key.encode()), raw)][:copies]
    assert len(starts) == copies, len(starts)
    return [8 * s + b for s in starts for b in range(8 * len(key.encode()))]


def random_bits(data: Path, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(8 * data.stat().st_size) for _ in range(count)]


@pytest.mark.parametrize("kind", ["lmdb", "diskcache"])
@pytest.mark.slow
def test_a_flipped_bit_in_a_stored_key_is_medium_damage_naming_the_file(tmp_path: Path,
                                                                        kind: str) -> None:
    data = build(kind, tmp_path / "orig")
    bits = key_bits(data, "key-001-\u00e9", 2 if kind == "lmdb" else 1)
    results = run_trials(kind, tmp_path / "orig", tmp_path / "work",
                         [("flip", b) for b in bits])
    counts = check(results, data.name)
    # a flip that leaves valid UTF-8 renames the key: its shard is then refused (key hash)
    assert counts.get("MediumDamagedError", 0) >= 10, counts  # undecodable keys
    damaged = [r for r in results if r["error"] and r["error"][0] == "MediumDamagedError"]
    assert any("not valid UTF-8" in r["error"][1] for r in damaged), damaged[:3]


@pytest.mark.parametrize("kind", ["lmdb", "diskcache"])
@pytest.mark.slow
def test_random_bit_flips_never_give_wrong_bytes_or_foreign_errors(tmp_path: Path,
                                                                   kind: str) -> None:
    data = build(kind, tmp_path / "orig")
    trials = 150 if kind == "lmdb" else 60  # sqlite opens are slower
    results = run_trials(kind, tmp_path / "orig", tmp_path / "work",
                         [("flip", b) for b in random_bits(data, trials, seed=11)])
    counts = check(results, data.name)
    assert counts.get("refused some", 0) > 0, counts  # the campaign did damage shards


def test_lmdb_meta_page_bit_flips_are_caught_before_mapping(tmp_path: Path) -> None:
    """Every bit of the page size, and of the low two and the top byte of the roots, last
    page and transaction id, in both meta pages: the fields lmdb trusts to map the file."""
    data = build("lmdb", tmp_path / "orig")
    fields = [40, 41, 42, 43]  # psize
    fields += [off + i for off in (80, 128, 136, 144) for i in (0, 1, 7)]  # roots, last, txn
    bits = [8 * (page + off) + b for page in (0, PAGE) for off in fields for b in range(8)]
    results = run_trials("lmdb", tmp_path / "orig", tmp_path / "work",
                         [("flip", b) for b in bits])
    counts = check(results, data.name)
    assert counts.get("MediumDamagedError", 0) > 100, counts


def leaf_nodes(data: Path) -> list[tuple[int, int, int, int]]:
    """``(node offset, flags, key length, value length)`` of every node on the file's leaf
    pages (the file is compacted: every page is live). lmdb 0.9, 64-bit little-endian:
    a 16-byte page header (``mp_flags`` at 10, ``mp_lower`` at 12), then 2-byte node
    offsets; a node is ``mn_lo, mn_hi, mn_flags, mn_ksize`` (u16 each), key, value."""
    raw = data.read_bytes()
    nodes = []
    for page in range(2, len(raw) // PAGE):
        base = page * PAGE
        pgno, flags, lower = struct.unpack_from("<QxxHH", raw, base)
        if pgno != page or flags != 0x02:  # P_LEAF
            continue
        for i in range((lower - 16) // 2):
            offset = base + struct.unpack_from("<H", raw, base + 16 + 2 * i)[0]
            lo, hi, node_flags, ksize = struct.unpack_from("<HHHH", raw, offset)
            nodes.append((offset, node_flags, ksize, lo | hi << 16))
    return nodes


def test_an_lmdb_node_pointing_past_the_file_is_a_corrupt_shard_not_sigbus(
        tmp_path: Path) -> None:
    """py-lmdb touches every page of a value before returning it: a node whose overflow page
    number (or inline length) points past the end of data.mdb used to fault with SIGBUS.
    The store reads the node's header first and refuses that entry."""
    data = build("lmdb", tmp_path / "orig")
    last_pg = data.stat().st_size // PAGE - 1
    nodes = leaf_nodes(data)
    overflow = [n for n in nodes if n[1] & 0x01][:6]  # F_BIGDATA: payloads > 2 KiB
    inline = [n for n in nodes if not n[1] and n[3] < 1000][:6]  # headers, small payloads
    assert len(overflow) == 6 and len(inline) == 6
    trials: list[tuple[str, int, bytes]] = []
    for offset, _flags, ksize, _size in overflow:  # the overflow run starts at the last page
        trials.append(("poke", offset + 8 + ksize, struct.pack("<Q", last_pg)))
    for offset, _flags, _ksize, _size in inline:  # mn_hi: 2 GiB more than the page holds
        trials.append(("poke", offset + 2, struct.pack("<H", 0x8000)))
    results = run_trials("lmdb", tmp_path / "orig", tmp_path / "work", trials)
    counts = check(results, data.name)
    refused = sum(r["refused"] for r in results)
    assert refused + counts.get("MediumDamagedError", 0) >= len(trials), (counts, results)


def test_verify_and_repair_of_a_cache_with_a_truncated_lmdb_tier_exit_cleanly(
        tmp_path: Path) -> None:
    """Issue 12.5 end to end: ``verify`` and ``verify --repair`` on a cache whose lmdb tier
    lost the tail of ``data.mdb``. What the engine does with the damaged tier (open it
    degraded, empty it on repair) is its business; here the process must survive and every
    error must be tiercache's own."""
    import tiercache

    folder = tmp_path / "ssd"
    cfg: dict[str, Any] = {"tiers": [
        {"name": "ram", "backend": "memory", "capacity": "64KiB"},
        {"name": "ssd", "backend": "lmdb", "path": str(folder), "capacity": "4MiB"}]}
    with tiercache.open(cfg) as cache:
        for i in range(40):
            cache.put(f"w{i}", np.full(8192, i, np.float32), tier="ssd")
    data = folder / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)

    def scrub() -> list[Any]:
        reports: list[Any] = []
        for repair in (False, True):
            try:
                with tiercache.open(cfg) as cache:
                    report = cache.verify(repair=repair)
                    reports.append(report["tiers"]["ssd"].get("degraded_reason"))
                    for i in range(40):  # misses or the exact bytes, never others
                        got = cache.get(f"w{i}", None)
                        assert got is None or float(got[0]) == i
            except TierCacheError as exc:
                reports.append(f"{type(exc).__name__}: {exc}")
        return reports

    # the 4 GiB map is address space only: the cap allows it, not more
    capped = run_capped(scrub, limit_bytes=(4 << 30) + (768 << 20), timeout_s=120)
    assert capped.signal is None and not capped.timed_out, capped.describe()
    assert capped.ok, capped.describe()
    assert any("data.mdb" in str(r) for r in capped.value), capped.value
    print(capped.value)


@pytest.mark.slow
def test_diskcache_schema_and_settings_bit_flips_are_medium_damage(tmp_path: Path) -> None:
    """The first three pages of cache.db: sqlite's header, the schema and diskcache's
    Settings table, which diskcache reads on every connection. Garbled rows there used to
    escape as a bare AttributeError or UnicodeDecodeError."""
    data = build("diskcache", tmp_path / "orig")
    rng = random.Random(2)
    bits = [rng.randrange(8 * 3 * PAGE) for _ in range(100)]
    results = run_trials("diskcache", tmp_path / "orig", tmp_path / "work",
                         [("flip", b) for b in bits])
    counts = check(results, data.name)
    assert counts.get("MediumDamagedError", 0) >= 5, counts
