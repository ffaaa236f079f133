"""What callers ask the ledger to do; `ledger.rules.decide` makes events of it or refuses it."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from ledger.events import DEFAULT_ACCOUNT
from ledger.values import ZERO, Side, Source


# gc=False: frozen leaves of strs, numbers and enums that can never be part of a reference
# cycle (as the events are): the cyclic GC need not track the one each call makes.
class Command(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of every command."""


class OpenPosition(Command, frozen=True, kw_only=True):
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
    # Limits guard the bot's own decisions; a position that already exists on the exchange
    # is a fact and is recorded even past them.
    enforce_limits: bool = True
    # the bot or exchange sub-account the position belongs to; the limits apply per account
    account: str = DEFAULT_ACCOUNT


class IncreasePosition(Command, frozen=True, kw_only=True):
    position_id: str
    qty: Decimal
    price: Decimal
    new_entry_price: Decimal | None = None
    fee: Decimal = ZERO
    source: Source = Source.EXCHANGE


class MarkPosition(Command, frozen=True, kw_only=True):
    position_id: str
    mark_price: Decimal
    unrealized_pnl: Decimal | None = None
    contracts: Decimal | None = None
    initial_margin: Decimal | None = None
    source: Source = Source.BOT


class RecordPartialExit(Command, frozen=True, kw_only=True):
    """Exactly one of qty and notional (USD at the entry price, the seed's exit_size)."""

    position_id: str
    price: Decimal
    qty: Decimal | None = None
    notional: Decimal | None = None
    realized_pnl: Decimal | None = None
    fee: Decimal = ZERO
    reason: str = ""
    source: Source = Source.BOT
    rule: str | None = None


class ClosePosition(Command, frozen=True, kw_only=True):
    position_id: str
    price: Decimal | None = None
    realized_pnl: Decimal | None = None
    fee: Decimal = ZERO
    reason: str = ""
    source: Source = Source.BOT
    pnl_estimated: bool = False
    exchange_ref: str | None = None


class RecordFunding(Command, frozen=True, kw_only=True):
    position_id: str
    amount: Decimal
    execution_id: str
    source: Source = Source.EXCHANGE


def funding_key(execution_id: str, venue: str = "bybit") -> str:
    """The idempotency key of a funding payment: the exchange sync's own format, so the bot
    and the sync recording the same settlement store it once."""
    return f"{venue}:funding:{execution_id}"


class ObserveBalance(Command, frozen=True, kw_only=True):
    total: Decimal
    available: Decimal
    currency: str = "USDT"
    account: str = DEFAULT_ACCOUNT


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_concurrent_positions: int = 5
    min_leverage: int = 1
    max_leverage: int = 100


# The limits a log that records none (RulesConfigured) was written under. Part of the log's
# format: changing them would misjudge older logs.
DEFAULT_LIMITS = Limits()

AnyCommand = (
    OpenPosition
    | IncreasePosition
    | MarkPosition
    | RecordPartialExit
    | ClosePosition
    | RecordFunding
    | ObserveBalance
)
