"""ledger.audit_rules.violations: what the rules would have refused, checked on stored events."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ledger.audit_rules import violations
from ledger.commands import Limits
from ledger.envelope import Recorded
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.values import Side, Source
from projections.book import Book
from tests._events import recorded

T0 = datetime(2025, 1, 7, tzinfo=UTC)
ZERO = Decimal(0)


def record(seq: int, event: AnyEvent, stream: str | None = None) -> Recorded:
    """event at seq, in its position's stream unless named, at T0."""
    return recorded(seq, event, stream=stream or stream_of(event), at=T0)


def opened(pid: str = "p1", **changes: object) -> PositionOpened:
    fields: dict[str, object] = {
        "position_id": pid,
        "symbol": "SOL/USDT:USDT",
        "side": Side.BUY,
        "qty": Decimal(5),
        "entry_price": Decimal(100),
        "leverage": 5,
    }
    fields.update(changes)
    return PositionOpened(**fields)  # type: ignore[arg-type]


def book_with(*events: AnyEvent) -> Book:
    book = Book()
    for n, event in enumerate(events, start=1):
        assert violations(book, record(n, event)) is None
        book.apply(record(n, event))
    return book


def test_a_clean_history_passes() -> None:
    book = book_with(
        opened(),
        PositionMarked(position_id="p1", mark_price=Decimal(105)),
        PartialExitRecorded(
            position_id="p1", qty=Decimal(2), price=Decimal(110), realized_pnl=Decimal(20)
        ),
        FundingRecorded(position_id="p1", amount=Decimal("-0.1"), execution_id="f"),
        PositionIncreased(
            position_id="p1", qty=Decimal(1), price=Decimal(90), new_entry_price=Decimal("97.5")
        ),
        PositionClosed(position_id="p1", qty=Decimal(4), price=Decimal(100), realized_pnl=ZERO),
        BalanceObserved(total=Decimal(10), available=Decimal(5)),
        HistoryImported(file_sha256="ab", file_name="f", open_positions=0, closed_positions=0),
    )
    assert list(book.closed) == ["p1"]


@pytest.mark.parametrize(
    ("history", "event", "why"),
    [
        ([opened()], opened(), "opened a second time"),
        ([], opened(qty=Decimal(0)), "qty 0 is not positive"),
        ([], opened(entry_price=Decimal(-1)), "entry_price -1 is not positive"),
        ([], opened(leverage=0), "leverage 0 outside [1, 100]"),
        ([], opened(leverage=101), "leverage 101 outside"),
        ([], opened(fee=Decimal(-1)), "negative fee"),
        ([], opened(qty=Decimal("NaN")), "qty is not a finite number"),
        ([opened()], opened("p2"), "a buy position on SOL/USDT:USDT was already open"),
        ([], PositionMarked(position_id="nope", mark_price=Decimal(1)), "unknown position"),
        ([opened()], PositionMarked(position_id="p1", mark_price=Decimal(0)), "not positive"),
        (
            [opened()],
            PartialExitRecorded(
                position_id="p1", qty=Decimal(6), price=Decimal(1), realized_pnl=ZERO
            ),
            "exit of qty 6 exceeds the 5 left",
        ),
        (
            [opened()],
            PartialExitRecorded(
                position_id="p1", qty=Decimal(0), price=Decimal(1), realized_pnl=ZERO
            ),
            "exit qty 0 is not positive",
        ),
        (
            [
                opened(),
                PositionClosed(
                    position_id="p1", qty=Decimal(5), price=Decimal(1), realized_pnl=ZERO
                ),
            ],
            PositionMarked(position_id="p1", mark_price=Decimal(1)),
            "already closed",
        ),
        (
            [
                opened(),
                PositionClosed(
                    position_id="p1", qty=Decimal(5), price=Decimal(1), realized_pnl=ZERO
                ),
            ],
            PositionClosed(position_id="p1", qty=Decimal(5), price=Decimal(1), realized_pnl=ZERO),
            "already closed",
        ),
        (
            [opened()],
            PositionClosed(position_id="p1", qty=Decimal(7), price=Decimal(1), realized_pnl=ZERO),
            "close of qty 7 exceeds the 5 left",
        ),
        ([], FundingRecorded(position_id="x", amount=ZERO, execution_id="f"), "unknown position"),
        ([], BalanceObserved(total=Decimal(-1), available=ZERO), "negative balance"),
        (
            [
                HistoryImported(
                    file_sha256="ab", file_name="f", open_positions=0, closed_positions=0
                )
            ],
            HistoryImported(file_sha256="ab", file_name="f", open_positions=0, closed_positions=0),
            "already imported",
        ),
    ],
)
def test_each_rule_names_what_is_wrong(history: list[AnyEvent], event: AnyEvent, why: str) -> None:
    book = book_with(*history)
    found = violations(book, record(len(history) + 1, event))
    assert found is not None
    assert why in found


def test_too_many_open_positions_counts_only_bot_opens() -> None:
    limits = Limits(max_concurrent_positions=1)
    book = book_with(opened())
    by_bot = record(2, opened("p2", symbol="BTC/USDT:USDT"))
    adopted = record(2, opened("p2", symbol="BTC/USDT:USDT", source=Source.EXCHANGE))
    assert "the limit is 1" in (violations(book, by_bot, limits) or "")
    assert violations(book, adopted, limits) is None


def test_an_event_filed_in_the_wrong_stream_is_caught() -> None:
    found = violations(Book(), record(1, opened(), stream="p9"))
    assert found is not None and "stream 'p9'" in found


def test_exit_within_dust_of_what_is_left_is_allowed() -> None:
    book = book_with(opened(qty=Decimal(1) / Decimal(3)))
    left = book.open["p1"].qty
    exit_ = PartialExitRecorded(
        position_id="p1", qty=left + left * Decimal("1e-20"), price=Decimal(1), realized_pnl=ZERO
    )
    assert violations(book, record(2, exit_)) is None
