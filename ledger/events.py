"""The facts the ledger records: frozen msgspec structs in one tagged union.

Money is Decimal, sizes are `qty` (base units / contracts: the truth). Times are on the
envelope (`occurred_at`), not here. Never change a stored event's meaning: a new shape is a
new schema version with an upcaster in `ledger.codec`.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from ledger.values import ZERO, Side, Source

ACCOUNT_STREAM = "account"
# the account (a bot, or an exchange sub-account) of a ledger that names none; events written
# before accounts existed (schema version 1) are upcast to it
DEFAULT_ACCOUNT = "default"


# gc=False: immutable leaves that can never be part of a reference cycle, so the cyclic GC
# need not track (and rescan) the million of them a rebuild creates.
class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True, gc=False):
    """Base of every event; the tag is the class name."""


class PositionOpened(Event, frozen=True, kw_only=True):
    """A position was opened by the bot, adopted from the exchange, or imported."""

    position_id: str
    symbol: str
    side: Side
    qty: Decimal
    entry_price: Decimal
    leverage: int
    source: Source = Source.BOT
    position_idx: int = 0
    real_initial_margin: Decimal | None = None
    fee: Decimal = ZERO
    confidence: Decimal | None = None
    open_reason: str = ""
    atr: Decimal | None = None
    adx: Decimal | None = None
    volatility: Decimal | None = None
    account: str = DEFAULT_ACCOUNT


class PositionIncreased(Event, frozen=True, kw_only=True):
    """Size was added to an open position (by hand on the exchange, or by the bot)."""

    position_id: str
    qty: Decimal
    price: Decimal
    new_entry_price: Decimal
    fee: Decimal = ZERO
    source: Source = Source.EXCHANGE


class PositionMarked(Event, frozen=True, kw_only=True):
    """A new mark for an open position: price, and what the exchange reported with it."""

    position_id: str
    mark_price: Decimal
    unrealized_pnl: Decimal | None = None
    contracts: Decimal | None = None
    initial_margin: Decimal | None = None
    source: Source = Source.BOT
    # Bybit's openTime (epoch ms) of the position the exchange showed: what tells one lifecycle
    # of a symbol's slot from the next. None: not known (the bot's mark, or Bybit sent 0).
    exchange_opened_ms: int | None = None


class PartialExitRecorded(Event, frozen=True, kw_only=True):
    """Part of a position was exited; realized_pnl is net of fee."""

    position_id: str
    qty: Decimal
    price: Decimal
    realized_pnl: Decimal
    fee: Decimal = ZERO
    reason: str = ""
    source: Source = Source.BOT
    rule: str | None = None
    # True: the exchange showed the reduce before its closed-PnL record; realized_pnl is an
    # estimate from the mark that a later PnlAmended corrects
    pnl_estimated: bool = False


class FundingRecorded(Event, frozen=True, kw_only=True):
    """A funding payment on an open position: positive received, negative paid."""

    position_id: str
    amount: Decimal
    execution_id: str
    source: Source = Source.EXCHANGE


class PositionClosed(Event, frozen=True, kw_only=True):
    """The rest of a position was closed; realized_pnl is this last part's, net of fee."""

    position_id: str
    qty: Decimal
    price: Decimal
    realized_pnl: Decimal
    fee: Decimal = ZERO
    reason: str = ""
    source: Source = Source.BOT
    pnl_estimated: bool = False
    exchange_ref: str | None = None


class PnlAmended(Event, frozen=True, kw_only=True):
    """Bybit's closed-PnL record arrived for qty of a reduce or close the ledger had booked as
    an estimate: `realized_pnl` (net of fee, the ledger's convention) replaces
    `estimated_pnl` for that qty. The estimate stays in the history; this corrects it."""

    position_id: str
    qty: Decimal
    price: Decimal
    realized_pnl: Decimal
    estimated_pnl: Decimal
    fee: Decimal = ZERO
    exchange_ref: str
    reason: str = ""
    source: Source = Source.EXCHANGE


class ExitIntended(Event, frozen=True, kw_only=True):
    """The service is about to place a rule's exit on the exchange (order link id given), so a
    restart that finds no exit recorded does not fire the same rule again."""

    position_id: str
    rule: str
    qty: Decimal
    order_link_id: str


class ExitAbandoned(Event, frozen=True, kw_only=True):
    """An intended exit was not placed (the exchange refused it): the rule may fire again."""

    position_id: str
    rule: str
    order_link_id: str
    reason: str = ""


class BalanceObserved(Event, frozen=True, kw_only=True):
    """The account's balance as the exchange reported it."""

    total: Decimal
    available: Decimal
    currency: str = "USDT"
    source: Source = Source.EXCHANGE
    account: str = DEFAULT_ACCOUNT


class HistoryImported(Event, frozen=True, kw_only=True):
    """A seed-format positions.json was migrated into this log."""

    file_sha256: str
    file_name: str
    open_positions: int
    closed_positions: int


class RulesConfigured(Event, frozen=True, kw_only=True):
    """The limits the ledger decides the bot's commands by, recorded when first used or
    changed, so an audit judges each later event by the limits it was written under."""

    max_concurrent_positions: int
    min_leverage: int
    max_leverage: int


AnyEvent = (
    PositionOpened
    | PositionIncreased
    | PositionMarked
    | PartialExitRecorded
    | FundingRecorded
    | PositionClosed
    | BalanceObserved
    | HistoryImported
    | PnlAmended
    | ExitIntended
    | ExitAbandoned
    | RulesConfigured
)

POSITION_EVENTS: tuple[type[Event], ...] = (
    PositionOpened,
    PositionIncreased,
    PositionMarked,
    PartialExitRecorded,
    FundingRecorded,
    PositionClosed,
    PnlAmended,
    ExitIntended,
    ExitAbandoned,
)


_ACCOUNT_EVENTS = (BalanceObserved, HistoryImported, RulesConfigured)
# Whether a type's events go to the account stream, per event type: an isinstance that fails
# against a msgspec Struct class costs about 0.25 us, and every event staged asks.
_ON_ACCOUNT: dict[type, bool] = {}


def stream_of(event: AnyEvent) -> str:
    """The stream an event belongs to: its position, or the account."""
    kind = type(event)
    on_account = _ON_ACCOUNT.get(kind)
    if on_account is None:
        on_account = _ON_ACCOUNT[kind] = issubclass(kind, _ACCOUNT_EVENTS)
    if on_account:
        return ACCOUNT_STREAM
    return event.position_id  # type: ignore[union-attr]  # every other event has one
