"""The seed's edge: ThreadSafePositionManager returns what the seed returned (floats, ISO
strings, dicts, copies), keeps every field a seed bot passes to create, has the seed's
update_position_size, and serialises "place the order, record the fill" with the sync."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import DuplicatePosition, InvalidValue
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.seed_edge import SeedPosition
from ledger.settings import Settings
from projections.positions import Position
from projections.stats import SessionSummary

SOL, BTC = "SOL/USDT:USDT", "BTC/USDT:USDT"
SEED_EXIT_KEYS = {"timestamp", "size", "price", "realized_pnl", "reason"}


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=Settings()
    ) as opened:
        yield opened


def stored_bodies(db: str | Path) -> list[dict[str, Any]]:
    """The event bodies as stored (Decimals are JSON strings), read with the stdlib driver."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


def seed_create_fields(**changes: Any) -> dict[str, Any]:
    """thread_safe_create_position's kwargs as a seed bot passes them: every field of the
    seed's dataclass but the id (it has no defaults for most of them)."""
    fields: dict[str, Any] = {
        "symbol": SOL,
        "side": "buy",
        "entry_price": 100.5,
        "current_price": 100.5,
        "position_size": 500.0,
        "leverage": 5,
        "unrealized_pnl": 0.0,
        "roe_percentage": 0.0,
        "open_time": "2025-01-07T16:45:00",
        "close_time": None,
        "confidence": 0.77,
        "open_reason": "ML BUY 77% | TF[15m:↑72% 30m:↑78% 1h:↑81%]",
        "close_reason": None,
        "atr": 2.3,
        "adx": 28.5,
        "volatility": 0.028,
        "real_initial_margin": 100.0,
        "partial_exits": [],
    }
    fields.update(changes)
    return fields


# -- what comes back is the seed's --------------------------------------------------------


def test_seed_bot_arithmetic_runs_unchanged(manager: ThreadSafePositionManager) -> None:
    pid = manager.thread_safe_create_position(**seed_create_fields())
    pos = manager.get_position(pid)
    assert isinstance(pos, SeedPosition)
    half = pos.position_size * 0.5  # TypeError with Decimal
    assert isinstance(half, float) and half == 250.0
    price = 110.0
    pnl = half * (price - pos.entry_price) / pos.entry_price  # the bot's own float PnL
    assert manager.register_partial_exit(pid, half, price, pnl, "partial_exit_50_roe")

    pos = manager.get_position(pid)
    assert pos is not None
    [pe] = pos.partial_exits
    assert set(pe) >= SEED_EXIT_KEYS
    assert isinstance(pe["realized_pnl"], float) and pe["realized_pnl"] == pnl
    assert pe["size"] == 250.0 and pe["price"] == 110.0 and pe["reason"] == "partial_exit_50_roe"
    assert isinstance(pe["timestamp"], str) and datetime.fromisoformat(pe["timestamp"]).tzinfo
    for name in ("entry_price", "current_price", "position_size", "unrealized_pnl"):
        assert type(getattr(pos, name)) is float, name
    assert isinstance(pos.open_time, str) and pos.close_time is None

    summary = manager.get_session_summary()
    text = json.dumps(summary)  # raised TypeError on Decimal
    assert json.loads(text)["total_realized_pnl"] == pnl
    assert summary["active_positions"] == 1 and type(summary["used_margin"]) is float
    json.dumps(asdict(pos))
    json.dumps([asdict(p) for p in manager.get_active_positions()])


def test_values_are_the_exact_ones_rounded_once(manager: ThreadSafePositionManager) -> None:
    """Floats in become Decimals through their shortest repr; floats out are the nearest
    float to the exact value; the exact values are one step away, on .exact."""
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=0.1, position_size=0.3, leverage=3
    )
    # reference: the decimal numbers the bot wrote, not their binary approximations
    qty = Decimal("0.3") / Decimal("0.1")
    assert qty == 3 and 0.3 / 0.1 != 3.0
    exact = manager.exact.get_position(pid)
    assert isinstance(exact, Position)
    assert exact.qty == qty and exact.entry_price == Decimal("0.1")
    assert manager.get_position(pid).qty == 3.0  # type: ignore[union-attr]
    [opened] = stored_bodies(manager.db_path)
    assert Decimal(opened["qty"]) == Decimal(3) and Decimal(opened["entry_price"]) == Decimal("0.1")

    assert manager.register_partial_exit(pid, 0.1, 0.13, None, "tp")
    realized = Decimal("0.1") / Decimal("0.1") * (Decimal("0.13") - Decimal("0.1"))
    exact = manager.exact.get_position(pid)
    assert exact is not None and exact.realized_pnl == realized == Decimal("0.03")
    seed = manager.get_position(pid)
    assert seed is not None and seed.realized_pnl == float(realized) == 0.03
    summary = manager.exact.get_session_summary()
    assert isinstance(summary, SessionSummary) and summary.total_realized_pnl == realized


def test_closed_positions_and_the_sync_return_seed_positions(
    manager: ThreadSafePositionManager,
) -> None:
    pid = manager.thread_safe_create_position(**seed_create_fields())
    assert manager.close_position(pid, "take_profit", 110.0)
    [closed] = manager.get_closed_positions()
    assert isinstance(closed, SeedPosition) and closed.status == "closed"
    assert isinstance(closed.close_time, str) and closed.close_reason == "take_profit"
    # 500 at 100.5 closed at 110: the reference PnL, rounded once to a float
    expected = Decimal(500) / Decimal("100.5") * (Decimal(110) - Decimal("100.5"))
    assert closed.realized_pnl == float(expected)
    assert manager.get_session_summary()["wins"] == 1


# -- create keeps or refuses every field --------------------------------------------------


def test_every_seed_field_given_to_create_is_kept(manager: ThreadSafePositionManager) -> None:
    fields = seed_create_fields(current_price=105.2, unrealized_pnl=23.5, roe_percentage=23.5)
    pid = manager.thread_safe_create_position(**fields)
    pos = manager.get_position(pid)
    assert pos is not None
    for name in ("confidence", "open_reason", "atr", "adx", "volatility", "real_initial_margin"):
        assert getattr(pos, name) == fields[name], name
    assert (pos.current_price, pos.unrealized_pnl, pos.roe_percentage) == (105.2, 23.5, 23.5)
    exact = manager.exact.get_position(pid)
    assert exact is not None
    assert exact.open_time == datetime(2025, 1, 7, 16, 45, tzinfo=UTC)  # the caller's time
    assert datetime.fromisoformat(pos.open_time) == exact.open_time
    assert exact.atr == Decimal("2.3") and exact.volatility == Decimal("0.028")
    opened, marked = stored_bodies(manager.db_path)
    assert Decimal(opened["confidence"]) == Decimal("0.77") and Decimal(opened["adx"]) == Decimal(
        "28.5"
    )
    assert Decimal(opened["real_initial_margin"]) == Decimal(100)
    assert Decimal(marked["mark_price"]) == Decimal("105.2") and Decimal(
        marked["unrealized_pnl"]
    ) == Decimal("23.5")


def test_open_time_may_be_a_datetime(manager: ThreadSafePositionManager) -> None:
    when = datetime(2025, 1, 7, 17, 45, tzinfo=UTC)
    pid = manager.thread_safe_create_position(**seed_create_fields(open_time=when))
    assert manager.exact.get_position(pid).open_time == when  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "changes",
    [
        {"open_time": "yesterday"},
        {"open_time": "2025-13-07T16:45:00"},
        {"open_time": 1736268300},
        {"open_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
        {"close_time": "2025-01-07T17:00:00"},
        {"close_reason": "tp"},
        {"partial_exits": [{"size": 10.0, "price": 110.0}]},
        {"roe_percentage": 50.0},  # unrealized 0 at the entry price: ROE 0
        {"current_price": 110.0, "roe_percentage": 1.0},  # the ledger derives 47.26...
        {"open_reason": 42},
        {"position_id": 7},
        {"stop_loss": 95.0},
    ],
    ids=repr,
)
def test_a_field_create_cannot_keep_is_refused(
    manager: ThreadSafePositionManager, changes: dict[str, Any]
) -> None:
    with pytest.raises(InvalidValue):
        manager.thread_safe_create_position(**seed_create_fields(**changes))
    assert manager.get_active_positions() == []
    assert stored_bodies(manager.db_path) == []


# -- update_position_size -------------------------------------------------------------------


def test_update_position_size_down_is_a_partial_exit(manager: ThreadSafePositionManager) -> None:
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=100.0, position_size=500.0, leverage=5
    )
    assert manager.update_position_price(pid, 110.0)
    assert manager.update_position_size(pid, 200.0)  # 300 USD at entry left at the mark
    pos = manager.get_position(pid)
    assert pos is not None and pos.position_size == 200.0
    [pe] = pos.partial_exits
    assert (pe["size"], pe["price"], pe["realized_pnl"]) == (300.0, 110.0, 30.0)  # 3 x 10
    assert manager.update_position_size(pid, 200.0)  # no change, nothing recorded
    assert len(stored_bodies(manager.db_path)) == 3
    assert manager.update_position_size(pid, 0.0, price=120.0, reason="flat")
    assert manager.get_position(pid) is None
    [closed] = manager.get_closed_positions()
    assert closed.realized_pnl == 30.0 + 2 * 20.0


def test_update_position_size_up_is_an_increase(manager: ThreadSafePositionManager) -> None:
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=100.0, position_size=500.0, leverage=5
    )
    assert manager.update_position_size(pid, 740.0, price=120.0)  # 240 USD more at 120: qty 2
    exact = manager.exact.get_position(pid)
    assert exact is not None
    # reference: 5 at 100 plus 2 at 120
    assert exact.qty == 7 and exact.entry_price == Decimal(740) / 7
    # the averaged entry is a repeating decimal: qty x entry is 740 to 27 places
    assert abs(exact.position_size - 740) < Decimal("1e-20")
    assert manager.get_position(pid).position_size == 740.0  # type: ignore[union-attr]
    bodies = stored_bodies(manager.db_path)
    assert bodies[-1]["type"] == "PositionIncreased" and bodies[-1]["source"] == "bot"


def test_update_position_size_unknown_closed_and_bad(manager: ThreadSafePositionManager) -> None:
    assert manager.update_position_size("pos_nope", 100.0) is False
    pid = manager.thread_safe_create_position(
        symbol=SOL, side="buy", entry_price=100.0, position_size=500.0, leverage=5
    )
    with pytest.raises(InvalidValue):
        manager.update_position_size(pid, -1.0)
    with pytest.raises(InvalidValue):
        manager.update_position_size(pid, float("nan"))
    assert manager.close_position(pid, "done", 100.0)
    count = len(stored_bodies(manager.db_path))
    assert manager.update_position_size(pid, 100.0) is False
    assert len(stored_bodies(manager.db_path)) == count


# -- trading(): place the order, record the fill, with no sync in between -----------------


def wait_until_a_sync_waits(manager: ThreadSafePositionManager) -> None:
    """Until the sync thread is blocked on the trading lock (a condition, not a guess)."""
    deadline = time.monotonic() + 30
    while manager._trading.waiting == 0:
        assert time.monotonic() < deadline, "the sync never started waiting"
        time.sleep(0.005)


def sync_in_its_own_thread(
    manager: ThreadSafePositionManager, ex: BybitEmulator, out: dict[str, object]
) -> threading.Thread:
    """A real thread running its own event loop and ccxt client, as a bot's sync task."""

    async def sync() -> None:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        try:
            out["result"] = await manager.thread_safe_sync_with_bybit(client)
        finally:
            await client.close()

    thread = threading.Thread(target=lambda: asyncio.run(sync()), name="sync")
    thread.start()
    return thread


def record_fill(manager: ThreadSafePositionManager) -> str:
    return manager.thread_safe_create_position(
        symbol=BTC, side="buy", entry_price=60000.0, position_size=600.0, leverage=10
    )


@pytest.mark.anyio
async def test_a_sync_waits_while_the_bot_places_and_records(tmp_path: Path) -> None:
    async with BybitEmulator() as ex:
        manager = ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings())
        out: dict[str, object] = {}

        def bot() -> str:
            with manager.trading():
                # the order fills on the exchange ...
                anyio.from_thread.run_sync(lambda: ex.open_position(BTC, "buy", "0.01", "60000"))
                syncer = sync_in_its_own_thread(manager, ex, out)
                wait_until_a_sync_waits(manager)
                # ... and is recorded before any sync can see the exchange ahead of the ledger
                pid = record_fill(manager)
            syncer.join()
            return pid

        try:
            pid = await anyio.to_thread.run_sync(bot)
            assert out["result"] == ([], [])  # nothing adopted: no double count
            [position] = manager.exact.get_active_positions()
            assert position.position_id == pid and position.source == "bot"
            assert position.qty == Decimal("0.01")
        finally:
            manager.close()


@pytest.mark.anyio
async def test_without_trading_the_sync_double_counts(tmp_path: Path) -> None:
    """The hazard trading() prevents: a sync between the order and its record adopts the
    bot's own fill as a position opened by hand, and the record is then refused."""
    async with BybitEmulator() as ex:
        manager = ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings())
        out: dict[str, object] = {}

        def bot() -> None:
            anyio.from_thread.run_sync(lambda: ex.open_position(BTC, "buy", "0.01", "60000"))
            sync_in_its_own_thread(manager, ex, out).join()
            with pytest.raises(DuplicatePosition):
                record_fill(manager)

        try:
            await anyio.to_thread.run_sync(bot)
            [adopted] = manager.exact.get_active_positions()
            assert adopted.source == "exchange"
        finally:
            manager.close()


@pytest.mark.anyio
async def test_trading_from_an_asyncio_task(tmp_path: Path) -> None:
    """`async with manager.trading()` keeps the caller's loop running while it waits."""
    manager = ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings())
    order: list[str] = []
    try:
        holder_in, holder_out = threading.Event(), threading.Event()

        def holder() -> None:
            with manager.trading():
                holder_in.set()
                holder_out.wait(30)
                order.append("thread")

        thread = threading.Thread(target=holder)
        thread.start()
        assert await anyio.to_thread.run_sync(lambda: holder_in.wait(30))

        async def task() -> None:
            async with manager.trading():
                order.append("task")

        async with anyio.create_task_group() as tg:
            tg.start_soon(task)
            while manager._trading.waiting == 0:  # the task waits, the loop runs
                await anyio.sleep(0.005)
            holder_out.set()
        thread.join()
        assert order == ["thread", "task"]
    finally:
        manager.close()
