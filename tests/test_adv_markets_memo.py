"""A symbol that is a str subclass never changes another decision's market.

The limits rule reads each open position's market through a process-wide memo of market_key
by symbol. A str subclass (a bot's own string type) is a str to the checks, and may answer
for itself: what it says of its market must stay its own decision's, never be kept for a
plain symbol of equal text decided later, by this bot or any other in the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from ledger.commands import Limits, OpenPosition
from ledger.errors import DuplicatePosition
from ledger.events import PositionOpened
from ledger.rules import _MARKETS, decide
from ledger.values import Side
from projections.book import fold_records
from tests.strategies import Stamper


class Lying(str):
    """A string whose strip() says BTCUSDT, whatever its text."""

    def strip(self, chars: str | None = None) -> str:
        return "BTCUSDT"


@pytest.fixture(autouse=True)
def fresh_markets() -> Iterator[None]:
    _MARKETS.clear()
    try:
        yield
    finally:
        _MARKETS.clear()  # whatever this test left in it, never another test's


def opening(position_id: str, symbol: str) -> OpenPosition:
    return OpenPosition(
        position_id=position_id,
        symbol=symbol,
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(100),
        leverage=2,
    )


def test_a_str_subclass_symbol_never_decides_a_plain_symbols_market() -> None:
    stamper = Stamper()
    book = fold_records(
        [
            stamper.stamp(event)
            for event in decide(fold_records([]), opening("a", "BTCUSDT"), Limits())
        ]
    )
    with pytest.raises(DuplicatePosition):  # its own decision: what it says of itself
        decide(book, opening("x", Lying("ETHUSDT")), Limits())
    (opened,) = decide(book, opening("b", "ETHUSDT"), Limits())  # a long beside BTCUSDT's
    assert isinstance(opened, PositionOpened) and opened.symbol == "ETHUSDT"
