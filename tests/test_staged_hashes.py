"""Staging gives each event the hash the chain format defines, byte for byte as before.

The chain format is fixed (existing logs must verify): sha256 over the previous hash's hex,
the JSON header [seq, stream, version, event_id, occurred_us, recorded_us, schema_version],
a newline and the body. These tests recompute it here, with hashlib and the json module, not
with the ledger's own helpers, and pin one chain's hashes as they were before staging was
rewritten for speed.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from ledger.envelope import GENESIS_HASH, NewEvent, Recorded
from ledger.errors import StoreError
from ledger.events import AnyEvent, BalanceObserved, PositionMarked, PositionOpened
from ledger.store.base import STAGE_MANY_FROM, Head, StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side

T0 = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
RECORDED_AT = datetime(2024, 3, 2, 8, 30, 0, 654321, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return calendar.timegm(aware.utctimetuple()) * 1_000_000 + aware.microsecond


def _expected_hash(prev: str, row: Sequence[object]) -> str:
    seq, stream, version, event_id, _type, schema, occurred_us, recorded_us, body, _ = row
    header = json.dumps(
        [seq, stream, version, event_id, occurred_us, recorded_us, schema],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    # stored bodies read back as bytes; staged ones are bytearrays (the same bytes)
    assert isinstance(body, bytes | bytearray)
    return hashlib.sha256(prev.encode("ascii") + header + b"\n" + bytes(body)).hexdigest()


def _events() -> list[NewEvent]:
    """Two position streams and the account's; odd ids and streams (quotes, backslashes,
    non-ASCII) so the header's JSON escaping is covered; a naive time (taken as UTC); two
    events of one command sharing one time; microseconds everywhere."""
    opened = PositionOpened(
        position_id='p"1',
        symbol="SOL/USDT:USDT",
        side=Side.BUY,
        qty=Decimal("1.5"),
        entry_price=Decimal("100.25"),
        leverage=5,
    )
    second = PositionOpened(
        position_id="pö\\2",
        symbol="BTC/USDT:USDT",
        side=Side.SELL,
        qty=Decimal("0.001"),
        entry_price=Decimal("65000.5"),
        leverage=10,
    )
    shared = T0 + timedelta(seconds=3, microseconds=7)
    return [
        NewEvent(stream='p"1', event=opened, event_id="e-1", occurred_at=T0),
        NewEvent(
            stream="pö\\2",
            event=second,
            event_id='e"2\\ü',
            occurred_at=(T0 + timedelta(seconds=1)).replace(tzinfo=None),
        ),
        NewEvent(
            stream='p"1',
            event=PositionMarked(position_id='p"1', mark_price=Decimal("101.75")),
            event_id="e-3",
            occurred_at=shared,
        ),
        NewEvent(
            stream="account",
            event=BalanceObserved(total=Decimal("1000.1"), available=Decimal("900")),
            event_id="e-4",
            occurred_at=shared,
        ),
        NewEvent(
            stream="pö\\2",
            event=PositionMarked(position_id="pö\\2", mark_price=Decimal("64000")),
            event_id="e-5",
            occurred_at=T0 + timedelta(days=400, microseconds=1),
        ),
    ]


# Each event's hash as the staging before the rewrite gave it (main at 5f311bf): for the
# same input the chain must never change.
PINNED = [
    "a50265a358c81419e37e97af08c020909f84734935e1ee570865c1323e27775e",
    "071120105789e74ff890361131e92343468471bdadb4e31aa4fafc0ba2a7b9c5",
    "f0cb9f4e926dbf44cc37084a2a25d3c766d68f68e57a1ff768e449710cf15d5f",
    "df7c239a0a8a26dcbd05d7562fbfb2978a02b50db2c9d37258fcd3e01c786ce4",
    "a533e8efbabf3f52ea9756c73451d36e0255a0f1348f4a995cc351f191f4ed89",
]


@pytest.mark.anyio
async def test_stored_rows_hash_as_the_chain_format_defines(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "ledger.db", clock=lambda: RECORDED_AT)
    await store.open()
    try:
        events = _events()
        first = await store.append(events[:2])
        rest = await store.append(events[2:])
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        rows = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    versions: dict[str, int] = {}
    for index, (row, new, record) in enumerate(zip(rows, events, first + rest, strict=True)):
        seq, stream, version, event_id, type_, schema, occurred_us, recorded_us, body, digest = row
        versions[new.stream] = versions.get(new.stream, 0) + 1
        assert (seq, stream, version, event_id) == (
            index + 1,
            new.stream,
            versions[new.stream],
            new.event_id,
        )
        assert (type_, schema) == (type(new.event).__name__, 2)
        assert occurred_us == _micros(new.occurred_at)
        assert recorded_us == _micros(RECORDED_AT)
        assert msgspec.json.decode(body) == msgspec.to_builtins(new.event) | {
            "type": type(new.event).__name__
        }
        assert digest == _expected_hash(prev, row)
        assert record.hash == digest and record.seq == seq
        prev = digest
    assert [row[-1] for row in rows] == PINNED


# -- staging is all-or-nothing for each call ------------------------------------------------


class _Staging(StoreTransaction):
    """Staging alone, over a head that knows only the streams given (as SQLite's does)."""

    versions_complete = False

    def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        return {}

    def committed_after(self, seq: int) -> list[Recorded]:
        return []


def _state(tx: StoreTransaction) -> tuple[object, ...]:
    versions = {stream: tx.head.version(stream) for stream in ("p1", "p2", "unloaded")}
    known = [stream for stream in ("p1", "p2", "unloaded") if tx.head.known(stream)]
    return (list(tx.rows), tx.head.seq, tx.head.hash, versions, known, dict(tx._staged_ids))


def _marked(stream: str, event_id: str, price: object = Decimal(101)) -> NewEvent:
    event: AnyEvent = PositionMarked(position_id=stream, mark_price=price)  # type: ignore[arg-type]
    return NewEvent(stream=stream, event=event, event_id=event_id, occurred_at=T0)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(_marked("p1", "x3", price=object()), id="a body that cannot be encoded"),
        pytest.param(_marked("unloaded", "x3"), id="a stream whose version was not loaded"),
    ],
)
def test_a_stage_call_that_fails_part_way_stages_nothing_of_its_batch(bad: NewEvent) -> None:
    tx = _Staging(Head(5, "ab" * 32, {"p1": 2, "p2": 1}), [], RECORDED_AT)
    kept = tx.stage([_marked("p1", "k1")])
    before = _state(tx)
    with pytest.raises((StoreError, TypeError)):
        tx.stage([_marked("p1", "x1"), _marked("p2", "x2"), bad, _marked("p2", "x4")])
    assert _state(tx) == before
    # the ids of the failed call are free, and the chain continues from the kept row
    again = tx.stage([_marked("p2", "x1"), _marked("p1", "k1")])
    assert [(r.seq, r.stream, r.version) for r in again] == [(7, "p2", 2), (6, "p1", 3)]
    assert again[1] is kept[0]  # an id staged already in this transaction: its record
    assert again[0].hash == _expected_hash(kept[0].hash, tx.rows[-1])


@pytest.mark.anyio
async def test_staged_bodies_are_bytearrays_stored_as_the_encoded_blob(tmp_path: Path) -> None:
    """Staging writes each body into a bytearray (sqlite3 binds it without its adapter lookup,
    see ledger.codec.encode_body): the stored column is the BLOB of the event's canonical JSON,
    read back as bytes, and the log verifies."""
    events = _events()
    tx = _Staging(Head(), [], RECORDED_AT)
    tx.versions_complete = True
    tx.stage(events)
    assert [type(row[8]) for row in tx.rows] == [bytearray] * len(events)
    assert [bytes(row[8]) for row in tx.rows] == [msgspec.json.encode(new.event) for new in events]
    store = SQLiteEventStore(tmp_path / "ledger.db", clock=lambda: RECORDED_AT)
    await store.open()
    try:
        await store.append(events)
        report = await store.verify_chain()
    finally:
        await store.close()
    assert report.events == len(events)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        stored = conn.execute("SELECT typeof(body), body FROM events ORDER BY seq").fetchall()
    assert stored == [("blob", bytes(row[8])) for row in tx.rows]
    assert [row[-1] for row in tx.rows] == PINNED


# -- a long batch is staged column by column (StoreTransaction._stage_many) -----------------


def _long_batch(count: int = STAGE_MANY_FROM + 9) -> list[NewEvent]:
    """Events on three streams (odd names), times mostly aware with one naive one and some
    shared, long enough for the column-by-column staging."""
    streams = ['p"1', "pö\\2", "account"]
    batch = []
    for index in range(count):
        stream = streams[index % 3]
        event: AnyEvent = (
            BalanceObserved(total=Decimal(1000 + index), available=Decimal(index))
            if stream == "account"
            else PositionMarked(position_id=stream, mark_price=Decimal(f"101.{index}"))
        )
        moment = T0 + timedelta(seconds=index // 2, microseconds=index)
        if index == 7:
            moment = moment.replace(tzinfo=None)  # naive: taken as UTC
        batch.append(
            NewEvent(stream=stream, event=event, event_id=f"m-{index}", occurred_at=moment)
        )
    return batch


def _head() -> Head:
    return Head(5, "ab" * 32, {'p"1': 2, "pö\\2": 1, "account": 0})


def test_a_long_batch_stages_what_staging_one_event_at_a_time_stages() -> None:
    batch = _long_batch()
    assert len(batch) >= STAGE_MANY_FROM
    whole = _Staging(_head(), [], RECORDED_AT)
    records = whole.stage(batch)
    one_by_one = _Staging(_head(), [], RECORDED_AT)
    singles = [one_by_one.stage([new])[0] for new in batch]
    assert records == singles
    assert whole.rows == one_by_one.rows
    assert _state(whole)[1:] == _state(one_by_one)[1:]
    prev = "ab" * 32
    versions = {'p"1': 2, "pö\\2": 1, "account": 0}
    for index, (row, new) in enumerate(zip(whole.rows, batch, strict=True)):
        versions[new.stream] += 1
        assert row[:4] == (6 + index, new.stream, versions[new.stream], new.event_id)
        assert row[6] == _micros(new.occurred_at)  # the naive one as UTC
        assert row[7] == _micros(RECORDED_AT)
        assert row[-1] == _expected_hash(prev, row)  # recomputed here, independently
        prev = row[-1]
    assert (whole.head.seq, whole.head.hash) == (5 + len(batch), prev)


def _at_times(batch: list[NewEvent], times: list[datetime]) -> list[NewEvent]:
    return [
        NewEvent(stream=new.stream, event=new.event, event_id=new.event_id, occurred_at=at)
        for new, at in zip(batch, times, strict=True)
    ]


_SHARED = T0 + timedelta(seconds=5, microseconds=11)


@pytest.mark.parametrize(
    "times",
    [
        # a group's marks, one command's events: one time object for the whole batch
        pytest.param(lambda n: [_SHARED] * n, id="one aware time"),
        pytest.param(lambda n: [_SHARED.replace(tzinfo=None)] * n, id="one naive time"),
        # the first and the last share one object, the others do not: each its own
        pytest.param(
            lambda n: (
                [_SHARED]
                + [_SHARED + timedelta(microseconds=i) for i in range(1, n - 1)]
                + [_SHARED]
            ),
            id="first and last shared only",
        ),
        pytest.param(
            lambda n: [_SHARED] * (n // 2) + [_SHARED + timedelta(seconds=1)] + [_SHARED] * n,
            id="one other in the middle",
        ),
        # equal instants in other objects (and another zone): one time all the same
        pytest.param(
            lambda n: (
                [_SHARED]
                + [
                    _SHARED.astimezone(timezone(timedelta(hours=i % 3 - 1)))
                    if i % 2
                    else _SHARED + timedelta(0)
                    for i in range(1, n - 1)
                ]
                + [_SHARED]
            ),
            id="equal instants in other objects",
        ),
    ],
)
def test_a_long_batch_sharing_times_stages_each_event_at_its_own_time(
    times: Callable[[int], list[datetime]],
) -> None:
    batch = _long_batch()
    batch = _at_times(batch, times(len(batch))[: len(batch)])
    whole = _Staging(_head(), [], RECORDED_AT)
    records = whole.stage(batch)
    one_by_one = _Staging(_head(), [], RECORDED_AT)
    assert records == [one_by_one.stage([new])[0] for new in batch]
    assert whole.rows == one_by_one.rows
    assert [row[6] for row in whole.rows] == [_micros(new.occurred_at) for new in batch]
    assert [record.occurred_at for record in records] == [new.occurred_at for new in batch]
    prev = "ab" * 32
    for row in whole.rows:
        assert row[-1] == _expected_hash(prev, row)
        prev = row[-1]


def test_a_long_batch_leaves_each_stream_at_its_last_version() -> None:
    """The next batch (short or long) continues each stream's versions from the long one."""
    batch = _long_batch()
    streams = ['p"1', "pö\\2", "account"]
    whole = _Staging(_head(), [], RECORDED_AT)
    whole.stage(batch)
    counts = {stream: sum(new.stream == stream for new in batch) for stream in streams}
    start = {'p"1': 2, "pö\\2": 1, "account": 0}
    assert {s: whole.head.version(s) for s in streams} == {s: start[s] + counts[s] for s in streams}
    more = [
        NewEvent(stream=new.stream, event=new.event, event_id=f"n-{i}", occurred_at=T0)
        for i, new in enumerate(batch)
    ]
    later = whole.stage(more[:2]) + whole.stage(more[2:])
    assert [r.version for r in later] == [
        start[new.stream] + counts[new.stream] + 1 + sum(m.stream == new.stream for m in more[:i])
        for i, new in enumerate(more)
    ]


def test_a_long_batch_with_a_repeated_id_stages_it_once() -> None:
    batch = _long_batch()
    batch[12] = NewEvent(
        stream=batch[3].stream, event=batch[3].event, event_id="m-3", occurred_at=T0
    )
    tx = _Staging(_head(), [], RECORDED_AT)
    records = tx.stage(batch)
    assert len(tx.rows) == len(batch) - 1
    assert records[12] is records[3]
    assert [row[3] for row in tx.rows] == [new.event_id for new in batch if new is not batch[12]]


def test_a_long_batch_with_an_id_staged_before_returns_that_record() -> None:
    tx = _Staging(_head(), [], RECORDED_AT)
    (kept,) = tx.stage([_long_batch()[4]])
    records = tx.stage(_long_batch())
    assert records[4] is kept
    assert len(tx.rows) == len(records)  # the kept row once, each other event once
    assert [row[0] for row in tx.rows] == list(range(6, 6 + len(records)))


@pytest.mark.parametrize("where", ["an unencodable body", "an unloaded stream"])
def test_a_long_batch_that_cannot_be_staged_stages_nothing(where: str) -> None:
    tx = _Staging(_head(), [], RECORDED_AT)
    tx.stage(_long_batch()[:2])
    before = _state(tx)
    batch = [
        NewEvent(stream=new.stream, event=new.event, event_id=f"x{i}", occurred_at=T0)
        for i, new in enumerate(_long_batch())
    ]
    batch[10] = (
        _marked('p"1', "bad", price=object())
        if where == "an unencodable body"
        else _marked("p3", "bad")
    )
    with pytest.raises((StoreError, TypeError)):
        tx.stage(batch)
    assert _state(tx) == before
    assert (tx.head.seq, len(tx.rows)) == (7, 2)


@pytest.mark.anyio
async def test_a_long_batch_with_a_repeated_id_is_stored_once(tmp_path: Path) -> None:
    batch = _long_batch()
    batch[12] = NewEvent(
        stream=batch[3].stream, event=batch[3].event, event_id="m-3", occurred_at=T0
    )
    store = SQLiteEventStore(tmp_path / "ledger.db", clock=lambda: RECORDED_AT)
    await store.open()
    try:
        records = await store.append(batch)
        stored = await store.read()
        assert (await store.verify_chain()).events == len(batch) - 1
    finally:
        await store.close()
    assert records[12] == records[3]
    assert [r.event_id for r in stored] == [new.event_id for new in batch if new is not batch[12]]


@pytest.mark.anyio
async def test_a_long_append_after_a_reopen_continues_the_stored_versions(tmp_path: Path) -> None:
    """A store knows only the versions of streams it has written (none after opening): a long
    append (staged column by column, its versions read for the streams it does not know)
    continues each stored stream's versions and starts a new one at 1; the rows stored are
    the chain recomputed here, and a long batch that cannot be stored fails alone."""
    db = tmp_path / "ledger.db"
    batch = _long_batch()
    first, rest = batch[:5], batch[5:]
    new_stream = NewEvent(
        stream="p-new",
        event=PositionMarked(position_id="p-new", mark_price=Decimal("7")),
        event_id="n-1",
        occurred_at=T0,
    )
    store = SQLiteEventStore(db, clock=lambda: RECORDED_AT)
    await store.open()
    try:
        await store.append(first)
    finally:
        await store.close()
    store = SQLiteEventStore(db, clock=lambda: RECORDED_AT)
    await store.open()
    try:
        records = await store.append([*rest, new_stream])
        poisoned = [
            *[
                NewEvent(stream=n.stream, event=n.event, event_id=f"x-{n.event_id}", occurred_at=T0)
                for n in _long_batch()
            ],
            NewEvent(
                stream="p-new",
                event=PositionMarked(position_id="p-new", mark_price=object()),  # type: ignore[arg-type]
                event_id="n-2",
                occurred_at=T0,
            ),
        ]
        with pytest.raises(StoreError):
            await store.append(poisoned)
        assert (await store.verify_chain()).events == len(batch) + 1
    finally:
        await store.close()
    counted: dict[str, int] = {}
    for new in [*batch, new_stream]:
        counted[new.stream] = counted.get(new.stream, 0) + 1
    assert [r.version for r in records][-1] == 1  # p-new
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, stream, version, event_id, type, schema_version, occurred_us,"
            " recorded_us, body, hash FROM events ORDER BY seq"
        ).fetchall()
    assert [row[3] for row in rows] == [new.event_id for new in [*batch, new_stream]]
    prev = GENESIS_HASH
    versions: dict[str, int] = {}
    for row, new in zip(rows, [*batch, new_stream], strict=True):
        versions[new.stream] = versions.get(new.stream, 0) + 1
        assert (row[1], row[2]) == (new.stream, versions[new.stream])
        assert row[6] == _micros(new.occurred_at)
        assert row[-1] == _expected_hash(prev, row)
        prev = row[-1]
    assert versions == counted
    assert [r.hash for r in records] == [row[-1] for row in rows[len(first) :]]


# -- one event is staged without the loop (StoreTransaction._stage_one) ---------------------


def test_one_event_at_a_time_stages_what_one_call_stages() -> None:
    """The usual append and command stage one event (without the loop): the same rows,
    records, versions and chain as the same events staged in one call by the loop."""
    events = _events()
    together = _Staging(Head(5, "ab" * 32), [], RECORDED_AT)
    together.versions_complete = True
    records = together.stage(events)
    singly = _Staging(Head(5, "ab" * 32), [], RECORDED_AT)
    singly.versions_complete = True
    singles = [singly.stage([new])[0] for new in events]
    assert singles == records
    assert singly.rows == together.rows
    assert [type(row[8]) for row in singly.rows] == [bytearray] * len(events)
    assert (singly.head.seq, singly.head.hash, singly.head.own) == (
        together.head.seq,
        together.head.hash,
        together.head.own,
    )
    assert singly._staged_ids == together._staged_ids
    prev = "ab" * 32
    for row, new in zip(singly.rows, events, strict=True):
        assert row[6] == _micros(new.occurred_at)  # the naive one as UTC
        assert row[-1] == _expected_hash(prev, row)  # recomputed here, independently
        prev = row[-1]


@pytest.mark.anyio
async def test_appends_of_one_event_each_store_the_pinned_chain(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "ledger.db", clock=lambda: RECORDED_AT)
    await store.open()
    try:
        records = [(await store.append([new]))[0] for new in _events()]
        assert (await store.verify_chain()).events == len(records)
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        rows = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    assert [row[-1] for row in rows] == [record.hash for record in records] == PINNED
    assert [row[2] for row in rows] == [1, 1, 2, 1, 2]  # each stream's versions


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(_marked("p1", "x3", price=object()), id="a body that cannot be encoded"),
        pytest.param(_marked("unloaded", "x3"), id="a stream whose version was not loaded"),
    ],
)
def test_a_one_event_stage_that_fails_stages_nothing(bad: NewEvent) -> None:
    tx = _Staging(Head(5, "ab" * 32, {"p1": 2, "p2": 1}), [], RECORDED_AT)
    (kept,) = tx.stage([_marked("p1", "k1")])
    before = _state(tx)
    with pytest.raises((StoreError, TypeError)):
        tx.stage([bad])
    assert _state(tx) == before
    assert tx.stage([_marked("p1", "k1")]) == [kept]  # staged already here: its record
    assert tx.stage([_marked("p1", "k1")])[0] is kept
    assert _state(tx) == before
    (next_one,) = tx.stage([_marked("p2", "x3")])  # the failed id is free; the chain goes on
    assert (next_one.seq, next_one.version) == (7, 2)
    assert next_one.hash == _expected_hash(kept.hash, tx.rows[-1])


class _InterruptOnce(dict[str, int]):
    """A stream-version map whose first write is interrupted (a KeyboardInterrupt arriving
    half-way through staging), after the row was appended."""

    interrupted = False

    def __setitem__(self, key: str, value: int) -> None:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        super().__setitem__(key, value)


@pytest.mark.parametrize("size", [1, 2], ids=["one event", "the loop"])
def test_a_stage_interrupted_half_way_stages_nothing(size: int) -> None:
    tx = _Staging(Head(5, "ab" * 32, {"p1": 2, "p2": 1}), [], RECORDED_AT)
    tx.stage([_marked("p1", "k1")])
    before = _state(tx)
    tx.head.own = _InterruptOnce(tx.head.own)
    with pytest.raises(KeyboardInterrupt):
        tx.stage([_marked("p2", "x1"), _marked("p2", "x2")][:size])
    assert _state(tx) == before
