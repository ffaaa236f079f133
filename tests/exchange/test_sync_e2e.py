"""The reconciliation scenarios end to end: unmodified ccxt against the Bybit emulator."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import ExchangeAuthError, ExchangeError, ExchangeUnavailable, MalformedResponse
from ledger.events import PartialExitRecorded, PositionClosed, PositionIncreased
from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import INSTRUMENTS, BybitEmulator, FaultKind, Instrument
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.reconcile import ReconcilePolicy
from ledger.exchange.sync import ExchangeSync
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import Side, Source

pytestmark = pytest.mark.anyio

D = Decimal
BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"
# A call's deadline only guards against a hang: the emulator answers every call but a
# "timeout" fault's at once, and a loaded machine may take seconds over a cold client's first
# (load_markets: ccxt builds its SSL context from certifi's bundle, then two requests).
WATCHDOG = 30.0
# The deadline a "timeout" fault is heard by: the emulator never answers that request.
HUNG = 0.25


@dataclass
class Bench:
    ex: BybitEmulator
    ledger: Ledger
    gateway: ExchangeGateway
    sync: ExchangeSync

    async def head(self) -> int:
        return (await self.ledger.store.head()).seq


@asynccontextmanager
async def bench(
    tmp_path: Path, *, hedge: bool = False, pro: bool = False, ex: BybitEmulator | None = None
) -> AsyncIterator[Bench]:
    async with ex or BybitEmulator(hedge_mode=hedge, timeout_fault_seconds=10) as emulator:
        client = make_ccxt_client(emulator, pro=pro)
        client.enableRateLimit = False  # ccxt's pacing for the real Bybit only slows tests
        gateway = ExchangeGateway(client, timeout=WATCHDOG)
        try:
            async with Ledger(tmp_path / "ledger.db") as ledger:
                # settle=0: the tests change the exchange and the ledger in the same instant;
                # absent_min=0: absence is counted in fetches here (its span is tested in
                # test_scenarios.py on a controlled clock)
                policy = ReconcilePolicy(settle=timedelta(0), absent_min=timedelta(0))
                yield Bench(emulator, ledger, gateway, ExchangeSync(policy=policy))
        finally:
            await gateway.close()


async def test_positions_opened_by_hand_are_adopted(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.012", "60000", leverage=5)
        b.ex.open_position(ETH, "sell", "1.5", "3000")
        b.ex.set_mark_price(BTC, "61000")
        opened, closed = await b.sync.sync_once(b.ledger, b.gateway)
        assert closed == []
        by_symbol = {p.symbol: p for p in opened}
        assert set(by_symbol) == {BTC, ETH}
        btc = by_symbol[BTC]
        assert (btc.side, btc.qty, btc.entry_price, btc.leverage) == (
            Side.BUY,
            D("0.012"),
            D(60000),
            5,
        )
        assert btc.source is Source.EXCHANGE
        assert btc.current_price == D(61000) and btc.unrealized_pnl == D(12)
        assert btc.real_initial_margin == D("0.012") * D(60000) / 5
        assert btc.roe_percentage == D(12) / btc.real_initial_margin * 100
        assert by_symbol[ETH].side is Side.SELL
        assert b.ledger.session_summary().balance == D(10000) - D("0.012") * 60000 * D(
            "0.00055"
        ) - D("1.5") * 3000 * D("0.00055")


async def test_the_same_state_synced_twice_appends_nothing(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        b.ex.set_mark_price(BTC, "60500")
        b.ex.pay_funding(BTC, "buy", "-0.2")
        b.ex.reduce_position(BTC, "buy", "0.004", "60700")
        await b.sync.sync_once(b.ledger, b.gateway)
        head = await b.head()
        assert await b.sync.sync_once(b.ledger, b.gateway) == ([], [])
        assert await b.head() == head == b.ledger.last_seq


async def test_bot_positions_are_matched_not_adopted(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(SOL, "buy", "3", "150")
        mine = await b.ledger.open_position(SOL, "buy", entry_price="150", qty="3", leverage=10)
        b.ex.set_mark_price(SOL, "160")
        assert await b.sync.sync_once(b.ledger, b.gateway) == ([], [])
        position = b.ledger.get_position(mine.position_id)
        assert position is not None and position.current_price == D(160)
        assert position.unrealized_pnl == D(30) and len(b.ledger.active_positions()) == 1


async def test_an_external_close_carries_bybits_closed_pnl(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        ((adopted,), _) = await b.sync.sync_once(b.ledger, b.gateway)
        record = b.ex.close_position(BTC, "buy", "62000")
        opened, closed = await b.sync.sync_once(b.ledger, b.gateway)
        assert (opened, closed) == ([], [adopted.position_id])
        position = b.ledger.get_position(adopted.position_id)
        assert position is not None and not position.is_open
        assert position.realized_pnl == record.closed_pnl  # net of Bybit's fees
        assert position.exit_price == record.avg_exit_price == D(62000)
        assert not position.pnl_estimated
        history = await b.ledger.history(adopted.position_id)
        close = history[-1].event
        assert isinstance(close, PositionClosed) and close.exchange_ref == record.order_id
        assert close.source is Source.EXCHANGE
        assert history[-1].occurred_at.timestamp() == record.updated_ms / 1000
        assert await b.sync.sync_once(b.ledger, b.gateway) == ([], [])


async def test_absent_from_n_fetches_without_a_record_closes_estimated(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        # the bot recorded a position the exchange never shows (the order never filled)
        ghost = await b.ledger.open_position(ETH, "buy", entry_price="3000", qty="1", leverage=5)
        await b.ledger.mark(ghost.position_id, "3030")
        assert await b.sync.sync_once(b.ledger, b.gateway) == ([], [])
        assert b.sync.absent_counts == {ghost.position_id: 1}
        _, closed = await b.sync.sync_once(b.ledger, b.gateway)
        assert closed == [ghost.position_id]  # the default: two successful fetches
        position = b.ledger.get_position(ghost.position_id)
        assert position is not None and position.pnl_estimated
        assert position.exit_price == D(3030) and position.realized_pnl == D(30)


async def test_hedge_mode_long_and_short_are_two_positions(tmp_path: Path) -> None:
    async with bench(tmp_path, hedge=True) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        b.ex.open_position(BTC, "sell", "0.02", "60100")
        opened, _ = await b.sync.sync_once(b.ledger, b.gateway)
        sides = {p.side: p for p in opened}
        assert {(s, p.position_idx, p.qty) for s, p in sides.items()} == {
            (Side.BUY, 1, D("0.01")),
            (Side.SELL, 2, D("0.02")),
        }
        record = b.ex.close_position(BTC, "sell", "59000")
        _, closed = await b.sync.sync_once(b.ledger, b.gateway)
        assert closed == [sides[Side.SELL].position_id]
        short = b.ledger.get_position(sides[Side.SELL].position_id)
        assert short is not None and short.realized_pnl == record.closed_pnl
        assert b.ledger.has_position_for_symbol(BTC, Side.BUY)


async def test_a_manual_reduce_is_a_partial_exit_with_bybits_pnl(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        ((adopted,), _) = await b.sync.sync_once(b.ledger, b.gateway)
        record = b.ex.reduce_position(BTC, "buy", "0.004", "61500")
        await b.sync.sync_once(b.ledger, b.gateway)
        position = b.ledger.get_position(adopted.position_id)
        assert position is not None and position.qty == D("0.006")
        (exit_,) = position.partial_exits
        assert (exit_.qty, exit_.price, exit_.realized_pnl) == (
            D("0.004"),
            D(61500),
            record.closed_pnl,
        )
        assert exit_.source is Source.EXCHANGE
        event = (await b.ledger.history(adopted.position_id))[-2].event
        assert isinstance(event, PartialExitRecorded)


async def test_a_manual_add_takes_the_exchanges_new_entry(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(SOL, "buy", "2", "150")
        ((adopted,), _) = await b.sync.sync_once(b.ledger, b.gateway)
        shown = b.ex.open_position(SOL, "buy", "2", "160")
        await b.sync.sync_once(b.ledger, b.gateway)
        position = b.ledger.get_position(adopted.position_id)
        assert position is not None
        assert (position.qty, position.entry_price) == (D(4), shown.avg_price)
        assert position.entry_price == D(155)
        kinds = [type(r.event) for r in await b.ledger.history(adopted.position_id)]
        assert PositionIncreased in kinds


async def test_funding_after_a_partial_exit_is_counted_once(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(ETH, "buy", "2", "3000")
        ((adopted,), _) = await b.sync.sync_once(b.ledger, b.gateway)
        record = b.ex.reduce_position(ETH, "buy", "1", "3100")
        await b.sync.sync_once(b.ledger, b.gateway)
        paid = b.ex.pay_funding(ETH, "buy", "-0.75")  # on the 1 ETH left
        assert paid.exec_qty == D(1)
        for _ in range(3):
            await b.sync.sync_once(b.ledger, b.gateway)
        position = b.ledger.get_position(adopted.position_id)
        assert position is not None
        assert position.funding == D("-0.75")
        assert position.realized_pnl == record.closed_pnl - D("0.75")
        summary = b.ledger.session_summary()
        assert summary.total_funding == D("-0.75")
        assert summary.total_realized_pnl == record.closed_pnl - D("0.75")
        closing = b.ex.close_position(ETH, "buy", "3200")
        await b.sync.sync_once(b.ledger, b.gateway)
        closed = b.ledger.get_position(adopted.position_id)
        assert closed is not None and not closed.is_open
        assert closed.realized_pnl == record.closed_pnl + closing.closed_pnl - D("0.75")
        assert b.ledger.session_summary().per_symbol[ETH].funding == D("-0.75")


FAULTS: list[tuple[FaultKind, str, type[ExchangeError]]] = [
    ("timeout", "/v5/position/list", ExchangeUnavailable),
    ("http_500", "/v5/position/list", ExchangeUnavailable),
    ("http_503", "/v5/account/wallet-balance", ExchangeUnavailable),
    ("rate_limit", "/v5/position/list", ExchangeUnavailable),
    ("rate_limit", "/v5/execution/list", ExchangeUnavailable),
    ("empty_with_error", "/v5/position/list", ExchangeUnavailable),
    ("malformed_json", "/v5/position/list", MalformedResponse),
    ("malformed_json", "/v5/position/closed-pnl", MalformedResponse),
    ("missing_fields", "/v5/position/list", MalformedResponse),
    ("missing_fields", "/v5/position/closed-pnl", MalformedResponse),
    ("missing_fields", "/v5/execution/list", MalformedResponse),
    ("missing_fields", "/v5/account/wallet-balance", MalformedResponse),
    ("invalid_key", "/v5/position/list", ExchangeAuthError),
    ("invalid_key", "/v5/position/closed-pnl", ExchangeAuthError),
]


@pytest.mark.parametrize(("kind", "path", "error"), FAULTS)
async def test_a_failed_fetch_changes_nothing_and_the_next_sync_recovers(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: FaultKind,
    path: str,
    error: type[ExchangeError],
) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        b.ex.open_position(ETH, "sell", "1", "3000")
        b.ex.reduce_position(ETH, "sell", "0.5", "2990")  # rows for every list to hold
        await b.sync.sync_once(b.ledger, b.gateway)
        # after the adoption: without Bybit's openTime a position is the ledger's from when it
        # was first seen, and funding settled before that is not its own
        b.ex.pay_funding(ETH, "sell", "0.1")
        btc = b.ledger.get_position_for_symbol(BTC)
        assert btc is not None
        # what the failed sync must not record, and the next good one must
        b.ex.close_position(BTC, "buy", "60500")
        b.ex.set_mark_price(ETH, "2950")
        b.ex.pay_funding(ETH, "sell", "0.2")
        head = await b.head()
        b.ex.inject_fault(kind, path=path)
        if kind == "timeout":  # this sync only: heard once the hung request's deadline passes
            b.gateway.timeout = HUNG
        with (
            caplog.at_level(logging.WARNING, logger="ledger.exchange"),
            pytest.raises(error) as caught,
        ):
            await b.sync.sync_once(b.ledger, b.gateway)
        b.gateway.timeout = WATCHDOG
        assert await b.head() == head == b.ledger.last_seq  # nothing appended
        assert b.ledger.book.open_for(BTC) is not None  # an error is not "everything closed"
        assert any(
            "ledger unchanged" in r.getMessage() and str(caught.value) in r.getMessage()
            for r in caplog.records
        )
        assert b.sync.absent_counts == {}
        _, closed = await b.sync.sync_once(b.ledger, b.gateway)
        assert closed == [btc.position_id]
        eth = b.ledger.get_position_for_symbol(ETH)
        assert eth is not None and eth.current_price == D(2950)
        assert eth.funding == D("0.3")


async def test_an_empty_list_after_an_error_is_never_everything_closed(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        await b.sync.sync_once(b.ledger, b.gateway)
        for _ in range(3):  # well past absent_fetches_before_close
            b.ex.inject_fault("empty_with_error", path="/v5/position/list")
            with pytest.raises(ExchangeUnavailable):
                await b.sync.sync_once(b.ledger, b.gateway)
        assert b.ledger.book.open_for(BTC) is not None and b.sync.absent_counts == {}


async def live(b: Bench, task_status: anyio.abc.TaskStatus[None]) -> None:
    await b.sync.watch(b.ledger, b.gateway, fallback_interval=0.05, task_status=task_status)


async def test_watch_positions_brings_an_external_close_in_by_its_push(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The close comes by the position stream's push, not by the polling fallback, which
    syncs only while the stream is down (it says so: "position stream lost"). The latency is
    printed, never asserted: a loaded machine may take any time."""
    caplog.set_level(logging.WARNING, logger="ledger.exchange")
    async with bench(tmp_path, pro=True) as b, anyio.create_task_group() as group:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        b.ex.open_position(ETH, "buy", "1", "3000")
        await b.sync.sync_once(b.ledger, b.gateway)
        await group.start(live, b)
        await b.ex.wait_for_subscribers("position")
        eth = b.ledger.get_position_for_symbol(ETH)
        assert eth is not None
        started = time.perf_counter()
        record = b.ex.close_position(ETH, "buy", "3050")
        with anyio.fail_after(WATCHDOG):
            async for stored in b.ledger.subscribe(from_seq=b.ledger.last_seq):
                if isinstance(stored.event, PositionClosed):
                    break
        latency = time.perf_counter() - started
        print(f"\nexternal close -> ledger via watch_positions: {latency * 1000:.1f} ms")
        assert b.sync.stream_up
        assert not [r for r in caplog.records if "position stream lost" in r.getMessage()]
        position = b.ledger.get_position(eth.position_id)
        assert position is not None and position.realized_pnl == record.closed_pnl
        # marks come from the public ticker stream, not this one (Bybit pushes positions on
        # order events only): test_service.py::test_live_marks_come_from_the_public_ticker_stream
        group.cancel_scope.cancel()


async def test_a_dropped_socket_falls_back_to_polling_and_reconnects(tmp_path: Path) -> None:
    async with bench(tmp_path, pro=True) as b, anyio.create_task_group() as group:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        b.ex.open_position(SOL, "buy", "4", "150")
        await b.sync.sync_once(b.ledger, b.gateway)
        await group.start(live, b)
        await b.ex.wait_for_subscribers("position")
        assert b.ex.drop_websockets() == 1
        # pushed to nobody: only polling can bring this in
        b.ex.close_position(BTC, "buy", "60100")
        with anyio.fail_after(5):
            async for stored in b.ledger.subscribe(from_seq=b.ledger.last_seq):
                if isinstance(stored.event, PositionClosed):
                    break
        assert b.ledger.get_position_for_symbol(BTC) is None
        await b.ex.wait_for_subscribers("position")  # reconnected
        b.ex.set_mark_price(SOL, "151")
        with anyio.fail_after(5):
            while (
                sol := b.ledger.get_position_for_symbol(SOL)
            ) is None or sol.current_price != 151:
                async for _ in b.ledger.subscribe(from_seq=b.ledger.last_seq):
                    break
        group.cancel_scope.cancel()


async def test_thread_safe_sync_with_bybit_uses_the_callers_client_and_loop(
    tmp_path: Path,
) -> None:
    manager = ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings())
    try:
        async with BybitEmulator() as ex:
            client = make_ccxt_client(ex)
            client.enableRateLimit = False
            ex.open_position(BTC, "buy", "0.01", "60000")
            caller = threading.current_thread()
            newly_opened, closed = await manager.thread_safe_sync_with_bybit(client)
            assert threading.current_thread() is caller
            assert [p.symbol for p in newly_opened] == [BTC] and closed == []
            assert manager.has_position_for_symbol(BTC)
            ex.close_position(BTC, "buy", "61000")
            # the default settle: a position adopted by sync is not "ahead" of the exchange
            newly_opened, closed = await manager.thread_safe_sync_with_bybit(client)
            assert newly_opened == [] and closed == [newly_opened_id(manager)]
            ex.inject_fault("http_503", path="/v5/position/list")
            with pytest.raises(ExchangeUnavailable):
                await manager.thread_safe_sync_with_bybit(client)
            await client.close()
    finally:
        manager.close()


def newly_opened_id(manager: ThreadSafePositionManager) -> str:
    (closed,) = manager.get_closed_positions()
    return closed.position_id


def instruments(count: int) -> tuple[Instrument, ...]:
    """count synthetic linear perpetuals shaped like the emulator's own."""
    template = INSTRUMENTS[0]
    return tuple(
        Instrument(
            symbol=f"C{n:03d}USDT",
            base=f"C{n:03d}",
            quote="USDT",
            tick_size=template.tick_size,
            qty_step=template.qty_step,
            min_qty=template.min_qty,
            max_qty=template.max_qty,
            max_leverage=template.max_leverage,
            price_scale=template.price_scale,
            launch_ms=template.launch_ms,
            default_mark=D(10),
        )
        for n in range(count)
    )


@pytest.mark.parametrize("count", [1, 10, 100])
async def test_sync_time_with_open_positions(tmp_path: Path, count: int) -> None:
    """How one sync grows with the open positions (printed; no time is asserted)."""
    ex = BybitEmulator(instruments=instruments(count))  # room for 100 positions
    async with bench(tmp_path, ex=ex) as b:
        for n in range(count):
            b.ex.open_position(f"C{n:03d}/USDT:USDT", "buy", "10", "10")
        await b.gateway.load_markets()
        started = time.perf_counter()
        opened, _ = await b.sync.sync_once(b.ledger, b.gateway)
        adopt = time.perf_counter() - started
        assert len(opened) == count
        for n in range(count):
            b.ex.set_mark_price(f"C{n:03d}/USDT:USDT", "10.5")
        started = time.perf_counter()
        await b.sync.sync_once(b.ledger, b.gateway)
        marks = time.perf_counter() - started
        started = time.perf_counter()
        assert await b.sync.sync_once(b.ledger, b.gateway) == ([], [])
        idle = time.perf_counter() - started
        assert all(p.current_price == D("10.5") for p in b.ledger.active_positions())
        print(
            f"\nsync with {count:3d} positions: adopt {adopt * 1000:.1f} ms, "
            f"mark all {marks * 1000:.1f} ms, nothing changed {idle * 1000:.1f} ms"
        )
