"""Every reconciliation rule as a pure unit test: observations + book -> planned events."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import msgspec
import pytest

from ledger.envelope import Recorded
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.exchange.observations import (
    BalanceObservation,
    ClosedPnlObservation,
    ExchangeSnapshot,
    FundingObservation,
    MalformedResponse,
    PositionObservation,
)
from ledger.exchange.reconcile import Planned, ReconcilePolicy, ReconcileResult, reconcile
from ledger.values import Side, Source
from projections.book import Book
from projections.pnl import price_pnl

E = TypeVar("E")
T0 = datetime(2025, 1, 7, 16, 0, tzinfo=UTC)
D = Decimal


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Log:
    """A book with the store's idempotency: a planned key already stored is not applied."""

    def __init__(self) -> None:
        self.book = Book()
        self.keys: set[str] = set()
        self.seq = itertools.count(1)
        self.appended: list[AnyEvent] = []

    def record(self, event: AnyEvent, when: datetime, key: str | None = None) -> None:
        seq = next(self.seq)
        self.book.apply(
            Recorded(
                seq=seq,
                stream=stream_of(event),
                version=0,
                event_id=key or f"e{seq}",
                occurred_at=when,
                recorded_at=when,
                schema_version=1,
                event=event,
                hash=f"{seq:064x}",
            )
        )
        self.appended.append(event)

    def apply(self, plans: Iterable[Planned], now: datetime) -> list[AnyEvent]:
        fresh: list[AnyEvent] = []
        for plan in plans:
            if plan.key is not None:
                if plan.key in self.keys:
                    continue
                self.keys.add(plan.key)
            self.record(plan.event, plan.occurred_at or now)
            fresh.append(plan.event)
        return fresh

    def open(
        self,
        position_id: str = "pos_bot",
        symbol: str = "BTC/USDT:USDT",
        side: Side = Side.BUY,
        qty: str = "0.01",
        entry: str = "60000",
        when: datetime = T0,
        source: Source = Source.BOT,
        leverage: int = 10,
        fee: str = "0",
    ) -> None:
        self.record(
            PositionOpened(
                position_id=position_id,
                symbol=symbol,
                side=side,
                qty=D(qty),
                entry_price=D(entry),
                leverage=leverage,
                source=source,
                fee=D(fee),
            ),
            when,
        )


def row(
    symbol: str = "BTCUSDT",
    side: Side = Side.BUY,
    qty: str = "0.01",
    entry: str = "60000",
    mark: str = "60000",
    upnl: str | None = None,
    im: str | None = "60",
    idx: int = 0,
    created: datetime = T0,
    updated: datetime | None = None,
    leverage: str = "10",
    opened: datetime | None = None,
) -> PositionObservation:
    base = symbol[:-4]
    if upnl is None:
        upnl = str(price_pnl(side, D(qty), D(entry), D(mark)))
    return PositionObservation(
        symbol=f"{base}/USDT:USDT",
        market_id=symbol,
        side=side,
        position_idx=idx,
        qty=D(qty),
        entry_price=D(entry),
        mark_price=D(mark),
        unrealized_pnl=D(upnl),
        initial_margin=None if im is None else D(im),
        leverage=D(leverage),
        created_at=created,
        updated_at=updated or created,
        opened_at=opened,
    )


def closed_record(
    order_id: str,
    when: datetime,
    qty: str,
    exit_price: str,
    pnl: str,
    symbol: str = "BTCUSDT",
    side: Side = Side.BUY,
    entry: str = "60000",
) -> ClosedPnlObservation:
    return ClosedPnlObservation(
        symbol=f"{symbol[:-4]}/USDT:USDT",
        market_id=symbol,
        side=side,
        qty=D(qty),
        entry_price=D(entry),
        exit_price=D(exit_price),
        closed_pnl=D(pnl),
        order_id=order_id,
        at=when,
    )


def funding_row(
    exec_id: str, when: datetime, amount: str, symbol: str = "BTCUSDT", side: Side = Side.BUY
) -> FundingObservation:
    return FundingObservation(
        exec_id=exec_id,
        symbol=f"{symbol[:-4]}/USDT:USDT",
        market_id=symbol,
        side=side,
        amount=D(amount),
        qty=D("0.01"),
        at=when,
    )


def snap(
    when: datetime,
    positions: Sequence[PositionObservation] = (),
    closed: Sequence[ClosedPnlObservation] = (),
    funding: Sequence[FundingObservation] = (),
    balance: BalanceObservation | None = None,
    complete: bool = True,
) -> ExchangeSnapshot:
    return ExchangeSnapshot(
        fetched_at=when,
        positions=tuple(positions),
        closed_pnl=tuple(closed),
        funding=tuple(funding),
        balance=balance,
        complete=complete,
    )


def events(result: ReconcileResult) -> list[AnyEvent]:
    return [plan.event for plan in result.plans]


def of_type(result: ReconcileResult, kind: type[E]) -> list[E]:
    return [e for e in events(result) if isinstance(e, kind)]


# -- adoption ---------------------------------------------------------------------------------


def test_an_unknown_exchange_position_is_adopted_as_a_fact() -> None:
    log = Log()
    shown = row(mark="61000", upnl="10", im="60", idx=0, created=at(-30), updated=at(-1))
    result = reconcile(log.book, snap(at(0), [shown]), {})
    opened = of_type(result, PositionOpened)
    assert len(opened) == 1 and result.opened == (opened[0].position_id,)
    event = opened[0]
    assert event.source is Source.EXCHANGE
    assert (event.symbol, event.side, event.qty, event.entry_price) == (
        "BTC/USDT:USDT",
        Side.BUY,
        D("0.01"),
        D("60000"),
    )
    assert event.leverage == 10 and event.real_initial_margin == D("60")
    plan = result.plans[0]
    # without Bybit's openTime: opened when the ledger first saw it, never at createdTime
    # (the slot's first-ever position, possibly years ago)
    assert plan.key == f"bybit:adopt:BTCUSDT:0:buy:seen{int(at(0).timestamp() * 1000)}"
    assert plan.occurred_at == at(0)
    with_open_time = msgspec.structs.replace(shown, opened_at=at(-3))
    (plan,) = [
        p
        for p in reconcile(Log().book, snap(at(0), [with_open_time]), {}).plans
        if isinstance(p.event, PositionOpened)
    ]
    assert plan.occurred_at == at(-3)
    assert plan.key == f"bybit:adopt:BTCUSDT:0:buy:{int(at(-3).timestamp() * 1000)}"
    log.apply(result.plans, at(0))
    position = log.book.open[event.position_id]
    assert position.current_price == D("61000") and position.unrealized_pnl == D("10")
    assert position.roe_percentage == D("10") / D("60") * 100  # from the real margin


def test_adoption_ignores_the_bots_limits() -> None:
    log = Log()
    for n, symbol in enumerate(["BTC", "ETH", "SOL", "XRP", "ADA"]):
        log.open(f"pos_{n}", f"{symbol}/USDT:USDT", leverage=10)
    shown = [row(f"{s}USDT", created=at(-5)) for s in ["BTC", "ETH", "SOL", "XRP", "ADA"]]
    extra = row("DOGEUSDT", qty="1000", entry="0.15", mark="0.15", leverage="125", created=at(-5))
    result = reconcile(log.book, snap(at(1), [*shown, extra]), {})
    (opened,) = of_type(result, PositionOpened)
    assert opened.symbol == "DOGE/USDT:USDT" and opened.leverage == 125
    log.apply(result.plans, at(1))
    assert len(log.book.open) == 6  # past max_concurrent_positions=5: it is a fact


def test_adoption_ids_are_deterministic_and_a_reopened_slot_gets_a_new_one() -> None:
    shown = row(created=at(-10), opened=at(-10))
    first = reconcile(Log().book, snap(at(0), [shown]), {})
    again = reconcile(Log().book, snap(at(5), [shown]), {})
    assert first.plans[0].key == again.plans[0].key and first.opened == again.opened
    log = Log()
    log.apply(first.plans, at(0))
    (pid,) = first.opened
    log.record(
        PositionClosed(position_id=pid, qty=D("0.01"), price=D(60000), realized_pnl=D(0)), at(1)
    )
    # Bybit kept the slot's createdTime: same identity, but the ledger's id is taken
    reopened = reconcile(log.book, snap(at(60), [shown]), {})
    assert reopened.opened and reopened.opened[0] != pid
    assert reopened.plans[0].key == f"{first.plans[0].key}:1"
    assert reopened.plans[0].occurred_at == at(-10)  # the position's own openTime


def test_a_position_the_bot_just_closed_is_not_readopted_until_settled() -> None:
    log = Log()
    log.open(when=at(-10))
    log.record(
        PositionClosed(position_id="pos_bot", qty=D("0.01"), price=D(60000), realized_pnl=D(0)),
        at(0),
    )
    stale = row(created=at(-10), updated=at(-9))  # the exchange has not filled the close yet
    assert of_type(reconcile(log.book, snap(at(0.2), [stale]), {}), PositionOpened) == []
    later = reconcile(log.book, snap(at(5), [stale]), {})  # still there 5 minutes on: a fact
    assert len(of_type(later, PositionOpened)) == 1


def test_ledger_symbols_in_any_spelling_match_the_exchange() -> None:
    log = Log()
    log.open(symbol="BTCUSDT")
    result = reconcile(log.book, snap(at(5), [row(created=at(-1), mark="60000", im=None)]), {})
    assert result.opened == ()
    assert [type(e) for e in events(result)] == [PositionMarked]  # first sight: marked once


# -- updates ----------------------------------------------------------------------------------


def test_a_known_position_is_marked_only_when_something_changed() -> None:
    log = Log()
    log.open()
    shown = row(mark="62000", upnl="20", im="60")
    result = reconcile(log.book, snap(at(5), [shown]), {})
    (mark,) = of_type(result, PositionMarked)
    assert (mark.mark_price, mark.unrealized_pnl, mark.contracts, mark.initial_margin) == (
        D("62000"),
        D("20"),
        D("0.01"),
        D("60"),
    )
    assert mark.source is Source.EXCHANGE
    log.apply(result.plans, at(5))
    assert log.book.open["pos_bot"].roe_percentage == D("20") / D("60") * 100
    assert reconcile(log.book, snap(at(6), [shown]), {}).plans == ()


def test_roe_falls_back_to_notional_over_leverage_without_a_margin() -> None:
    log = Log()
    log.open()
    result = reconcile(log.book, snap(at(5), [row(mark="66000", upnl="60", im=None)]), {})
    log.apply(result.plans, at(5))
    # 60 / (0.01 * 60000 / 10) * 100
    assert log.book.open["pos_bot"].roe_percentage == D(100)


def test_a_manual_reduce_records_bybits_realized_pnl() -> None:
    log = Log()
    log.open()
    record = closed_record("ord-1", at(3), "0.004", "61500", "5.7327")
    shown = row(qty="0.006", mark="61000", im="36", updated=at(3))
    result = reconcile(log.book, snap(at(5), [shown], [record]), {})
    (exit_,) = of_type(result, PartialExitRecorded)
    assert (exit_.qty, exit_.price, exit_.realized_pnl, exit_.source) == (
        D("0.004"),
        D("61500"),
        D("5.7327"),
        Source.EXCHANGE,
    )
    assert result.plans[0].key == f"bybit:closed:{record.fact_key}"
    assert result.plans[0].occurred_at == at(3)
    assert isinstance(result.plans[-1].event, PositionMarked)  # then the new mark
    log.apply(result.plans, at(5))
    position = log.book.open["pos_bot"]
    assert position.qty == D("0.006") and position.realized_pnl == D("5.7327")
    assert reconcile(log.book, snap(at(6), [shown], [record]), {}).plans == ()


def test_a_manual_reduce_without_a_record_is_computed_and_says_so() -> None:
    log = Log()
    log.open()
    shown = row(qty="0.006", mark="61000", updated=at(3))
    (exit_,) = of_type(reconcile(log.book, snap(at(5), [shown]), {}), PartialExitRecorded)
    assert exit_.qty == D("0.004")
    assert exit_.realized_pnl == D("0.004") * (D(61000) - D(60000))
    assert "estimated" in exit_.reason


def test_a_manual_add_records_the_exchanges_new_entry() -> None:
    log = Log()
    log.open()
    shown = row(qty="0.02", entry="61000", mark="62000", updated=at(4))
    result = reconcile(log.book, snap(at(5), [shown]), {})
    (added,) = of_type(result, PositionIncreased)
    assert (added.qty, added.new_entry_price, added.source) == (
        D("0.01"),
        D("61000"),
        Source.EXCHANGE,
    )
    assert added.price == D(62000)  # (61000 * 0.02 - 60000 * 0.01) / 0.01
    log.apply(result.plans, at(5))
    position = log.book.open["pos_bot"]
    assert (position.qty, position.entry_price) == (D("0.02"), D("61000"))
    assert reconcile(log.book, snap(at(6), [shown]), {}).plans == ()


def test_a_size_the_bot_changed_moments_ago_waits_for_the_exchange() -> None:
    log = Log()
    log.open(when=at(0))
    log.record(
        PartialExitRecorded(
            position_id="pos_bot", qty=D("0.005"), price=D(61000), realized_pnl=D(5)
        ),
        at(10),
    )
    stale = row(qty="0.01", updated=at(1))  # the exchange has not done the reduce yet
    waiting = reconcile(log.book, snap(at(10.1), [stale]), {})
    assert of_type(waiting, PositionIncreased) == [] and waiting.warnings
    # once settled, the exchange's size is the truth
    late = reconcile(log.book, snap(at(12), [stale]), {})
    assert [e.qty for e in of_type(late, PositionIncreased)] == [D("0.005")]


# -- closes -----------------------------------------------------------------------------------


def test_an_external_close_with_its_closed_pnl_record() -> None:
    log = Log()
    log.open()
    record = closed_record("ord-9", at(7), "0.01", "63000", "29.3")
    result = reconcile(log.book, snap(at(8), [], [record]), {})
    (close,) = of_type(result, PositionClosed)
    assert (close.qty, close.price, close.realized_pnl, close.exchange_ref) == (
        D("0.01"),
        D("63000"),
        D("29.3"),
        "ord-9",
    )
    assert close.source is Source.EXCHANGE and not close.pnl_estimated
    assert result.closed == ("pos_bot",)
    assert result.plans[-1].key == f"bybit:closed:{record.fact_key}"
    assert result.plans[-1].occurred_at == at(7)
    log.apply(result.plans, at(8))
    closed = log.book.closed["pos_bot"]
    assert closed.realized_pnl == D("29.3") and closed.close_time == at(7)


@pytest.mark.parametrize("ledger_open_fee", ["0", "0.33"])
def test_bybits_opening_fee_is_counted_once(ledger_open_fee: str) -> None:
    # Bybit's closedPnl = gross - its share of the opening fee - the closing fee. Where the bot
    # already recorded the opening fee, the ledger must not take it off a second time.
    log = Log()
    log.open(fee=ledger_open_fee)
    gross, open_fee, close_fee = D(30), D("0.33"), D("0.3465")
    record = msgspec.structs.replace(
        closed_record("ord-f", at(7), "0.01", "63000", str(gross - open_fee - close_fee)),
        open_fee=open_fee,
        close_fee=close_fee,
    )
    result = reconcile(log.book, snap(at(8), [], [record]), {})
    log.apply(result.plans, at(8))
    closed = log.book.closed["pos_bot"]
    assert closed.realized_pnl == gross - open_fee - close_fee
    assert closed.fees == open_fee + close_fee


def test_a_record_from_before_the_position_opened_is_no_evidence() -> None:
    log = Log()
    log.open(when=at(10))
    old = closed_record("ord-old", at(5), "0.01", "59000", "-10")
    result = reconcile(log.book, snap(at(20), [], [old]), {})
    assert of_type(result, PositionClosed) == []
    assert result.absent_counts == {"pos_bot": 1}


def test_a_reduce_then_a_close_between_two_syncs() -> None:
    log = Log()
    log.open()
    records = [
        closed_record("ord-1", at(2), "0.004", "61000", "3.9"),
        closed_record("ord-2", at(4), "0.006", "62000", "11.8"),
    ]
    result = reconcile(log.book, snap(at(5), [], records), {})
    assert [type(e).__name__ for e in events(result)] == ["PartialExitRecorded", "PositionClosed"]
    log.apply(result.plans, at(5))
    closed = log.book.closed["pos_bot"]
    assert closed.realized_pnl == D("15.7") and closed.exit_price == D("62000")


def test_records_covering_less_than_the_position_are_reduces_until_the_absence_rule() -> None:
    log = Log()
    log.open()
    log.apply(reconcile(log.book, snap(at(1), [row(mark="61000", upnl="10")]), {}).plans, at(1))
    record = closed_record("ord-1", at(2), "0.008", "61000", "7.9")
    first = reconcile(log.book, snap(at(5), [], [record]), {})
    assert of_type(first, PositionClosed) == []
    (reduce,) = of_type(first, PartialExitRecorded)
    assert reduce.qty == D("0.008") and reduce.realized_pnl == D("7.9")
    log.apply(first.plans, at(5))
    second = reconcile(
        log.book, snap(at(6), [], [record]), first.absent_counts, None, first.absent_since
    )
    (close,) = of_type(second, PositionClosed)
    assert close.pnl_estimated and close.qty == D("0.002")
    assert close.realized_pnl == D("0.002") * D(1000)  # the last mark, 61000


def test_absent_for_n_fetches_closes_with_an_estimated_pnl() -> None:
    log = Log()
    log.open()
    log.apply(reconcile(log.book, snap(at(1), [row(mark="61000", upnl="10")]), {}).plans, at(1))
    first = reconcile(log.book, snap(at(2), []), {})
    assert first.plans == () and first.absent_counts == {"pos_bot": 1}
    second = reconcile(log.book, snap(at(3), []), first.absent_counts, None, first.absent_since)
    (close,) = of_type(second, PositionClosed)
    assert close.pnl_estimated and close.price == D("61000")  # the last mark
    assert close.realized_pnl == D("0.01") * D(1000)
    assert second.plans[0].key == "bybit:absent:pos_bot" and second.closed == ("pos_bot",)


def test_the_absence_threshold_is_configurable_and_resets_on_reappearance() -> None:
    log = Log()
    log.open()
    policy = ReconcilePolicy(absent_fetches_before_close=3)
    counts = reconcile(log.book, snap(at(1), []), {}, policy).absent_counts
    counts = reconcile(log.book, snap(at(2), []), counts, policy).absent_counts
    assert counts == {"pos_bot": 2}
    back = reconcile(log.book, snap(at(3), [row()]), counts, policy)
    assert back.absent_counts == {}
    gone = reconcile(log.book, snap(at(4), []), back.absent_counts, policy)
    assert gone.absent_counts == {"pos_bot": 1} and gone.plans == ()


def test_an_incomplete_snapshot_never_counts_absence() -> None:
    log = Log()
    log.open()
    result = reconcile(log.book, snap(at(5), [], complete=False), {"pos_bot": 1})
    assert result.plans == () and result.absent_counts == {"pos_bot": 1}


def test_a_fetch_begun_before_the_position_opened_does_not_count() -> None:
    log = Log()
    log.open(when=at(10), source=Source.EXCHANGE)  # adopted by another process's sync
    assert reconcile(log.book, snap(at(9.9), []), {}).absent_counts == {}
    assert reconcile(log.book, snap(at(10.1), []), {}).absent_counts == {"pos_bot": 1}


def test_a_bot_position_too_young_for_the_exchange_to_show_is_not_counted() -> None:
    log = Log()
    log.open(when=at(10))
    assert reconcile(log.book, snap(at(10.1), []), {}).absent_counts == {}
    assert reconcile(log.book, snap(at(11), []), {}).absent_counts == {"pos_bot": 1}


# -- funding ----------------------------------------------------------------------------------


def test_funding_is_recorded_once_by_execution_id() -> None:
    log = Log()
    log.open()
    payments = [funding_row("ex-1", at(60), "-0.5"), funding_row("ex-2", at(540), "0.25")]
    result = reconcile(log.book, snap(at(600), [row()], funding=payments), {})
    recorded = of_type(result, FundingRecorded)
    assert [(f.execution_id, f.amount) for f in recorded] == [
        ("ex-1", D("-0.5")),
        ("ex-2", D("0.25")),
    ]
    assert [p.key for p in result.plans if isinstance(p.event, FundingRecorded)] == [
        "bybit:funding:ex-1",
        "bybit:funding:ex-2",
    ]
    assert log.apply(result.plans, at(600))
    again = reconcile(log.book, snap(at(601), [row()], funding=payments), {})
    assert log.apply(again.plans, at(601)) == []  # every key is already in the log
    assert log.book.open["pos_bot"].funding == D("-0.25")


def test_funding_after_a_partial_exit_is_counted_once_in_pnl_and_in_its_own_figure() -> None:
    log = Log()
    log.open()
    reduce = closed_record("ord-1", at(30), "0.005", "61000", "4.9")
    shown = row(qty="0.005", mark="61000", upnl="5", im="30", updated=at(30))
    log.apply(reconcile(log.book, snap(at(31), [shown], [reduce]), {}).plans, at(31))
    paid = funding_row("ex-after", at(480), "-0.3")  # on the 0.005 left
    for minute in (481, 482):  # synced twice
        result = reconcile(log.book, snap(at(minute), [shown], [reduce], [paid]), {})
        log.apply(result.plans, at(minute))
    position = log.book.open["pos_bot"]
    assert position.funding == D("-0.3")
    assert position.realized_pnl == D("4.9") - D("0.3")
    summary = log.book.summary()
    assert summary.total_funding == D("-0.3")
    assert summary.total_realized_pnl == D("4.6")


def test_funding_goes_to_the_right_side_and_never_before_the_open() -> None:
    log = Log()
    log.open("pos_long", side=Side.BUY, when=at(0))
    log.open("pos_short", side=Side.SELL, entry="60100", when=at(0))
    rows = [
        funding_row("ex-long", at(60), "-0.4", side=Side.BUY),
        funding_row("ex-short", at(60), "0.4", side=Side.SELL),
        funding_row("ex-early", at(-60), "-9", side=Side.BUY),  # a previous position's
        funding_row("ex-eth", at(60), "-1", symbol="ETHUSDT"),  # no such position
    ]
    shown = [row(side=Side.BUY, idx=1), row(side=Side.SELL, entry="60100", idx=2)]
    result = reconcile(log.book, snap(at(61), shown, funding=rows), {})
    assert {(f.position_id, f.execution_id) for f in of_type(result, FundingRecorded)} == {
        ("pos_long", "ex-long"),
        ("pos_short", "ex-short"),
    }


# -- hedge mode, balance, consistency ---------------------------------------------------------


def test_hedge_mode_long_and_short_on_one_symbol_are_two_positions() -> None:
    log = Log()
    shown = [
        row(side=Side.BUY, idx=1, created=at(-3)),
        row(side=Side.SELL, entry="60100", idx=2, created=at(-2)),
    ]
    result = reconcile(log.book, snap(at(0), shown), {})
    opened = of_type(result, PositionOpened)
    assert sorted((e.side, e.position_idx) for e in opened) == [(Side.BUY, 1), (Side.SELL, 2)]
    assert len(set(result.opened)) == 2
    log.apply(result.plans, at(0))
    short_id = next(e.position_id for e in opened if e.side is Side.SELL)
    record = closed_record("ord-s", at(5), "0.01", "59000", "10.7", side=Side.SELL, entry="60100")
    closing = reconcile(log.book, snap(at(6), shown[:1], [record]), {})
    assert closing.closed == (short_id,)
    assert of_type(closing, PositionOpened) == []


def test_one_way_mode_a_flipped_side_is_a_close_and_an_adoption() -> None:
    log = Log()
    log.open()
    record = closed_record("ord-flip", at(2), "0.01", "61000", "9.9")
    short = row(side=Side.SELL, entry="61000", mark="61000", created=at(2))
    result = reconcile(log.book, snap(at(3), [short], [record]), {})
    assert result.closed == ("pos_bot",)
    assert [e.side for e in of_type(result, PositionOpened)] == [Side.SELL]


def test_balance_is_observed_only_when_it_changed() -> None:
    log = Log()
    balance = BalanceObservation(currency="USDT", total=D("1000.5"), available=D("900"))
    result = reconcile(log.book, snap(at(0), balance=balance), {})
    (observed,) = of_type(result, BalanceObserved)
    assert (observed.total, observed.available) == (D("1000.5"), D("900"))
    log.apply(result.plans, at(0))
    assert reconcile(log.book, snap(at(1), balance=balance), {}).plans == ()
    moved = BalanceObservation(currency="USDT", total=D("1000.5"), available=D("850"))
    assert len(of_type(reconcile(log.book, snap(at(2), balance=moved), {}), BalanceObserved)) == 1


def test_two_rows_for_one_market_and_side_are_malformed() -> None:
    with pytest.raises(MalformedResponse):
        reconcile(Book(), snap(at(0), [row(), row(qty="0.02")]), {})


def test_the_same_state_synced_twice_appends_nothing() -> None:
    log = Log()
    log.open("pos_a", "ETH/USDT:USDT", entry="3000", qty="1")
    shown = [
        row("ETHUSDT", qty="1", entry="3000", mark="3100", upnl="100", im="300"),
        row("SOLUSDT", qty="10", entry="150", mark="151", upnl="10", im="150", created=at(-9)),
    ]
    paid = [funding_row("ex-1", at(8), "-0.1", symbol="ETHUSDT")]
    balance = BalanceObservation(currency="USDT", total=D(5000), available=D(4000))
    state = snap(at(9), shown, funding=paid, balance=balance)
    first = reconcile(log.book, state, {})
    assert log.apply(first.plans, at(9))
    second = reconcile(log.book, state, first.absent_counts)
    assert log.apply(second.plans, at(10)) == []
    assert second.opened == () and second.closed == ()


def test_a_crash_between_fetch_and_append_is_completed_by_the_next_sync() -> None:
    log = Log()
    log.open()
    record = closed_record("ord-9", at(7), "0.01", "63000", "29.3")
    state = snap(
        at(8), [row("ETHUSDT", qty="1", entry="3000", mark="3000", created=at(1))], [record]
    )
    reconcile(log.book, state, {})  # decided, never appended (the process died)
    retried = reconcile(log.book, state, {})
    log.apply(retried.plans, at(9))
    assert "pos_bot" in log.book.closed and len(log.book.open) == 1
    assert log.apply(reconcile(log.book, state, {}).plans, at(10)) == []


def test_funding_settled_just_before_the_bot_closed_still_reaches_the_closed_position() -> None:
    log = Log()
    log.open()
    # the bot closes at 8 h + 5 s, a small win; the 8 h settlement is only fetched afterwards
    log.record(
        PositionClosed(position_id="pos_bot", qty=D("0.01"), price=D(60100), realized_pnl=D(1)),
        at(480 + 5 / 60),
    )
    assert log.book.acc.wins == 1
    result = reconcile(
        log.book, snap(at(481), [], funding=[funding_row("f8", at(480), "-3.5")]), {}
    )
    (payment,) = of_type(result, FundingRecorded)
    assert payment.position_id == "pos_bot"
    log.apply(result.plans, at(481))
    closed = log.book.closed["pos_bot"]
    assert (closed.funding, closed.realized_pnl) == (D("-3.5"), D("-2.5"))
    summary = log.book.summary()
    assert (summary.wins, summary.losses) == (0, 1)  # the funding turned the win into a loss
    assert summary.total_funding == D("-3.5")
    assert summary.closed_realized_pnl == D("-2.5")


def test_a_lot_added_by_hand_carries_its_own_opening_fee() -> None:
    # The bot opened 0.01 and paid 0.33; someone added 0.01 by hand (no fee in the ledger).
    log = Log()
    log.open(fee="0.33")
    log.record(
        PositionIncreased(
            position_id="pos_bot", qty=D("0.01"), price=D(60000), new_entry_price=D(60000)
        ),
        at(1),
    )
    gross, open_fee, close_fee = D(60), D("0.66"), D("0.693")
    record = msgspec.structs.replace(
        closed_record("ord-2", at(7), "0.02", "63000", str(gross - open_fee - close_fee)),
        open_fee=open_fee,
        close_fee=close_fee,
    )
    result = reconcile(log.book, snap(at(8), [], [record]), {})
    log.apply(result.plans, at(8))
    closed = log.book.closed["pos_bot"]
    assert closed.realized_pnl == gross - open_fee - close_fee  # every fee counted once
    assert closed.fees == open_fee + close_fee


@pytest.mark.parametrize(("record_qty", "closes"), [("0.01", True), ("0.03", False)])
def test_a_fresh_position_is_closed_early_only_by_a_record_of_exactly_its_size(
    record_qty: str, closes: bool
) -> None:
    log = Log()
    log.open(when=at(10))
    # 2 seconds after the bot's open: a record stamped after it, within the settle window
    record = closed_record("prev", at(10 + 0.5 / 60), record_qty, "63000", "8.9")
    result = reconcile(log.book, snap(at(10 + 2 / 60), [], [record]), {})
    assert bool(of_type(result, PositionClosed)) is closes
