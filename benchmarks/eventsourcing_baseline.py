"""The same position work through the `eventsourcing` library, as a new user would write it.

An Aggregate with the three commands of the benchmark (open, partial exit, close), an
Application that gets the aggregate from its repository, runs the command and saves: one
durable commit per command, on eventsourcing's SQLite recorder (WAL; SQLite's default
synchronous=FULL in WAL, as ours). Optional: `pip install -e ".[bench]"`; the benchmark skips,
saying so, without it.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class EsPosition(Aggregate):
    @event("Opened")
    def __init__(self, symbol: str, side: str, qty: Decimal, entry_price: Decimal) -> None:
        self.symbol = symbol
        self.side = side
        self.qty = qty
        self.entry_price = entry_price
        self.realized_pnl = Decimal(0)
        self.closed = False

    @event("PartlyExited")
    def partial_exit(self, qty: Decimal, price: Decimal) -> None:
        self.qty -= qty
        self.realized_pnl += qty * (price - self.entry_price)

    @event("Closed")
    def close(self, price: Decimal, reason: str) -> None:
        self.realized_pnl += self.qty * (price - self.entry_price)
        self.qty = Decimal(0)
        self.closed = True


class EsPositions(Application[UUID]):
    """One save (one SQLite transaction) per command, like a bot recording each fill."""

    def open_position(self, symbol: str, qty: Decimal, entry_price: Decimal) -> UUID:
        position = EsPosition(symbol, "buy", qty, entry_price)
        self.save(position)
        opened: UUID = position.id
        return opened

    def partial_exit(self, position_id: UUID, qty: Decimal, price: Decimal) -> None:
        position: EsPosition = self.repository.get(position_id)
        if position.closed or qty > position.qty:
            raise ValueError("exit exceeds the position")
        position.partial_exit(qty, price)
        self.save(position)

    def close_position(self, position_id: UUID, price: Decimal, reason: str) -> None:
        position: EsPosition = self.repository.get(position_id)
        if position.closed:
            raise ValueError("already closed")
        position.close(price, reason)
        self.save(position)


def open_app(path: Path) -> EsPositions:
    return EsPositions(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )


def stored_events(app: EsPositions) -> int:
    """How many events the recorder holds (the benchmark checks whole rounds were stored)."""
    last: int | None = app.recorder.max_notification_id()
    return last or 0
