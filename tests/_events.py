"""Events the store tests build again and again: an open of one unit of SOL at 100, and a
mark stored as an event of its own (its id its stream and its position)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from ledger.envelope import NewEvent
from ledger.events import PositionMarked, PositionOpened
from ledger.values import Side


def opened(position_id: str) -> PositionOpened:
    return PositionOpened(
        position_id=position_id,
        symbol="SOL/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(100),
        leverage=5,
    )


def lone_mark(event_id: str) -> NewEvent:
    return NewEvent(
        stream=event_id,
        event=PositionMarked(position_id=event_id, mark_price=Decimal(101)),
        event_id=event_id,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
