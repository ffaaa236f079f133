"""PostgreSQL specifics beyond the shared contract: order under concurrent writers, the table
lock, reopening, read-only use, LISTEN/NOTIFY wake-ups and passwords kept out of messages."""

from __future__ import annotations

import threading
from decimal import Decimal

import anyio
import psycopg
import pytest

from ledger.envelope import NewEvent, Recorded
from ledger.errors import StoreUnavailable
from ledger.events import PositionMarked, PositionOpened, stream_of
from ledger.store.base import StoreTransaction
from ledger.store.postgres import TABLE, PostgresEventStore, scrub
from ledger.values import Side
from tests.strategies import T0

pytestmark = pytest.mark.anyio


def opened(position_id: str) -> NewEvent:
    event = PositionOpened(
        position_id=position_id,
        symbol="BTC/USDT:USDT",
        side=Side.SELL,
        qty=Decimal("0.01"),
        entry_price=Decimal(50_000),
        leverage=3,
    )
    return NewEvent(stream=stream_of(event), event=event, event_id=position_id, occurred_at=T0)


def marked(position_id: str, price: int, event_id: str) -> NewEvent:
    event = PositionMarked(position_id=position_id, mark_price=Decimal(price))
    return NewEvent(stream=stream_of(event), event=event, event_id=event_id, occurred_at=T0)


async def test_concurrent_writers_on_separate_connections_give_a_follower_no_gap(
    pg_url: str,
) -> None:
    """Four stores (four connections) append at once while a fifth follows the log: every
    page the follower reads starts right after what it has, so it never skips a row that
    commits later with a lower seq."""
    writers = [PostgresEventStore(pg_url) for _ in range(4)]
    follower = PostgresEventStore(pg_url, read_only=False)
    for store in [*writers, follower]:
        await store.open()
    per_writer = 40
    total = per_writer * len(writers)
    seen: list[int] = []

    async def write(index: int, store: PostgresEventStore) -> None:
        for i in range(per_writer):
            await store.append([opened(f"w{index}-{i}")])

    async def follow() -> None:
        while len(seen) < total:
            async for page in follower.iterate(after_seq=seen[-1] if seen else 0):
                expected = (seen[-1] if seen else 0) + 1
                assert page[0].seq == expected, f"gap: expected {expected}, got {page[0].seq}"
                seen.extend(record.seq for record in page)
            await anyio.sleep(0)

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(follow)
                for index, store in enumerate(writers):
                    group.start_soon(write, index, store)
        assert seen == list(range(1, total + 1))
        report = await follower.verify_chain()
        assert report.events == total
    finally:
        for store in [*writers, follower]:
            await store.close()


async def test_a_writer_waits_for_the_lock_and_follows_the_commit_it_waited_for(
    pg_url: str,
) -> None:
    first, second = PostgresEventStore(pg_url), PostgresEventStore(pg_url)
    await first.open()
    await second.open()
    await first.append([opened("a")])
    results: list[int] = []

    async def second_append() -> None:
        (record,) = await second.append([marked("a", 51_000, "from-second")])
        results.append(record.seq)

    def lock_waiters() -> int:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = %s AND NOT l.granted",
                (TABLE,),
            ).fetchone()
            return int(row[0]) if row else 0

    entered, release = threading.Event(), threading.Event()
    staged: list[Recorded] = []

    def holding_the_lock(tx: StoreTransaction) -> None:  # on first's writer thread
        staged.extend(tx.stage([marked("a", 50_500, "from-first")]))
        entered.set()
        release.wait(60)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(first.transact, holding_the_lock)
                await anyio.to_thread.run_sync(entered.wait, 60)
                group.start_soon(second_append)
                # the second writer is blocked on the table lock, not racing past it
                while await anyio.to_thread.run_sync(lock_waiters) == 0:
                    await anyio.sleep(0.01)
                release.set()
        assert staged[0].seq == 2
        assert results == [3]  # after the commit it waited for, never before it
        records = await second.read(stream="a")
        assert [r.event_id for r in records] == ["a", "from-first", "from-second"]
        assert [r.version for r in records] == [1, 2, 3]
        assert (await second.verify_chain()).last_seq == 3
    finally:
        await first.close()
        await second.close()


async def test_reopen_continues_the_chain_and_sees_other_writers(pg_url: str) -> None:
    one = PostgresEventStore(pg_url)
    await one.open()
    before = await one.append([opened("p1"), marked("p1", 1, "m1")])
    await one.close()
    again, other = PostgresEventStore(pg_url), PostgresEventStore(pg_url)
    await again.open()
    await other.open()
    try:
        head = await again.head()
        assert (head.seq, head.hash, head.stream_versions) == (2, before[-1].hash, {"p1": 2})
        await other.append([marked("p1", 2, "theirs")])
        tail = await again.transact(lambda tx: [r.event_id for r in tx.tail])
        assert tail == ["theirs"]
        (mine,) = await again.append([marked("p1", 3, "mine")])
        assert (mine.seq, mine.version) == (4, 4)
        (duplicate,) = await again.append([opened("p1")])
        assert duplicate == before[0]
        assert (await again.verify_chain()).last_hash == mine.hash
    finally:
        await again.close()
        await other.close()


async def test_read_only_reads_but_cannot_write_and_needs_a_ledger(pg_url: str) -> None:
    missing = PostgresEventStore(pg_url, read_only=True)
    with pytest.raises(StoreUnavailable, match="no ledger"):
        await missing.open()
    writer = PostgresEventStore(pg_url)
    await writer.open()
    await writer.append([opened("p1")])
    await writer.close()
    reader = PostgresEventStore(pg_url, read_only=True)
    await reader.open()
    try:
        assert [r.event_id for r in await reader.read()] == ["p1"]
        with pytest.raises(StoreUnavailable, match="read-only"):
            await reader.append([opened("p2")])
    finally:
        await reader.close()


async def test_follow_wakes_on_another_connections_commit(pg_url: str) -> None:
    follower, writer = PostgresEventStore(pg_url), PostgresEventStore(pg_url)
    await follower.open()
    await writer.open()
    try:
        async with follower.follow() as waiter:
            await writer.append([opened("p1")])
            woke = False
            with anyio.move_on_after(30):
                await waiter.wait(timeout=3600)  # only a NOTIFY ends this wait early
                woke = True
            assert woke
    finally:
        await follower.close()
        await writer.close()


def test_scrub_hides_passwords_in_urls() -> None:
    assert (
        scrub("postgresql://bot:s3cr%40t@db:5432/ledger") == "postgresql://bot:***@db:5432/ledger"
    )
    assert scrub("postgres://db/ledger?user=x&password=hunter2&sslmode=require") == (
        "postgres://db/ledger?user=x&password=***&sslmode=require"
    )
    assert scrub("postgresql://bot@db/ledger") == "postgresql://bot@db/ledger"


async def test_a_failed_connection_names_the_server_without_the_password() -> None:
    store = PostgresEventStore("postgresql://bot:hunter2secret@127.0.0.1:1/ledger")
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "hunter2secret" not in str(caught.value)
    assert "postgresql://bot:***@127.0.0.1:1/ledger" in str(caught.value)
