"""A decider's Plan is type-checked like a command: its idempotency key is a non-empty str and
its time a datetime, or the job fails alone with InvalidValue and nothing is appended.

An int key used to be stored as SQLite text ("5") after the row's hash was computed over the
int: the chain broke at that row, and every command that trusts the log refused it from then on.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import InvalidValue
from ledger.events import PositionMarked
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from projections.book import Book

ROOT = Path(__file__).resolve().parents[1]
BAD_KEYS: list[Any] = [5, 5.0, b"k", True, "", "  ", ("k",), Decimal(5)]
BAD_TIMES: list[Any] = ["2025-01-01T00:00:00", 1735689600, b"x", object()]


def planning(plan: Plan) -> Callable[[Book], list[Plan]]:
    return lambda book: [plan]


@pytest.mark.anyio
async def test_a_plan_with_a_key_or_time_of_the_wrong_type_is_refused_and_the_log_verifies(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    async with Ledger(db, settings=Settings()) as ledger:
        position = await ledger.open_position("SOLUSDT", "buy", entry_price=100, qty=1, leverage=5)
        pid = position.position_id
        head = ledger.last_seq
        mark = PositionMarked(position_id=pid, mark_price=Decimal(101))
        for key in BAD_KEYS:
            with pytest.raises(InvalidValue):
                await ledger.transact(planning(Plan(mark, key=key)))
        for when in BAD_TIMES:
            with pytest.raises(InvalidValue):
                await ledger.transact(planning(Plan(mark, occurred_at=when)))
        assert ledger.last_seq == head
        # good ones still go in: a str key, a naive time taken as UTC
        await ledger.transact(lambda book: [Plan(mark, key="exec-1")])
        naive = datetime(2025, 1, 7, 17, 0)
        [stored] = await ledger.transact(
            lambda book: [Plan(PositionMarked(position_id=pid, mark_price=Decimal(102)),
                               occurred_at=naive)]
        )  # fmt: skip
        assert stored.occurred_at == naive.replace(tzinfo=UTC)
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
