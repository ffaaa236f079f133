"""The event store on PostgreSQL, through psycopg 3: one log shared by a fleet of bots.

Why psycopg 3 and not asyncpg: a group's write transaction is a synchronous unit of work (lock,
tail, decide, insert, commit) run on the store's own thread, and psycopg's sync connection with
pipeline mode sends each half of it in one round trip (BEGIN + LOCK + tail read, then INSERT +
NOTIFY + COMMIT) without an event loop in between. It goes through libpq, so passwords come
from PGPASSWORD, PGPASSFILE / ~/.pgpass or pg_service.conf exactly as for psql, and never
need to be in the URL. Its async connection is used only where waiting matters: LISTEN.

Order: seq is gapless and in commit order because every writer of a ledger takes
`LOCK TABLE ... IN EXCLUSIVE MODE` before reading the tail. A table lock (rather than a
transaction-scoped advisory lock) is named by the table itself, so two ledgers in two schemas
never serialise against each other and no key has to be agreed on; it also conflicts with the
ROW EXCLUSIVE lock any INSERT takes, so even a writer that skipped the protocol cannot slip a
row in out of order. Plain SELECTs (ACCESS SHARE) are not blocked: readers and replicas go on.
The hash chain needs the previous row's hash inside the transaction anyway, so appends to one
ledger are serial by nature; group commit keeps the throughput.

Followers are woken by NOTIFY (sent inside the transaction, delivered at COMMIT) and poll as
a backstop. Everything lives in the connection's current schema (set it with
`?options=-csearch_path%3Dname` in the URL to keep several ledgers in one database).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import sql

from ledger.clock import Clock, system_clock
from ledger.codec import FactRow
from ledger.envelope import Recorded
from ledger.errors import StoreError, StoreUnavailable
from ledger.store.base import (
    ChainReport,
    ChainVerifier,
    DuplicateEventId,
    EventStore,
    Head,
    InsertTuple,
    RowTuple,
    StagedRow,
    StoreTransaction,
    Waiter,
    read_filter,
    record_from_row,
    records_from_rows,
)

TABLE = "position_ledger_events"
_COLUMNS = (
    "seq, stream, version, event_id, type, schema_version, occurred_us, recorded_us, body, hash"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq            BIGINT  PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    occurred_us    BIGINT  NOT NULL,
    recorded_us    BIGINT  NOT NULL,
    body           BYTEA   NOT NULL,
    hash           TEXT    NOT NULL,
    UNIQUE (stream, version)
)
"""
# Creating the table from several processes at once races in the catalog; this key makes the
# first creator the only one ("PLDG").
_CREATE_LOCK_KEY = 0x504C4447
_INSERT = f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"

T = TypeVar("T")


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^/@:?#]*):(?P<secret>[^@/?#]*)@")
_PASSWORD_PARAM = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&#]*)", re.IGNORECASE)


def scrub(url: str) -> str:
    """The URL with any password replaced by ***: the only form that may reach a message."""
    url = _PASSWORD_IN_URL.sub(r"\g<head>:***@", url)
    return _PASSWORD_PARAM.sub(r"\g<head>***", url)


def _secrets(url: str) -> list[str]:
    found = [m.group("secret") for m in _PASSWORD_IN_URL.finditer(url)]
    found += [m.group("secret") for m in _PASSWORD_PARAM.finditer(url)]
    return [s for s in found if s]


def _channel(schema: str) -> str:
    # one channel per ledger (schema); identifiers are at most 63 bytes
    return f"position_ledger_{schema}"[:63]


_FACT_COLUMNS = "seq, occurred_us, schema_version, body"  # see FactRow


def _fact_row(row: tuple[Any, ...]) -> FactRow:
    seq, occurred, schema, body = row
    return (seq, occurred, schema, bytes(body))


def _row_tuple(row: tuple[Any, ...]) -> RowTuple:
    seq, stream, version, event_id, type_, schema, occurred, recorded, body, digest = row
    return (seq, stream, version, event_id, type_, schema, occurred, recorded, bytes(body), digest)


class _PostgresTransaction(StoreTransaction):
    versions_complete = False

    def __init__(
        self, store: PostgresEventStore, head: Head, tail: list[Recorded], recorded_at: datetime
    ) -> None:
        super().__init__(head, tail, recorded_at)
        self._store = store
        self._store_versions = head.stream_versions

    def load_versions(self, streams: Iterable[str]) -> None:
        head = self.head
        missing = [stream for stream in dict.fromkeys(streams) if not head.known(stream)]
        if missing:
            found = self._store._versions_sync(missing)
            # committed facts read under the table lock: valid for the store whatever this
            # transaction does, so they go into the store's own cache
            for stream in missing:
                self._store_versions[stream] = found.get(stream, 0)

    def committed_after(self, seq: int) -> list[Recorded]:
        return records_from_rows(self._store._after_sync(seq))

    def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        found = {i: self._staged_ids[i] for i in event_ids if i in self._staged_ids}
        wanted = [i for i in dict.fromkeys(event_ids) if i not in found]
        if wanted:
            rows = self._store._by_event_ids_sync(wanted)
            for row in rows:
                record = record_from_row(StagedRow(*row))
                found[record.event_id] = record
        return found


class PostgresEventStore(EventStore):
    """Hash-chained log in one PostgreSQL table, serialised per ledger by a table lock."""

    # a transaction is network round trips and may wait for the table lock: an asyncio
    # caller hands its group to the writer thread (a plain thread still runs its own)
    inline_async_writes = False

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        lock_timeout_ms: int = 10_000,
        clock: Clock = system_clock,
    ) -> None:
        super().__init__()
        self.url = url
        self._location = scrub(url)
        self._secrets = _secrets(url)
        self._read_only = read_only
        self._lock_timeout_ms = lock_timeout_ms
        self._clock = clock
        # the writer's connection lives on the store's writer thread (see run_transaction)
        self._writer_conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._reader: psycopg.Connection[tuple[Any, ...]] | None = None
        self._head = Head()
        self._schema = "public"

    @property
    def location(self) -> str:
        return self._location

    # -- connections ----------------------------------------------------------------------

    def _say(self, what: str, exc: BaseException) -> str:
        """A message about exc with no password in it, whatever the driver put there."""
        text = f"{what} {self.location}: {exc}".strip()
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(self.url, autocommit=autocommit, connect_timeout=10)
        if self._read_only:  # a SET, not `options`: the URL's own options must stay in force
            conn.execute("SET default_transaction_read_only = on")
        return conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(self._say("lost the connection to", exc)) from None
        except psycopg.Error as exc:
            raise StoreError(self._say("database error on", exc)) from None

    async def open(self) -> None:
        """Connect, create the table if new, load the head; raises StoreUnavailable."""
        try:
            await anyio.to_thread.run_sync(self._open_reader)
            # read-only too: an append then fails on the writer thread, saying why
            writer = self._start_writer(f"ledger-writer:{self._schema}")
            if not self._read_only:
                await writer.call(self._open_writer)
        except psycopg.Error as exc:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise StoreUnavailable(self._say("cannot open ledger", exc)) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    def _open_reader(self) -> None:
        self._reader = self._connect(autocommit=True)
        row = self._reader.execute(
            "SELECT current_schema(), to_regclass(%s) IS NOT NULL", (TABLE,)
        ).fetchone()
        if row is None or row[0] is None:
            raise StoreUnavailable(f"{self.location}: no schema to keep the ledger in")
        self._schema, exists = str(row[0]), bool(row[1])
        if self._read_only and not exists:
            raise StoreUnavailable(f"no ledger at {self.location}")

    def _connect_writer(self) -> psycopg.Connection[tuple[Any, ...]]:
        # autocommit: the write transaction sends its own BEGIN and COMMIT inside its two
        # pipelines; psycopg's implicit BEGIN and its commit() would each add a Sync, and so a
        # round trip (four in all; tests/test_postgres_round_trips.py counts them)
        conn = self._connect(autocommit=True)
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {int(self._lock_timeout_ms)}")
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
                if not (exists and exists[0]):
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK_KEY,))
                    conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_writer(self) -> None:
        conn = self._writer_conn = self._connect_writer()
        last = conn.execute(f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
        # stream versions are loaded as streams are written
        self._head = Head() if last is None else Head(int(last[0]), str(last[1]))

    async def close(self) -> None:
        """Finish queued writes, then close both connections. Idempotent."""
        writer = self._writer
        if writer is not None:

            def finish() -> None:
                # holding the role: after a caller's inline transaction and the appends
                # queued behind it, with the connection it may have reopened
                self._finish_appends()
                conn, self._writer_conn = self._writer_conn, None
                if conn is not None:
                    conn.close()

            with contextlib.suppress(StoreUnavailable):
                await writer.call(finish)  # after every pending write
            self._stop_writer()
        reader, self._reader = self._reader, None
        if reader is not None:
            await anyio.to_thread.run_sync(reader.close)

    def _writing(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._writer_conn is None:
            if self._read_only:
                raise StoreUnavailable(f"{self.location} is open read-only")
            raise StoreUnavailable("the store is not open")
        return self._writer_conn

    def _reading(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    # -- the write transaction, as synchronous steps on the writer connection -------------

    def _begin_sync(self, after_seq: int) -> list[RowTuple]:
        """BEGIN, take the ledger's lock, read what others appended: one round trip."""
        conn = self._writing()
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute(f"SET LOCAL lock_timeout = {int(self._lock_timeout_ms)}")
            conn.execute(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
            cursor = conn.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE seq > %s ORDER BY seq", (after_seq,)
            )
        return [_row_tuple(row) for row in cursor.fetchall()]

    def _versions_sync(self, streams: list[str]) -> dict[str, int]:
        rows = (
            self._writing()
            .execute(
                f"SELECT stream, MAX(version) FROM {TABLE} WHERE stream = ANY(%s) GROUP BY stream",
                (streams,),
            )
            .fetchall()
        )
        return {str(stream): int(version) for stream, version in rows}

    def _by_event_ids_sync(self, event_ids: list[str]) -> list[RowTuple]:
        rows = (
            self._writing()
            .execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE event_id = ANY(%s)", (event_ids,))
            .fetchall()
        )
        return [_row_tuple(row) for row in rows]

    def _commit_sync(self, rows: list[InsertTuple]) -> None:
        """INSERT the rows, NOTIFY followers, COMMIT: one round trip."""
        conn = self._writing()
        with conn.pipeline():
            if rows:
                with conn.cursor() as cursor:
                    cursor.executemany(_INSERT, rows)
                conn.execute("SELECT pg_notify(%s, %s)", (_channel(self._schema), str(rows[-1][0])))
            conn.execute("COMMIT")

    def _rollback_sync(self) -> None:
        conn = self._writer_conn
        if conn is not None and not conn.closed:
            conn.rollback()

    def _after_sync(self, seq: int) -> list[RowTuple]:
        rows = (
            self._writing()
            .execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE seq > %s ORDER BY seq", (seq,))
            .fetchall()
        )
        return [_row_tuple(row) for row in rows]

    def run_transaction(self, unit: Callable[[StoreTransaction], T]) -> T:
        """The whole transaction on the writer thread: two round trips around `unit`."""
        if self._read_only:
            raise StoreUnavailable(f"{self.location} is open read-only")
        self.check_writer_thread()
        conn = self._writing()
        if conn.broken or conn.closed:  # the server went away once: a fresh connection
            try:
                conn = self._writer_conn = self._connect_writer()
            except psycopg.Error as exc:
                raise StoreUnavailable(self._say("cannot reconnect to", exc)) from None
        try:
            tail = records_from_rows(self._begin_sync(self._head.seq))
            head = self._head
            for record in tail:  # committed by others: seen, whatever happens next
                # the seq last: an interrupt between two of these leaves the head behind
                # (the tail read again from it), never its seq ahead of its hash
                head.stream_versions[record.stream] = record.version
                head.hash = record.hash
                head.seq = record.seq
            tx = _PostgresTransaction(self, head, tail, self._clock())
            result = unit(tx)
            self._commit_sync(tx.rows)
        except BaseException as exc:
            with contextlib.suppress(psycopg.Error):  # a broken connection rolled back already
                self._rollback_sync()
            if isinstance(exc, psycopg.errors.UniqueViolation) and "event_id" in str(
                exc.diag.constraint_name or ""
            ):  # a stored id staged without asking: the caller stages again, asking
                raise DuplicateEventId(self._say("an event_id is stored already in", exc)) from None
            if isinstance(exc, psycopg.OperationalError):
                why = self._say("append failed, nothing of it was stored; lost", exc)
                raise StoreUnavailable(why) from None
            if isinstance(exc, psycopg.Error):
                why = self._say("append failed, nothing of it was stored, on", exc)
                raise StoreError(why) from None
            raise
        tx.head.publish(head)
        return result

    # -- reads ------------------------------------------------------------------------------

    async def iterate(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Recorded]]:
        async for rows in self._pages(after_seq, to_seq, until, stream, page_size):
            yield records_from_rows(rows)

    def _fact_row_pages(
        self,
        *,
        after_seq: int,
        to_seq: int | None,
        until: datetime | None,
        page_size: int,
    ) -> AsyncIterator[Sequence[FactRow]]:
        return self._pages(  # type: ignore[return-value]
            after_seq, to_seq, until, None, page_size, columns=_FACT_COLUMNS, convert=_fact_row
        )

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
        async for rows in self._pages(after_seq, to_seq, until, stream, page_size):
            yield [StagedRow(*row) for row in rows]

    async def _pages(
        self,
        after_seq: int,
        to_seq: int | None,
        until: datetime | None,
        stream: str | None,
        page_size: int,
        *,
        columns: str = _COLUMNS,
        convert: Callable[[tuple[Any, ...]], Any] | None = None,
    ) -> AsyncIterator[list[RowTuple]]:
        where, extra = read_filter("%s", to_seq=to_seq, until=until, stream=stream)
        query = f"SELECT {columns} FROM {TABLE} WHERE {where} ORDER BY seq LIMIT %s"
        conn = self._reading()

        def page(cursor: int) -> list[RowTuple]:
            rows = conn.execute(query, (cursor, *extra, page_size)).fetchall()
            return [(convert or _row_tuple)(row) for row in rows]

        cursor = after_seq
        while True:
            rows = await self._run(page, cursor)
            if not rows:
                return
            yield rows
            if len(rows) < page_size:
                return
            cursor = rows[-1][0]

    async def head(self) -> Head:
        conn = self._reading()
        if self._read_only:
            # as the SQLite audit view: seq and hash alone (the versions only a writer needs
            # cost a scan of every stream)
            return await self._run(self._last_sync)

        def read() -> Head:
            # one statement, so one snapshot answers both
            row = conn.execute(
                f"SELECT (SELECT seq FROM {TABLE} ORDER BY seq DESC LIMIT 1),"
                f" (SELECT hash FROM {TABLE} ORDER BY seq DESC LIMIT 1),"
                f" (SELECT coalesce(json_object_agg(stream, v), '{{}}')"
                f"  FROM (SELECT stream, MAX(version) AS v FROM {TABLE} GROUP BY stream) s)"
            ).fetchone()
            if row is None or row[0] is None:
                return Head()
            return Head(int(row[0]), str(row[1]), {str(k): int(v) for k, v in row[2].items()})

        return await self._run(read)

    def _last_sync(self) -> Head:
        row = (
            self._reading()
            .execute(f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1")
            .fetchone()
        )
        return Head() if row is None else Head(int(row[0]), str(row[1]))

    async def hash_at(self, seq: int) -> str | None:
        conn = self._reading()

        def read() -> str | None:
            row = conn.execute(f"SELECT hash FROM {TABLE} WHERE seq = %s", (seq,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(read)

    async def verify_chain(self) -> ChainReport:
        verifier = ChainVerifier()
        async for rows in self.iterate_rows():
            for row in rows:
                verifier.feed(row)
        return verifier.report()

    # -- following --------------------------------------------------------------------------

    def follow(self) -> AbstractAsyncContextManager[Waiter]:
        return _listening(self)


class _Listener(Waiter):
    def __init__(self, conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        self._conn = conn

    async def wait(self, timeout: float) -> None:
        try:
            async for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error:
            await anyio.sleep(timeout)  # the listener died: polling goes on


@asynccontextmanager
async def _listening(store: PostgresEventStore) -> AsyncIterator[Waiter]:
    """A connection LISTENing on the ledger's channel; a wait ends at a commit or a timeout."""
    try:
        conn = await psycopg.AsyncConnection.connect(store.url, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(store._say("cannot listen on", exc)) from None
    try:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_channel(store._schema))))
        yield _Listener(conn)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()
