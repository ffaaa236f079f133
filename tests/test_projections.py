"""Unit tests of the pure folds: one position's PnL, margin and ROE, and the session figures."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from ledger.commands import (
    AnyCommand,
    ClosePosition,
    IncreasePosition,
    Limits,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordFunding,
    RecordPartialExit,
)
from ledger.envelope import Recorded
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
)
from ledger.rules import decide
from ledger.values import ZERO, Side
from projections.book import Book
from projections.pnl import initial_margin, notional, price_pnl, qty_from_notional, roe_pct
from projections.positions import Position, Status
from projections.snapshot import decode_snapshot, encode_snapshot
from tests.strategies import Stamper

D = Decimal


class Session:
    """A book driven through the rules, with envelopes stamped as a store would."""

    def __init__(self) -> None:
        self.book = Book()
        self.stamper = Stamper()
        self.serial = 0
        self.records: list[Recorded] = []  # every record applied, in order

    def do(self, command: AnyCommand) -> None:
        events = decide(self.book, command, Limits(max_concurrent_positions=50))
        # the folds are under test here, not the recording of limits (test_rules_recorded.py)
        self.apply(*(e for e in events if not isinstance(e, RulesConfigured)))

    def apply(self, *events: AnyEvent) -> None:
        for event in events:
            record = self.stamper.stamp(event)
            self.records.append(record)
            self.book.apply(record)

    def open(
        self,
        side: Side = Side.BUY,
        *,
        qty: str = "5",
        entry: str = "100",
        leverage: int = 5,
        symbol: str = "SOL/USDT:USDT",
        margin: str | None = None,
        fee: str = "0",
    ) -> str:
        self.serial += 1
        position_id = f"p{self.serial}"
        self.do(
            OpenPosition(
                position_id=position_id,
                symbol=symbol,
                side=side,
                qty=D(qty),
                entry_price=D(entry),
                leverage=leverage,
                real_initial_margin=None if margin is None else D(margin),
                fee=D(fee),
            )
        )
        return position_id

    def mark(
        self,
        position_id: str,
        price: str,
        *,
        unrealized_pnl: Decimal | None = None,
        initial_margin: Decimal | None = None,
    ) -> Position:
        self.do(
            MarkPosition(
                position_id=position_id,
                mark_price=D(price),
                unrealized_pnl=unrealized_pnl,
                initial_margin=initial_margin,
            )
        )
        return self.book.open[position_id]

    def exit(self, position_id: str, qty: str, price: str, *, fee: Decimal = ZERO) -> Position:
        self.do(RecordPartialExit(position_id=position_id, qty=D(qty), price=D(price), fee=fee))
        position = self.book.get(position_id)
        assert position is not None
        return position

    def close(self, position_id: str, price: str, *, fee: Decimal = ZERO) -> Position:
        self.do(ClosePosition(position_id=position_id, price=D(price), fee=fee))
        return self.book.closed[position_id]

    def trade(self, pnl: str, symbol: str = "SOL/USDT:USDT") -> Position:
        """A whole round trip of qty 1 from 100 that realizes exactly pnl."""
        position_id = self.open(qty="1", entry="100", symbol=symbol)
        return self.close(position_id, str(D(100) + D(pnl)))


# -- pnl arithmetic ------------------------------------------------------------------------


def test_price_pnl_long_and_short() -> None:
    assert price_pnl(Side.BUY, D(2), D(100), D(110)) == 20
    assert price_pnl(Side.BUY, D(2), D(100), D(90)) == -20
    assert price_pnl(Side.SELL, D(2), D(100), D(110)) == -20
    assert price_pnl(Side.SELL, D(2), D(100), D(90)) == 20
    assert notional(D(5), D("100.5")) == D("502.5")
    assert qty_from_notional(D(500), D(100)) == 5
    assert initial_margin(D(5), D(100), 5, None) == 100
    assert initial_margin(D(5), D(100), 5, D(0)) == 100  # an unknown (zero) margin falls back
    assert initial_margin(D(5), D(100), 5, D(80)) == 80
    assert roe_pct(D(10), D(0)) == 0


@pytest.mark.parametrize(("side", "sign"), [(Side.BUY, 1), (Side.SELL, -1)])
def test_mark_computes_unrealized_pnl_by_side(side: Side, sign: int) -> None:
    session = Session()
    position_id = session.open(side)
    position = session.mark(position_id, "110")
    assert position.unrealized_pnl == sign * 50
    assert position.current_price == 110
    assert position.marked_at == session.stamper.at(2)
    assert position.realized_pnl == 0


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
def test_roe_without_margin_is_the_seeds_fallback(side: Side) -> None:
    session = Session()
    position_id = session.open(side, entry="100", leverage=7)
    position = session.mark(position_id, "104")
    # the seed: price change x leverage x 100, negated for a short
    price_change = (D(104) - D(100)) / D(100)
    if side is Side.SELL:
        price_change = -price_change
    assert position.roe_percentage == price_change * 7 * 100
    assert position.margin == D(500) / 7


def test_roe_from_the_real_initial_margin() -> None:
    session = Session()
    position_id = session.open(margin="125")  # not notional / leverage (100)
    position = session.mark(position_id, "110")
    assert position.margin == 125
    assert position.roe_percentage == D(50) / D(125) * 100  # 40 %, the seed's first branch


def test_mark_with_exchange_figures_uses_them() -> None:
    session = Session()
    position_id = session.open()
    position = session.mark(position_id, "110", unrealized_pnl=D("48.7"), initial_margin=D("97.4"))
    assert position.unrealized_pnl == D("48.7")  # the exchange's figure, not 5 x 10
    assert position.real_initial_margin == D("97.4")
    assert position.roe_percentage == 50
    later = session.mark(position_id, "120")
    assert later.unrealized_pnl == 100  # computed again when the exchange says nothing
    assert later.real_initial_margin == D("97.4")  # a known margin is kept


def test_partial_exit_scales_margin_and_unrealized() -> None:
    session = Session()
    position_id = session.open(qty="4", entry="100", margin="80")
    session.mark(position_id, "110")  # unrealized 40
    position = session.exit(position_id, "1", "110")
    assert position.qty == 3
    assert position.position_size == 300
    assert position.real_initial_margin == 60
    assert position.unrealized_pnl == 30
    assert position.roe_percentage == 50
    assert position.realized_pnl == 10
    assert position.initial_qty == 4


def test_partial_exit_without_known_margin_uses_remaining_notional() -> None:
    session = Session()
    position_id = session.open(qty="4", entry="100", leverage=4)
    session.mark(position_id, "90")
    position = session.exit(position_id, "3", "90")
    assert position.margin == 25  # 1 x 100 / 4
    assert position.unrealized_pnl == -10
    assert position.realized_pnl == -30


def test_partial_exit_record_has_the_seeds_fields() -> None:
    session = Session()
    position_id = session.open(qty="5", entry="100")
    position = session.exit(position_id, "1.5", "110", fee=D("0.5"))
    (record,) = position.partial_exits
    assert record.size == 150  # USD at the entry price
    assert (record.qty, record.price, record.fee) == (D("1.5"), D(110), D("0.5"))
    assert record.realized_pnl == D("14.5")
    assert record.timestamp == session.stamper.at(2)


def test_funding_counts_in_realized() -> None:
    session = Session()
    position_id = session.open()
    session.do(RecordFunding(position_id=position_id, amount=D("2.5"), execution_id="f1"))
    session.do(RecordFunding(position_id=position_id, amount=D("-1"), execution_id="f2"))
    position = session.book.open[position_id]
    assert position.funding == D("1.5")
    assert position.realized_pnl == D("1.5")
    assert session.book.summary().total_realized_pnl == D("1.5")
    assert session.book.summary().total_funding == D("1.5")
    closed = session.close(position_id, "100")
    assert closed.realized_pnl == D("1.5")
    summary = session.book.summary()
    assert summary.per_symbol["SOL/USDT:USDT"].funding == D("1.5")
    assert summary.wins == 1  # funding alone made it a winner


def test_increase_averages_the_entry() -> None:
    session = Session()
    position_id = session.open(qty="1", entry="100", margin="20", leverage=5)
    session.mark(position_id, "120")
    session.do(IncreasePosition(position_id=position_id, qty=D(3), price=D(120), fee=D(1)))
    position = session.book.open[position_id]
    assert position.entry_price == 115
    assert position.qty == 4 and position.initial_qty == 4
    assert position.position_size == 460
    assert position.real_initial_margin == 20 + D(360) / 5
    assert position.unrealized_pnl == 4 * (120 - 115)
    assert position.realized_pnl == -1 and position.fees == 1


def test_close_realizes_and_clears_unrealized() -> None:
    session = Session()
    position_id = session.open(qty="2", entry="100", leverage=5)
    session.mark(position_id, "130")
    closed = session.close(position_id, "120", fee=D(1))
    assert closed.status is Status.CLOSED and not closed.is_open
    assert closed.realized_pnl == 39
    assert closed.unrealized_pnl == 0
    assert (closed.exit_price, closed.current_price) == (D(120), D(120))
    assert closed.close_time == session.stamper.at(3)
    assert closed.roe_percentage == D(39) / D(40) * 100  # on the opening margin 200/5
    assert position_id not in session.book.open


def test_close_without_price_closes_at_the_last_mark() -> None:
    session = Session()
    position_id = session.open(Side.SELL, qty="2", entry="100")
    session.mark(position_id, "95")
    session.do(ClosePosition(position_id=position_id))
    assert session.book.closed[position_id].realized_pnl == 10


def test_win_counts_the_whole_realized_pnl_with_partial_exits() -> None:
    session = Session()
    position_id = session.open(qty="4", entry="100")
    session.exit(position_id, "2", "115")  # +30
    last = session.mark(position_id, "95")
    assert last.unrealized_pnl < 0  # the seed's test: a loss
    closed = session.close(position_id, "95")  # -10
    assert closed.realized_pnl == 20
    summary = session.book.summary()
    assert (summary.wins, summary.losses, summary.closed_trades) == (1, 0, 1)
    assert summary.win_rate == 1
    # what the seed would have counted: the last unrealized pnl before the close
    seed_wins = 1 if last.unrealized_pnl > 0 else 0
    assert seed_wins == 0


def test_breakeven_counts_as_a_loss_as_in_the_seed() -> None:
    session = Session()
    session.trade("0")
    summary = session.book.summary()
    assert (summary.wins, summary.losses) == (0, 1)


def test_trade_figures() -> None:
    session = Session()
    for pnl in ("50", "-30", "-20", "100"):
        session.trade(pnl)
    summary = session.book.summary()
    assert (summary.closed_trades, summary.wins, summary.losses) == (4, 2, 2)
    assert summary.win_rate == D("0.5")
    assert summary.closed_realized_pnl == summary.total_realized_pnl == 100
    assert summary.profit_factor == 3  # 150 / 50
    assert summary.average_win == 75
    assert summary.average_loss == -25
    assert summary.expectancy == 25


def test_profit_factor_is_none_without_losses_and_zero_without_wins() -> None:
    winners = Session()
    winners.trade("5")
    assert winners.book.summary().profit_factor is None
    losers = Session()
    losers.trade("-5")
    assert losers.book.summary().profit_factor == 0
    empty = Book().summary()
    assert (empty.win_rate, empty.expectancy, empty.average_win, empty.max_drawdown) == (D(0),) * 4


def test_max_drawdown_of_realized_equity() -> None:
    session = Session()
    for pnl in ("50", "-30", "-40", "100", "-10"):
        session.trade(pnl)
    # equity 50, 20, -20, 80, 70: the deepest fall from a peak is 50 -> -20
    assert session.book.summary().max_drawdown == 70


def test_max_drawdown_sees_partial_exits_and_fees() -> None:
    session = Session()
    position_id = session.open(qty="2", entry="100", fee="1")  # equity -1
    session.exit(position_id, "1", "80")  # -20: equity -21
    session.close(position_id, "150")  # +50: equity 29
    assert session.book.summary().max_drawdown == 21


def test_per_symbol_figures() -> None:
    session = Session()
    session.trade("10", "SOL/USDT:USDT")
    session.trade("-4", "SOL/USDT:USDT")
    session.trade("7", "BTC/USDT:USDT")
    per_symbol = session.book.summary().per_symbol
    assert list(per_symbol) == ["BTC/USDT:USDT", "SOL/USDT:USDT"]
    sol, btc = per_symbol["SOL/USDT:USDT"], per_symbol["BTC/USDT:USDT"]
    assert (sol.closed_trades, sol.wins, sol.losses, sol.realized_pnl) == (2, 1, 1, D(6))
    assert (btc.closed_trades, btc.wins, btc.losses, btc.realized_pnl) == (1, 1, 0, D(7))


def test_used_margin_and_available_balance_without_a_balance() -> None:
    session = Session()
    session.open(qty="5", entry="100", leverage=5)  # 100
    session.open(qty="1", entry="300", leverage=3, symbol="BTC/USDT:USDT", margin="120")
    summary = session.book.summary()
    assert summary.used_margin == 220
    assert summary.balance == 0
    # no balance seen yet: nothing to subtract the margin from (the seed would say -220)
    assert summary.available_balance == 0
    assert summary.active_positions == 2


def test_available_balance_with_an_observed_balance() -> None:
    session = Session()
    session.open(qty="5", entry="100", leverage=5)
    session.do(ObserveBalance(total=D(1000), available=D("850.5")))
    summary = session.book.summary()
    assert summary.balance == 1000
    assert summary.available_balance == D("850.5")  # the exchange's figure wins
    session.do(ObserveBalance(total=D(900), available=D(700)))
    later = session.book.summary()
    assert (later.balance, later.available_balance) == (D(900), D(700))


def test_total_realized_counts_open_positions_partials_and_fees() -> None:
    session = Session()
    open_id = session.open(qty="4", entry="100", fee="2")
    session.exit(open_id, "1", "110")  # +10
    session.trade("5", "BTC/USDT:USDT")
    summary = session.book.summary()
    assert summary.open_realized_pnl == 8
    assert summary.closed_realized_pnl == 5
    assert summary.total_realized_pnl == 13
    assert summary.total_fees == 2
    session.mark(open_id, "120")
    summary = session.book.summary()
    assert summary.unrealized_pnl == 60
    assert summary.total_pnl == 73


# -- the book's fold -------------------------------------------------------------------------


def test_apply_skips_events_it_cannot_place_and_never_raises() -> None:
    session = Session()
    session.apply(PositionMarked(position_id="ghost", mark_price=D(1)))
    session.apply(PartialExitRecorded(position_id="ghost", qty=D(1), price=D(1), realized_pnl=D(1)))
    position_id = session.open()
    duplicate = PositionOpened(
        position_id=position_id,
        symbol="X",
        side=Side.BUY,
        qty=D(9),
        entry_price=D(9),
        leverage=1,
    )
    session.apply(duplicate)
    assert session.book.skipped == [1, 2, 4]
    assert session.book.last_seq == 4
    assert session.book.open[position_id].qty == 5
    assert session.book.summary().total_realized_pnl == 0


def test_apply_ignores_records_already_in() -> None:
    stamper = Stamper()
    opened_record = stamper.stamp(
        PositionOpened(
            position_id="p1", symbol="S", side=Side.BUY, qty=D(1), entry_price=D(10), leverage=1
        )
    )
    exit_record = stamper.stamp(
        PartialExitRecorded(position_id="p1", qty=D("0.5"), price=D(12), realized_pnl=D(1))
    )
    book = Book()
    book.apply_all([opened_record, exit_record, exit_record, opened_record])
    assert book.open["p1"].qty == D("0.5")
    assert book.open["p1"].realized_pnl == 1
    assert (book.last_seq, book.last_hash) == (2, exit_record.hash)


def test_copy_is_independent() -> None:
    session = Session()
    position_id = session.open()
    copy = session.book.copy()
    session.close(position_id, "110")
    assert position_id in copy.open and position_id not in copy.closed
    assert copy.summary().closed_trades == 0
    assert copy.acc.equity == 0 and session.book.acc.equity == 50
    assert session.book.summary().closed_trades == 1


def test_successor_sets_what_init_sets() -> None:
    """Book.successor builds its book without __init__: it must set every attribute that
    __init__ does (one added there and forgotten there would fail only on a fork)."""
    session = Session()
    session.close(session.open(), "110")
    fork = session.book.successor()
    assert vars(fork).keys() == vars(Book()).keys()
    assert fork.summary() == session.book.summary()
    assert dict(fork.closed) == dict(session.book.closed)


def test_copy_and_successor_keep_per_symbol_figures_apart() -> None:
    """The per-symbol sums are shared by a copy until one side records a close: a close
    folded on either side after a fork never shows in the other's figures."""
    session = Session()
    first = session.open(symbol="SOL/USDT:USDT")
    second = session.open(symbol="BTC/USDT:USDT")
    session.close(first, "110")
    before = session.book
    fork = before.successor()
    # the fork folds a close: the book it came from keeps its own figures
    fork.apply(
        session.stamper.stamp(
            PositionClosed(position_id=second, qty=D(5), price=D(90), realized_pnl=D(-50))
        )
    )
    assert list(fork.summary().per_symbol) == ["BTC/USDT:USDT", "SOL/USDT:USDT"]
    assert list(before.summary().per_symbol) == ["SOL/USDT:USDT"]
    assert before.accounts["default"].per_symbol.keys() == {"SOL/USDT:USDT"}
    # and the book that was copied, folded on afterwards, does not write into its copy
    copy = session.book.copy()
    third = session.open(symbol="ETH/USDT:USDT")
    session.close(third, "120")
    assert set(session.book.summary().per_symbol) == {"SOL/USDT:USDT", "ETH/USDT:USDT"}
    assert set(copy.summary().per_symbol) == {"SOL/USDT:USDT"}
    assert copy.acc.per_symbol["SOL/USDT:USDT"].closed_trades == 1
    assert set(copy.accounts["default"].per_symbol) == {"SOL/USDT:USDT"}


def test_a_successor_shares_imports_and_never_writes_into_them() -> None:
    """Book.successor shares the record of imported files with the book it came from: an
    import folded on the successor (or on a copy or a fork) shows there alone."""
    session = Session()
    first = HistoryImported(
        file_sha256="a" * 64, file_name="one.json", open_positions=0, closed_positions=0
    )
    second = HistoryImported(
        file_sha256="b" * 64, file_name="two.json", open_positions=0, closed_positions=0
    )
    session.apply(first)
    before = session.book
    after = before.successor()
    after.apply(session.stamper.stamp(second))
    assert dict(after.imported_files) == {"a" * 64: "one.json", "b" * 64: "two.json"}
    assert dict(before.imported_files) == {"a" * 64: "one.json"}
    for other in (before.copy(), before.fork(), before.successor()):
        other.apply(session.stamper.stamp(second))
        assert dict(before.imported_files) == {"a" * 64: "one.json"}


def test_one_account_shares_its_symbol_figures() -> None:
    """A book of one account keeps its per-symbol figures and the fleet's in one dict
    (each close then copies it once, not twice), and every figure is still counted once:
    a close, funding settled after a close (which moves both sides' figures), a second
    account's close (which must stay out of the first account's figures), each against
    figures written out here."""
    session = Session()
    book = session.book
    first = session.open(symbol="SOL/USDT:USDT")
    session.close(first, "110")  # +50
    assert book.accounts["default"].per_symbol is book.acc.per_symbol
    second = session.open(symbol="BTC/USDT:USDT")
    session.close(second, "90")  # -50
    assert book.accounts["default"].per_symbol is book.acc.per_symbol
    # funding after the close: both sides take back the old figures and count the new ones
    session.do(RecordFunding(position_id=first, amount=D("2.5"), execution_id="f1"))
    for acc in (book.acc, book.accounts["default"]):
        sol, btc = acc.per_symbol["SOL/USDT:USDT"], acc.per_symbol["BTC/USDT:USDT"]
        assert (sol.closed_trades, sol.wins, sol.realized_pnl, sol.funding) == (
            1,
            1,
            D("52.5"),
            D("2.5"),
        )
        assert (btc.closed_trades, btc.losses, btc.realized_pnl) == (1, 1, D(-50))
        assert (acc.closed_trades, acc.wins, acc.losses) == (2, 1, 1)
    # a second account's close: in the fleet's figures, not in the first account's
    session.serial += 1
    other = f"p{session.serial}"
    session.do(
        OpenPosition(
            position_id=other,
            symbol="ETH/USDT:USDT",
            side=Side.BUY,
            qty=D(5),
            entry_price=D(100),
            leverage=5,
            account="second",
        )
    )
    session.close(other, "120")  # +100
    assert set(book.acc.per_symbol) == {"SOL/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"}
    assert set(book.accounts["default"].per_symbol) == {"SOL/USDT:USDT", "BTC/USDT:USDT"}
    assert set(book.accounts["second"].per_symbol) == {"ETH/USDT:USDT"}
    assert book.acc.closed_trades == 3 and book.accounts["default"].closed_trades == 2
    assert book.accounts["second"].per_symbol["ETH/USDT:USDT"].realized_pnl == D(100)


def test_a_snapshot_of_one_account_shares_and_keeps_its_figures() -> None:
    """A snapshot of a book of one account loads with one per-symbol dict for the account
    and the fleet; a close folded on its successor counts once on each and leaves the
    loaded book's figures as they were."""
    session = Session()
    session.close(session.open(symbol="SOL/USDT:USDT"), "110")  # +50
    loaded = decode_snapshot(encode_snapshot(session.book, datetime(2025, 1, 1, tzinfo=UTC)))
    assert loaded.accounts["default"].per_symbol is loaded.acc.per_symbol
    session.book = loaded.successor()
    session.close(session.open(symbol="SOL/USDT:USDT"), "90")  # -50
    for acc in (session.book.acc, session.book.accounts["default"]):
        sol = acc.per_symbol["SOL/USDT:USDT"]
        assert (sol.closed_trades, sol.wins, sol.losses, sol.realized_pnl) == (2, 1, 1, D(0))
    for acc in (loaded.acc, loaded.accounts["default"]):
        sol = acc.per_symbol["SOL/USDT:USDT"]
        assert (sol.closed_trades, sol.realized_pnl) == (1, D(50))


def test_open_for_finds_by_symbol_and_side_in_opening_order() -> None:
    session = Session()
    long_id = session.open(Side.BUY)
    short_id = session.open(Side.SELL)
    book = session.book
    first = book.open_for("SOL/USDT:USDT")
    assert first is not None and first.position_id == long_id
    short = book.open_for("SOL/USDT:USDT", Side.SELL)
    assert short is not None and short.position_id == short_id
    assert book.open_for("BTC/USDT:USDT") is None


def test_layered_history_reads_as_a_chainmap_does() -> None:
    """The layers a book's history is kept in (`_Layers`) answer `in` and `get` as a
    ChainMap of the same maps: the top layer first, then the base."""
    from collections import ChainMap

    from projections.book import _Layers

    top, base = {"a": 1, "b": 2}, {"b": 20, "c": 30}
    layers, chain = _Layers(dict(top), dict(base)), ChainMap(dict(top), dict(base))
    for key in ("a", "b", "c", "zz"):
        assert (key in layers) == (key in chain)
        assert layers.get(key) == chain.get(key)
        assert layers.get(key, -1) == chain.get(key, -1)
    layers["c"] = 3
    assert layers.get("c") == 3 and layers.maps[1]["c"] == 30
    del layers["a"]
    assert "a" not in layers and layers.get("a") is None
    assert dict(layers) == {"b": 2, "c": 3}


def _state(book: Book) -> tuple[object, ...]:
    """Everything a book holds, exactly (sums encoded: a Decimal's digits and exponent)."""
    return (
        dict(book.open),
        dict(book.closed),
        msgspec.json.encode(book.acc),
        msgspec.json.encode(book.accounts),
        dict(book.balances),
        list(book.skipped),
        dict(book.imported_files),
        book.last_seq,
    )


def _writes(stamper: Stamper, open_id: str, closed_id: str, account: str) -> list[Recorded]:
    """One event of each kind that writes a part a successor shares: an open without a fee
    (no sums written) and one with, a partial exit, a close, funding and an amendment of a
    closed position, a balance, a mark the book cannot place (skipped)."""
    opened = PositionOpened(
        position_id=f"{open_id}-new",
        symbol="XUSDT",
        side=Side.BUY,
        qty=D(1),
        entry_price=D(10),
        leverage=2,
    )
    return stamper.stamp_all(
        [
            opened,
            msgspec.structs.replace(
                opened, position_id=f"{open_id}-fee", fee=D("0.5"), account=account
            ),
            PartialExitRecorded(position_id=open_id, qty=D(1), price=D(120), realized_pnl=D(20)),
            PositionClosed(position_id=open_id, qty=D(4), price=D(90), realized_pnl=D(-40)),
            FundingRecorded(position_id=closed_id, amount=D("-1.5"), execution_id="f"),
            PnlAmended(
                position_id=closed_id,
                qty=D(5),
                price=D(110),
                realized_pnl=D(45),
                estimated_pnl=D(50),
                exchange_ref="r",
            ),
            BalanceObserved(total=D(900), available=D(800), account=account),
            PositionMarked(position_id="nowhere", mark_price=D(1)),
        ]
    )


@pytest.mark.parametrize("account", ["default", "second"])
@pytest.mark.parametrize("folded", ["successor", "book"])
def test_a_successor_and_its_book_never_write_into_what_they_share(
    folded: str, account: str
) -> None:
    """Book.successor shares the closed history, the sums, the balances and `skipped` with
    the book it came from: whichever of the two is folded on afterwards (the successor, as
    the Ledger does, or the book itself) writes copies of its own, each event its part, and
    the other keeps exactly what it held; the one folded holds what folding every event from
    nothing gives."""
    session = Session()
    session.close(session.open(symbol="AUSDT"), "110")  # history and sums to share
    closed_id = session.open(symbol="BUSDT")
    session.close(closed_id, "105")
    open_id = session.open(symbol="CUSDT")
    session.apply(PositionMarked(position_id="gone", mark_price=D(1)))  # one skipped already
    session.apply(BalanceObserved(total=D(1000), available=D(1000)))
    history = list(session.records)
    book = session.book
    successor = book.successor()
    target, other = (successor, book) if folded == "successor" else (book, successor)
    held = _state(other)
    events = _writes(session.stamper, open_id, closed_id, account)
    for record in events:
        target.apply(record)
        assert _state(other) == held
    reference = Book()
    reference.apply_all([*history, *events])
    assert _state(target) == _state(reference)
    assert target.skipped == [history[-2].seq, events[-1].seq]
