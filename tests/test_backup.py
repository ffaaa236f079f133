"""Backups: consistent copies through SQLite's backup API, newest N kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import fold_records

pytestmark = pytest.mark.anyio


class StepClock:
    """A clock that moves one second per call, so backup file names never collide."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 7, 16, 45, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


async def test_a_backup_taken_while_appends_run_is_a_whole_verifiable_log(
    tmp_path: Path,
) -> None:
    settings = Settings(max_concurrent_positions=100, backup_retention=3)
    async with Ledger(tmp_path / "ledger.db", settings=settings) as ledger:
        copies: list[Path] = []

        async def trade(i: int) -> None:
            p = await ledger.open_position(
                f"C{i}/USDT:USDT", "buy", entry_price=10, qty=1, leverage=2
            )
            await ledger.close_position(p.position_id, price=11)

        async with anyio.create_task_group() as tasks:
            for i in range(60):
                tasks.start_soon(trade, i)
            copies.append(await ledger.backup(tmp_path / "backups"))
        live_seq = ledger.last_seq

    store = SQLiteEventStore(copies[0], read_only=True)
    await store.open()
    try:
        report = await store.verify_chain()
        book = fold_records(await store.read())
    finally:
        await store.close()
    assert 0 <= report.last_seq <= live_seq
    assert book.last_seq == report.last_seq
    # a consistent copy never holds half a command: no position opened and closed by half
    assert all(p.qty == 1 for p in book.closed.values())


async def test_only_the_newest_backups_are_kept(tmp_path: Path) -> None:
    settings = Settings(backup_retention=2)
    async with Ledger(tmp_path / "ledger.db", settings=settings, clock=StepClock()) as ledger:
        await ledger.observe_balance(100, 100)
        made = [await ledger.backup(tmp_path / "b") for _ in range(4)]
    kept = sorted((tmp_path / "b").glob("ledger-*.db"))
    assert kept == made[-2:]
