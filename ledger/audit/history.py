"""One position's events in order, with its running size and PnL after each."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from ledger.events import (
    AnyEvent,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.store.base import EventStore
from ledger.values import ZERO
from projections.book import Book
from projections.positions import Position


class HistoryRow(msgspec.Struct, kw_only=True):
    """One event of a position, with the position's state right after it."""

    seq: int
    occurred_at: datetime
    kind: str
    price: Decimal | None
    qty: Decimal | None
    running_qty: Decimal
    pnl: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    reason: str
    source: str
    event: AnyEvent


def _price_qty_reason(event: AnyEvent) -> tuple[Decimal | None, Decimal | None, str]:
    if isinstance(event, PositionOpened):
        return event.entry_price, event.qty, event.open_reason
    if isinstance(event, PositionIncreased):
        return event.price, event.qty, ""
    if isinstance(event, PositionMarked):
        return event.mark_price, None, ""
    if isinstance(event, PartialExitRecorded | PositionClosed):
        return event.price, -event.qty, event.reason
    return None, None, ""


async def history(store: EventStore, position_id: str) -> tuple[Position | None, list[HistoryRow]]:
    """Every event of one position in order, with running size and realized PnL so far."""
    book = Book()
    rows: list[HistoryRow] = []
    realized = ZERO
    async for page in store.iterate(stream=position_id):
        for record in page:
            book.apply(record)
            position = book.get(position_id)
            if position is None:  # an event the fold could not place (no open before it)
                continue
            price, qty, reason = _price_qty_reason(record.event)
            source = getattr(record.event, "source", "")
            rows.append(
                HistoryRow(
                    seq=record.seq,
                    occurred_at=record.occurred_at,
                    kind=type(record.event).__name__,
                    price=price,
                    qty=qty,
                    running_qty=position.qty,
                    pnl=position.realized_pnl - realized,
                    realized_pnl=position.realized_pnl,
                    unrealized_pnl=position.unrealized_pnl,
                    reason=reason,
                    source=str(source),
                    event=record.event,
                )
            )
            realized = position.realized_pnl
    return book.get(position_id), rows
