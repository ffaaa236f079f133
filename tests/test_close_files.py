"""Closing a ledger leaves only its database: the WAL is checkpointed and -wal/-shm removed,
unless another connection (here a second Ledger, as another process would) still uses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio


def _sidecars(db: Path) -> list[str]:
    return sorted(p.name for p in (Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


async def test_closing_a_ledger_removes_wal_and_shm(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        opened = await ledger.open_position(
            "BTC/USDT:USDT", "buy", entry_price=60000, qty=1, leverage=5
        )
        assert _sidecars(db_path) == [f"{db_path.name}-shm", f"{db_path.name}-wal"]
    assert _sidecars(db_path) == []
    # everything written is in the database file itself: reopened, the position is there
    async with Ledger(db_path) as again:
        assert again.get_position(opened.position_id) is not None


async def test_the_wal_stays_while_another_ledger_uses_the_file(db_path: Path) -> None:
    async with Ledger(db_path) as first:
        async with Ledger(db_path) as second:
            await second.open_position("ETH/USDT:USDT", "sell", entry_price=3000, qty=1, leverage=2)
        assert f"{db_path.name}-wal" in _sidecars(db_path)  # `first` still reads it
        await first.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=2)
    assert _sidecars(db_path) == []
    async with Ledger(db_path) as again:
        assert len(again.active_positions()) == 2


async def test_a_store_closed_after_a_failed_write_still_removes_them(db_path: Path) -> None:
    store = SQLiteEventStore(db_path)
    await store.open()

    def fail(_: object) -> None:
        raise RuntimeError("the unit of work fails: the transaction is rolled back")

    with pytest.raises(RuntimeError):
        await store.transact(fail)
    assert (await store.head()).seq == 0  # the reader has the WAL open too
    await store.close()
    assert _sidecars(db_path) == []


def test_closing_the_blocking_manager_removes_wal_and_shm(tmp_path: Path, db_path: Path) -> None:
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=db_path, settings=Settings()
    ) as manager:
        manager.thread_safe_create_position(
            symbol="BTC/USDT:USDT",
            side="buy",
            entry_price=60000.0,
            current_price=60000.0,
            position_size=1000.0,
            leverage=5,
            unrealized_pnl=0.0,
            roe_percentage=0.0,
            open_time="2025-01-07T16:45:00",
            close_time=None,
            confidence=0.7,
            open_reason="test",
            close_reason=None,
        )
    assert _sidecars(db_path) == []
