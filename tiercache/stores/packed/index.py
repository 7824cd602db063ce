"""The packed store's index: ``index.sqlite``, key -> (offset, length) plus the generation.

Tables: ``shards (key BLOB, offset, length)`` and ``meta (name, value)`` holding
``format``, ``generation`` (of the current data file) and ``live_bytes``. sqlite runs
in WAL mode; every change is one ``BEGIN IMMEDIATE`` transaction (:func:`transaction`).

Damage: sqlite saying the file is not a database or malformed, a schema that is not
ours, a meta row that is not a count, a shard row holding what the store never
writes (a key that is not UTF-8 bytes, an offset or length that is not a
non-negative integer) raise :class:`~tiercache.errors.MediumDamagedError` naming
``index.sqlite`` and the row; a damaged row read by its key is that entry's
:class:`~tiercache.errors.CorruptShardError`.

Thread-safety: a :class:`PackedIndex` is one sqlite connection (opened with
``check_same_thread=False``); the store calls it under its own lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

from ... import codec
from ...errors import CorruptShardError, MediumDamagedError, StoreError

__all__ = ["FORMAT", "INDEX_NAME", "PackedIndex", "transaction"]

FORMAT = 1
INDEX_NAME = "index.sqlite"
#: sqlite primary result codes saying the index file itself is damaged (SQLITE_CORRUPT,
#: SQLITE_NOTADB)
_DAMAGED_CODES = frozenset({11, 26})
#: sqlite messages saying so (a damaged schema makes our fixed statements fail)
_DAMAGED_MESSAGES = ("malformed database schema", "database disk image is malformed",
                     "file is not a database", "no such table", "no such column")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    key BLOB PRIMARY KEY, offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('format', 1), ('generation', 0), ('live_bytes', 0);
"""


class PackedIndex:
    """The open ``index.sqlite`` of the packed store in ``folder``.

    Connecting creates the tables if missing and checks the format. Raises
    :class:`sqlite3.Error` (turn it into a store error with :meth:`error`) or
    :class:`~tiercache.errors.MediumDamagedError`; nothing stays open then.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / INDEX_NAME
        #: The connection (autocommit; transactions are explicit).
        self.conn = sqlite3.connect(str(self.file), timeout=60, isolation_level=None,
                                    check_same_thread=False)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            fmt = self.meta("format")
            if fmt != FORMAT:
                raise MediumDamagedError(
                    f"packed store {folder}: {INDEX_NAME} says format {fmt} (damaged, "
                    f"or written by another tiercache version); this tiercache reads "
                    f"format {FORMAT}: use a new folder, or `tiercache verify --repair` "
                    "empties this one")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    # -- errors ------------------------------------------------------------------------
    def damaged(self, what: str) -> MediumDamagedError:
        """The error for an index whose content cannot be what the store wrote."""
        return MediumDamagedError(f"packed store {self.folder}: {self.file} is damaged: "
                                  f"{what}; `tiercache verify --repair` empties the tier (it "
                                  "refills from below)")

    def error(self, exc: sqlite3.Error, what: str) -> StoreError:
        """:meth:`error_for` this index's folder."""
        return self.error_for(self.folder, exc, what)

    @staticmethod
    def error_for(folder: Path, exc: sqlite3.Error, what: str) -> StoreError:
        """``exc`` from the index in ``folder`` as a :class:`MediumDamagedError` when sqlite
        says the file is damaged (not a database, malformed image or schema), else a
        StoreError: ``what`` failed. O(1)."""
        code = getattr(exc, "sqlite_errorcode", None)
        if (isinstance(code, int) and code & 0xFF in _DAMAGED_CODES) \
                or str(exc).startswith(_DAMAGED_MESSAGES):
            return MediumDamagedError(f"{what}: {folder / INDEX_NAME} is damaged ({exc}); "
                                      "`tiercache verify --repair` empties the tier (it "
                                      "refills from below)")
        return StoreError(f"{what} ({exc})")

    # -- reads -------------------------------------------------------------------------
    def meta(self, name: str) -> int:
        """The integer meta value ``name`` (0 if missing); MediumDamagedError if the row
        holds anything but a non-negative integer. O(log n)."""
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return 0
        value = row[0]
        if type(value) is not int or value < 0:
            raise self.damaged(f"meta row {name!r} holds {_show(value)}, not a count")
        return value

    def has_rows(self) -> bool:
        """Whether any shard is indexed. O(1)."""
        return self.conn.execute("SELECT 1 FROM shards LIMIT 1").fetchone() is not None

    def has(self, kb: bytes) -> bool:
        """Whether key bytes ``kb`` have a row (damaged or not). O(log n)."""
        return self.conn.execute("SELECT 1 FROM shards WHERE key = ?",
                                 (kb,)).fetchone() is not None

    def lookup(self, kb: bytes, where: str) -> tuple[int, int, int] | None:
        """``(generation, offset, length)`` of key bytes ``kb`` in one consistent read, or
        ``None``; CorruptShardError (naming ``where``) for a damaged row. O(log n)."""
        row = self.conn.execute(
            "SELECT s.offset, s.length, m.value FROM shards AS s, meta AS m "
            "WHERE s.key = ? AND m.name = 'generation'", (kb,)).fetchone()
        if row is None:
            return None
        offset, length, generation = row
        if type(generation) is not int or generation < 0:
            raise self.damaged(f"meta row 'generation' holds {_show(generation)}")
        if not _plausible(offset, length):
            raise CorruptShardError(f"{where}: its index row is damaged (offset "
                                    f"{_show(offset)}, length {_show(length)})")
        return generation, offset, length

    def rows(self, what: str) -> list[tuple[bytes, int, int]]:
        """Every row ``(key bytes, offset, length)`` by offset, each checked to be what
        the store writes (MediumDamagedError otherwise; ``what`` failed for an sqlite
        error). O(shards)."""
        try:
            rows = self.conn.execute(
                "SELECT key, offset, length FROM shards ORDER BY offset").fetchall()
        except sqlite3.Error as exc:
            raise self.error(exc, what) from exc
        for kb, offset, length in rows:
            if not isinstance(kb, bytes):
                raise self.damaged(f"a shard row has a key of type {type(kb).__name__} "
                                   f"({_show(kb)}), not a BLOB")
            try:
                codec.key_from_bytes(kb)
            except UnicodeDecodeError as exc:
                raise self.damaged(f"the key {_show(kb)} of a shard row is not UTF-8 "
                                   f"({exc.reason} at byte {exc.start})") from None
            if not _plausible(offset, length):
                raise self.damaged(f"the row of key {_show(kb)} has offset {_show(offset)} "
                                   f"and length {_show(length)}")
        return cast("list[tuple[bytes, int, int]]", rows)

    # -- writes (each one transaction; raise sqlite3.Error) --------------------------------
    def record_put(self, kb: bytes, offset: int, length: int) -> None:
        """Point ``kb`` at ``(offset, length)`` and adjust the live bytes. O(log n)."""
        conn = self.conn
        with transaction(conn):
            old = conn.execute("SELECT length FROM shards WHERE key = ?", (kb,)).fetchone()
            old_length = old[0] if old is not None else 0
            if type(old_length) is not int:
                old_length = 0  # a damaged row: replaced now, its size unknown
            conn.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)", (kb, offset, length))
            conn.execute("UPDATE meta SET value = value + ? WHERE name = 'live_bytes'",
                         (length - old_length,))

    def record_delete(self, kb: bytes) -> bool:
        """Drop ``kb``'s row and its live bytes; return whether it had one. O(log n)."""
        conn = self.conn
        with transaction(conn):
            old = conn.execute("SELECT length FROM shards WHERE key = ?", (kb,)).fetchone()
            if old is not None:
                old_length = old[0] if type(old[0]) is int else 0
                conn.execute("DELETE FROM shards WHERE key = ?", (kb,))
                conn.execute("UPDATE meta SET value = value - ? WHERE name = 'live_bytes'",
                             (old_length,))
        return old is not None

    def record_compaction(self, generation: int, moved: Sequence[tuple[int, bytes]],
                          lost: Sequence[tuple[bytes]], live_bytes: int | None) -> None:
        """Switch to ``generation``: the ``(offset, key bytes)`` of ``moved``, the rows of
        ``lost`` dropped, the live bytes set when given. O(rows)."""
        conn = self.conn
        with transaction(conn):
            conn.executemany("UPDATE shards SET offset = ? WHERE key = ?", moved)
            conn.executemany("DELETE FROM shards WHERE key = ?", lost)
            conn.execute("UPDATE meta SET value = ? WHERE name = 'generation'", (generation,))
            if live_bytes is not None:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'live_bytes'",
                             (live_bytes,))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``. On an error, roll back unless sqlite already did
    (it does by itself after SQLITE_FULL or an I/O error) and re-raise the *original*
    error -- never the "cannot rollback - no transaction is active" of the cleanup."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _plausible(offset: object, length: object) -> bool:
    """Whether an index row's offset and length are what the store writes: integers,
    the offset non-negative, the length at least a header. O(1)."""
    return (type(offset) is int and type(length) is int and offset >= 0
            and length >= codec.HEADER_ALIGN_BYTES)


def _show(value: object) -> str:
    """A short repr of a value read from a damaged index, for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
