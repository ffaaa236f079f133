"""The event store contract, written once and run on every backend (memory, SQLite, PostgreSQL).

Backend-specific checks (durability pragmas, reopening, foreign files, read-only, group commit
sharing real transactions) follow the shared suite.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import anyio
import msgspec
import psycopg
import pytest

from ledger.codec import FoldPage, encode_event
from ledger.envelope import GENESIS_HASH, NewEvent, Recorded
from ledger.errors import IntegrityError, StoreError, StoreUnavailable, VersionConflict
from ledger.events import AnyEvent, BalanceObserved, PositionMarked, PositionOpened, stream_of
from ledger.store.base import STAGE_MANY_FROM, EventStore, StagedRow, StoreTransaction
from ledger.store.memory import MemoryEventStore
from ledger.store.postgres import TABLE, PostgresEventStore
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side, to_micros
from projections.book import Book, fold_records
from projections.snapshot import encode_snapshot
from tests.strategies import T0

T = TypeVar("T")

pytestmark = pytest.mark.anyio

RECORDED_AT = T0 + timedelta(days=1)


def fixed_clock() -> datetime:
    return RECORDED_AT


def opened(position_id: str, qty: str = "1") -> PositionOpened:
    return PositionOpened(
        position_id=position_id,
        symbol="SOL/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(qty),
        entry_price=Decimal("100.5"),
        leverage=5,
    )


def marked(position_id: str, price: int) -> PositionMarked:
    return PositionMarked(position_id=position_id, mark_price=Decimal(price))


def new(event: AnyEvent, event_id: str, second: int = 0) -> NewEvent:
    return NewEvent(
        stream=stream_of(event),
        event=event,
        event_id=event_id,
        occurred_at=T0 + timedelta(seconds=second),
    )


def sample_batch(count: int) -> list[NewEvent]:
    """count events over two position streams and the account stream, one second apart."""
    events: list[NewEvent] = []
    for i in range(count):
        event: AnyEvent
        if i % 5 == 4:
            event = BalanceObserved(total=Decimal(1000 + i), available=Decimal(900))
        elif i < 2:
            event = opened(f"p{i}")
        else:
            event = marked(f"p{i % 2}", 100 + i)
        events.append(new(event, f"e{i}", second=i))
    return events


# -- backends and how to tamper with them ----------------------------------------------


class Backend(abc.ABC):
    name: str
    store: EventStore

    @abc.abstractmethod
    async def replace_body(self, seq: int, body: bytes) -> None: ...

    @abc.abstractmethod
    async def delete(self, seq: int) -> None: ...

    @abc.abstractmethod
    async def insert_at(self, seq: int, row: StagedRow) -> None:
        """Insert row at seq, moving that row and every later one up by one."""

    @abc.abstractmethod
    async def swap(self, a: int, b: int) -> None:
        """Exchange the contents of two rows, each keeping its position in the log."""


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        self.memory = MemoryEventStore(clock=fixed_clock)
        self.store = self.memory

    async def replace_body(self, seq: int, body: bytes) -> None:
        rows = self.memory._rows
        rows[seq - 1] = msgspec.structs.replace(rows[seq - 1], body=body)

    async def delete(self, seq: int) -> None:
        del self.memory._rows[seq - 1]

    async def insert_at(self, seq: int, row: StagedRow) -> None:
        rows = self.memory._rows
        moved = [msgspec.structs.replace(r, seq=r.seq + 1) for r in rows[seq - 1 :]]
        rows[seq - 1 :] = [row, *moved]

    async def swap(self, a: int, b: int) -> None:
        rows = self.memory._rows
        rows[a - 1], rows[b - 1] = (
            msgspec.structs.replace(rows[b - 1], seq=a),
            msgspec.structs.replace(rows[a - 1], seq=b),
        )


class SQLiteBackend(Backend):
    """Tampering goes through the stdlib sqlite3 module, straight into the file."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = SQLiteEventStore(path, clock=fixed_clock)

    def _edit(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _row(self, seq: int) -> tuple[object, ...]:
        conn = sqlite3.connect(self.path)
        try:
            row: tuple[object, ...] = conn.execute(
                "SELECT stream, version, event_id, type, schema_version, occurred_us,"
                " recorded_us, body, hash FROM events WHERE seq = ?",
                (seq,),
            ).fetchone()
            return row
        finally:
            conn.close()

    async def replace_body(self, seq: int, body: bytes) -> None:
        self._edit(("UPDATE events SET body = ? WHERE seq = ?", (body, seq)))

    async def delete(self, seq: int) -> None:
        self._edit(("DELETE FROM events WHERE seq = ?", (seq,)))

    async def insert_at(self, seq: int, row: StagedRow) -> None:
        self._edit(
            ("UPDATE events SET seq = -seq WHERE seq >= ?", (seq,)),
            ("UPDATE events SET seq = 1 - seq WHERE seq < 0", ()),
            ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", (seq, *_columns(row))),
        )

    async def swap(self, a: int, b: int) -> None:
        row_a, row_b = self._row(a), self._row(b)
        self._edit(
            ("DELETE FROM events WHERE seq IN (?, ?)", (a, b)),
            ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", (a, *row_b)),
            ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", (b, *row_a)),
        )


class PostgresBackend(Backend):
    """Tampering goes through a plain psycopg connection, straight into the table."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = PostgresEventStore(url, clock=fixed_clock)

    def _edit(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        with psycopg.connect(self.url) as conn, conn.transaction():
            for query, params in statements:
                conn.execute(query, params)

    def _row(self, seq: int) -> tuple[object, ...]:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT stream, version, event_id, type, schema_version, occurred_us,"
                f" recorded_us, body, hash FROM {TABLE} WHERE seq = %s",
                (seq,),
            ).fetchone()
            assert row is not None
            return tuple(row)

    async def replace_body(self, seq: int, body: bytes) -> None:
        self._edit((f"UPDATE {TABLE} SET body = %s WHERE seq = %s", (body, seq)))

    async def delete(self, seq: int) -> None:
        self._edit((f"DELETE FROM {TABLE} WHERE seq = %s", (seq,)))

    async def insert_at(self, seq: int, row: StagedRow) -> None:
        self._edit(
            (f"UPDATE {TABLE} SET seq = -seq WHERE seq >= %s", (seq,)),
            (f"UPDATE {TABLE} SET seq = 1 - seq WHERE seq < 0", ()),
            (f"INSERT INTO {TABLE} VALUES ({','.join(['%s'] * 10)})", (seq, *_columns(row))),
        )

    async def swap(self, a: int, b: int) -> None:
        row_a, row_b = self._row(a), self._row(b)
        insert = f"INSERT INTO {TABLE} VALUES ({','.join(['%s'] * 10)})"
        self._edit(
            (f"DELETE FROM {TABLE} WHERE seq IN (%s, %s)", (a, b)),
            (insert, (a, *row_b)),
            (insert, (b, *row_a)),
        )


def _columns(row: StagedRow) -> tuple[object, ...]:
    return (
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


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[Backend]:
    chosen: Backend
    if request.param == "memory":
        chosen = MemoryBackend()
    elif request.param == "sqlite":
        chosen = SQLiteBackend(db_path)
    else:
        chosen = PostgresBackend(request.getfixturevalue("pg_url"))
    await chosen.store.open()
    try:
        yield chosen
    finally:
        await chosen.store.close()


@pytest.fixture
def store(backend: Backend) -> EventStore:
    return backend.store


# -- appends -------------------------------------------------------------------------------


async def test_append_one_returns_its_envelope(store: EventStore) -> None:
    (record,) = await store.append([new(opened("p1"), "e1", second=3)])
    assert (record.seq, record.stream, record.version, record.event_id) == (1, "p1", 1, "e1")
    assert record.occurred_at == T0 + timedelta(seconds=3)
    assert record.recorded_at == RECORDED_AT
    assert record.event == opened("p1")
    assert len(record.hash) == 64 and record.hash != GENESIS_HASH
    assert await store.read() == [record]


async def test_batch_gets_gapless_seqs_and_stream_versions(store: EventStore) -> None:
    records = await store.append(sample_batch(10))
    assert [r.seq for r in records] == list(range(1, 11))
    versions: dict[str, list[int]] = {}
    for record in records:
        versions.setdefault(record.stream, []).append(record.version)
    assert versions == {"p0": [1, 2, 3, 4], "p1": [1, 2, 3, 4], "account": [1, 2]}
    more = await store.append(sample_batch(12)[10:])
    assert [r.seq for r in more] == [11, 12]
    assert [r.version for r in more] == [5, 5]
    assert await store.read() == [*records, *more]


async def test_a_long_batch_is_stored_as_short_ones_are(store: EventStore) -> None:
    """A batch long enough to be staged column by column (StoreTransaction._stage_many), with
    a repeated id, after a short one: gapless seqs, consecutive versions, the bodies read
    back, the chain verified."""
    events = sample_batch(STAGE_MANY_FROM + 14)
    short = await store.append(events[:3])
    batch = [*events[3:], events[5]]  # e5 again: stored once, its record returned twice
    records = await store.append(batch)
    assert [r.seq for r in records] == [*range(4, 4 + len(events) - 3), 6]
    assert records[-1] == records[2]
    stored = await store.read()
    assert stored == [*short, *records[:-1]]
    assert [r.event for r in stored] == [new.event for new in events]
    versions: dict[str, int] = {}
    for record in stored:
        versions[record.stream] = versions.get(record.stream, 0) + 1
        assert record.version == versions[record.stream]
    assert (await store.verify_chain()).events == len(events)


async def test_batch_is_all_or_nothing(store: EventStore) -> None:
    await store.append([new(opened("p1"), "e1")])
    poisoned = PositionMarked(position_id="p1", mark_price=object())  # type: ignore[arg-type]
    batch = [new(marked("p1", 101), "e2"), new(marked("p1", 102), "e3"), new(poisoned, "e4")]
    with pytest.raises(StoreError):
        await store.append(batch)
    head = await store.head()
    assert (head.seq, head.stream_versions) == (1, {"p1": 1})
    assert [r.event_id for r in await store.read()] == ["e1"]
    (record,) = await store.append([new(marked("p1", 101), "e2")])
    assert (record.seq, record.version) == (2, 2)
    assert (await store.verify_chain()).events == 2


async def test_a_batch_that_cannot_be_stored_fails_alone_not_its_group(store: EventStore) -> None:
    """Group commit shares a transaction, not a fate: each batch is all-or-nothing on its own."""
    await store.append([new(opened("p1"), "e0")])
    poisoned = PositionMarked(position_id="p1", mark_price=object())  # type: ignore[arg-type]
    outcomes: dict[str, str] = {}

    async def attempt(label: str, batch: list[NewEvent]) -> None:
        try:
            await store.append(batch)
            outcomes[label] = "ok"
        except StoreError:
            outcomes[label] = "failed"

    async with anyio.create_task_group() as group:
        group.start_soon(attempt, "before", [new(marked("p1", 101), "g1")])
        group.start_soon(attempt, "poisoned", [new(marked("p1", 102), "b1"), new(poisoned, "b2")])
        group.start_soon(attempt, "after", [new(marked("p1", 103), "g2")])
    assert outcomes == {"before": "ok", "poisoned": "failed", "after": "ok"}
    assert [r.event_id for r in await store.read()] == ["e0", "g1", "g2"]
    assert (await store.verify_chain()).events == 3


async def test_same_event_id_is_stored_once_and_returns_the_stored_record(
    store: EventStore,
) -> None:
    (first,) = await store.append([new(opened("p1"), "e1")])
    (again,) = await store.append([new(opened("p1", qty="9"), "e1", second=50)])
    assert again == first
    assert again.event == opened("p1")  # the stored event, not the new body
    mixed = await store.append([new(marked("p1", 101), "e2"), new(opened("p1"), "e1")])
    assert [r.seq for r in mixed] == [2, 1]
    assert mixed[1] == first
    assert (await store.head()).seq == 2
    assert [r.event_id for r in await store.read()] == ["e1", "e2"]


async def test_same_event_id_twice_in_one_batch_is_stored_once(store: EventStore) -> None:
    records = await store.append(
        [new(opened("p1"), "e1"), new(marked("p1", 101), "e2"), new(opened("p1"), "e1")]
    )
    assert [r.seq for r in records] == [1, 2, 1]
    assert records[0] == records[2]
    assert (await store.head()).seq == 2
    assert len(await store.read()) == 2


async def test_stale_expected_version_raises_and_appends_nothing(store: EventStore) -> None:
    await store.append([new(opened("p1"), "e1"), new(marked("p1", 101), "e2")])
    with pytest.raises(VersionConflict) as caught:
        await store.append([new(marked("p1", 102), "e3")], expected_versions={"p1": 1})
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("p1", 1, 2)
    # in a batch over two streams, one stale expectation refuses the whole batch
    batch = [new(opened("p2"), "e4"), new(marked("p1", 103), "e5"), new(marked("p2", 104), "e6")]
    with pytest.raises(VersionConflict):
        await store.append(batch, expected_versions={"p2": 0, "p1": 5})
    head = await store.head()
    assert (head.seq, head.stream_versions) == (2, {"p1": 2})
    records = await store.append(batch, expected_versions={"p2": 0, "p1": 2})
    assert [r.seq for r in records] == [3, 4, 5]


async def test_concurrent_appends_expecting_one_version_let_exactly_one_through(
    store: EventStore,
) -> None:
    await store.append([new(opened("p1"), "e0")])
    outcomes: list[str] = []

    async def attempt(i: int) -> None:
        try:
            await store.append([new(marked("p1", 100 + i), f"m{i}")], expected_versions={"p1": 1})
            outcomes.append("ok")
        except VersionConflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(attempt, i)
    assert sorted(outcomes) == ["conflict"] * 19 + ["ok"]
    assert (await store.head()).seq == 2


async def test_500_concurrent_appends_group_commit_gapless(store: EventStore) -> None:
    results: dict[int, Recorded] = {}

    async def append_one(i: int) -> None:
        event: AnyEvent = opened(f"p{i}") if i % 2 else marked("p0", 100 + i)
        (record,) = await store.append([new(event, f"e{i}")])
        results[i] = record

    await store.append([new(opened("p0"), "seed")])
    async with anyio.create_task_group() as group:
        for i in range(1, 501):
            group.start_soon(append_one, i)
    records = await store.read()
    assert len(records) == 501
    assert [r.seq for r in records] == list(range(1, 502))
    assert sorted(r.seq for r in results.values()) == list(range(2, 502))
    assert {r.event_id for r in records} == {"seed", *(f"e{i}" for i in range(1, 501))}
    # the seed event and 250 marks on p0: one stream version each, in seq order
    assert [r.version for r in records if r.stream == "p0"] == list(range(1, 252))
    report = await store.verify_chain()
    assert (report.events, report.last_hash) == (501, (await store.head()).hash)


# -- reads -----------------------------------------------------------------------------------


async def test_reads_after_to_until_and_by_stream(store: EventStore) -> None:
    records = await store.append(sample_batch(12))
    assert await store.read(after_seq=7) == records[7:]
    assert await store.read(to_seq=4) == records[:4]
    assert await store.read(after_seq=3, to_seq=6) == records[3:6]
    assert await store.read(after_seq=12) == []
    assert await store.read(to_seq=0) == []
    assert await store.read(to_seq=99) == records
    # until is inclusive of occurred_at
    assert await store.read(until=T0 + timedelta(seconds=5)) == records[:6]
    assert await store.read(until=T0 - timedelta(seconds=1)) == []
    p1 = [r for r in records if r.stream == "p1"]
    assert await store.read(stream="p1") == p1
    assert [r.version for r in p1] == list(range(1, len(p1) + 1))
    assert await store.read(stream="p1", after_seq=4, to_seq=10) == [
        r for r in p1 if 4 < r.seq <= 10
    ]
    assert await store.read(stream="account", until=T0 + timedelta(seconds=5)) == [records[4]]
    assert await store.read(stream="nobody") == []


@pytest.mark.parametrize("count", [0, 1, 9, 10])
async def test_iterate_pages_across_page_size(store: EventStore, count: int) -> None:
    records = await store.append(sample_batch(count)) if count else []
    pages = [page async for page in store.iterate(page_size=3)]
    assert [len(page) for page in pages] == [3] * (count // 3) + ([count % 3] if count % 3 else [])
    assert [r for page in pages for r in page] == records
    stream_pages = [page async for page in store.iterate(stream="p0", page_size=2)]
    assert all(len(page) <= 2 for page in stream_pages)
    assert [r for page in stream_pages for r in page] == [r for r in records if r.stream == "p0"]


async def test_iterate_facts_is_seq_time_and_event_of_each_record(store: EventStore) -> None:
    records = await store.append(sample_batch(10))

    async def facts(**where: object) -> list[tuple[int, int, AnyEvent]]:
        return [f async for page in store.iterate_facts(page_size=3, **where) for f in page]  # type: ignore[arg-type]

    def expected(chosen: list[Recorded]) -> list[tuple[int, int, AnyEvent]]:
        return [(r.seq, to_micros(r.occurred_at), r.event) for r in chosen]

    assert await facts() == expected(records)
    assert await facts(after_seq=4, to_seq=8) == expected(records[4:8])
    assert await facts(until=T0 + timedelta(seconds=5)) == expected(records[:6])
    assert await facts(after_seq=10) == []


async def test_iterate_fold_facts_fold_into_the_book_of_the_records(store: EventStore) -> None:
    """What a rebuild reads (marks may come with their numbers as text) folds into the book
    the records themselves fold into, whatever the range and the page size."""
    records = await store.append(sample_batch(23))

    async def folded(**where: object) -> Book:
        book = Book()
        async for page in store.iterate_fold_facts(page_size=4, **where):  # type: ignore[arg-type]
            book.apply_facts(page, last_hash="h")
        return book

    def expected(chosen: list[Recorded]) -> bytes:
        book = fold_records(chosen)
        book.last_hash = "h"
        return encode_snapshot(book, T0) + repr(book.skipped).encode()

    def of(book: Book) -> bytes:
        return encode_snapshot(book, T0) + repr(book.skipped).encode()

    assert of(await folded()) == expected(records)
    assert of(await folded(to_seq=17)) == expected(records[:17])
    assert of(await folded(after_seq=4, to_seq=17)) == expected(records[4:17])
    assert of(await folded(until=T0 + timedelta(seconds=9))) == expected(records[:10])


async def test_fold_pages_fold_into_the_book_of_the_records(store: EventStore) -> None:
    """A whole fold (what start-up runs: on SQLite, read and folded on one worker thread)
    gives the book the records fold into, whatever the range and the page size."""
    records = await store.append(sample_batch(23))

    async def folded(**where: object) -> bytes:
        book = Book()
        pages: list[int] = []

        def consume(page: FoldPage) -> None:
            pages.append(len(page))
            book.apply_facts(page, last_hash="h")

        await store.fold_pages(consume, page_size=4, **where)  # type: ignore[arg-type]
        assert all(size <= 4 for size in pages)
        return encode_snapshot(book, T0) + repr(book.skipped).encode()

    def expected(chosen: list[Recorded]) -> bytes:
        book = fold_records(chosen)
        book.last_hash = "h"
        return encode_snapshot(book, T0) + repr(book.skipped).encode()

    assert await folded() == expected(records)
    assert await folded(to_seq=17) == expected(records[:17])
    assert await folded(after_seq=4, to_seq=17) == expected(records[4:17])
    assert await folded(until=T0 + timedelta(seconds=9)) == expected(records[:10])
    assert await folded(after_seq=23) == encode_snapshot(Book(), T0) + b"[]"  # nothing after


async def test_fold_pages_raises_what_the_fold_raises(backend: Backend) -> None:
    if isinstance(backend, MemoryBackend):
        pytest.skip("the memory store keeps records decoded: it never reads a body back")
    await backend.store.append(sample_batch(9))
    await backend.replace_body(6, b'{"type": "Nonsense"}')
    book = Book()
    with pytest.raises(IntegrityError) as caught:
        await backend.store.fold_pages(
            lambda page: book.apply_facts(page, last_hash="h"), page_size=4
        )
    assert caught.value.seq == 6
    assert book.last_seq == 4  # the pages before the bad one are in
    # and the store reads on
    pages = [page async for page in backend.store.iterate_facts(to_seq=3)]
    assert [fact[0] for page in pages for fact in page] == [1, 2, 3]


async def test_a_cancelled_fold_stops_after_the_page_it_is_on(store: EventStore) -> None:
    await store.append(sample_batch(12))
    pages: list[int] = []
    loop_thread = threading.current_thread()
    with anyio.CancelScope() as scope:

        def consume(page: FoldPage) -> None:
            pages.append(page[0][0])
            if len(pages) == 1:  # cancelled from inside the fold (on SQLite, its own thread)
                if threading.current_thread() is loop_thread:
                    scope.cancel()
                else:
                    anyio.from_thread.run_sync(scope.cancel)

        await store.fold_pages(consume, page_size=4)
    assert scope.cancelled_caught
    assert pages == [1]


async def test_sqlite_iterate_facts_names_a_body_that_does_not_decode(db_path: Path) -> None:
    # (the memory store keeps records decoded: it never reads a body back)
    backend = SQLiteBackend(db_path)
    await backend.store.open()
    try:
        await backend.store.append(sample_batch(6))
        await backend.replace_body(5, b'{"type": "Nonsense"}')
        with pytest.raises(IntegrityError) as caught:
            async for _ in backend.store.iterate_facts(page_size=4):
                pass
        assert caught.value.seq == 5
    finally:
        await backend.store.close()


async def test_a_reader_stopping_early_leaves_the_store_usable(store: EventStore) -> None:
    records = await store.append(sample_batch(10))
    async for page in store.iterate_facts(page_size=2):  # abandoned after its first page
        assert [f[0] for f in page] == [1, 2]
        break
    assert await store.read() == records


async def test_head_and_hash_at(store: EventStore) -> None:
    empty = await store.head()
    assert (empty.seq, empty.hash, empty.stream_versions) == (0, GENESIS_HASH, {})
    assert await store.hash_at(1) is None
    records = await store.append(sample_batch(7))
    head = await store.head()
    assert (head.seq, head.hash) == (7, records[-1].hash)
    assert head.stream_versions == {"p0": 3, "p1": 3, "account": 1}
    for record in records:
        assert await store.hash_at(record.seq) == record.hash
    assert await store.hash_at(0) is None
    assert await store.hash_at(8) is None
    # the head is a copy: changing it does not move the store
    head.seq = 99
    assert (await store.head()).seq == 7


async def test_write_transaction_finds_and_stages(store: EventStore) -> None:
    records = await store.append(sample_batch(3))
    seen: dict[str, object] = {}

    def unit(tx: StoreTransaction) -> list[Recorded]:
        seen["head"] = tx.head.seq
        seen["existing"] = tx.find_existing(["e1", "nope"])
        staged = tx.stage([new(marked("p0", 200), "x1")])
        seen["again"] = tx.find_existing(["x1"])["x1"]
        return staged

    staged = await store.transact(unit)
    assert seen == {"head": 3, "existing": {"e1": records[1]}, "again": staged[0]}
    assert staged[0].seq == 4
    assert (await store.read(after_seq=3))[0].event_id == "x1"


async def test_a_unit_that_raises_stores_nothing_and_the_next_one_works(
    store: EventStore,
) -> None:
    await store.append(sample_batch(2))

    class Poison(BaseException):
        pass

    def poisoned(tx: StoreTransaction) -> None:
        tx.stage([new(marked("p0", 300), "poisoned")])
        raise Poison

    with pytest.raises(Poison):
        await store.transact(poisoned)
    assert (await store.head()).seq == 2
    (record,) = await store.append([new(marked("p0", 301), "after")])
    assert record.seq == 3
    assert (await store.verify_chain()).events == 3


async def test_rollback_to_a_savepoint_unstages_one_jobs_rows(store: EventStore) -> None:
    await store.append([new(opened("p1"), "e1")])

    def unit(tx: StoreTransaction) -> list[Recorded]:
        tx.load_versions(["p1", "p9"])
        kept = tx.stage([new(marked("p1", 101), "kept")])
        mark = tx.savepoint()
        tx.stage([new(marked("p1", 102), "dropped"), new(opened("p9"), "dropped-too")])
        tx.rollback_to(mark)
        return kept + tx.stage([new(marked("p1", 103), "after")])

    kept, after = await store.transact(unit)
    assert (kept.seq, kept.version, after.seq, after.version) == (2, 2, 3, 3)
    assert [r.event_id for r in await store.read()] == ["e1", "kept", "after"]
    assert (await store.verify_chain()).events == 3


async def test_run_transaction_refuses_any_thread_but_the_writers(store: EventStore) -> None:
    with pytest.raises(StoreUnavailable, match="writer thread"):
        store.run_transaction(lambda tx: None)


# -- the hash chain --------------------------------------------------------------------------


async def test_verify_chain_passes_on_a_good_log(store: EventStore) -> None:
    empty = await store.verify_chain()
    assert (empty.events, empty.last_hash) == (0, GENESIS_HASH)
    records = await store.append(sample_batch(9))
    report = await store.verify_chain()
    assert (report.events, report.streams, report.last_seq) == (9, 3, 9)
    assert report.last_hash == records[-1].hash


async def _expect_broken_at(store: EventStore, seq: int) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught:
        await store.verify_chain()
    assert caught.value.seq == seq
    assert f"seq {seq}" in str(caught.value)
    return caught.value


async def test_verify_chain_detects_a_tampered_body(backend: Backend) -> None:
    await backend.store.append(sample_batch(6))
    await backend.replace_body(2, encode_event(opened("p1", qty="1000")))
    error = await _expect_broken_at(backend.store, 2)
    assert "hash" in error.why


async def test_verify_chain_detects_a_body_that_does_not_decode(backend: Backend) -> None:
    await backend.store.append(sample_batch(6))
    await backend.replace_body(5, b'{"type": "Nonsense"}')
    await _expect_broken_at(backend.store, 5)


async def test_verify_chain_detects_a_deleted_row(backend: Backend) -> None:
    await backend.store.append(sample_batch(6))
    await backend.delete(3)
    error = await _expect_broken_at(backend.store, 3)
    assert "gap" in error.why and "seq 3 is missing" in error.why


async def test_verify_chain_detects_an_inserted_row(backend: Backend) -> None:
    await backend.store.append(sample_batch(6))
    forged = StagedRow(
        3,
        "intruder",
        1,
        "forged",
        "PositionOpened",
        1,
        to_micros(T0),
        to_micros(T0),
        encode_event(opened("intruder")),
        "ab" * 32,
    )
    await backend.insert_at(3, forged)
    await _expect_broken_at(backend.store, 3)


async def test_verify_chain_detects_swapped_rows(backend: Backend) -> None:
    await backend.store.append(sample_batch(6))
    await backend.swap(3, 4)
    await _expect_broken_at(backend.store, 3)


async def test_verify_chain_detects_a_removed_last_row_only_by_the_head(backend: Backend) -> None:
    records = await backend.store.append(sample_batch(4))
    await backend.delete(4)
    # a truncated tail is a shorter valid chain: the report's head is what tells
    report = await backend.store.verify_chain()
    assert (report.last_seq, report.last_hash) == (3, records[2].hash)
    assert report.last_hash != records[-1].hash


# -- SQLite specifics ----------------------------------------------------------------------


def sqlite_events(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT seq, stream, version, event_id FROM events ORDER BY seq"))
    finally:
        conn.close()


async def test_sqlite_concurrent_appends_share_transactions(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteEventStore(db_path)
    await store.open()
    transactions = 0
    original = store.run_transaction

    def counting_transaction(unit: Callable[[StoreTransaction], T]) -> T:
        nonlocal transactions
        transactions += 1
        return original(unit)

    monkeypatch.setattr(store, "run_transaction", counting_transaction)
    try:
        async with anyio.create_task_group() as group:
            for i in range(500):
                group.start_soon(store.append, [new(opened(f"p{i}"), f"e{i}")])
        assert (await store.head()).seq == 500
        assert (await store.verify_chain()).events == 500
    finally:
        await store.close()
    # one transaction (one fsync) per event would be 500; groups share them
    assert 1 <= transactions <= 10, transactions
    assert [row[0] for row in sqlite_events(db_path)] == list(range(1, 501))


async def test_sqlite_group_commit_counts_commits_on_the_connection(db_path: Path) -> None:
    """The same question asked of the database: how many COMMITs went through the driver."""
    store = SQLiteEventStore(db_path)
    await store.open()
    commits: list[str] = []

    def trace(sql: str) -> None:  # runs in the connection's own thread
        if sql.strip().upper() == "COMMIT":
            commits.append(sql)

    try:

        def install() -> None:
            assert store._conn is not None
            store._conn.set_trace_callback(trace)

        await store.writer.call(install)
        async with anyio.create_task_group() as group:
            for i in range(500):
                group.start_soon(store.append, [new(opened(f"p{i}"), f"e{i}")])
    finally:
        await store.close()
    assert 1 <= len(commits) <= 10, len(commits)
    assert len(sqlite_events(db_path)) == 500


async def test_sqlite_reopen_continues_the_chain(db_path: Path) -> None:
    first = SQLiteEventStore(db_path)
    await first.open()
    before = await first.append(sample_batch(5))
    await first.close()

    again = SQLiteEventStore(db_path)
    await again.open()
    try:
        head = await again.head()
        assert (head.seq, head.hash) == (5, before[-1].hash)
        after = await again.append(sample_batch(8)[5:])
        assert [r.seq for r in after] == [6, 7, 8]
        assert after[0].version == head.stream_versions[after[0].stream] + 1
        (duplicate,) = await again.append([sample_batch(1)[0]])
        assert duplicate == before[0]
        report = await again.verify_chain()
        assert (report.events, report.last_hash) == (8, after[-1].hash)
        assert await again.read() == [*before, *after]
    finally:
        await again.close()


async def test_sqlite_reopened_checks_expected_versions_of_streams_it_has_not_seen(
    db_path: Path,
) -> None:
    """A reopened store knows no stream's version until it reads it under the write lock; an
    append of one event must read every stream it names, those only in expected_versions
    included, before it compares them (the single-append path reads them too)."""
    first = SQLiteEventStore(db_path)
    await first.open()
    await first.append([new(opened("p0"), "o0"), new(opened("p1"), "o1")])
    await first.append([new(marked("p1", 101), "m1")])
    await first.close()

    for expected, outcome in [({"p1": 1}, "conflict"), ({"p1": 2}, "stored")]:
        again = SQLiteEventStore(db_path)
        await again.open()
        try:
            batch = [new(marked("p0", 102), f"m0-{outcome}")]  # p1 only in expected
            if outcome == "conflict":
                with pytest.raises(VersionConflict):
                    await again.append(batch, expected_versions=expected)
            else:
                (record,) = await again.append(batch, expected_versions=expected)
                assert (record.seq, record.stream, record.version) == (4, "p0", 2)
        finally:
            await again.close()
    assert [row[1:3] for row in sqlite_events(db_path)] == [
        ("p0", 1),
        ("p1", 1),
        ("p1", 2),
        ("p0", 2),
    ]


async def test_sqlite_sees_what_another_store_on_the_file_appended(db_path: Path) -> None:
    one, two = SQLiteEventStore(db_path), SQLiteEventStore(db_path)
    await one.open()
    await two.open()
    try:
        await one.append(sample_batch(3))
        await two.append([new(marked("p0", 300), "other")])
        # the write transaction hands over what others appended
        tail, seq = await one.transact(lambda tx: ([r.event_id for r in tx.tail], tx.head.seq))
        assert (tail, seq) == (["other"], 4)
        assert await one.transact(lambda tx: tx.tail) == []
        (record,) = await one.append([new(marked("p0", 301), "mine")])
        assert (record.seq, record.version) == (5, 4)  # p0: open, mark, theirs, mine
        assert (await one.verify_chain()).events == 5
    finally:
        await one.close()
        await two.close()


def _alive_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.mark.parametrize("kind", ["foreign tables", "not a database"])
async def test_sqlite_refuses_a_foreign_file_and_leaks_nothing(db_path: Path, kind: str) -> None:
    if kind == "foreign tables":
        conn = sqlite3.connect(db_path)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('alice')")
        conn.commit()
        conn.close()
    else:
        db_path.write_bytes(b"this is a spreadsheet, honest" * 200)
    original = db_path.read_bytes()
    before = _alive_threads()
    store = SQLiteEventStore(db_path)
    try:
        with pytest.raises(StoreUnavailable):
            await store.open()
        # a refused open must not leave connection threads behind (they keep the process alive)
        for thread in _alive_threads() - before:
            thread.join(timeout=30)  # a guard: a thread ending, on a loaded machine, may be slow
        assert not [t for t in _alive_threads() - before if t.is_alive()]
    finally:
        await store.close()
    assert db_path.read_bytes() == original  # nothing written into someone else's file


async def test_sqlite_read_only_reads_but_cannot_write(db_path: Path) -> None:
    writer = SQLiteEventStore(db_path)
    await writer.open()
    records = await writer.append(sample_batch(4))
    await writer.close()

    reader = SQLiteEventStore(db_path, read_only=True)
    await reader.open()
    try:
        assert await reader.read() == records
        assert (await reader.verify_chain()).events == 4
        with pytest.raises(StoreUnavailable):
            await reader.append([new(marked("p0", 500), "ro")])
    finally:
        await reader.close()
    assert len(sqlite_events(db_path)) == 4


async def test_sqlite_read_only_needs_an_existing_ledger(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await SQLiteEventStore(tmp_path / "missing.db", read_only=True).open()
    assert not (tmp_path / "missing.db").exists()


async def _pragma(store: SQLiteEventStore, name: str) -> object:
    """A pragma as the store's write connection sees it, asked on the writer thread."""

    def ask() -> object:
        assert store._conn is not None
        row = store._conn.execute(f"PRAGMA {name}").fetchone()
        assert row is not None
        return row[0]

    return await store.writer.call(ask)


async def test_sqlite_durability_full_by_default_normal_opt_in(tmp_path: Path) -> None:
    default = SQLiteEventStore(tmp_path / "full.db")
    normal = SQLiteEventStore(tmp_path / "normal.db", synchronous="NORMAL")
    await default.open()
    await normal.open()
    try:
        assert await _pragma(default, "synchronous") == 2  # FULL
        assert await _pragma(normal, "synchronous") == 1  # NORMAL
        assert await _pragma(default, "journal_mode") == "wal"
        assert int(str(await _pragma(default, "busy_timeout"))) == 10_000
    finally:
        await default.close()
        await normal.close()
    conn = sqlite3.connect(tmp_path / "full.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file
    finally:
        conn.close()


# -- long batches (staged column by column, bodies in bytearrays) ---------------------------


async def test_long_batches_store_what_one_event_at_a_time_stores(store: EventStore) -> None:
    """Batches of 16 events or more are staged column by column (StoreTransaction._stage_many)
    with bodies in bytearrays: on every backend, what is stored, read back, chained and
    verified is exactly what appending the same events one at a time stores (in a memory
    store with the same clock), a repeated id in a long batch is stored once, an id stored
    earlier returns its stored record, and the rows' bodies are the encoded bytes."""
    first = sample_batch(40)
    records = await store.append(first, expected_versions={"p0": 0, "account": 0})
    later = [
        new(marked("p0", 200 + i), f"x{i}", second=50 + i) if i != 7 else first[3]
        for i in range(20)
    ]
    later[12] = later[11]  # the same id twice in one long batch
    records += await store.append(later)
    reference = MemoryEventStore(clock=fixed_clock)
    await reference.open()
    expected: list[Recorded] = []
    for one in [*first, *later]:
        expected += await reference.append([one])
    assert records == expected
    stored = await store.read()
    assert stored == await reference.read()
    await reference.close()
    assert [r.seq for r in stored] == list(range(1, 40 + 19))
    rows = [row async for page in store.iterate_rows() for row in page]
    assert all(type(row.body) is bytes for row in rows)
    assert [row.body for row in rows] == [encode_event(r.event) for r in stored]
    report = await store.verify_chain()
    assert (report.events, report.last_hash) == (len(stored), stored[-1].hash)
    book = Book()  # the fold of the stored rows' bodies, as start-up reads them
    await store.fold_pages(lambda page: book.apply_facts(page, last_hash="h"), page_size=7)
    reference_book = fold_records(expected)
    reference_book.last_hash = "h"
    assert encode_snapshot(book, T0) == encode_snapshot(reference_book, T0)
    with pytest.raises(VersionConflict):
        await store.append(sample_batch(20), expected_versions={"p1": 3})
    assert await store.read() == stored
