"""The bot's background service: exit rules, backoff, auth stop, backups, graceful shutdown."""

from __future__ import annotations

import random
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.envelope import Recorded
from ledger.errors import ExchangeAuthError
from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.exit_rules import (
    DEFAULT_RULES,
    ExitOrder,
    ExitRule,
    due_exits,
    parse_rules,
)
from ledger.exchange.service import Backoff, BotService, ExitFill
from ledger.service import Decider, Ledger
from ledger.settings import Settings
from ledger.values import Side, Source
from projections.positions import Position
from projections.snapshot import decode_snapshot

pytestmark = pytest.mark.anyio

D = Decimal
BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"
ROOT = Path(__file__).resolve().parents[2]


def quiet_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "auto_backup_enabled": False,
        "position_sync_interval": 3600.0,
        "backup_dir": str(tmp_path / "backups"),
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running(service: BotService) -> AsyncIterator[BotService]:
    async with anyio.create_task_group() as group:
        group.start_soon(service.run)
        yield service
        service.stop("test done")


def exits_of(position: Position | None) -> list[str | None]:
    assert position is not None
    return [e.rule for e in position.partial_exits]


# -- the rules, pure ------------------------------------------------------------------------


def test_due_exits_fire_lowest_level_first_on_what_is_left() -> None:
    position = Position(
        position_id="p",
        symbol=BTC,
        side=Side.BUY,
        entry_price=D(100),
        current_price=D(112),
        position_size=D(1000),
        leverage=10,
        unrealized_pnl=D(120),
        roe_percentage=D(120),
        open_time=datetime(2025, 1, 1, tzinfo=UTC),
        qty=D(10),
        initial_qty=D(10),
    )
    orders = due_exits(position, DEFAULT_RULES)
    assert [(o.rule, o.qty) for o in orders] == [
        ("partial_exit_50_roe", D(5)),
        ("partial_exit_100_roe", D("2.5")),
    ]
    assert due_exits(position, DEFAULT_RULES, skip={"partial_exit_50_roe"})[0].qty == D(5)
    assert parse_rules("a=50:0.5, b=100:1") == (
        ExitRule(name="a", roe_pct=D(50), fraction=D("0.5")),
        ExitRule(name="b", roe_pct=D(100), fraction=D(1)),
    )


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(5))
    delays = [backoff.delay(n) for n in range(1, 7)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder


# -- exit rules in the service --------------------------------------------------------------


async def test_each_rule_fires_at_most_once_per_position_across_restarts(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path)
    db = tmp_path / "ledger.db"
    async with Ledger(db, settings=settings) as ledger:
        a = await ledger.open_position(BTC, "buy", entry_price="100", qty="10", leverage=10)
        b = await ledger.open_position(ETH, "buy", entry_price="100", qty="10", leverage=10)
        async with running(BotService(ledger, settings=settings)) as service:
            await ledger.mark(a.position_id, "106")  # ROE 60%
            with anyio.fail_after(5):
                await service.wait_for(lambda s: len(s.exits) == 1)
            position = ledger.get_position(a.position_id)
            assert exits_of(position) == ["partial_exit_50_roe"]
            assert position is not None and position.qty == D(5)
            assert position.partial_exits[0].source is Source.BOT
            await ledger.mark(a.position_id, "107")  # still above 50%: nothing more
            await ledger.mark(b.position_id, "106")  # a sentinel: checked after a's marks
            with anyio.fail_after(5):
                await service.wait_for(lambda s: len(s.exits) == 2)
            assert exits_of(ledger.get_position(a.position_id)) == ["partial_exit_50_roe"]
            await ledger.mark(a.position_id, "111")  # ROE 110%
            with anyio.fail_after(5):
                await service.wait_for(lambda s: len(s.exits) == 3)
            assert exits_of(ledger.get_position(a.position_id)) == [
                "partial_exit_50_roe",
                "partial_exit_100_roe",
            ]
    # a new process: the rules that fired are read from the log, not from memory
    async with Ledger(db, settings=settings) as ledger:
        c = await ledger.open_position(SOL, "buy", entry_price="100", qty="10", leverage=10)
        async with running(BotService(ledger, settings=settings)) as service:
            await ledger.mark(a.position_id, "130")
            await ledger.mark(c.position_id, "106")  # sentinel
            with anyio.fail_after(5):
                await service.wait_for(lambda s: len(s.exits) == 1)
            assert service.exits == [(c.position_id, "partial_exit_50_roe")]
            assert len(exits_of(ledger.get_position(a.position_id))) == 2


async def test_an_executor_places_the_exit_on_the_exchange_and_sync_agrees(
    tmp_path: Path,
) -> None:
    settings = quiet_settings(tmp_path)
    async with BybitEmulator() as ex, Ledger(tmp_path / "l.db", settings=settings) as ledger:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        ex.set_mark_price(SOL, "100")
        ex.open_position(SOL, "buy", "10", "100", leverage=10)

        async def reduce_on_exchange(position: Position, order: ExitOrder) -> ExitFill:
            record = ex.reduce_position(position.symbol, position.side.value, order.qty, "106")
            return ExitFill(
                qty=record.qty, price=record.avg_exit_price, realized_pnl=record.closed_pnl
            )

        service = BotService(
            ledger, ExchangeGateway(client), settings=settings, exit_executor=reduce_on_exchange
        )
        async with running(service):
            with anyio.fail_after(5):
                await service.wait_for(lambda s: s.sync.syncs_ok == 1)
            ex.set_mark_price(SOL, "106")  # ROE 60% on the exchange's margin
            service.request_sync()
            with anyio.fail_after(5):
                await service.wait_for(lambda s: len(s.exits) == 1)
            service.request_sync()
            with anyio.fail_after(5):
                await service.wait_for(lambda s: s.sync.syncs_ok >= 3)
        (position,) = ledger.active_positions()
        (exit_,) = position.partial_exits  # not a second, "manual" one from the sync
        assert exit_.rule == "partial_exit_50_roe" and position.qty == D(5)
        assert exit_.realized_pnl == ex.state.closed_pnl[0].closed_pnl
        assert client.closed_by_user  # the service closed the exchange client


# -- exchange errors ------------------------------------------------------------------------


async def test_exchange_faults_back_off_then_recover(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path)
    async with BybitEmulator() as ex, Ledger(tmp_path / "l.db", settings=settings) as ledger:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        ex.open_position(BTC, "buy", "0.01", "60000")
        ex.inject_fault("http_503", count=2, path="/v5/position/list")
        ex.inject_fault("rate_limit", count=2, path="/v5/position/list")
        backoff = Backoff(base=0.01, cap=0.03, rng=random.Random(11))
        service = BotService(ledger, ExchangeGateway(client), settings=settings, backoff=backoff)
        async with running(service):
            with anyio.fail_after(10):
                await service.wait_for(lambda s: s.sync.syncs_ok == 1)
        assert service.sync.syncs_failed == 4 and service.consecutive_failures == 0
        ceilings = [0.01, 0.02, 0.03, 0.03]
        assert len(service.delays) == 4
        assert all(c / 2 <= d <= c for d, c in zip(service.delays, ceilings, strict=True))
        # four refused, then the good sync lists each settle coin (USDT, USDC): one short page
        # each (Bybit's cursor is non-empty on the last page too: a short page is the end)
        assert sum(1 for r in ex.requests if r.path == "/v5/position/list") == 4 + 2
        assert ledger.has_position_for_symbol(BTC)


async def test_refused_keys_stop_the_service_with_a_clear_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = quiet_settings(tmp_path)
    snapshot = tmp_path / "positions.json"
    async with (
        BybitEmulator(api_key="the-right-key") as ex,
        Ledger(tmp_path / "l.db", settings=settings) as ledger,
    ):
        client = make_ccxt_client(ex, api_key="a-wrong-key")
        client.enableRateLimit = False
        service = BotService(ledger, ExchangeGateway(client), settings=settings)
        with anyio.fail_after(10), pytest.raises(ExchangeAuthError) as caught:
            await service.run()
        message = str(caught.value)
        assert "refused the API key" in message and "BYBIT_API_KEY" in message
        assert "stopping the bot service" in caplog.text
        assert service.sync.syncs_ok == 0 and service.delays == []  # no retrying
        assert snapshot.exists() and client.closed_by_user


# -- shutdown and backups ------------------------------------------------------------------


async def test_cancelling_the_service_writes_the_snapshot_and_closes_the_client(
    tmp_path: Path,
) -> None:
    settings = quiet_settings(tmp_path, snapshot_every_seconds=3600.0, snapshot_every_events=10**6)
    snapshot = tmp_path / "positions.json"
    async with BybitEmulator() as ex, Ledger(tmp_path / "l.db", settings=settings) as ledger:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        ex.open_position(BTC, "buy", "0.01", "60000")
        service = BotService(ledger, ExchangeGateway(client), settings=settings)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(service.run)
                with anyio.fail_after(5):
                    await service.wait_for(lambda s: s.sync.syncs_ok == 1)
                await ledger.mark(ledger.active_positions()[0].position_id, "60100")
                scope.cancel()
        assert not service.running and client.closed_by_user
        written = decode_snapshot(snapshot.read_bytes())
        assert written.last_seq == ledger.last_seq  # including the mark made just before
        assert [p.current_price for p in written.open.values()] == [D(60100)]


class _HeldLedger(Ledger):
    """A ledger whose next transaction waits for the test's go, to stop a service mid-append."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def transact(self, decider: Decider) -> list[Recorded]:
        self.entered.set()
        await self.release.wait()
        return await super().transact(decider)


async def test_stopping_mid_append_lets_the_append_finish(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path, snapshot_every_seconds=3600.0, snapshot_every_events=10**6)
    ledger = _HeldLedger(tmp_path / "l.db", settings=settings)
    async with BybitEmulator() as ex, ledger:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        ex.open_position(BTC, "buy", "0.01", "60000")
        service = BotService(ledger, ExchangeGateway(client), settings=settings, rules=())
        async with anyio.create_task_group() as group:
            group.start_soon(service.run)
            with anyio.fail_after(5):
                await ledger.entered.wait()  # the sync has fetched and is appending
            service.stop("shutdown mid-append")
            ledger.release.set()
        assert ledger.has_position_for_symbol(BTC)  # the append in flight finished
        written = decode_snapshot((tmp_path / "positions.json").read_bytes())
        assert written.last_seq == ledger.last_seq > 0


async def test_backups_run_when_due_and_not_again_on_restart(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path, auto_backup_enabled=True, backup_interval_hours=24.0)
    db = tmp_path / "ledger.db"
    backups: list[tuple[int, float | None]] = []
    for _ in range(2):
        async with Ledger(db, settings=settings) as ledger:
            await ledger.observe_balance(100, 100)
            async with running(BotService(ledger, settings=settings, rules=())) as service:
                with anyio.fail_after(5):
                    await service.wait_for(lambda s: s.next_backup_in is not None)
                backups.append((len(service.backups), service.next_backup_in))
    (first, next_first), (second, next_second) = backups
    assert first == 1 and second == 0  # the restart found a fresh backup: none due
    assert next_first is not None and next_second is not None
    assert next_first > 23 * 3600 and 23 * 3600 < next_second <= 24 * 3600
    assert len(list((tmp_path / "backups").glob("ledger-*.db"))) == 1


CHILD = """
import sys
from pathlib import Path

import anyio

from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.service import BotService
from ledger.service import Ledger
from ledger.settings import Settings
from projections.snapshot import decode_snapshot


async def main(folder: Path) -> None:
    settings = Settings(
        auto_backup_enabled=False, position_sync_interval=3600, snapshot_every_seconds=3600,
        snapshot_every_events=10**6,
    )
    async with BybitEmulator() as ex:
        ex.open_position("BTC/USDT:USDT", "buy", "0.01", "60000")
        client = make_ccxt_client(ex)
        async with Ledger(folder / "ledger.db", settings=settings) as ledger:
            service = BotService(ledger, ExchangeGateway(client), handle_signals=True)
            async with anyio.create_task_group() as group:
                group.start_soon(service.run)
                await service.wait_for(lambda s: s.sync.syncs_ok >= 1)
                print("READY", ledger.last_seq, flush=True)
            written = decode_snapshot((folder / "positions.json").read_bytes())
            print("STOPPED", service.stop_reason, written.last_seq, ledger.last_seq, flush=True)


anyio.run(main, Path(sys.argv[1]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_shuts_a_running_service_down_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with await anyio.open_process(
        [sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        with anyio.fail_after(30):
            buffer = b""
            async for chunk in process.stdout:
                buffer += chunk
                if b"READY" in buffer and buffer.endswith(b"\n"):
                    break
            lines.append(buffer.decode().strip())
            process.send_signal(signum)
            async for chunk in process.stdout:
                buffer += chunk
            code = await process.wait()
    output = buffer.decode().split("\n")
    assert code == 0, output
    ready = next(line for line in output if line.startswith("READY")).split()
    stopped = next(line for line in output if line.startswith("STOPPED")).split()
    assert stopped[1] == signum.name
    assert stopped[2] == stopped[3] == ready[1] != "0"  # the snapshot is at the log's head
    async with Ledger(tmp_path / "ledger.db") as ledger:
        assert not ledger.rebuilt_on_start  # the snapshot matched the log
        assert ledger.has_position_for_symbol(BTC)


async def test_a_paper_service_without_a_gateway_only_runs_the_rules(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path)
    async with Ledger(tmp_path / "l.db", settings=settings) as ledger:
        position = await ledger.open_position(BTC, "sell", entry_price="100", qty="2", leverage=5)
        rule = ExitRule(name="all_out", roe_pct=D(25), fraction=D(1))
        async with running(BotService(ledger, settings=settings, rules=[rule])) as service:
            await ledger.mark(position.position_id, "95")  # short: +10 on 40 margin = 25%
            with anyio.fail_after(5):
                await service.wait_for(lambda s: len(s.exits) == 1)
        closed = ledger.get_position(position.position_id)
        assert closed is not None and not closed.is_open and closed.realized_pnl == D(10)
        assert service.sync.syncs_ok == 0 and service.sync.syncs_failed == 0


# -- durable exit intents and live marks --------------------------------------------------------


async def test_an_exit_placed_but_not_recorded_never_fires_again_after_a_restart(
    tmp_path: Path,
) -> None:
    settings = quiet_settings(tmp_path)
    db = tmp_path / "l.db"
    placed: list[ExitOrder] = []
    async with BybitEmulator() as ex:
        ex.set_mark_price(SOL, "100")
        ex.open_position(SOL, "buy", "10", "100", leverage=10)

        async def placed_then_garbled(position: Position, order: ExitOrder) -> ExitFill:
            placed.append(order)
            ex.reduce_position(position.symbol, position.side.value, order.qty, "106")
            return ExitFill(qty=D(999), price=D(106))  # a fill the ledger refuses to record

        async with Ledger(db, settings=settings) as ledger:
            client = make_ccxt_client(ex)
            client.enableRateLimit = False
            service = BotService(
                ledger,
                ExchangeGateway(client),
                settings=settings,
                exit_executor=placed_then_garbled,
            )
            async with running(service):
                with anyio.fail_after(20):
                    await service.wait_for(lambda s: s.sync.syncs_ok == 1)
                ex.set_mark_price(SOL, "106")  # ROE 60%
                service.request_sync()
                with anyio.fail_after(20):
                    await service.wait_for(lambda s: len(placed) == 1 and s.sync.syncs_ok >= 2)
            (position,) = ledger.active_positions()
            assert position.pending_exits == ("partial_exit_50_roe",)
            assert placed[0].order_link_id and len(placed[0].order_link_id) <= 36
        # a new process: the intent is in the log, so the rule is not fired on the remainder
        again: list[ExitOrder] = []

        async def counting(position: Position, order: ExitOrder) -> ExitFill:
            again.append(order)
            return ExitFill(qty=order.qty, price=order.price)

        async with Ledger(db, settings=settings) as ledger:
            client = make_ccxt_client(ex)
            client.enableRateLimit = False
            service = BotService(
                ledger, ExchangeGateway(client), settings=settings, exit_executor=counting
            )
            async with running(service):
                with anyio.fail_after(20):
                    await service.wait_for(lambda s: s.sync.syncs_ok == 1)
                (position,) = ledger.active_positions()
                await ledger.mark(position.position_id, "108")  # still above 50%
                service.request_sync()
                with anyio.fail_after(20):
                    await service.wait_for(lambda s: s.sync.syncs_ok >= 2)
            assert again == []
            (position,) = ledger.active_positions()
            assert position.qty == D(5)  # the sync booked the reduce it placed, once
            (record,) = ex.state.closed_pnl
            assert sum(e.realized_pnl for e in position.partial_exits) == record.closed_pnl


async def test_live_marks_are_throttled_but_the_rules_see_every_one(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path, mark_min_interval_seconds=3600.0, mark_min_move_pct=1.0)
    async with Ledger(tmp_path / "l.db", settings=settings) as ledger:
        position = await ledger.open_position(BTC, "buy", entry_price="100", qty="10", leverage=10)
        rule = ExitRule(name="exit_25_roe", roe_pct=D(25), fraction=D("0.5"))
        service = BotService(ledger, settings=settings, rules=[rule])
        async with running(service):
            first = ledger.last_seq
            assert await service.on_mark("BTCUSDT", D("100.5"))  # first mark: logged
            logged = [await service.on_mark(BTC, D(p)) for p in ("100.6", "100.7", "100.8")]
            assert logged == [False, False, False]  # within 1% and within the hour
            assert await service.on_mark(BTC, D("102"))  # a 1.5% move
            assert ledger.last_seq == first + 2
            # a 0.49% move the throttle would skip, but ROE reaches 25%: logged, the rule fires
            assert await service.on_mark(BTC, D("102.5"))
            with anyio.fail_after(20):
                await service.wait_for(lambda s: len(s.exits) == 1)
        assert service.marks_seen == 6 and service.marks_logged == 3
        assert exits_of(ledger.get_position(position.position_id)) == ["exit_25_roe"]


async def test_live_marks_come_from_the_public_ticker_stream(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path, mark_min_interval_seconds=0.0)
    async with BybitEmulator() as ex, Ledger(tmp_path / "l.db", settings=settings) as ledger:
        client = make_ccxt_client(ex, pro=True)
        client.enableRateLimit = False
        ex.open_position(SOL, "buy", "10", "100")
        service = BotService(
            ledger, ExchangeGateway(client), settings=settings, live=True, fallback_interval=0.2
        )
        async with running(service):
            with anyio.fail_after(20):
                await service.wait_for(lambda s: s.sync.syncs_ok >= 1)
            with anyio.fail_after(20):
                await ex.wait_for_subscribers("tickers.SOLUSDT")
            ex.set_mark_price(SOL, "101.5")  # a ticker push; no position push, no REST sync
            with anyio.fail_after(20):
                await service.wait_for(lambda s: s.marks_logged >= 1)
            (position,) = ledger.active_positions()
            assert position.current_price == D("101.5")
            assert service.marks_seen >= 1
