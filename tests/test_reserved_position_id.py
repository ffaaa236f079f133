"""A position may not be called "account": that is the stream of the account's own events
(balances, imports, recorded limits), and a position filed there shared its history with them
(`ledger history account` listed balance observations as the position's events). Refused by
the rules for a command, and listed as unreadable by the seed importer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import InvalidValue
from ledger.events import ACCOUNT_STREAM
from ledger.seed_import import plan_import
from ledger.service import Ledger
from ledger.settings import Settings
from tests.seed_reference import SEED_EXAMPLE


@pytest.mark.anyio
async def test_the_account_stream_is_not_a_position_id(tmp_path: Path) -> None:
    async with Ledger(tmp_path / "ledger.db", settings=Settings()) as ledger:
        await ledger.observe_balance(1000, 900)
        head = ledger.last_seq
        with pytest.raises(InvalidValue, match="reserved"):
            await ledger.open_position(
                "SOLUSDT", "buy", entry_price=1, qty=1, leverage=2, position_id=ACCOUNT_STREAM
            )
        assert ledger.last_seq == head
        assert [type(r.event).__name__ for r in await ledger.history(ACCOUNT_STREAM)] == [
            "BalanceObserved"
        ]


def test_the_seed_api_refuses_it_too(tmp_path: Path) -> None:
    with ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings()) as manager:
        with pytest.raises(InvalidValue, match="reserved"):
            manager.thread_safe_create_position(
                symbol="SOL/USDT:USDT",
                side="buy",
                entry_price=100.0,
                position_size=500.0,
                leverage=5,
                position_id="account",
            )
        assert manager.get_active_positions() == []


def test_a_seed_file_s_position_called_account_is_listed_not_imported(tmp_path: Path) -> None:
    seed = json.loads(SEED_EXAMPLE)
    record = seed["open_positions"].pop("pos_abc123")
    seed["open_positions"]["account"] = {**record, "position_id": "account"}
    (tmp_path / "positions.json").write_text(json.dumps(seed))
    with ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings()) as manager:
        assert manager.get_active_positions() == []
    plan = plan_import(json.dumps(seed).encode(), "positions.json")
    assert [bad.position_id for bad in plan.report.unreadable] == ["account"]
    assert "reserved" in plan.report.unreadable[0].reason
