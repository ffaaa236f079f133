"""decide(book, command) -> events: every rule is checked here, before anything is stored."""

from __future__ import annotations

import types
import typing
from decimal import Decimal

import msgspec

from ledger.commands import (
    DEFAULT_LIMITS,
    AnyCommand,
    ClosePosition,
    Command,
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
    ACCOUNT_STREAM,
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
)
from ledger.values import (
    LEDGER_ARITHMETIC,
    ZERO,
    Side,
    Source,
    bounded,
    exact,
    market_key,
    non_negative,
    positive,
    to_decimal,
)
from projections.book import Book
from projections.pnl import price_pnl, qty_from_notional, settle_exit
from projections.positions import Position

_C = LEDGER_ARITHMETIC  # LEDGER_CONTEXT's methods, bound once (ledger.values)


@exact
def decide(book: Book, command: AnyCommand, limits: Limits) -> list[AnyEvent]:
    """The events a command produces against the book; raises a CommandRejected subclass.

    Runs in the ledger's decimal context. Every field of the command is type-checked first
    (check_command), so a command built by hand is held to the same boundary as the API's.
    """
    check_command(command)
    return decide_checked(book, command, limits)


def decide_checked(book: Book, command: AnyCommand, limits: Limits) -> list[AnyEvent]:
    """`decide` for a command that passed `check_command` already: the same events and
    refusals, without checking every field a second time.

    The Ledger checks each command once, when it is submitted (on the caller's thread, so a
    wrong type is refused before it is queued), and decides it later in the write
    transaction: a command is a frozen struct of immutable values, so the check still holds.
    Unlike `decide` it does not enter the ledger's decimal context itself (the Ledger enters
    it once for a whole group): every sum, product and quotient here goes through
    LEDGER_CONTEXT's own methods, and comparisons need no context, so the events do not
    depend on the caller's context either way. Raises a CommandRejected subclass.
    """
    if isinstance(command, MarkPosition):  # most commands are marks: asked first
        return [decide_mark(book, command)]
    if isinstance(command, OpenPosition):
        return [*rules_record(book, limits), _open(book, command, limits)]
    if isinstance(command, RecordPartialExit):
        return _partial_exit(book, command)
    if isinstance(command, ClosePosition):
        return [_close(book, command)]
    if isinstance(command, RecordFunding):
        # a closed position may still be paid: funding settled while it was open can be
        # reported after the close (the fold amends the closed position and the stats)
        if book.get(command.position_id) is None:
            raise UnknownPosition(command.position_id)
        return [
            FundingRecorded(
                position_id=command.position_id,
                amount=to_decimal("amount", command.amount),
                execution_id=_nonempty("execution_id", command.execution_id),
                source=command.source,
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
                account=command.account,
            )
        ]
    raise InvalidValue("command", type(command).__name__, "unknown command")


# The last Limits object rules_record found valid: frozen, so it stays valid (a check per open
# was a tenth of deciding one); any other object is checked, a bad one never stored here.
_limits_checked: Limits | None = None


def rules_record(book: Book, limits: Limits) -> list[AnyEvent]:
    """A RulesConfigured event when the limits in force differ from the last ones the log
    recorded, so `verify` judges the log by its own limits. A log that records none was
    written under DEFAULT_LIMITS (5 positions, leverage 1..100), so those are recorded only
    when they come back after other limits."""
    global _limits_checked
    if limits is not _limits_checked:  # a Ledger passes the same (frozen) Limits every time
        check_command(limits)
        if limits.min_leverage < 1 or limits.max_leverage < limits.min_leverage:
            raise InvalidValue("limits", limits, "need 1 <= min_leverage <= max_leverage")
        if limits.max_concurrent_positions < 0:
            raise InvalidValue("limits", limits, "max_concurrent_positions must not be negative")
        _limits_checked = limits
    recorded = book.rules
    # a log that records none was written under the defaults (the format's documented ones)
    last = DEFAULT_LIMITS if recorded is None else recorded
    if (
        last.max_concurrent_positions == limits.max_concurrent_positions
        and last.min_leverage == limits.min_leverage
        and last.max_leverage == limits.max_leverage
    ):
        return []
    return [
        RulesConfigured(
            max_concurrent_positions=limits.max_concurrent_positions,
            min_leverage=limits.min_leverage,
            max_leverage=limits.max_leverage,
        )
    ]


# -- the type check at the boundary -------------------------------------------------------

# Per command type, each field as (name, declared type, Decimal allowed, the exact types the
# check accepts as they are (str, int, bool, Side, Source), None allowed): built once, so a
# check is one getattr and one type test per field. Anything else (None where it is not
# allowed, a subclass, a wrong type) takes `_check_field`, which decides and names it.
_FieldSpec = tuple[str, object, bool, tuple[type, ...], bool]
_FIELD_SPECS: dict[type[msgspec.Struct], tuple[_FieldSpec, ...]] = {}
_PLAIN_TYPES: tuple[type, ...] = (str, int, bool, Side, Source)


def check_command(command: Command | Limits) -> None:
    """Every field holds its declared type: str is str, Decimal a finite Decimal within the
    bounds, int an int (never a bool), enums their enum; None only where the field allows it.
    Raises InvalidValue naming the first field that does not."""
    cls = type(command)
    specs = _FIELD_SPECS.get(cls)
    if specs is None:
        specs = _FIELD_SPECS[cls] = _field_specs(cls)
    for name, declared, decimal_ok, plain, nullable in specs:
        value = getattr(command, name)
        kind = type(value)
        if kind is Decimal and decimal_ok:
            if not value.is_finite():
                raise InvalidValue(name, value, "must be finite")
            bounded(name, value)
        elif kind not in plain and not (value is None and nullable):
            _check_field(name, declared, value)


def _field_specs(cls: type[msgspec.Struct]) -> tuple[_FieldSpec, ...]:
    if not issubclass(cls, msgspec.Struct):  # a str, None, a class: no command at all
        raise InvalidValue("command", cls.__name__, "expected a command")
    specs = []
    for field in msgspec.structs.fields(cls):
        declared = field.type
        allowed = _allowed(declared)
        plain = tuple(kind for kind in _PLAIN_TYPES if kind in allowed)
        specs.append((field.name, declared, Decimal in allowed, plain, type(None) in allowed))
    return tuple(specs)


def _allowed(declared: object) -> tuple[object, ...]:
    return typing.get_args(declared) if isinstance(declared, types.UnionType) else (declared,)


def _check_field(name: str, declared: object, value: object) -> None:
    allowed = _allowed(declared)
    if value is None:
        if type(None) not in allowed:
            raise InvalidValue(name, value, "is required")
        return
    for kind in allowed:
        if kind is Decimal and isinstance(value, Decimal):
            if not Decimal.is_finite(value):  # Decimal's own: a subclass may override it
                raise InvalidValue(name, value, "must be finite")
            bounded(name, value)
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is bool and isinstance(value, bool):
            return
        if kind is str and isinstance(value, str):
            return
        if (kind is Side or kind is Source) and isinstance(value, kind):
            return
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise InvalidValue(name, value, f"expected {expected}, got {type(value).__name__}")


def _nonempty(field: str, value: str) -> str:
    if not value.strip():
        raise InvalidValue(field, value, "must not be empty")
    return value


def _open_position(book: Book, position_id: str) -> Position:
    position = book.open.get(position_id)
    if position is not None:
        return position
    if position_id in book.closed:
        raise PositionAlreadyClosed(position_id)
    raise UnknownPosition(position_id)


# Inside decide_checked a command has passed check_command (decide runs it first; decide_checked's
# callers have): each Decimal field is a finite Decimal within the bounds, or None where the
# field allows it. Only a sign is left to check of such a field (to_decimal, positive and
# non_negative would check all of it again, and give the same value back).


def _above_zero(field: str, value: Decimal) -> Decimal:
    """`positive` of a checked field; raises InvalidValue."""
    if value <= ZERO:  # ZERO, not 0: a Decimal compared with an int converts it each time
        raise InvalidValue(field, value, "must be greater than zero")
    return value


def _not_below_zero(field: str, value: Decimal) -> Decimal:
    """`non_negative` of a checked field; raises InvalidValue."""
    if value < ZERO:
        raise InvalidValue(field, value, "must not be negative")
    return value


class _Markets(dict[str, str]):
    """market_key of each symbol, computed once (the limits rule reads the market of every
    open position on each open): a memo, emptied when it holds _MARKETS_KEPT symbols."""

    def __missing__(self, symbol: str) -> str:
        market = market_key(symbol)
        if type(symbol) is str:  # a subclass may answer for itself: its market is not kept
            if len(self) >= _MARKETS_KEPT:
                self.clear()
            self[symbol] = market
        return market


_MARKETS_KEPT = 4096
_MARKETS = _Markets()


def _open(book: Book, command: OpenPosition, limits: Limits) -> PositionOpened:
    if not command.symbol.strip():
        raise InvalidValue("symbol", command.symbol, "must not be empty")
    if not command.position_id.strip():
        raise InvalidValue("position_id", command.position_id, "must not be empty")
    if command.position_id == ACCOUNT_STREAM:
        # the stream of balances, imports and recorded limits: a position there would share it
        raise InvalidValue("position_id", command.position_id, "is reserved for the account")
    if not 0 <= command.position_idx <= 2:
        raise InvalidValue("position_idx", command.position_idx, "must be 0, 1 or 2")
    if command.position_id in book.open or command.position_id in book.closed:
        raise InvalidValue("position_id", command.position_id, "already used")
    qty = _above_zero("qty", command.qty)
    entry = _above_zero("entry_price", command.entry_price)
    leverage = command.leverage
    if (
        isinstance(leverage, bool)
        or not isinstance(leverage, int)
        or not limits.min_leverage <= leverage <= limits.max_leverage
    ):
        raise LeverageOutOfRange(leverage, limits.min_leverage, limits.max_leverage)
    if command.enforce_limits:  # per account: bots sharing a ledger do not limit each other
        # book.open_for(symbol, side, account=account), then book.open_count(account), in one
        # pass over the open positions: the first of the account's on this market and side
        # is the duplicate, as open_for finds it, and a duplicate is refused first
        account, side = command.account, command.side
        markets = _MARKETS
        market = markets[command.symbol]
        count = 0
        for position in book.open.values():
            if position.account == account:
                count += 1
                if position.side is side and markets[position.symbol] == market:
                    raise DuplicatePosition(command.symbol, side.value, position.position_id)
        if count >= limits.max_concurrent_positions:
            raise TooManyOpenPositions(limits.max_concurrent_positions, count)
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
        real_initial_margin=None if margin is None else _above_zero("real_initial_margin", margin),
        fee=_not_below_zero("fee", command.fee),
        # checked by check_command: finite Decimals within the bounds, or None
        confidence=command.confidence,
        open_reason=command.open_reason,
        atr=command.atr,
        adx=command.adx,
        volatility=command.volatility,
        account=command.account,
    )


def decide_mark(book: Book, command: MarkPosition) -> PositionMarked:
    """`decide_checked` of a mark command (one that passed `check_command`): its one event.
    The Ledger decides a run of marks in one group with it (`Ledger._decide_marks`). Raises
    UnknownPosition, PositionAlreadyClosed, InvalidValue."""
    _open_position(book, command.position_id)
    # The command passed check_command (each number a finite Decimal within the bounds, or
    # None where allowed): only the signs are left to check. Marks are most of a log.
    price, contracts, margin = command.mark_price, command.contracts, command.initial_margin
    if price <= ZERO:
        raise InvalidValue("mark_price", price, "must be greater than zero")
    if contracts is not None and contracts < ZERO:
        raise InvalidValue("contracts", contracts, "must not be negative")
    if margin is not None and margin < ZERO:
        raise InvalidValue("initial_margin", margin, "must not be negative")
    return PositionMarked(
        position_id=command.position_id,
        mark_price=price,
        unrealized_pnl=command.unrealized_pnl,
        contracts=contracts,
        initial_margin=margin,
        source=command.source,
    )


def _partial_exit(book: Book, command: RecordPartialExit) -> list[AnyEvent]:
    position = _open_position(book, command.position_id)
    given, notional = command.qty, command.notional
    if given is not None and notional is None:
        qty = _above_zero("qty", given)
    elif notional is not None and given is None:
        # converted here, against the entry price of the book the exit is decided on
        notional = _above_zero("exit_size", notional)
        qty = bounded("qty", qty_from_notional(notional, position.entry_price))
    else:
        raise InvalidValue("qty", given, "give exactly one of qty and exit_size")
    price = _above_zero("price", command.price)
    fee = _not_below_zero("fee", command.fee)
    # the dust rule: a remainder or an overshoot within 1e-9 of the opening qty exits all
    settled = settle_exit(qty, position.qty, position.initial_qty)
    if settled is None:
        raise ExitExceedsPosition(command.position_id, qty, position.qty)
    qty = settled
    realized = command.realized_pnl
    if realized is None:
        realized = _C.subtract(price_pnl(position.side, qty, position.entry_price, price), fee)
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
    price = command.price
    if price is None:  # the last mark's, checked as a caller's price would be
        price = positive("price", position.current_price)
    else:  # checked by check_command already: only its sign is left
        price = _above_zero("price", price)
    fee = _not_below_zero("fee", command.fee)
    realized = command.realized_pnl
    if realized is None:
        realized = _C.subtract(
            price_pnl(position.side, position.qty, position.entry_price, price), fee
        )
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
        new_entry = _C.divide(
            _C.add(_C.multiply(position.qty, position.entry_price), _C.multiply(qty, price)),
            _C.add(position.qty, qty),
        )
    return PositionIncreased(
        position_id=command.position_id,
        qty=qty,
        price=price,
        new_entry_price=positive("new_entry_price", new_entry),
        fee=non_negative("fee", command.fee),
        source=command.source,
    )
