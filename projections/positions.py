"""One position's state, and the fold of its events into it.

`Position` keeps the seed's attribute names (position_size, unrealized_pnl, roe_percentage,
partial_exits, ...) so bot code written for the seed keeps reading them; `qty` is the truth and
position_size is derived from it (qty x entry price).
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal

import msgspec

from ledger.events import (
    DEFAULT_ACCOUNT,
    ExitAbandoned,
    ExitIntended,
    FundingRecorded,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.values import LEDGER_ARITHMETIC, ZERO, Side, Source
from projections.pnl import initial_margin, notional, price_pnl, roe_pct

# Folds do their arithmetic through the ledger's context object, never the caller's context.
_C = LEDGER_ARITHMETIC  # LEDGER_CONTEXT's methods, bound once (ledger.values)


class Status(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class PartialExit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The seed's partial-exit record (timestamp, size, price, realized_pnl, reason) plus qty."""

    timestamp: datetime
    size: Decimal
    qty: Decimal
    price: Decimal
    realized_pnl: Decimal
    fee: Decimal = ZERO
    reason: str = ""
    source: Source = Source.BOT
    rule: str | None = None
    pnl_estimated: bool = False


class Estimate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A reduce or close booked from the mark before Bybit's record: qty not yet amended, and
    the PnL booked per unit of it (what an amendment takes back)."""

    qty: Decimal
    pnl_per_qty: Decimal


class Position(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An immutable view of a position; every change makes a new one."""

    position_id: str
    symbol: str
    side: Side
    entry_price: Decimal
    current_price: Decimal
    position_size: Decimal
    leverage: int
    unrealized_pnl: Decimal
    roe_percentage: Decimal
    open_time: datetime
    close_time: datetime | None = None
    confidence: Decimal | None = None
    open_reason: str = ""
    close_reason: str | None = None
    atr: Decimal | None = None
    adx: Decimal | None = None
    volatility: Decimal | None = None
    real_initial_margin: Decimal | None = None
    partial_exits: tuple[PartialExit, ...] = ()
    qty: Decimal
    initial_qty: Decimal
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    # fees charged on opening and adding (part of `fees`): exchange PnL records that already
    # deduct them must not deduct them twice
    open_fee: Decimal = ZERO
    funding: Decimal = ZERO
    exit_price: Decimal | None = None
    # the realized PnL the close itself booked (None while open): what a correction from
    # Bybit's record of that close compares with
    close_pnl: Decimal | None = None
    status: Status = Status.OPEN
    source: Source = Source.BOT
    position_idx: int = 0
    pnl_estimated: bool = False
    marked_at: datetime | None = None
    # the exchange side of the lifecycle: Bybit's openTime once seen, whether a sync has seen
    # the position on the exchange at all, estimates awaiting their record, records applied,
    # and exits the service placed (or is placing) that are not recorded yet
    exchange_opened_ms: int | None = None
    exchange_seen: bool = False
    estimates: tuple[Estimate, ...] = ()
    amended_refs: tuple[str, ...] = ()
    pending_exits: tuple[str, ...] = ()
    account: str = DEFAULT_ACCOUNT

    @property
    def is_open(self) -> bool:
        return self.status is Status.OPEN

    @property
    def margin(self) -> Decimal:
        return initial_margin(self.qty, self.entry_price, self.leverage, self.real_initial_margin)


def opened(event: PositionOpened, at: datetime) -> Position:
    """The position a PositionOpened event starts."""
    return Position(
        position_id=event.position_id,
        symbol=event.symbol,
        side=event.side,
        entry_price=event.entry_price,
        current_price=event.entry_price,
        position_size=notional(event.qty, event.entry_price),
        leverage=event.leverage,
        unrealized_pnl=ZERO,
        roe_percentage=ZERO,
        open_time=at,
        confidence=event.confidence,
        open_reason=event.open_reason,
        atr=event.atr,
        adx=event.adx,
        volatility=event.volatility,
        real_initial_margin=event.real_initial_margin,
        qty=event.qty,
        initial_qty=event.qty,
        realized_pnl=_C.minus(event.fee),
        fees=event.fee,
        open_fee=event.fee,
        source=event.source,
        position_idx=event.position_idx,
        account=event.account,
    )


def marked(position: Position, event: PositionMarked, at: datetime) -> Position:
    margin = event.initial_margin
    return marked_with(
        position,
        price=event.mark_price,
        unrealized_pnl=event.unrealized_pnl,
        # a mark without a margin (None or zero) keeps the one the position has
        margin=margin if margin else position.real_initial_margin,
        opened_ms=event.exchange_opened_ms or position.exchange_opened_ms,
        seen=position.exchange_seen or event.source is Source.EXCHANGE,
        at=at,
    )


def marked_with(
    position: Position,
    *,
    price: Decimal,
    unrealized_pnl: Decimal | None,
    margin: Decimal | None,
    opened_ms: int | None,
    seen: bool,
    at: datetime,
) -> Position:
    """`marked` from the figures a mark (or a run of marks, see Book.apply_facts) leaves: the
    price and PnL, the margin the exchange last reported, Bybit's openTime, a sighting."""
    if unrealized_pnl is None:
        unrealized_pnl = price_pnl(position.side, position.qty, position.entry_price, price)
    used = initial_margin(position.qty, position.entry_price, position.leverage, margin)
    return msgspec.structs.replace(
        position,
        current_price=price,
        unrealized_pnl=unrealized_pnl,
        real_initial_margin=margin,
        roe_percentage=roe_pct(unrealized_pnl, used),
        marked_at=at,
        exchange_opened_ms=opened_ms,
        exchange_seen=seen,
    )


def increased(position: Position, event: PositionIncreased) -> Position:
    qty = _C.add(position.qty, event.qty)
    margin = position.real_initial_margin
    # a leverage below 1 is only in a log written around the rules: no margin to add for it
    if margin is not None and position.leverage >= 1:
        margin = _C.add(margin, _C.divide(notional(event.qty, event.price), position.leverage))
    unrealized = price_pnl(position.side, qty, event.new_entry_price, position.current_price)
    return msgspec.structs.replace(
        position,
        qty=qty,
        initial_qty=_C.add(position.initial_qty, event.qty),
        entry_price=event.new_entry_price,
        position_size=notional(qty, event.new_entry_price),
        real_initial_margin=margin,
        unrealized_pnl=unrealized,
        roe_percentage=roe_pct(
            unrealized, initial_margin(qty, event.new_entry_price, position.leverage, margin)
        ),
        realized_pnl=_C.subtract(position.realized_pnl, event.fee),
        fees=_C.add(position.fees, event.fee),
        open_fee=_C.add(position.open_fee, event.fee),
    )


def partly_exited(position: Position, event: PartialExitRecorded, at: datetime) -> Position:
    remaining = _C.subtract(position.qty, event.qty)
    left = _C.divide(remaining, position.qty) if position.qty else ZERO
    margin = position.real_initial_margin
    if margin is not None:
        margin = _C.multiply(margin, left)
    unrealized = _C.multiply(position.unrealized_pnl, left)
    record = PartialExit(
        timestamp=at,
        size=notional(event.qty, position.entry_price),
        qty=event.qty,
        price=event.price,
        realized_pnl=event.realized_pnl,
        fee=event.fee,
        reason=event.reason,
        source=event.source,
        rule=event.rule,
        pnl_estimated=event.pnl_estimated,
    )
    estimates = position.estimates
    if event.pnl_estimated and event.qty > ZERO:
        estimates = (
            *estimates,
            Estimate(qty=event.qty, pnl_per_qty=_C.divide(event.realized_pnl, event.qty)),
        )
    pending = position.pending_exits
    if event.rule is not None and event.rule in pending:
        pending = tuple(r for r in pending if r != event.rule)
    return msgspec.structs.replace(
        position,
        qty=remaining,
        position_size=notional(remaining, position.entry_price),
        real_initial_margin=margin,
        unrealized_pnl=unrealized,
        roe_percentage=roe_pct(
            unrealized,
            initial_margin(remaining, position.entry_price, position.leverage, margin),
        ),
        realized_pnl=_C.add(position.realized_pnl, event.realized_pnl),
        fees=_C.add(position.fees, event.fee),
        partial_exits=(*position.partial_exits, record),
        estimates=estimates,
        pending_exits=pending,
    )


def funded(position: Position, event: FundingRecorded) -> Position:
    return msgspec.structs.replace(
        position,
        realized_pnl=_C.add(position.realized_pnl, event.amount),
        funding=_C.add(position.funding, event.amount),
    )


def closed(position: Position, event: PositionClosed, at: datetime) -> Position:
    """Closed: unrealized becomes zero and roe_percentage is the realized ROE on opening margin."""
    realized = _C.add(position.realized_pnl, event.realized_pnl)
    opening_margin = initial_margin(
        position.initial_qty, position.entry_price, position.leverage, None
    )
    return msgspec.structs.replace(
        position,
        status=Status.CLOSED,
        close_time=at,
        close_reason=event.reason,
        current_price=event.price,
        exit_price=event.price,
        close_pnl=event.realized_pnl,
        unrealized_pnl=ZERO,
        roe_percentage=roe_pct(realized, opening_margin),
        realized_pnl=realized,
        fees=_C.add(position.fees, event.fee),
        pnl_estimated=event.pnl_estimated,
        estimates=(
            (
                *position.estimates,
                Estimate(qty=event.qty, pnl_per_qty=_C.divide(event.realized_pnl, event.qty)),
            )
            if event.pnl_estimated and event.qty > ZERO
            else position.estimates
        ),
    )


def amended(position: Position, event: PnlAmended) -> Position:
    """An estimate replaced by Bybit's record: the difference enters realized PnL, the
    estimates are consumed oldest first, and a closed position stops being estimated once
    nothing of its estimates is left."""
    left = event.qty
    estimates: list[Estimate] = []
    for estimate in position.estimates:
        used = min(left, estimate.qty)
        left = _C.subtract(left, used)
        rest = _C.subtract(estimate.qty, used)
        if rest > ZERO:
            estimates.append(Estimate(qty=rest, pnl_per_qty=estimate.pnl_per_qty))
    still = bool(estimates)
    realized = _C.subtract(_C.add(position.realized_pnl, event.realized_pnl), event.estimated_pnl)
    return msgspec.structs.replace(
        position,
        realized_pnl=realized,
        fees=_C.add(position.fees, event.fee),
        estimates=tuple(estimates),
        amended_refs=(*position.amended_refs, event.exchange_ref),
        pnl_estimated=position.pnl_estimated and still,
        # only an amendment of the (estimated) close moves the exit price; a correction of an
        # earlier reduce's record leaves it
        exit_price=(
            event.price
            if position.exit_price is not None and left < event.qty
            else position.exit_price
        ),
        roe_percentage=(
            roe_pct(
                realized,
                initial_margin(position.initial_qty, position.entry_price, position.leverage, None),
            )
            if position.status is Status.CLOSED
            else position.roe_percentage
        ),
    )


def exit_intended(position: Position, event: ExitIntended) -> Position:
    if event.rule in position.pending_exits:
        return position
    return msgspec.structs.replace(position, pending_exits=(*position.pending_exits, event.rule))


def exit_abandoned(position: Position, event: ExitAbandoned) -> Position:
    return msgspec.structs.replace(
        position, pending_exits=tuple(r for r in position.pending_exits if r != event.rule)
    )
