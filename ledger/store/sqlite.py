"""The durable event store: one SQLite file in WAL mode, through aiosqlite."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal

import aiosqlite
import anyio

from ledger.clock import Clock, system_clock
from ledger.envelope import Fact, Recorded
from ledger.errors import StoreError, StoreUnavailable
from ledger.store.base import (
    ChainReport,
    ChainVerifier,
    EventStore,
    Head,
    RowTuple,
    StagedRow,
    StoreTransaction,
    facts_from_rows,
    record_from_row,
    records_from_rows,
)
from ledger.values import to_micros

# 'PLDG': marks the file as a position-ledger log so a foreign database is refused.
APPLICATION_ID = 0x504C4447
_COLUMNS = (
    "seq, stream, version, event_id, type, schema_version, occurred_us, recorded_us, body, hash"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    occurred_us    INTEGER NOT NULL,
    recorded_us    INTEGER NOT NULL,
    body           BLOB    NOT NULL,
    hash           TEXT    NOT NULL,
    UNIQUE (stream, version)
);
"""
_FACT_COLUMNS = "seq, occurred_us, schema_version, body"  # see FactRow
Synchronous = Literal["FULL", "NORMAL"]


def _staged(row: sqlite3.Row | tuple[object, ...]) -> StagedRow:
    return StagedRow(*row)


class _SQLiteTransaction(StoreTransaction):
    def __init__(
        self,
        conn: aiosqlite.Connection,
        head: Head,
        tail: list[Recorded],
        recorded_at: datetime,
    ) -> None:
        super().__init__(head, tail, recorded_at)
        self._conn = conn
        self._store_versions = head.stream_versions

    versions_complete = False

    async def load_versions(self, streams: Iterable[str]) -> None:
        known = self.head.stream_versions
        missing = [stream for stream in dict.fromkeys(streams) if stream not in known]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._conn.execute_fetchall(
                f"SELECT stream, MAX(version) FROM events WHERE stream IN ({marks})"
                " GROUP BY stream",
                chunk,
            )
            found = {str(stream): int(version) for stream, version in rows}
            # committed facts read under the write lock: valid for the store whatever this
            # transaction does, so they go into the store's own cache
            for stream in chunk:
                self._store_versions[stream] = found.get(stream, 0)

    async def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        found = {i: self._staged_ids[i] for i in event_ids if i in self._staged_ids}
        wanted = [i for i in dict.fromkeys(event_ids) if i not in found]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._conn.execute_fetchall(
                f"SELECT {_COLUMNS} FROM events WHERE event_id IN ({marks})", chunk
            )
            for row in rows:
                record = record_from_row(_staged(row))
                found[record.event_id] = record
        return found


class SQLiteEventStore(EventStore):
    """Hash-chained log in SQLite; `synchronous='FULL'` (default) survives power loss."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 10_000,
        read_only: bool = False,
        clock: Clock = system_clock,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._read_only = read_only
        self._clock = clock
        self._conn: aiosqlite.Connection | None = None
        # Reads go through their own connection so they never see a write transaction's
        # uncommitted rows (WAL lets readers and the writer work at once).
        self._reader: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        self._head = Head()

    async def open(self) -> None:
        """Connect, create the schema if new, load the head; raises StoreUnavailable."""
        if self._read_only and not self.path.exists():
            raise StoreUnavailable(f"no ledger database at {self.path}")
        try:
            if self._read_only:
                conn = await aiosqlite.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = await aiosqlite.connect(self.path, isolation_level=None)
            self._conn = conn
            await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await self._check_or_create()
            self._reader = await aiosqlite.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None
            )
            await self._reader.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if not self._read_only:  # stream versions are loaded as streams are written
                self._head = await self._last_row()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreUnavailable(f"cannot open ledger database {self.path}: {exc}") from exc
            raise

    async def _identity(self) -> tuple[int, int]:
        """(application_id, number of tables), read in one statement so one snapshot answers."""
        row = await (
            await self._connection().execute(
                "SELECT (SELECT application_id FROM pragma_application_id()),"
                " (SELECT count(*) FROM sqlite_master"
                "  WHERE type = 'table' AND name NOT LIKE 'sqlite_%')"
            )
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def _refuse_foreign(self, app_id: int, tables: int) -> None:
        if app_id != APPLICATION_ID and (tables or app_id != 0):
            raise StoreUnavailable(f"{self.path} is not a position-ledger database")

    async def _check_or_create(self) -> None:
        conn = self._connection()
        app_id, tables = await self._identity()
        self._refuse_foreign(app_id, tables)
        if self._read_only:
            if app_id != APPLICATION_ID:
                raise StoreUnavailable(f"{self.path} is empty, not a position-ledger database")
            return
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        if app_id == APPLICATION_ID:
            return
        # A new file: create it under the write lock, asking again there, since another
        # process may be creating the same file right now.
        await conn.execute("BEGIN IMMEDIATE")
        try:
            app_id, tables = await self._identity()
            self._refuse_foreign(app_id, tables)
            if app_id != APPLICATION_ID:
                await conn.execute(_SCHEMA)
                await conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            await conn.execute("COMMIT")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.execute("ROLLBACK")
            raise

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreUnavailable("the store is not open")
        return self._conn

    def _reading(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    async def close(self) -> None:
        for name in ("_reader", "_conn"):
            conn = getattr(self, name)
            if conn is not None:
                setattr(self, name, None)
                await conn.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[StoreTransaction]:
        if self._read_only:
            raise StoreUnavailable(f"{self.path} is open read-only")
        conn = self._connection()
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"cannot lock {self.path} for writing: {exc}") from exc
            try:
                tail_rows = await conn.execute_fetchall(
                    f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq",
                    (self._head.seq,),
                )
                tail = [record_from_row(_staged(row)) for row in tail_rows]
                for record in tail:
                    self._head.seq = record.seq
                    self._head.hash = record.hash
                    self._head.stream_versions[record.stream] = record.version
                tx = _SQLiteTransaction(conn, self._head, tail, self._clock())
                yield tx
                if tx.rows:
                    await conn.executemany(
                        f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        list(_as_tuples(tx.rows)),
                    )
                await conn.execute("COMMIT")
                tx.head.publish(self._head)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"append to {self.path} failed: {exc}") from exc
                raise

    async def iterate(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Recorded]]:
        async for rows in self._pages(
            after_seq=after_seq, to_seq=to_seq, until=until, stream=stream, page_size=page_size
        ):
            yield records_from_rows(rows)

    async def iterate_facts(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Fact]]:
        # four columns of ten: the rest (hash, ids, stream, version) would cost a Python
        # object per cell, more than half of a full-row scan, and a fold reads none of them
        async for rows in self._pages(
            after_seq=after_seq,
            to_seq=to_seq,
            until=until,
            stream=None,
            page_size=page_size,
            columns=_FACT_COLUMNS,
        ):
            yield facts_from_rows(rows)  # type: ignore[arg-type]

    async def iterate_rows(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[StagedRow]]:
        """Raw stored rows in seq order, a page per database call."""
        async for rows in self._pages(
            after_seq=after_seq, to_seq=to_seq, until=until, stream=stream, page_size=page_size
        ):
            yield [StagedRow(*row) for row in rows]

    async def _pages(
        self,
        *,
        after_seq: int,
        to_seq: int | None,
        until: datetime | None,
        stream: str | None,
        page_size: int,
        columns: str = _COLUMNS,
    ) -> AsyncIterator[list[RowTuple]]:
        conn = self._reading()
        where = ["seq > ?"]
        extra: list[object] = []
        if to_seq is not None:
            where.append("seq <= ?")
            extra.append(to_seq)
        if until is not None:
            where.append("occurred_us <= ?")
            extra.append(to_micros(until))
        if stream is not None:
            where.append("stream = ?")
            extra.append(stream)
        sql = f"SELECT {columns} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"

        def fetch(after: int) -> asyncio.Future[Iterable[sqlite3.Row]]:
            return asyncio.ensure_future(conn.execute_fetchall(sql, (after, *extra, page_size)))

        # One page read ahead: the database thread reads the next page while the caller
        # decodes and folds this one (aiosqlite is asyncio's, so an asyncio task is fine).
        ahead: asyncio.Future[Iterable[sqlite3.Row]] | None = fetch(after_seq)
        try:
            while ahead is not None:
                try:
                    rows = await ahead
                except sqlite3.DatabaseError as exc:
                    raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
                ahead = None
                page: list[RowTuple] = list(rows)  # type: ignore[arg-type]
                if not page:
                    return
                if len(page) == page_size:
                    ahead = fetch(page[-1][0])
                yield page
        finally:
            if ahead is not None:  # the caller stopped early: drop the page read ahead
                ahead.cancel()
                if ahead.done() and not ahead.cancelled():
                    ahead.exception()  # retrieved, so asyncio does not log it

    async def _last_row(self) -> Head:
        row = await (
            await self._reading().execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        ).fetchone()
        return Head() if row is None else Head(int(row[0]), str(row[1]))

    async def head(self) -> Head:
        conn = self._reading()
        try:
            last = await (
                await conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
            ).fetchone()
            versions = await conn.execute_fetchall(
                "SELECT stream, MAX(version) FROM events GROUP BY stream"
            )
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
        if last is None:
            return Head()
        return Head(int(last[0]), str(last[1]), {str(s): int(v) for s, v in versions})

    async def hash_at(self, seq: int) -> str | None:
        row = await (
            await self._reading().execute("SELECT hash FROM events WHERE seq = ?", (seq,))
        ).fetchone()
        return None if row is None else str(row[0])

    async def verify_chain(self) -> ChainReport:
        verifier = ChainVerifier()
        async for rows in self.iterate_rows():
            for row in rows:
                verifier.feed(row)
        return verifier.report()

    async def backup_to(self, target: Path) -> None:
        """A consistent copy of the whole database through SQLite's backup API."""
        source = str(self.path)

        def copy() -> None:
            src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()

        await anyio.to_thread.run_sync(copy)


def _as_tuples(rows: Iterable[StagedRow]) -> Iterable[tuple[object, ...]]:
    for row in rows:
        yield (
            row.seq,
            row.stream,
            row.version,
            row.event_id,
            row.type,
            row.schema_version,
            row.occurred_us,
            row.recorded_us,
            row.body,
            row.hash,
        )
