"""The seed's types at the seed's edge: what ThreadSafePositionManager hands back to bot code.

The one place exact ledger values become the seed's: money and sizes as float (the nearest
binary float to the exact Decimal), times as ISO 8601 strings in UTC, partial exits as dicts
with the seed's keys, a session summary `json.dumps` accepts. Every call builds new objects,
so a caller may change what it got without touching the ledger. The other way, a float from
the seed's code becomes a Decimal through its shortest repr, in `ledger.values.to_decimal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import msgspec

from projections.positions import PartialExit, Position
from projections.stats import SessionSummary, SymbolStats

# What a seed dict holds: numbers, text, nothing; nested once for the per-symbol table.
SeedScalar = float | int | str | None
SeedDict = dict[str, SeedScalar]


@dataclass
class SeedPosition:
    """The seed's ThreadSafePosition, field for field and in its order, plus what the ledger
    adds (qty, realized_pnl, fees, funding, status, source). A copy: changing it changes
    nothing in the ledger."""

    position_id: str
    symbol: str
    side: str
    entry_price: float
    current_price: float
    position_size: float
    leverage: int
    unrealized_pnl: float
    roe_percentage: float
    open_time: str
    close_time: str | None
    confidence: float
    open_reason: str
    close_reason: str | None
    atr: float | None = 0.0
    adx: float | None = 0.0
    volatility: float | None = 0.0
    real_initial_margin: float | None = None
    partial_exits: list[SeedDict] = field(default_factory=list)
    # beyond the seed
    qty: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    status: str = "open"
    source: str = "bot"


def money(value: Decimal) -> float:
    """The float nearest to an exact value."""
    return float(value)


def optional_money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def iso(moment: datetime) -> str:
    """An aware UTC time as ISO 8601 with its offset: 2025-01-07T16:45:00+00:00."""
    return moment.isoformat()


def seed_partial_exit(record: PartialExit) -> SeedDict:
    """The seed's partial-exit dict (timestamp, size, price, realized_pnl, reason), then the
    ledger's qty and fee."""
    return {
        "timestamp": iso(record.timestamp),
        "size": money(record.size),
        "price": money(record.price),
        "realized_pnl": money(record.realized_pnl),
        "reason": record.reason,
        "qty": money(record.qty),
        "fee": money(record.fee),
    }


def seed_position(position: Position) -> SeedPosition:
    """A new SeedPosition for a ledger Position."""
    return SeedPosition(
        position_id=position.position_id,
        symbol=position.symbol,
        side=position.side.value,
        entry_price=money(position.entry_price),
        current_price=money(position.current_price),
        position_size=money(position.position_size),
        leverage=position.leverage,
        unrealized_pnl=money(position.unrealized_pnl),
        roe_percentage=money(position.roe_percentage),
        open_time=iso(position.open_time),
        close_time=None if position.close_time is None else iso(position.close_time),
        # the seed's defaults where the bot gave nothing (confidence had none: 0.0)
        confidence=0.0 if position.confidence is None else money(position.confidence),
        open_reason=position.open_reason,
        close_reason=position.close_reason,
        atr=0.0 if position.atr is None else money(position.atr),
        adx=0.0 if position.adx is None else money(position.adx),
        volatility=0.0 if position.volatility is None else money(position.volatility),
        real_initial_margin=optional_money(position.real_initial_margin),
        partial_exits=[seed_partial_exit(record) for record in position.partial_exits],
        qty=money(position.qty),
        realized_pnl=money(position.realized_pnl),
        fees=money(position.fees),
        funding=money(position.funding),
        status=position.status.value,
        source=position.source.value,
    )


def _symbol_figures(stats: SymbolStats) -> SeedDict:
    return {
        "closed_trades": stats.closed_trades,
        "wins": stats.wins,
        "losses": stats.losses,
        "realized_pnl": money(stats.realized_pnl),
        "fees": money(stats.fees),
        "funding": money(stats.funding),
    }


def seed_summary(summary: SessionSummary) -> dict[str, SeedScalar | dict[str, SeedDict]]:
    """The seed's get_session_summary dict (its keys first), numbers as float or int."""
    result: dict[str, SeedScalar | dict[str, SeedDict]] = {}
    for name, value in msgspec.structs.asdict(summary).items():
        if isinstance(value, Decimal):
            result[name] = money(value)
        elif isinstance(value, dict):
            result[name] = {k: _symbol_figures(v) for k, v in value.items()}
        else:
            result[name] = value
    return result
