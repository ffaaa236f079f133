"""A seed bot that hands back the position_size it was given changes nothing.

The manager returns sizes as the nearest float to an exact Decimal (a 500 / 3 exit leaves
333.33333333333333999...; an averaged entry leaves 739.99999...), so the seed's pattern
`update_position_size(pid, pos.position_size)` passes a value off by rounding only. Under the
one dust rule that is no change: nothing is recorded and no error is raised. A real change,
however small beside the dust, is still recorded.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.settings import Settings

SOL = "SOL/USDT:USDT"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=Settings()
    ) as opened:
        yield opened


def event_types(db: str | Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(body)["type"] for (body,) in rows]


def test_the_size_left_after_a_third_is_exited_is_no_change(
    manager: ThreadSafePositionManager,
) -> None:
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=100.5, position_size=500.0, leverage=5
    )
    assert manager.register_partial_exit(pid, 500.0 / 3, 101.0, None, "third")
    pos = manager.get_position(pid)
    assert pos is not None
    before = event_types(manager.db_path)
    assert manager.update_position_size(pid, pos.position_size, 101.0) is True
    assert event_types(manager.db_path) == before  # nothing recorded
    after = manager.get_position(pid)
    assert after is not None and after.position_size == pos.position_size


def test_the_size_after_an_averaged_increase_is_no_change(
    manager: ThreadSafePositionManager,
) -> None:
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=100.0, position_size=500.0, leverage=5
    )
    assert manager.update_position_size(pid, 740.0, price=120.0)  # entry becomes 740 / 7
    pos = manager.get_position(pid)
    assert pos is not None
    before = event_types(manager.db_path)
    assert manager.update_position_size(pid, pos.position_size, 120.0) is True
    assert event_types(manager.db_path) == before


def test_a_real_change_is_still_recorded(manager: ThreadSafePositionManager) -> None:
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=100.0, position_size=500.0, leverage=5
    )
    assert manager.update_position_size(pid, 499.99, price=100.0)  # 0.01 USD: qty 1e-4
    assert event_types(manager.db_path)[-1] == "PartialExitRecorded"
    assert manager.update_position_size(pid, 500.0, price=100.0)
    assert event_types(manager.db_path)[-1] == "PositionIncreased"
