"""A ledger call never leaves the caller's thread in the ledger's decimal context.

A bot does its own Decimal arithmetic in its own context (prec=6, ROUND_DOWN, Inexact
trapped); the ledger computes in LEDGER_CONTEXT whatever the caller set. A command decided on
the caller's thread (the manager's main thread leads its own group) makes LEDGER_CONTEXT
current for the decision and gives the caller's context back after it, also when a
KeyboardInterrupt (a signal's, raised here by a trace function at each instruction in turn of
the decision) ends the call. Were LEDGER_CONTEXT itself left current, the bot's next
`getcontext().prec = 6` would set the precision of every later fold and rule of the ledger,
on every thread.
"""

from __future__ import annotations

import decimal
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from functools import partial
from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import InvalidValue
from ledger.events import BalanceObserved, PositionOpened
from ledger.exchange.observations import balance_from_ccxt
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import LEDGER_CONTEXT, Side
from projections.book import fold_records
from projections.stats import summarize
from tests._interrupts import Inject, LedGroup, no_cyclic_gc, on_thread
from tests.strategies import Stamper
from tests.test_adv_blocking_storm import seed_kwargs
from tests.test_leader_interrupts import _codes

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

SETTINGS = Settings(
    max_concurrent_positions=100_000,
    synchronous="NORMAL",
    snapshot_every_events=10**9,
    snapshot_every_seconds=10**6,
)
# what a caller's thread runs of a lone command's decision (each `_decide...` of the ledger)
DECISION = frozenset(
    _codes([method for name, method in vars(Ledger).items() if name.startswith("_decide")])
)


def _ledger_context_as_built() -> tuple[object, ...]:
    return (
        LEDGER_CONTEXT.prec,
        LEDGER_CONTEXT.rounding,
        LEDGER_CONTEXT.Emin,
        LEDGER_CONTEXT.Emax,
        sorted(str(signal) for signal, on in LEDGER_CONTEXT.traps.items() if on),
    )


@pytest.fixture
def bot_context() -> Iterator[decimal.Context]:
    before = decimal.getcontext()
    own = decimal.Context(prec=6, rounding=decimal.ROUND_DOWN, traps=[decimal.Inexact])
    decimal.setcontext(own)
    try:
        yield own
    finally:
        decimal.setcontext(before)


def _sweep(run: Callable[[Inject, str], object], bot_context: decimal.Context) -> None:
    """run(inject, name) makes the main thread decide a command named name (alone, or leading
    a group) with inject tracing the decision: once counting its instructions, then with an
    interrupt before each in turn. After each the caller's own context is current, and
    LEDGER_CONTEXT is as built."""
    assert threading.current_thread() is threading.main_thread()
    built = _ledger_context_as_built()
    counted = Inject(None, codes=DECISION)
    run(counted, "COUNT")
    assert decimal.getcontext() is bot_context
    assert counted.count > 20  # the sweep goes through the decision
    leaked: list[str] = []
    for at in range(counted.count):
        inject = Inject(at, codes=DECISION)
        run(inject, f"M{at}")
        if decimal.getcontext() is not bot_context:
            itself = " (LEDGER_CONTEXT itself)" if decimal.getcontext() is LEDGER_CONTEXT else ""
            leaked.append(f"{inject.where}: {decimal.getcontext()!r}{itself}")
            decimal.setcontext(bot_context)
    assert leaked == []
    assert _ledger_context_as_built() == built


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    opened = ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    )
    try:
        yield opened
    finally:
        assert on_thread(opened.close) is None


def test_an_interrupted_command_gives_the_caller_its_own_decimal_context(
    bot_context: decimal.Context, manager: ThreadSafePositionManager
) -> None:
    create = manager.thread_safe_create_position

    def run(inject: Inject, name: str) -> None:
        try:
            with inject:
                create(**seed_kwargs(f"{name}USDT"))
        except KeyboardInterrupt:
            assert inject.where is not None  # the injected one, never another

    _sweep(run, bot_context)
    # the bot's own arithmetic: its precision, its rounding, its trap
    assert Decimal("1") / Decimal("8") == Decimal("0.125")
    with pytest.raises(decimal.Inexact):
        Decimal("1") / Decimal("3")


def test_an_interrupted_group_gives_its_leader_its_own_decimal_context(
    bot_context: decimal.Context, manager: ThreadSafePositionManager
) -> None:
    """The same for a group of several commands the main thread leads (`_decide_group`)."""
    group = LedGroup(manager.ledger._queue(), manager.ledger.store.writer)
    create = manager.thread_safe_create_position

    def run(inject: Inject, name: str) -> None:
        def lead() -> object:
            with inject:
                return create(**seed_kwargs(f"{name}USDT"))

        led, heard = group.run(lead, [partial(create, **seed_kwargs(f"F{name}USDT"))])
        if inject.at is None:  # counting: both commands made
            assert isinstance(led, str) and isinstance(heard[0], str), (led, heard)

    _sweep(run, bot_context)


def test_an_interrupted_read_of_the_figures_gives_the_caller_its_own_decimal_context(
    bot_context: decimal.Context,
) -> None:
    """A bot's own read of the figures (`get_session_summary` -> `Book.summary` ->
    `summarize`, an `exact` entry point of ledger arithmetic) runs in the ledger's context and
    gives the caller's back, also when an interrupt ends it at any instruction of the entry."""
    stamper = Stamper()
    book = fold_records(
        [
            stamper.stamp(
                PositionOpened(
                    position_id="p1",
                    symbol="BTCUSDT",
                    side=Side.BUY,
                    qty=Decimal("0.003"),
                    entry_price=Decimal("97123.45"),
                    leverage=7,
                    fee=Decimal("0.17"),
                )
            )
        ]
    )
    entry = frozenset({summarize.__code__})  # `exact`'s wrapper of summarize
    counted = Inject(None, codes=entry)
    with counted:
        expected = book.summary()
    assert counted.count > 3
    leaked: list[str] = []
    for at in range(counted.count):
        inject = Inject(at, codes=entry)
        try:
            with inject:
                assert book.summary() == expected
        except KeyboardInterrupt:
            pass
        if decimal.getcontext() is not bot_context:
            leaked.append(f"{inject.where}: {decimal.getcontext()!r}")
            decimal.setcontext(bot_context)
    assert leaked == []


def test_a_fleets_money_is_summed_in_the_ledgers_arithmetic_whatever_the_callers_context(
    bot_context: decimal.Context,
) -> None:
    """Two accounts' balances: the fleet's is their exact sum, read from a bot whose own
    context rounds to 6 digits and traps Inexact."""
    stamper = Stamper()
    book = fold_records(
        [
            stamper.stamp(
                BalanceObserved(
                    total=Decimal("1234567.891"), available=Decimal("1000000.01"), account="main"
                )
            ),
            stamper.stamp(
                BalanceObserved(
                    total=Decimal("2345678.917"), available=Decimal("2000000.02"), account="hedge"
                )
            ),
        ]
    )
    summary = book.summary()
    assert summary.balance == Decimal("3580246.808")  # 1234567.891 + 2345678.917
    assert summary.available_balance == Decimal("3000000.03")
    assert decimal.getcontext() is bot_context


def test_a_creates_roe_is_checked_in_the_ledgers_arithmetic_whatever_the_callers_context(
    bot_context: decimal.Context, manager: ThreadSafePositionManager
) -> None:
    """A seed create's roe_percentage is checked against the ROE the ledger derives (within
    1e-6): accepted when right and refused (InvalidValue) when not, from a bot whose own
    context rounds to 6 digits and traps Inexact, never a decimal.Inexact of its own."""
    entry, current, leverage = Fraction("97123.45"), Fraction("97200.1"), 7
    # a long's ROE: its PnL over its margin, (current - entry) * qty / (qty * entry / lev)
    roe = (current - entry) / entry * leverage * 100
    right = f"{float(roe):.12f}"
    wrong = f"{float(roe) + 0.001:.12f}"
    create = manager.thread_safe_create_position
    kwargs = {
        "side": "long",
        "entry_price": "97123.45",
        "position_size": "333.33",
        "leverage": leverage,
        "current_price": "97200.1",
    }
    made = create(symbol="BTCUSDT", roe_percentage=right, **kwargs)
    assert manager.ledger.book.open[made].current_price == Decimal("97200.1")
    with pytest.raises(InvalidValue):
        create(symbol="ETHUSDT", roe_percentage=wrong, **kwargs)
    assert decimal.getcontext() is bot_context


def test_a_classic_accounts_free_margin_is_the_ledgers_difference_whatever_the_callers_context(
    bot_context: decimal.Context,
) -> None:
    """A classic (CONTRACT) account's free margin without availableToWithdraw: walletBalance
    less what is locked and held, exactly, read by a sync running in the bot's own context."""
    coin = {
        "coin": "USDT",
        "walletBalance": "3322.25896609",
        "locked": "1.23456789",
        "totalPositionIM": "100.123456789",
        "totalOrderIM": "0.5",
    }
    info = {"result": {"list": [{"accountType": "CONTRACT", "coin": [coin]}]}, "time": "0"}
    observed = balance_from_ccxt({"info": info}, "USDT")
    assert observed.total == Decimal("3322.25896609")
    assert observed.available == Decimal("3220.400941411")  # 3322.25896609 - 101.858024679
    assert decimal.getcontext() is bot_context
