"""Several bots and accounts in one ledger: every position and balance carries its account,
the rules hold per account, summaries are per account or fleet-wide, each bot's exchange sync
touches its own account only, and logs written before accounts read as the default account."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.codec import decode_event
from ledger.errors import DuplicatePosition, InvalidValue, TooManyOpenPositions
from ledger.events import DEFAULT_ACCOUNT, BalanceObserved, PositionOpened
from ledger.exchange.observations import BalanceObservation
from ledger.exchange.sync import ExchangeSync
from ledger.service import Ledger
from ledger.settings import Settings, load_settings
from tests.exchange.test_reconcile import T0, row, snap

pytestmark = pytest.mark.anyio


def test_events_written_before_accounts_read_as_the_default_account() -> None:
    # bodies as schema version 1 wrote them: no account field
    opened_v1 = (
        b'{"type":"PositionOpened","position_id":"p1","symbol":"SOL/USDT:USDT","side":"buy",'
        b'"qty":"1","entry_price":"100","leverage":5}'
    )
    balance_v1 = b'{"type":"BalanceObserved","total":"10","available":"9"}'
    opened = decode_event(opened_v1, 1)
    balance = decode_event(balance_v1, 1)
    assert isinstance(opened, PositionOpened) and opened.account == DEFAULT_ACCOUNT
    assert isinstance(balance, BalanceObserved) and balance.account == DEFAULT_ACCOUNT
    assert msgspec.json.decode(msgspec.json.encode(opened))["account"] == "default"


def _settings(tmp_path: Path, name: str, **extra: object) -> Settings:
    return Settings(positions_file=str(tmp_path / f"{name}.json"), **extra)  # type: ignore[arg-type]


async def test_rules_hold_per_account_and_summaries_split_by_account(
    db_path: Path, tmp_path: Path
) -> None:
    limits = {"max_concurrent_positions": 1}
    a_settings = _settings(tmp_path, "a", **limits)
    b_settings = _settings(tmp_path, "b", **limits)
    async with (
        Ledger(db_path, snapshot_path=a_settings.positions_file, settings=a_settings,
               account="botA") as a,
        Ledger(db_path, snapshot_path=b_settings.positions_file, settings=b_settings,
               account="botB") as b,
    ):  # fmt: skip
        sol_a = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=2, leverage=5)
        # the same market and side in another account: not a duplicate, not over its limit
        sol_b = await b.open_position("SOL/USDT:USDT", "buy", entry_price=101, qty=1, leverage=5)
        assert (sol_a.account, sol_b.account) == ("botA", "botB")
        with pytest.raises(TooManyOpenPositions):
            await a.open_position("ETH/USDT:USDT", "buy", entry_price=10, qty=1, leverage=2)
        await b.close_position(sol_b.position_id, price=111)  # +10
        with pytest.raises(DuplicatePosition):
            await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        await a.register_partial_exit(sol_a.position_id, price=90, qty=1)  # -10
        await a.observe_balance(1000, 900)
        await b.observe_balance(500, 400)
        await b.refresh()
        # each ledger reads its own account by default, another or the fleet when asked
        assert [p.position_id for p in b.active_positions()] == []
        assert [p.position_id for p in b.active_positions("*")] == [sol_a.position_id]
        assert [p.position_id for p in b.closed_positions()] == [sol_b.position_id]
        mine, theirs, fleet = b.session_summary(), b.session_summary("botA"), b.session_summary("*")
    # by hand: B closed 1 @101 -> 111; A exited 1 of 2 @100 -> 90 and still holds 1
    assert (mine.closed_trades, mine.wins, mine.total_realized_pnl) == (1, 1, Decimal(10))
    assert (mine.balance, mine.available_balance) == (Decimal(500), Decimal(400))
    assert (theirs.active_positions, theirs.closed_trades) == (1, 0)
    assert theirs.total_realized_pnl == Decimal(-10)
    assert theirs.balance == Decimal(1000)
    assert fleet.total_realized_pnl == Decimal(0)
    assert (fleet.active_positions, fleet.closed_trades) == (1, 1)
    assert (fleet.balance, fleet.available_balance) == (Decimal(1500), Decimal(1300))


async def test_a_restart_from_the_snapshot_keeps_the_per_account_figures(
    db_path: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, "a")
    async with Ledger(db_path, snapshot_path=settings.positions_file, settings=settings,
                      account="botA") as a:  # fmt: skip
        p = await a.open_position("SOL/USDT:USDT", "sell", entry_price=100, qty=1, leverage=5)
        await a.close_position(p.position_id, price=90)
        await a.observe_balance(70, 60)
        before = (a.session_summary(), a.book.accounts, a.book.balances)
    async with Ledger(db_path, snapshot_path=settings.positions_file, settings=settings,
                      account="botA") as again:  # fmt: skip
        assert not again.rebuilt_on_start
        assert (again.session_summary(), again.book.accounts, again.book.balances) == before
    assert before[0].total_realized_pnl == Decimal(10)


def test_the_account_setting_and_the_blocking_manager(tmp_path: Path) -> None:
    env = {
        "POSITION_LEDGER_ACCOUNT": "botC",
        "POSITION_LEDGER_POSITIONS_FILE": str(tmp_path / "positions.json"),
        "POSITION_LEDGER_DB_PATH": str(tmp_path / "ledger.db"),
    }
    settings = load_settings(environ=env)
    assert settings.account == "botC"
    with ThreadSafePositionManager(settings=settings) as manager:
        manager.thread_safe_create_position(
            symbol="BTC/USDT:USDT", side="buy", entry_price=50_000, position_size=500, leverage=2
        )
        (position,) = manager.exact.get_active_positions()
        assert position.account == "botC"
    with pytest.raises(InvalidValue):
        Ledger(tmp_path / "x.db", account="*")


async def test_a_bots_exchange_sync_never_closes_or_adopts_another_accounts_positions(
    db_path: Path, tmp_path: Path
) -> None:
    a_settings, b_settings = _settings(tmp_path, "a"), _settings(tmp_path, "b")
    async with (
        Ledger(db_path, snapshot_path=a_settings.positions_file, settings=a_settings,
               account="botA") as a,
        Ledger(db_path, snapshot_path=b_settings.positions_file, settings=b_settings,
               account="botB") as b,
    ):  # fmt: skip
        theirs = await b.open_position("ETH/USDT:USDT", "buy", entry_price=3000, qty=1,
                                       leverage=3)  # fmt: skip
        sync = ExchangeSync()
        # bot A's exchange account holds BTC only, again and again: B's ETH is absent there
        for minute in range(4):
            when = T0 + timedelta(minutes=minute)
            balance = BalanceObservation(total=Decimal(100), available=Decimal(90), currency="USDT")
            await sync.apply(a, snap(when, positions=[row(created=T0)], balance=balance))
        await a.refresh()
        mine = a.active_positions()
        assert [(p.symbol, p.account) for p in mine] == [("BTC/USDT:USDT", "botA")]
        still = a.get_position(theirs.position_id)
        assert still is not None and still.is_open and still.account == "botB"
        assert a.book.balances == {"botA": (Decimal(100), Decimal(90))}
