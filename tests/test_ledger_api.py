"""What a bot author relies on from the async Ledger beyond the rules themselves."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import NewEvent
from ledger.errors import DuplicatePosition, ExchangeAuthError, LedgerError, StoreError
from ledger.events import BalanceObserved
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import fold_records
from projections.snapshot import PROJECTION_VERSION

pytestmark = pytest.mark.anyio


async def test_one_market_in_two_spellings_is_one_market(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await ledger.open_position("BTC/USDT:USDT", "buy", entry_price=60000, qty=1, leverage=5)
        assert ledger.has_position_for_symbol("BTCUSDT")
        assert ledger.get_position_for_symbol("btc/usdt", "buy") is not None
        head = ledger.last_seq
        with pytest.raises(DuplicatePosition):
            await ledger.open_position("BTCUSDT", "buy", entry_price=60000, qty=1, leverage=5)
        assert ledger.last_seq == head
        await ledger.open_position("BTCUSDT", "sell", entry_price=60000, qty=1, leverage=5)


async def test_an_exit_by_notional_is_decided_on_the_log_not_on_a_stale_book(
    db_path: Path,
) -> None:
    # Two processes (here two Ledgers on one file): B's book has not seen A's open yet.
    async with Ledger(db_path) as a, Ledger(db_path) as b:
        opened = await a.open_position(
            "SOL/USDT:USDT", "buy", entry_price=100, notional=500, leverage=5
        )
        assert b.get_position(opened.position_id) is None
        after = await b.register_partial_exit(opened.position_id, notional=150, price=110)
        assert after.position_size == 350
        assert after.partial_exits[0].realized_pnl == 15


async def test_errors_leave_async_with_unwrapped(db_path: Path) -> None:
    with pytest.raises(ExchangeAuthError):
        async with Ledger(db_path):
            raise ExchangeAuthError("keys refused")
    try:
        async with Ledger(db_path):
            raise DuplicatePosition("X", "buy", "pos_1")
    except LedgerError as caught:
        assert isinstance(caught, DuplicatePosition)


async def test_a_snapshot_from_another_projection_version_is_rebuilt(db_path: Path) -> None:
    snapshot = db_path.with_name("positions.json")
    async with Ledger(db_path) as ledger:
        p = await ledger.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=5, leverage=5)
        await ledger.close_position(p.position_id, price=110)
    document = json.loads(snapshot.read_text())
    assert document["projection_version"] == PROJECTION_VERSION
    document["projection_version"] = PROJECTION_VERSION - 1
    snapshot.write_text(json.dumps(document))
    async with Ledger(db_path, settings=Settings()) as ledger:
        assert ledger.rebuilt_on_start
        assert ledger.book.summary() == fold_records(await ledger.store.read()).summary()
    assert json.loads(snapshot.read_text())["projection_version"] == PROJECTION_VERSION


async def test_a_reopened_log_continues_old_streams_at_their_versions(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        p = await ledger.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=5, leverage=5)
        await ledger.mark(p.position_id, 101)
    # start-up reads no stream versions; they are loaded when a stream is written again
    async with Ledger(db_path) as ledger:
        await ledger.mark(p.position_id, 102)
        await ledger.close_position(p.position_id, price=103)
        history = await ledger.history(p.position_id)
    assert [r.version for r in history] == [1, 2, 3, 4]


async def test_staging_to_a_stream_whose_version_was_not_loaded_is_refused(db_path: Path) -> None:
    store = SQLiteEventStore(db_path)
    await store.open()
    try:
        event = BalanceObserved(total=Decimal(1), available=Decimal(1))
        new = NewEvent(stream="account", event=event, event_id="e1", occurred_at=datetime.now(UTC))
        with pytest.raises(StoreError, match="load_versions"):
            await store.transact(lambda tx: tx.stage([new]))
        assert (await store.head()).seq == 0
        assert [r.version for r in await store.append([new])] == [1]
    finally:
        await store.close()
