"""Events the tests build again and again: an open of one unit of SOL at 100, a mark stored as
an event of its own (its id its stream and its position), and events as the log's records
for the folds (seq n in stream sn, all at one time)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal

from ledger.envelope import NewEvent, Recorded
from ledger.events import AnyEvent, PositionMarked, PositionOpened
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


AT = datetime(2026, 1, 1, tzinfo=UTC)


def recorded(
    seq: int, event: AnyEvent, *, stream: str | None = None, at: datetime = AT
) -> Recorded:
    """event as the log's record at seq: first of its stream (its own, "s<seq>", unless
    named), at `at` (hash: seq in hex)."""
    return Recorded(
        seq=seq,
        stream=f"s{seq}" if stream is None else stream,
        version=1,
        event_id=f"e{seq}",
        occurred_at=at,
        recorded_at=at,
        schema_version=1,
        event=event,
        hash=f"{seq:064x}",
    )


def recorded_in_order(events: Iterable[AnyEvent]) -> list[Recorded]:
    return [recorded(seq, event) for seq, event in enumerate(events, start=1)]
