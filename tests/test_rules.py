"""Every rule and its typed error, through the async Ledger and the blocking manager.

Each refused call must append nothing: the log's head seq is the same before and after.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import rules
from ledger.blocking import ThreadSafePositionManager
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
from ledger.errors import (
    CommandRejected,
    DuplicatePosition,
    ExitExceedsPosition,
    InvalidValue,
    LedgerError,
    LeverageOutOfRange,
    PositionAlreadyClosed,
    TooManyOpenPositions,
    UnknownPosition,
)
from ledger.events import PositionOpened
from ledger.rules import check_command, decide, decide_checked
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import Side, Source
from projections.book import Book
from tests.strategies import Stamper

pytestmark = pytest.mark.anyio

SOL = "SOL/USDT:USDT"
SYMBOLS = [f"C{n}/USDT:USDT" for n in range(8)]
# Sizes and prices that must be refused: zero, negative, NaN, infinite, not a number at all.
BAD_NUMBERS: list[object] = [
    0,
    "0",
    -1,
    Decimal("-0.5"),
    float("nan"),
    Decimal("NaN"),
    "nan",
    float("inf"),
    float("-inf"),
    "Infinity",
    "abc",
    "",
    True,
    [1],
]
BAD_LEVERAGE: list[object] = [0, -3, 101, 1000]
# not an int at all: a wrong type, refused at the boundary as InvalidValue
NOT_LEVERAGE: list[object] = [True, False, 2.5, 5.0, "5", None]


@pytest.fixture
async def ledger(db_path: Path) -> AsyncIterator[Ledger]:
    async with Ledger(db_path, settings=Settings()) as opened:
        yield opened


async def head_seq(ledger: Ledger) -> int:
    return (await ledger.store.head()).seq


async def refused(
    ledger: Ledger, error: type[LedgerError], call: Callable[[], Awaitable[object]]
) -> LedgerError:
    """Run a call that must be refused with `error` and must append nothing."""
    before = await head_seq(ledger)
    with pytest.raises(error) as caught:
        await call()
    assert await head_seq(ledger) == before, "a refused command appended events"
    return caught.value


async def open_sol(ledger: Ledger, side: str = "buy", symbol: str = SOL) -> str:
    position = await ledger.open_position(symbol, side, entry_price=100, leverage=5, notional=500)
    return position.position_id


async def closed_position(ledger: Ledger) -> str:
    position_id = await open_sol(ledger)
    await ledger.close_position(position_id, reason="done", price=101)
    return position_id


# -- unknown and closed positions -----------------------------------------------------


async def test_unknown_position_is_refused_by_every_command(ledger: Ledger) -> None:
    await open_sol(ledger)
    for call in (
        lambda: ledger.register_partial_exit("pos_nope", price=110, notional=10),
        lambda: ledger.close_position("pos_nope", price=110),
        lambda: ledger.mark("pos_nope", 110),
    ):
        error = await refused(ledger, UnknownPosition, call)
        assert isinstance(error, UnknownPosition)
        assert error.position_id == "pos_nope"


async def test_closed_position_cannot_be_exited_closed_or_marked(ledger: Ledger) -> None:
    position_id = await closed_position(ledger)
    for call in (
        lambda: ledger.register_partial_exit(position_id, price=110, notional=10),
        lambda: ledger.close_position(position_id, price=110),
        lambda: ledger.close_position(position_id),
        lambda: ledger.mark(position_id, 110),
    ):
        error = await refused(ledger, PositionAlreadyClosed, call)
        assert isinstance(error, PositionAlreadyClosed)
        assert error.position_id == position_id
    assert ledger.get_position(position_id) is not None
    assert [p.position_id for p in ledger.closed_positions()] == [position_id]


# -- sizes --------------------------------------------------------------------------------


async def test_exit_larger_than_what_is_left_is_refused(ledger: Ledger) -> None:
    position_id = await open_sol(ledger)  # qty 5 at 100
    await ledger.register_partial_exit(position_id, price=110, notional=150)  # 3.5 left
    error = await refused(
        ledger,
        ExitExceedsPosition,
        lambda: ledger.register_partial_exit(position_id, price=110, qty="3.6"),
    )
    assert isinstance(error, ExitExceedsPosition)
    assert error.remaining_qty == Decimal("3.5")
    assert error.requested_qty == Decimal("3.6")
    await refused(
        ledger,
        ExitExceedsPosition,
        lambda: ledger.register_partial_exit(position_id, price=110, notional=351),
    )
    still = ledger.get_position(position_id)
    assert still is not None and still.is_open and still.qty == Decimal("3.5")


@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=repr)
async def test_bad_open_sizes_and_prices_are_refused(ledger: Ledger, bad: object) -> None:
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("qty", lambda: ledger.open_position(SOL, "buy", entry_price=100, leverage=5, qty=bad)),  # type: ignore[arg-type]
        (
            "notional",
            lambda: ledger.open_position(SOL, "buy", entry_price=100, leverage=5, notional=bad),  # type: ignore[arg-type]
        ),
        (
            "entry_price",
            lambda: ledger.open_position(SOL, "buy", entry_price=bad, leverage=5, qty=1),  # type: ignore[arg-type]
        ),
    ]
    for field, call in cases:
        error = await refused(ledger, InvalidValue, call)
        assert isinstance(error, InvalidValue)
        assert error.field == field
    assert ledger.active_positions() == []


@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=repr)
async def test_bad_exit_and_mark_sizes_and_prices_are_refused(ledger: Ledger, bad: object) -> None:
    position_id = await open_sol(ledger)
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("qty", lambda: ledger.register_partial_exit(position_id, price=110, qty=bad)),  # type: ignore[arg-type]
        ("exit_size", lambda: ledger.register_partial_exit(position_id, price=110, notional=bad)),  # type: ignore[arg-type]
        ("price", lambda: ledger.register_partial_exit(position_id, price=bad, qty=1)),  # type: ignore[arg-type]
        ("price", lambda: ledger.close_position(position_id, price=bad)),  # type: ignore[arg-type]
        ("price", lambda: ledger.mark(position_id, bad)),  # type: ignore[arg-type]
    ]
    for field, call in cases:
        error = await refused(ledger, InvalidValue, call)
        assert isinstance(error, InvalidValue)
        assert error.field == field
    position = ledger.get_position(position_id)
    assert position is not None and position.is_open and position.qty == 5


async def test_close_at_no_mark_uses_the_entry_price(ledger: Ledger) -> None:
    position_id = await open_sol(ledger)
    closed = await ledger.close_position(position_id, reason="flat")
    assert closed.exit_price == Decimal(100)
    assert closed.realized_pnl == 0


@pytest.mark.parametrize("leverage", BAD_LEVERAGE, ids=repr)
async def test_leverage_out_of_range_is_refused(ledger: Ledger, leverage: object) -> None:
    error = await refused(
        ledger,
        LeverageOutOfRange,
        lambda: ledger.open_position(SOL, "buy", entry_price=100, leverage=leverage, qty=1),  # type: ignore[arg-type]
    )
    assert isinstance(error, LeverageOutOfRange)
    assert (error.minimum, error.maximum) == (1, 100)


@pytest.mark.parametrize("leverage", NOT_LEVERAGE, ids=repr)
async def test_leverage_of_the_wrong_type_is_invalid(ledger: Ledger, leverage: object) -> None:
    error = await refused(
        ledger,
        InvalidValue,
        lambda: ledger.open_position(SOL, "buy", entry_price=100, leverage=leverage, qty=1),  # type: ignore[arg-type]
    )
    assert isinstance(error, InvalidValue) and error.field == "leverage"


@pytest.mark.parametrize("leverage", [1, 100])
async def test_leverage_bounds_are_inclusive(ledger: Ledger, leverage: int) -> None:
    position = await ledger.open_position(SOL, "buy", entry_price=100, leverage=leverage, qty=1)
    assert position.leverage == leverage


async def test_exactly_one_of_qty_and_notional(ledger: Ledger) -> None:
    for call in (
        lambda: ledger.open_position(SOL, "buy", entry_price=100, leverage=5),
        lambda: ledger.open_position(SOL, "buy", entry_price=100, leverage=5, qty=1, notional=100),
    ):
        error = await refused(ledger, InvalidValue, call)
        assert isinstance(error, InvalidValue) and error.field == "qty"
    position_id = await open_sol(ledger)
    for call in (
        lambda: ledger.register_partial_exit(position_id, price=110),
        lambda: ledger.register_partial_exit(position_id, price=110, qty=1, notional=100),
    ):
        await refused(ledger, InvalidValue, call)


# -- limits ---------------------------------------------------------------------------------


async def test_more_open_positions_than_the_limit_is_refused(ledger: Ledger) -> None:
    assert ledger.settings.max_concurrent_positions == 5
    ids = [await open_sol(ledger, symbol=symbol) for symbol in SYMBOLS[:5]]
    error = await refused(ledger, TooManyOpenPositions, lambda: open_sol(ledger, symbol=SYMBOLS[5]))
    assert isinstance(error, TooManyOpenPositions)
    assert (error.limit, error.open_count) == (5, 5)
    # a closed position frees its slot
    await ledger.close_position(ids[0], price=100)
    await open_sol(ledger, symbol=SYMBOLS[5])
    assert len(ledger.active_positions()) == 5


async def test_the_limit_comes_from_settings(db_path: Path) -> None:
    async with Ledger(db_path, settings=Settings(max_concurrent_positions=2)) as ledger:
        await open_sol(ledger, symbol=SYMBOLS[0])
        await open_sol(ledger, symbol=SYMBOLS[1])
        await refused(ledger, TooManyOpenPositions, lambda: open_sol(ledger, symbol=SYMBOLS[2]))


async def test_second_open_on_the_same_symbol_and_side_is_refused(ledger: Ledger) -> None:
    first = await open_sol(ledger, "buy")
    error = await refused(ledger, DuplicatePosition, lambda: open_sol(ledger, "long"))
    assert isinstance(error, DuplicatePosition)
    assert (error.symbol, error.side, error.existing_id) == (SOL, "buy", first)


async def test_long_and_short_on_one_symbol_is_allowed_hedge_mode(ledger: Ledger) -> None:
    long_id = await open_sol(ledger, "buy")
    short_id = await open_sol(ledger, "sell")
    assert {p.position_id for p in ledger.active_positions()} == {long_id, short_id}
    long_position = ledger.get_position_for_symbol(SOL, "buy")
    short_position = ledger.get_position_for_symbol(SOL, "short")
    assert long_position is not None and long_position.position_id == long_id
    assert short_position is not None and short_position.position_id == short_id
    await refused(ledger, DuplicatePosition, lambda: open_sol(ledger, "sell"))


async def test_a_closed_position_does_not_block_a_new_one_on_its_symbol(ledger: Ledger) -> None:
    await closed_position(ledger)
    assert not ledger.has_position_for_symbol(SOL)
    await open_sol(ledger)
    assert ledger.has_position_for_symbol(SOL, "buy")


def test_every_refusal_is_a_command_rejected() -> None:
    for error in (
        InvalidValue,
        UnknownPosition,
        PositionAlreadyClosed,
        ExitExceedsPosition,
        LeverageOutOfRange,
        TooManyOpenPositions,
        DuplicatePosition,
    ):
        assert issubclass(error, CommandRejected)
        assert issubclass(error, LedgerError)


def test_decide_refuses_a_reused_position_id() -> None:
    book = Book()
    command = OpenPosition(
        position_id="p1",
        symbol=SOL,
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(100),
        leverage=5,
    )
    (event,) = decide(book, command, Limits())
    book.apply(Stamper().stamp(event))
    other = OpenPosition(
        position_id="p1",
        symbol="BTC/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(100),
        leverage=5,
    )
    with pytest.raises(InvalidValue):
        decide(book, other, Limits())


_SPELLINGS = ["SOL/USDT:USDT", "SOL/USDT", "solusdt", " SOLUSDT ", "BTC/USDT:USDT", "BTCUSDT"]


@settings(max_examples=300, deadline=None)
@given(
    held=st.lists(
        st.tuples(st.sampled_from(_SPELLINGS), st.sampled_from(list(Side)), st.sampled_from("ab")),
        max_size=7,
    ),
    symbol=st.sampled_from(_SPELLINGS),
    side=st.sampled_from(list(Side)),
    account=st.sampled_from("ab"),
    limit=st.integers(0, 5),
    enforce=st.booleans(),
)
def test_an_open_is_refused_as_a_duplicate_or_over_the_limit_as_the_reference_says(
    held: list[tuple[str, Side, str]],
    symbol: str,
    side: Side,
    account: str,
    limit: int,
    enforce: bool,
) -> None:
    """The duplicate and limit rules of an open (one pass over the open positions in
    `rules._open`) against a reference written here: the first open position of the same
    account on the same market (any spelling) and side is the duplicate, named in the
    error, and refused before the limit; else the account's open positions at or above
    the limit refuse it; other accounts' positions never count; without enforce_limits
    neither rule applies."""
    stamper = Stamper()
    book = Book()
    for n, (held_symbol, held_side, owner) in enumerate(held):
        event = PositionOpened(
            position_id=f"p{n}", symbol=held_symbol, side=held_side, qty=Decimal(1),
            entry_price=Decimal(10), leverage=2, account=owner,
        )  # fmt: skip
        book.apply(stamper.stamp(event))
    command = OpenPosition(
        position_id="new", symbol=symbol, side=side, qty=Decimal(1), entry_price=Decimal(10),
        leverage=2, account=account, enforce_limits=enforce,
    )  # fmt: skip
    limits = Limits(max_concurrent_positions=limit)

    def market(text: str) -> str:  # the reference's own: BTC/USDT:USDT, BTCUSDT -> BTCUSDT
        return text.strip().upper().split(":")[0].replace("/", "")

    mine = [(n, s, d) for n, (s, d, owner) in enumerate(held) if owner == account]
    twins = [n for n, s, d in mine if market(s) == market(symbol) and d is side]
    try:
        events = decide_checked(book, command, limits)
    except DuplicatePosition as refused:
        assert enforce and twins, refused
        assert refused.existing_id == f"p{twins[0]}"
    except TooManyOpenPositions as refused:
        assert enforce and not twins and len(mine) >= limit, refused
        assert (refused.limit, refused.open_count) == (limit, len(mine))
    else:
        assert not enforce or (not twins and len(mine) < limit)
        assert [type(e) for e in events][-1] is PositionOpened


def test_decide_turns_an_exit_of_everything_into_exit_and_close() -> None:
    stamper = Stamper()
    book = Book()
    opened = OpenPosition(
        position_id="p1",
        symbol=SOL,
        side=Side.SELL,
        qty=Decimal(2),
        entry_price=Decimal(100),
        leverage=5,
    )
    book.apply_all(stamper.stamp_all(decide(book, opened, Limits())))
    events = decide(
        book,
        RecordPartialExit(position_id="p1", qty=Decimal(2), price=Decimal(90)),
        Limits(),
    )
    assert [type(e).__name__ for e in events] == ["PartialExitRecorded", "PositionClosed"]
    book.apply_all(stamper.stamp_all(events))
    assert book.open == {}
    assert book.closed["p1"].realized_pnl == Decimal(20)  # short: 2 x (100 - 90)


# -- the seed's example ------------------------------------------------------------------


async def test_seed_example_two_partial_exits(ledger: Ledger) -> None:
    position_id = await open_sol(ledger)  # 500 USD at 100: qty 5
    await ledger.register_partial_exit(
        position_id, notional=150, price=110, reason="partial_exit_50_roe"
    )
    position = await ledger.register_partial_exit(
        position_id, notional=150, price=120, reason="partial_exit_100_roe"
    )
    assert position.is_open
    assert position.position_size == 200
    assert position.qty == 2
    assert [e.size for e in position.partial_exits] == [150, 150]
    assert [e.realized_pnl for e in position.partial_exits] == [15, 30]
    assert [e.reason for e in position.partial_exits] == [
        "partial_exit_50_roe",
        "partial_exit_100_roe",
    ]
    assert position.realized_pnl == 45
    assert ledger.session_summary().total_realized_pnl == 45


async def test_fees_reduce_realized_pnl(ledger: Ledger) -> None:
    position = await ledger.open_position(
        SOL, "buy", entry_price=100, leverage=5, notional=500, fee="0.5"
    )
    assert position.realized_pnl == Decimal("-0.5")
    position = await ledger.register_partial_exit(
        position.position_id, notional=150, price=110, fee="1.25"
    )
    assert position.partial_exits[0].realized_pnl == Decimal("13.75")
    assert position.realized_pnl == Decimal("13.25")
    assert position.fees == Decimal("1.75")
    closed = await ledger.close_position(position.position_id, price=120, fee=1)
    assert closed.realized_pnl == Decimal("13.25") + 70 - 1  # 3.5 x 20 - fee


async def test_given_realized_pnl_is_kept_as_given(ledger: Ledger) -> None:
    position_id = await open_sol(ledger)
    position = await ledger.register_partial_exit(
        position_id, notional=150, price=110, realized_pnl="14.9"
    )
    assert position.partial_exits[0].realized_pnl == Decimal("14.9")


async def test_exiting_all_that_is_left_closes_the_position(ledger: Ledger) -> None:
    position_id = await open_sol(ledger)
    await ledger.register_partial_exit(position_id, notional=150, price=110)
    await ledger.register_partial_exit(position_id, notional=150, price=120)
    position = await ledger.register_partial_exit(position_id, notional=200, price=130)
    assert not position.is_open
    assert ledger.active_positions() == []
    assert [p.position_id for p in ledger.closed_positions()] == [position_id]
    assert position.realized_pnl == 15 + 30 + 60
    assert position.qty == 0
    summary = ledger.session_summary()
    assert (summary.closed_trades, summary.wins, summary.losses) == (1, 1, 0)


async def test_an_exit_by_a_notional_that_does_not_divide_evenly_can_finish_it(
    ledger: Ledger,
) -> None:
    position = await ledger.open_position(SOL, "buy", entry_price=3, leverage=5, notional=100)
    left = await ledger.register_partial_exit(position.position_id, notional=50, price=3)
    assert left.is_open
    done = await ledger.register_partial_exit(position.position_id, notional=50, price=3)
    assert not done.is_open


# -- the blocking manager: the seed's semantics -----------------------------------------


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=Settings()
    ) as opened:
        yield opened


def stored_events(manager: ThreadSafePositionManager) -> int:
    """How many events the database file holds, read with the stdlib driver."""
    conn = sqlite3.connect(f"file:{manager.db_path}?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(count)
    finally:
        conn.close()


def create(manager: ThreadSafePositionManager, symbol: str = SOL, side: str = "buy") -> str:
    return manager.thread_safe_create_position(
        symbol=symbol, side=side, entry_price=100.0, position_size=500.0, leverage=5
    )


@pytest.mark.parametrize(
    ("error", "kwargs"),
    [
        (InvalidValue, {"bogus_field": 1}),
        (InvalidValue, {"position_size": 0}),
        (InvalidValue, {"position_size": float("nan")}),
        (InvalidValue, {"position_size": -500.0}),
        (InvalidValue, {"entry_price": float("inf")}),
        (InvalidValue, {"entry_price": "abc"}),
        (InvalidValue, {"leverage": None}),
        (LeverageOutOfRange, {"leverage": 0}),
        (LeverageOutOfRange, {"leverage": 101}),
        (InvalidValue, {"leverage": True}),
        (InvalidValue, {"leverage": 2.5}),
    ],
    ids=repr,
)
def test_manager_refuses_bad_creates(
    manager: ThreadSafePositionManager, error: type[LedgerError], kwargs: dict[str, object]
) -> None:
    fields: dict[str, object] = {
        "symbol": SOL,
        "side": "buy",
        "entry_price": 100.0,
        "position_size": 500.0,
        "leverage": 5,
        **kwargs,
    }
    with pytest.raises(error):
        manager.thread_safe_create_position(**fields)
    assert stored_events(manager) == 0
    assert manager.get_active_positions() == []


def test_manager_create_returns_an_id_it_can_find(manager: ThreadSafePositionManager) -> None:
    position_id = create(manager)
    assert isinstance(position_id, str)
    position = manager.get_position(position_id)
    assert position is not None
    assert position.position_size == 500 and position.qty == 5
    assert manager.has_position_for_symbol(SOL)
    found = manager.get_position_for_symbol(SOL)
    assert found is not None and found.position_id == position_id


def test_manager_close_and_exit_return_false_for_unknown_and_closed(
    manager: ThreadSafePositionManager,
) -> None:
    assert manager.close_position("pos_nope", "why") is False
    assert manager.register_partial_exit("pos_nope", 10.0, 110.0, None, "why") is False
    assert stored_events(manager) == 0
    position_id = create(manager)
    assert manager.close_position(position_id, "take_profit", 105.0) is True
    count = stored_events(manager)
    assert manager.close_position(position_id, "again") is False
    assert manager.register_partial_exit(position_id, 10.0, 110.0, None, "late") is False
    assert stored_events(manager) == count
    assert manager.get_position(position_id) is None  # as in the seed: only open ones
    assert [p.position_id for p in manager.get_closed_positions()] == [position_id]


def test_manager_rules_append_nothing(manager: ThreadSafePositionManager) -> None:
    position_id = create(manager)
    for symbol in SYMBOLS[:4]:
        create(manager, symbol)
    count = stored_events(manager)
    with pytest.raises(TooManyOpenPositions):
        create(manager, SYMBOLS[4])
    with pytest.raises(DuplicatePosition):
        create(manager, SOL)
    with pytest.raises(ExitExceedsPosition):
        manager.register_partial_exit(position_id, 501.0, 110.0, None, "too much")
    for size, price in ((0.0, 110.0), (float("nan"), 110.0), (10.0, -1.0), (10.0, float("inf"))):
        with pytest.raises(InvalidValue):
            manager.register_partial_exit(position_id, size, price, None, "bad")
    assert stored_events(manager) == count
    assert len(manager.get_active_positions()) == 5


def test_manager_allows_hedge_mode(manager: ThreadSafePositionManager) -> None:
    long_id = create(manager, SOL, "buy")
    short_id = create(manager, SOL, "sell")
    assert {p.position_id for p in manager.get_active_positions()} == {long_id, short_id}


def test_manager_seed_example(manager: ThreadSafePositionManager) -> None:
    position_id = create(manager)
    assert manager.register_partial_exit(position_id, 150.0, 110.0, None, "partial_exit_50_roe")
    assert manager.register_partial_exit(position_id, 150.0, 120.0, None, "partial_exit_100_roe")
    position = manager.get_position(position_id)
    assert position is not None
    assert position.position_size == 200
    assert [e["realized_pnl"] for e in position.partial_exits] == [15, 30]
    assert [e["size"] for e in position.partial_exits] == [150, 150]
    summary = manager.get_session_summary()
    assert summary["total_realized_pnl"] == 45
    assert manager.register_partial_exit(position_id, 200.0, 120.0, None, "rest")
    assert manager.get_position(position_id) is None
    summary = manager.get_session_summary()
    assert (summary["closed_trades"], summary["wins"], summary["total_realized_pnl"]) == (1, 1, 85)


def test_manager_keeps_a_given_realized_pnl(manager: ThreadSafePositionManager) -> None:
    position_id = create(manager)
    assert manager.register_partial_exit(position_id, 150.0, 110.0, 15.0, "partial")
    position = manager.get_position(position_id)
    assert position is not None
    assert position.partial_exits[0]["realized_pnl"] == 15


# -- the type check at the boundary: checked once, the same verdict as field by field --------


class _Dec(Decimal):
    """A Decimal subclass: the check takes its slow path, never a shortcut."""


class _Str(str):
    pass


def _reference_verdict(declared: object, value: object) -> str:
    """The rule of check_command written out independently: 'ok', or why not."""
    import types
    import typing

    allowed = typing.get_args(declared) if isinstance(declared, types.UnionType) else (declared,)
    if value is None:
        return "ok" if type(None) in allowed else "required"
    if Decimal in allowed and isinstance(value, Decimal):
        if not value.is_finite():
            return "not finite"
        size = abs(value)
        return "ok" if size == 0 or Decimal("1e-12") <= size <= Decimal("1e15") else "bounds"
    if int in allowed and type(value) is not bool and isinstance(value, int):
        return "ok"
    if bool in allowed and isinstance(value, bool):
        return "ok"
    if str in allowed and isinstance(value, str):
        return "ok"
    for enum in (Side, Source):
        if enum in allowed and isinstance(value, enum):
            return "ok"
    return "type"


CANDIDATES: list[object] = [
    None, True, False, 0, 1, -7, 2.5, float("nan"), "", "x", _Str("y"), b"z", Side.SELL,
    Source.EXCHANGE, Decimal(0), Decimal("1.5"), Decimal("-3"), Decimal("NaN"), Decimal("sNaN"),
    Decimal("Infinity"), Decimal("1e16"), Decimal("1e-13"), _Dec("2.5"), _Dec("NaN"),
    _Dec("1e20"), [1], object(),
]  # fmt: skip


COMMAND_TYPES: list[type[msgspec.Struct]] = [
    OpenPosition, IncreasePosition, MarkPosition, RecordPartialExit, ClosePosition,
    RecordFunding, ObserveBalance, Limits,
]  # fmt: skip


@pytest.mark.parametrize("cls", COMMAND_TYPES)
def test_check_command_gives_the_reference_verdict_for_every_field_and_value(
    cls: type[msgspec.Struct],
) -> None:
    base = {
        "position_id": "p1", "symbol": SOL, "side": Side.BUY, "qty": Decimal(1),
        "entry_price": Decimal(10), "leverage": 2, "price": Decimal(10),
        "mark_price": Decimal(10), "amount": Decimal(1), "execution_id": "e1",
        "total": Decimal(1), "available": Decimal(1),
    }  # fmt: skip
    fields = msgspec.structs.fields(cls)
    required = {f.name: base[f.name] for f in fields if f.required}
    check_command(cls(**required))  # type: ignore[arg-type]  # a valid command passes
    for field in fields:
        for value in CANDIDATES:
            command = cls(**{**required, field.name: value})
            expected = _reference_verdict(field.type, value)
            if expected == "ok":
                check_command(command)  # type: ignore[arg-type]
                continue
            with pytest.raises(InvalidValue) as caught:
                check_command(command)  # type: ignore[arg-type]
            assert caught.value.field == field.name, (field.name, value)


def test_decide_checked_makes_the_events_decide_makes() -> None:
    stamper = Stamper()
    book = Book()
    opened = OpenPosition(
        position_id="p1", symbol=SOL, side=Side.BUY, qty=Decimal(2), entry_price=Decimal(100),
        leverage=5,
    )  # fmt: skip
    assert decide_checked(book, opened, Limits()) == decide(book, opened, Limits())
    book.apply_all(stamper.stamp_all(decide(book, opened, Limits())))
    commands: list[AnyCommand] = [
        MarkPosition(position_id="p1", mark_price=Decimal("101.5")),
        RecordPartialExit(position_id="p1", qty=Decimal("0.5"), price=Decimal(99)),
        ClosePosition(position_id="p1", price=Decimal(98), fee=Decimal("0.1")),
    ]
    for command in commands:
        assert decide_checked(book, command, Limits()) == decide(book, command, Limits())
    with pytest.raises(UnknownPosition):
        decide_checked(book, MarkPosition(position_id="nope", mark_price=Decimal(1)), Limits())


def test_decide_checked_gives_the_same_events_whatever_the_callers_decimal_context() -> None:
    """decide_checked enters no context of its own (the Ledger enters the ledger's once per
    group): its arithmetic must not depend on the one it runs in."""
    import decimal

    stamper = Stamper()
    book = Book()
    opened = OpenPosition(
        position_id="p1", symbol=SOL, side=Side.SELL, qty=Decimal("3.3333333333"),
        entry_price=Decimal("101.123456789"), leverage=7,
    )  # fmt: skip
    book.apply_all(stamper.stamp_all(decide(book, opened, Limits())))
    commands: list[AnyCommand] = [
        MarkPosition(position_id="p1", mark_price=Decimal("99.987654321")),
        RecordPartialExit(position_id="p1", notional=Decimal("77.7777777"), price=Decimal(99)),
        ClosePosition(position_id="p1", price=Decimal("98.7654321"), fee=Decimal("0.1234567")),
        IncreasePosition(position_id="p1", qty=Decimal("1.1111111"), price=Decimal("97.3")),
    ]
    expected = [decide(book, command, Limits()) for command in commands]
    hostile = decimal.Context(prec=3, rounding=decimal.ROUND_UP, traps=[decimal.Inexact])
    with decimal.localcontext(hostile):
        got = [decide_checked(book, command, Limits()) for command in commands]
    assert got == expected


def test_the_markets_memo_emptied_midway_changes_no_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The limits rule reads each symbol's market through a memo emptied when full: with room
    for three symbols only (emptied over and over), an open on a market and side already open,
    in any spelling, is still refused, and any other allowed."""
    monkeypatch.setattr(rules, "_MARKETS_KEPT", 3)
    rules._MARKETS.clear()
    spellings = {
        "BTC": ["BTC/USDT:USDT", "BTCUSDT", "btc/usdt", "BTC-USDT"],
        "ETH": ["ETH/USDT:USDT", "ethusdt", "ETH/USDT"],
        "SOL": ["SOL-USDT", "SOL/USDT:USDT", "solusdt"],
    }
    book, stamper, held = Book(), Stamper(), set()
    limits = Limits(max_concurrent_positions=100)
    for i in range(40):
        coin = ["BTC", "ETH", "SOL"][i % 3]
        symbol = spellings[coin][i % len(spellings[coin])]
        side = Side.BUY if i % 5 < 3 else Side.SELL
        command = OpenPosition(
            position_id=f"p{i}",
            symbol=symbol,
            side=side,
            qty=Decimal(1),
            entry_price=Decimal(100),
            leverage=2,
        )
        if (coin, side) in held:
            with pytest.raises(DuplicatePosition):
                decide(book, command, limits)
            continue
        for event in decide(book, command, limits):
            book.apply(stamper.stamp(event))
        held.add((coin, side))
        assert len(rules._MARKETS) <= 3
    assert held == {(coin, side) for coin in spellings for side in Side}
