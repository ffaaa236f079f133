"""A stopped ledger leaves its whole history in the database file: no -wal or -shm behind.

An operator who stops the bot and copies `ledger.db` (or an auditor who was granted read
access to it alone, as the README says) must get every event: SQLite removes the write-ahead
log only when the last connection to close can write, so the ledger's read-only connection
must not be the last one closed.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings


def events_in_the_file_alone(db: Path, copy: Path) -> int:
    """How many events a copy of the database file, without any -wal/-shm, holds."""
    shutil.copyfile(db, copy)
    uri = f"file:{copy}?immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.mark.anyio
async def test_a_stopped_ledger_leaves_every_event_in_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    async with Ledger(db, settings=Settings()) as ledger:
        position = await ledger.open_position(
            "SOLUSDT", "buy", entry_price="100", qty="2", leverage=5
        )
        await ledger.mark(position.position_id, "101")
        await ledger.close_position(position.position_id, price="102", reason="tp")
        stored = ledger.last_seq
    assert stored == 3
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    assert events_in_the_file_alone(db, tmp_path / "copy.db") == stored


def test_a_closed_position_manager_leaves_every_event_in_the_database_file(
    tmp_path: Path,
) -> None:
    manager = ThreadSafePositionManager(tmp_path / "positions.json")
    pid = manager.thread_safe_create_position(
        symbol="SOL/USDT:USDT", side="buy", entry_price=100.0, position_size=500.0, leverage=5
    )
    assert manager.close_position(pid, "tp", 110.0)
    manager.close()
    db = tmp_path / "ledger.db"
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    assert events_in_the_file_alone(db, tmp_path / "copy.db") == 2
