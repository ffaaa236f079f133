"""Lifecycles, estimates and their amendments, per-fact keys: reconcile against hand-written
Bybit rows shaped as research/bybit-v5-facts.md and the recorded fixtures describe them.

Money is checked against Bybit's own figures (closedPnl sums), never the ledger's PnL code.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import msgspec

from ledger.events import (
    FundingRecorded,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionMarked,
    PositionOpened,
)
from ledger.exchange.observations import ClosedPnlObservation, ExchangeSnapshot
from ledger.exchange.reconcile import ReconcilePolicy, ReconcileResult, reconcile
from ledger.values import Side, Source
from tests.exchange.test_reconcile import (
    Log,
    at,
    closed_record,
    events,
    funding_row,
    of_type,
    row,
    snap,
)

D = Decimal
YEARS_AGO = at(-3 * 365 * 24 * 60)  # the slot's first-ever position (Bybit's createdTime)


class Syncer:
    """Carries the absence state from one reconcile to the next, as ExchangeSync does."""

    def __init__(self, log: Log, policy: ReconcilePolicy | None = None) -> None:
        self.log = log
        self.policy = policy or ReconcilePolicy()
        self.counts: dict[str, int] = {}
        self.since: dict = {}  # type: ignore[type-arg]

    def __call__(self, snapshot: ExchangeSnapshot) -> ReconcileResult:
        result = reconcile(self.log.book, snapshot, self.counts, self.policy, self.since)
        self.log.apply(result.plans, snapshot.fetched_at)
        self.counts = dict(result.absent_counts)
        self.since = dict(result.absent_since)
        return result


def with_fees(record: ClosedPnlObservation, open_fee: str, close_fee: str) -> ClosedPnlObservation:
    return msgspec.structs.replace(record, open_fee=D(open_fee), close_fee=D(close_fee))


# -- adoption time ------------------------------------------------------------------------------


def test_adoption_at_open_time_never_the_slots_created_time_older_funding_not_its_own() -> None:
    log = Log()
    sync = Syncer(log)
    short = row(
        "LTCUSDT",
        Side.SELL,
        qty="10",
        entry="100",
        mark="99",
        created=YEARS_AGO,
        opened=at(-30),
        updated=at(-30),
    )
    old_funding = funding_row("f-old", at(-600), "0.007", symbol="LTCUSDT", side=Side.SELL)
    own_funding = funding_row("f-own", at(-10), "0.05", symbol="LTCUSDT", side=Side.SELL)
    result = sync(snap(at(0), [short], funding=[old_funding, own_funding]))
    (opened,) = of_type(result, PositionOpened)
    assert result.plans[0].occurred_at == at(-30)
    (funding,) = of_type(result, FundingRecorded)
    assert funding.execution_id == "f-own"
    position = log.book.open[opened.position_id]
    assert position.open_time == at(-30) and position.funding == D("0.05")


def test_without_open_time_adoption_is_when_first_seen() -> None:
    log = Log()
    shown = row("LTCUSDT", created=YEARS_AGO, updated=at(-1))
    result = Syncer(log)(snap(at(0), [shown], funding=[funding_row("f", at(-5), "1", "LTCUSDT")]))
    assert result.plans[0].occurred_at == at(0)
    assert of_type(result, FundingRecorded) == []


def test_an_old_positions_record_never_closes_a_fresh_adoption() -> None:
    log = Log()
    sync = Syncer(log)
    shown = row(qty="0.01", entry="62000", mark="62000", created=YEARS_AGO, opened=at(-2))
    old = closed_record("ord-old", at(-20), "0.01", "58000", "-20.63", entry="60000")
    result = sync(snap(at(0), [shown], [old]))
    (opened,) = of_type(result, PositionOpened)
    assert of_type(result, PositionClosed) == [] and of_type(result, PartialExitRecorded) == []
    assert log.book.open[opened.position_id].entry_price == D(62000)


# -- lifecycles -----------------------------------------------------------------------------------


def _flip_scenario(new_qty: str) -> tuple[Log, ReconcileResult, ClosedPnlObservation]:
    log = Log()
    sync = Syncer(log)
    log.open(qty="0.01", entry="60000", when=at(0))
    sync(snap(at(1), [row(qty="0.01", mark="61000", created=YEARS_AGO, opened=at(0))]))
    # closed by hand at 62000 and reopened at 62500 between two syncs
    record = closed_record("ord-c", at(1.5), "0.01", "62000", "19.3", entry="60000")
    reopened = row(qty=new_qty, entry="62500", mark="62500", created=YEARS_AGO, opened=at(1.6))
    return log, sync(snap(at(2), [reopened], [record])), record


def test_a_close_and_reopen_of_the_same_size_is_a_close_and_an_adoption() -> None:
    log, result, record = _flip_scenario("0.01")
    (close,) = of_type(result, PositionClosed)
    assert close.position_id == "pos_bot" and not close.pnl_estimated
    assert close.price == D(62000)
    (opened,) = of_type(result, PositionOpened)
    assert opened.entry_price == D(62500) and opened.qty == D("0.01")
    assert log.book.closed["pos_bot"].realized_pnl == record.closed_pnl  # Bybit's figure
    assert log.book.open[opened.position_id].open_time == at(1.6)


def test_a_close_and_a_larger_reopen_is_no_increase_at_an_invented_price() -> None:
    log, result, record = _flip_scenario("0.03")
    assert sorted(
        type(e).__name__ for e in events(result) if not isinstance(e, PositionMarked)
    ) == ["PositionClosed", "PositionOpened"]  # no PositionIncreased
    (opened,) = of_type(result, PositionOpened)
    assert (opened.qty, opened.entry_price) == (D("0.03"), D(62500))
    assert log.book.closed["pos_bot"].realized_pnl == record.closed_pnl


def test_without_open_time_records_for_the_whole_size_mean_a_new_position() -> None:
    log = Log()
    sync = Syncer(log)
    log.open(qty="0.01", entry="60000", when=at(0))
    sync(snap(at(1), [row(qty="0.01", mark="61000")]))
    record = closed_record("ord-c", at(1.5), "0.01", "62000", "19.3")
    reopened = row(qty="0.01", entry="62500", mark="62500", updated=at(1.6))
    result = sync(snap(at(2), [reopened], [record]))
    assert len(of_type(result, PositionClosed)) == 1 and len(of_type(result, PositionOpened)) == 1
    assert log.book.closed["pos_bot"].realized_pnl == D("19.3")
    (new,) = log.book.open.values()
    assert new.entry_price == D(62500)


def test_the_bots_own_reduce_echoed_by_bybit_is_not_a_new_lifecycle() -> None:
    log = Log()
    sync = Syncer(log, ReconcilePolicy(settle=timedelta(seconds=30)))
    log.open(qty="0.02", entry="60000", when=at(0))
    sync(snap(at(1), [row(qty="0.02", mark="61000")]))
    log.record(
        PartialExitRecorded(
            position_id="pos_bot",
            qty=D("0.01"),
            price=D(61000),
            realized_pnl=D(10),
            rule="partial_exit_50_roe",
        ),
        at(2),
    )
    echo = closed_record("ord-bot", at(2) + timedelta(milliseconds=80), "0.01", "61000", "9.9")
    result = sync(snap(at(3), [row(qty="0.01", mark="61000")], [echo]))
    assert of_type(result, PositionClosed) == [] and of_type(result, PositionOpened) == []
    assert "pos_bot" in log.book.open


# -- absence, estimates and amendments ----------------------------------------------------------


def test_back_to_back_syncs_never_close_before_the_record_and_the_record_amends() -> None:
    log = Log()
    sync = Syncer(log)
    log.open(qty="0.5", entry="60000", when=at(0))
    sync(snap(at(1), [row(qty="0.5", mark="60002", upnl="1.00")]))
    ms = timedelta(milliseconds=1)
    for k in range(4):  # several flat pushes within milliseconds of the manual close
        result = sync(snap(at(2) + k * ms, []))
        assert of_type(result, PositionClosed) == []
    assert "pos_bot" in log.book.open
    closed = sync(snap(at(3.1), []))  # 66 s after the first absence: estimated at the mark
    (estimate,) = of_type(closed, PositionClosed)
    assert estimate.pnl_estimated and estimate.realized_pnl == D("1.00")
    record = closed_record("ord-m", at(1.9), "0.5", "60020", "9.3345")
    amended = sync(snap(at(4), [], [record]))
    (fix,) = of_type(amended, PnlAmended)
    assert fix.estimated_pnl == D("1.00") and fix.exchange_ref == record.fact_key
    position = log.book.closed["pos_bot"]
    assert position.realized_pnl == D("9.3345") and not position.pnl_estimated
    assert [type(e).__name__ for e in log.appended[-2:]] == ["PositionClosed", "PnlAmended"]
    assert sync(snap(at(5), [], [record])).plans == ()  # listed again: counted once


def test_an_estimated_reduce_is_amended_by_its_record() -> None:
    log = Log()
    sync = Syncer(log)
    log.open(symbol="SOL/USDT:USDT", qty="1", entry="100", when=at(0))
    sync(snap(at(1), [row("SOLUSDT", qty="1", entry="100", mark="101")]))
    first = sync(snap(at(2), [row("SOLUSDT", qty="0.5", entry="100", mark="100.6")]))
    (guess,) = of_type(first, PartialExitRecorded)
    assert guess.pnl_estimated and guess.realized_pnl == D("0.30")
    record = closed_record(
        "ord-r", at(1.8), "0.5", "100.6", "0.277065", symbol="SOLUSDT", entry="100"
    )
    second = sync(snap(at(3), [row("SOLUSDT", qty="0.5", entry="100", mark="100.6")], [record]))
    (fix,) = of_type(second, PnlAmended)
    assert fix.estimated_pnl == D("0.30") and fix.realized_pnl == D("0.277065")
    assert log.book.open["pos_bot"].realized_pnl == D("0.277065")


def test_a_reduce_filled_in_two_rows_with_one_order_id_closes_the_position() -> None:
    log = Log()
    sync = Syncer(log)
    log.open(symbol="SOL/USDT:USDT", qty="2", entry="100", when=at(0))
    sync(snap(at(1), [row("SOLUSDT", qty="2", entry="100", mark="101")]))
    first = closed_record("ord-1", at(1.5), "0.5", "105", "2.41", symbol="SOLUSDT", entry="100")
    part_a = closed_record("ord-2", at(1.7), "1", "106", "5.9", symbol="SOLUSDT", entry="100")
    part_b = msgspec.structs.replace(
        closed_record("ord-2", at(1.7), "0.5", "106", "2.84", symbol="SOLUSDT", entry="100"),
        created_at=at(1.7) + timedelta(milliseconds=3),
    )
    rows = [first, part_a, part_b, part_a]  # part_a listed twice (two pages)
    assert len({r.fact_key for r in rows}) == 3
    result = sync(snap(at(2), [], rows))
    assert result.closed == ("pos_bot",)
    position = log.book.closed["pos_bot"]
    assert not position.is_open and not position.pnl_estimated
    assert position.realized_pnl == D("2.41") + D("5.9") + D("2.84")  # 11.15, Bybit's sum


def test_without_open_fee_the_ledgers_own_opening_fee_counts_once() -> None:
    log = Log()
    sync = Syncer(log)
    log.open(symbol="ETH/USDT:USDT", qty="1", entry="3000", fee="0.66", when=at(0))
    sync(snap(at(1), [row("ETHUSDT", qty="1", entry="3000", mark="3010")]))
    # the 2024 fixture's shape: no openFee/closeFee; closedPnl is net of both fees
    record = closed_record("ord-e", at(2), "1", "3030", "28.0035", symbol="ETHUSDT", entry="3000")
    assert record.open_fee is None and record.close_fee is None
    sync(snap(at(3), [], [record]))
    assert log.book.closed["pos_bot"].realized_pnl == D("28.0035")


def test_with_open_fee_the_ledgers_own_opening_fee_counts_once() -> None:
    log = Log()
    sync = Syncer(log)
    log.open(symbol="ETH/USDT:USDT", qty="1", entry="3000", fee="0.66", when=at(0))
    sync(snap(at(1), [row("ETHUSDT", qty="1", entry="3000", mark="3010")]))
    record = with_fees(
        closed_record("ord-e", at(2), "1", "3030", "28.0035", symbol="ETHUSDT", entry="3000"),
        "0.66",
        "1.3365",
    )
    sync(snap(at(3), [], [record]))
    closed = log.book.closed["pos_bot"]
    assert closed.realized_pnl == D("28.0035") and closed.fees == D("0.66") + D("1.3365")


def test_once_the_exchange_showed_a_bot_position_the_settle_window_no_longer_protects_it() -> None:
    log = Log()
    sync = Syncer(log, ReconcilePolicy(settle=timedelta(minutes=10), absent_min=timedelta(0)))
    log.open(when=at(0))
    sync(snap(at(0.1), [row(mark="60100")]))  # shown: the exchange has it
    sync(snap(at(0.2), []))
    result = sync(snap(at(0.3), []))
    assert result.closed == ("pos_bot",)


def test_a_position_on_a_settle_coin_not_queried_is_never_absent() -> None:
    log = Log()
    sync = Syncer(log, ReconcilePolicy(absent_min=timedelta(0)))
    log.open(symbol="BTC/USDC:USDC", when=at(0))
    only_usdt = msgspec.structs.replace(snap(at(5), []), settle_coins=("USDT",))
    for k in range(3):
        result = sync(msgspec.structs.replace(only_usdt, fetched_at=at(5 + k)))
        assert result.plans == () and result.absent_counts == {}
        assert result.unseen == ("pos_bot",)
    both = msgspec.structs.replace(only_usdt, fetched_at=at(9), settle_coins=("USDT", "USDC"))
    sync(both)
    assert sync(msgspec.structs.replace(both, fetched_at=at(10))).closed == ("pos_bot",)


def test_a_usdc_perpetual_matches_by_ccxt_symbol_not_bybits_id() -> None:
    log = Log()
    log.open(symbol="BTC/USDC:USDC", when=at(0))
    perp = msgspec.structs.replace(row(mark="60100"), symbol="BTC/USDC:USDC", market_id="BTCPERP")
    result = Syncer(log)(snap(at(5), [perp]))
    assert result.opened == () and [type(e) for e in events(result)] == [PositionMarked]


def test_the_mark_throttle_logs_by_time_or_by_move() -> None:
    log = Log()
    sync = Syncer(log, ReconcilePolicy(mark_interval=timedelta(seconds=60), mark_move=D("0.005")))
    log.open(when=at(0))
    assert of_type(sync(snap(at(1), [row(mark="60010")])), PositionMarked)  # first sight
    second = timedelta(seconds=1)
    assert not of_type(sync(snap(at(1) + second, [row(mark="60020")])), PositionMarked)
    assert of_type(sync(snap(at(1) + 2 * second, [row(mark="60400")])), PositionMarked)  # 0.65%
    assert not of_type(sync(snap(at(1) + 3 * second, [row(mark="60410")])), PositionMarked)
    assert of_type(sync(snap(at(2.1), [row(mark="60420")])), PositionMarked)  # a minute on
    assert log.book.open["pos_bot"].source is Source.BOT
