"""How many times the writer waits for the server in one PostgreSQL write transaction.

A round trip is a wait for the server's reply: a pipeline Sync (everything queued before it
goes out together and the writer waits for the results up to it) or a command sent on its
own, outside a pipeline. The store's transaction needs the tail before it can decide, so it
cannot be one; it is two (BEGIN + LOCK + tail read, then INSERT + NOTIFY + COMMIT), and this
test catches a change that adds a third. It reads psycopg's internals (Connection.wait,
BasePipeline._enqueue_sync): a psycopg that renames them fails here loudly, never passes.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import pytest
from psycopg._pipeline_base import BasePipeline

from ledger.envelope import NewEvent
from ledger.events import PositionMarked, PositionOpened, stream_of
from ledger.store.postgres import PostgresEventStore
from ledger.values import Side
from tests.strategies import T0

pytestmark = pytest.mark.anyio


class RoundTrips:
    """Counts the waits of one connection: pipeline Syncs, and commands outside a pipeline."""

    def __init__(self, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        wait = conn.wait
        enqueue_sync = BasePipeline._enqueue_sync

        def counting_wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
            if conn._pipeline is None:  # sent on its own, then waited for
                self.count += 1
            return wait(gen, *args, **kwargs)

        def counting_sync(pipeline: BasePipeline) -> None:
            if pipeline._conn is conn:
                self.count += 1
            enqueue_sync(pipeline)

        monkeypatch.setattr(conn, "wait", counting_wait)
        monkeypatch.setattr(BasePipeline, "_enqueue_sync", counting_sync)


def _opened(position_id: str) -> NewEvent:
    event = PositionOpened(
        position_id=position_id,
        symbol="ETH/USDT:USDT",
        side=Side.BUY,
        qty=Decimal("0.5"),
        entry_price=Decimal(3000),
        leverage=4,
    )
    return NewEvent(stream=stream_of(event), event=event, event_id=position_id, occurred_at=T0)


def _marked(position_id: str, n: int) -> NewEvent:
    event = PositionMarked(position_id=position_id, mark_price=Decimal(3000 + n))
    return NewEvent(
        stream=stream_of(event), event=event, event_id=f"{position_id}-m{n}", occurred_at=T0
    )


async def _measured(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[PostgresEventStore, RoundTrips]:
    store = PostgresEventStore(pg_url)
    await store.open()
    return store, RoundTrips(store._writing(), monkeypatch)


async def test_an_append_to_known_streams_is_two_round_trips(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, trips = await _measured(pg_url, monkeypatch)
    try:
        await store.append([_opened("p1")])  # the store now knows p1's version
        before = trips.count
        await store.append([_marked("p1", 1), _marked("p1", 2)])
        assert trips.count - before == 2
        before = trips.count
        await store.append([_marked("p1", 3)])
        assert trips.count - before == 2
    finally:
        await store.close()


async def test_a_new_stream_costs_one_more_for_its_version(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, trips = await _measured(pg_url, monkeypatch)
    try:
        before = trips.count
        await store.append([_opened("p2")])  # MAX(version) of a stream this store never saw
        assert trips.count - before == 3
    finally:
        await store.close()


async def test_an_asyncio_callers_transaction_never_runs_on_its_loop(pg_url: str) -> None:
    """A PostgreSQL transaction is network I/O and may wait for the table lock: an asyncio
    caller hands it to the writer thread; a plain thread runs its own (see DESIGN in
    ledger/store/writer.py)."""
    store = PostgresEventStore(pg_url)
    await store.open()
    threads: list[int] = []
    real = store.run_transaction

    def noted(unit: Any) -> Any:
        threads.append(threading.get_ident())
        return real(unit)

    store.run_transaction = noted  # type: ignore[method-assign]
    try:
        callers: list[int] = []

        def bot() -> None:
            callers.append(threading.get_ident())
            store.append_blocking([_opened("thread-side")])

        await anyio.to_thread.run_sync(bot)
        await store.append([_opened("loop-side")])
        assert len(threads) == 2
        assert threads[0] == callers[0]  # the plain thread's own
        assert threads[1] != threading.get_ident()  # not the loop's
    finally:
        await store.close()
