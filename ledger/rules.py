"""decide(book, command) -> events: every rule is checked here, before anything is stored."""

from __future__ import annotations

from decimal import Decimal

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
    DuplicatePosition,
    ExitExceedsPosition,
    InvalidValue,
    LeverageOutOfRange,
    PositionAlreadyClosed,
    TooManyOpenPositions,
    UnknownPosition,
)
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.values import ZERO, non_negative, positive, to_decimal
from projections.book import Book
from projections.pnl import price_pnl, qty_from_notional
from projections.positions import Position

# An exit that overshoots what is left by less than this fraction is rounding from a
# notional-to-qty division, not a real overshoot: it exits exactly what is left.
_DUST = Decimal("1e-18")


def decide(book: Book, command: AnyCommand, limits: Limits) -> list[AnyEvent]:
    """The events a command produces against the book; raises a CommandRejected subclass."""
    if isinstance(command, OpenPosition):
        return [_open(book, command, limits)]
    if isinstance(command, MarkPosition):
        return [_mark(book, command)]
    if isinstance(command, RecordPartialExit):
        return _partial_exit(book, command)
    if isinstance(command, ClosePosition):
        return [_close(book, command)]
    if isinstance(command, RecordFunding):
        _open_position(book, command.position_id)
        return [
            FundingRecorded(
                position_id=command.position_id,
                amount=to_decimal("amount", command.amount),
                execution_id=command.execution_id,
            )
        ]
    if isinstance(command, IncreasePosition):
        return [_increase(book, command)]
    if isinstance(command, ObserveBalance):
        return [
            BalanceObserved(
                total=non_negative("total", command.total),
                available=non_negative("available", command.available),
                currency=command.currency,
            )
        ]
    raise InvalidValue("command", type(command).__name__, "unknown command")


def _open_position(book: Book, position_id: str) -> Position:
    position = book.open.get(position_id)
    if position is not None:
        return position
    if position_id in book.closed:
        raise PositionAlreadyClosed(position_id)
    raise UnknownPosition(position_id)


def _optional(field: str, value: Decimal | None) -> Decimal | None:
    return None if value is None else to_decimal(field, value)


def _open(book: Book, command: OpenPosition, limits: Limits) -> PositionOpened:
    if not command.symbol.strip():
        raise InvalidValue("symbol", command.symbol, "must not be empty")
    if command.position_id in book.open or command.position_id in book.closed:
        raise InvalidValue("position_id", command.position_id, "already used")
    qty = positive("qty", command.qty)
    entry = positive("entry_price", command.entry_price)
    leverage = command.leverage
    if (
        isinstance(leverage, bool)
        or not isinstance(leverage, int)
        or not limits.min_leverage <= leverage <= limits.max_leverage
    ):
        raise LeverageOutOfRange(leverage, limits.min_leverage, limits.max_leverage)
    if command.enforce_limits:
        existing = book.open_for(command.symbol, command.side)
        if existing is not None:
            raise DuplicatePosition(command.symbol, command.side.value, existing.position_id)
        if len(book.open) >= limits.max_concurrent_positions:
            raise TooManyOpenPositions(limits.max_concurrent_positions, len(book.open))
    margin = command.real_initial_margin
    return PositionOpened(
        position_id=command.position_id,
        symbol=command.symbol,
        side=command.side,
        qty=qty,
        entry_price=entry,
        leverage=leverage,
        source=command.source,
        position_idx=command.position_idx,
        real_initial_margin=None if margin is None else positive("real_initial_margin", margin),
        fee=non_negative("fee", command.fee),
        confidence=_optional("confidence", command.confidence),
        open_reason=command.open_reason,
        atr=_optional("atr", command.atr),
        adx=_optional("adx", command.adx),
        volatility=_optional("volatility", command.volatility),
    )


def _mark(book: Book, command: MarkPosition) -> PositionMarked:
    _open_position(book, command.position_id)
    margin = command.initial_margin
    contracts = command.contracts
    return PositionMarked(
        position_id=command.position_id,
        mark_price=positive("mark_price", command.mark_price),
        unrealized_pnl=_optional("unrealized_pnl", command.unrealized_pnl),
        contracts=None if contracts is None else non_negative("contracts", contracts),
        initial_margin=None if margin is None else non_negative("initial_margin", margin),
        source=command.source,
    )


def _partial_exit(book: Book, command: RecordPartialExit) -> list[AnyEvent]:
    position = _open_position(book, command.position_id)
    if (command.qty is None) == (command.notional is None):
        raise InvalidValue("qty", command.qty, "give exactly one of qty and exit_size")
    if command.qty is not None:
        qty = positive("qty", command.qty)
    else:
        # converted here, against the entry price of the book the exit is decided on
        qty = qty_from_notional(positive("exit_size", command.notional), position.entry_price)
    price = positive("price", command.price)
    fee = non_negative("fee", command.fee)
    if qty > position.qty:
        if qty - position.qty > position.qty * _DUST:
            raise ExitExceedsPosition(command.position_id, qty, position.qty)
        qty = position.qty
    realized = command.realized_pnl
    if realized is None:
        realized = price_pnl(position.side, qty, position.entry_price, price) - fee
    else:
        realized = to_decimal("realized_pnl", realized)
    exit_event = PartialExitRecorded(
        position_id=command.position_id,
        qty=qty,
        price=price,
        realized_pnl=realized,
        fee=fee,
        reason=command.reason,
        source=command.source,
        rule=command.rule,
    )
    if qty < position.qty:
        return [exit_event]
    # Exiting all that is left closes the position; the close itself realizes nothing more.
    return [
        exit_event,
        PositionClosed(
            position_id=command.position_id,
            qty=ZERO,
            price=price,
            realized_pnl=ZERO,
            reason=command.reason,
            source=command.source,
        ),
    ]


def _close(book: Book, command: ClosePosition) -> PositionClosed:
    position = _open_position(book, command.position_id)
    price = position.current_price if command.price is None else command.price
    price = positive("price", price)
    fee = non_negative("fee", command.fee)
    realized = command.realized_pnl
    if realized is None:
        realized = price_pnl(position.side, position.qty, position.entry_price, price) - fee
    else:
        realized = to_decimal("realized_pnl", realized)
    return PositionClosed(
        position_id=command.position_id,
        qty=position.qty,
        price=price,
        realized_pnl=realized,
        fee=fee,
        reason=command.reason,
        source=command.source,
        pnl_estimated=command.pnl_estimated,
        exchange_ref=command.exchange_ref,
    )


def _increase(book: Book, command: IncreasePosition) -> PositionIncreased:
    position = _open_position(book, command.position_id)
    qty = positive("qty", command.qty)
    price = positive("price", command.price)
    new_entry = command.new_entry_price
    if new_entry is None:
        new_entry = (position.qty * position.entry_price + qty * price) / (position.qty + qty)
    return PositionIncreased(
        position_id=command.position_id,
        qty=qty,
        price=price,
        new_entry_price=positive("new_entry_price", new_entry),
        fee=non_negative("fee", command.fee),
        source=command.source,
    )
