"""Books of the log every K events, and the last point `ledger verify` checked, kept beside it.

A cache the audit commands own, in its own SQLite file next to the log (`ledger.db` ->
`ledger.db.checkpoints`): the event store never sees it, so to the store a checkpoint is no
more than a file it does not know. Each checkpoint is a book in the positions.json format
(zlib-compressed), with the seq and hash it stands at and the latest occurred_at folded into it.
A checkpoint is used only when its seq and hash are the log's (see ledger.audit.vouched); one
that is missing or does not match is rebuilt by the next command that folds past its seq.

Everything here is best effort: a folder the auditor cannot write to, or a damaged file,
leaves the commands working from the log alone (they say so), never failing them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ledger.errors import SnapshotError
from ledger.values import from_micros, to_micros
from projections.book import Book
from projections.snapshot import decode_snapshot, encode_snapshot

EVERY = 100_000  # events between checkpoints: a replay folds at most this many past one
_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    seq             INTEGER PRIMARY KEY,
    hash            TEXT    NOT NULL,
    max_occurred_us INTEGER NOT NULL,
    book            BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS verified (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT    NOT NULL,
    at_us INTEGER NOT NULL
);
"""


class Mark(msgspec.Struct, frozen=True):
    """A point of the log: seq and the hash stored there."""

    seq: int
    hash: str


class Stored(msgspec.Struct, frozen=True):
    """A checkpoint's place (its book is read only when chosen)."""

    seq: int
    hash: str
    max_occurred_us: int


class Verified(msgspec.Struct, frozen=True):
    """The head `ledger verify` last found whole: every row up to seq checked."""

    seq: int
    hash: str
    at: datetime


def sidecar_path(db_path: Path) -> Path:
    """Where the checkpoints of the log at db_path are kept."""
    return db_path.with_name(db_path.name + ".checkpoints")


class Checkpoints:
    """The sidecar file; every method is blocking (call it from a worker thread)."""

    def __init__(self, path: Path | None, *, every: int = EVERY) -> None:
        self.path = path
        self.every = every
        self.problem = ""  # why the cache could not be used or written, for the header

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection | None]:
        if self.path is None or (not write and not self.path.exists()):
            yield None
            return
        try:
            uri = f"file:{self.path}" + ("" if write else "?mode=ro")
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
        except sqlite3.Error as exc:
            self.problem = f"cannot open {self.path}: {exc}"
            yield None
            return
        try:
            if write:
                conn.executescript(_SCHEMA)
            yield conn
        except sqlite3.Error as exc:
            self.problem = f"{self.path}: {exc}"
        finally:
            conn.close()

    def stored(self) -> list[Stored]:
        """Every checkpoint's place, latest first."""
        with self._connect(write=False) as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT seq, hash, max_occurred_us FROM checkpoints ORDER BY seq DESC"
            ).fetchall()
            return [Stored(int(s), str(h), int(m)) for s, h, m in rows]
        return []  # the file could not be read (problem says why)

    def load(self, seq: int) -> Book | None:
        """The checkpoint's book, or None when it is gone or does not decode."""
        with self._connect(write=False) as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT book FROM checkpoints WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return None
            try:
                return decode_snapshot(zlib.decompress(row[0]))
            except (zlib.error, SnapshotError) as exc:
                self.problem = f"checkpoint at seq {seq} is damaged ({exc}): not used"
                return None
        return None

    def save(self, book: Book, max_occurred_us: int) -> bool:
        """Keep the book as the checkpoint at its seq (replacing one there); False if not kept."""
        data = zlib.compress(encode_snapshot(book, datetime.now(UTC)), 1)
        with self._connect(write=True) as conn:
            if conn is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (seq, hash, max_occurred_us, book)"
                " VALUES (?, ?, ?, ?)",
                (book.last_seq, book.last_hash, max_occurred_us, data),
            )
            return True
        return False

    def verified(self) -> Verified | None:
        with self._connect(write=False) as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT seq, hash, at_us FROM verified").fetchone()
            if row is None:
                return None
            return Verified(int(row[0]), str(row[1]), from_micros(int(row[2])))
        return None

    def record_verified(self, mark: Mark, at: datetime) -> bool:
        with self._connect(write=True) as conn:
            if conn is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO verified (id, seq, hash, at_us) VALUES (1, ?, ?, ?)",
                (mark.seq, mark.hash, to_micros(at)),
            )
            return True
        return False

    def due(self, seq: int) -> bool:
        """Whether a checkpoint belongs at seq (every K-th seq)."""
        return seq > 0 and seq % self.every == 0
