"""The fleet's sums and each account's, against figures written out here from the trades
themselves: a ledger's first account holds the fleet's sums object itself while it is alone
(`Book._new_account`), so every flow and close must still count once, a second account part
them, and every way of folding (a successor per record as the Ledger folds, a page of rows as
a rebuild folds, a snapshot plus its tail) hold the same figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import SCHEMA_VERSION, encode_event
from ledger.envelope import Recorded
from ledger.events import (
    AnyEvent,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionOpened,
)
from ledger.values import Side, to_micros
from projections.book import Book
from projections.snapshot import decode_snapshot, encode_snapshot
from tests.strategies import T0, Stamper

ACCOUNTS = ["default", "second", "third"]
CENTS = st.integers(-5_000, 5_000).map(lambda cents: Decimal(cents) / 100)


@dataclass
class Trade:
    """One position's life: an open with a fee, maybe a partial exit, a close, maybe funding
    settled after the close; each its realized PnL."""

    account: str
    fee: Decimal
    partial: Decimal | None
    close: Decimal
    funding: Decimal | None

    @property
    def realized(self) -> Decimal:
        return -self.fee + (self.partial or 0) + self.close + (self.funding or 0)


trades = st.builds(
    Trade,
    account=st.sampled_from(ACCOUNTS),
    fee=st.integers(0, 300).map(lambda cents: Decimal(cents) / 100),
    partial=st.none() | CENTS,
    close=CENTS,
    funding=st.none() | CENTS,
)


def _events(history: list[Trade]) -> list[AnyEvent]:
    events: list[AnyEvent] = []
    for i, trade in enumerate(history):
        position_id = f"p{i}"
        events.append(
            PositionOpened(
                position_id=position_id,
                symbol=f"S{i % 4}USDT",
                side=Side.BUY,
                qty=Decimal(4),
                entry_price=Decimal(100),
                leverage=2,
                fee=trade.fee,
                account=trade.account,
            )
        )
        left = Decimal(4)
        if trade.partial is not None:
            events.append(
                PartialExitRecorded(
                    position_id=position_id,
                    qty=Decimal(1),
                    price=Decimal(101),
                    realized_pnl=trade.partial,
                )
            )
            left -= 1
        events.append(
            PositionClosed(
                position_id=position_id, qty=left, price=Decimal(99), realized_pnl=trade.close
            )
        )
        if trade.funding is not None:
            events.append(
                FundingRecorded(position_id=position_id, amount=trade.funding, execution_id="f")
            )
    return events


def _figures(book: Book, account: str | None) -> tuple[object, ...]:
    acc = book.acc if account is None else book.accounts[account]
    return (acc.closed_trades, acc.wins, acc.losses, acc.closed_realized_pnl, acc.equity)


def _expected(history: list[Trade], account: str | None) -> tuple[object, ...]:
    mine = [t for t in history if account is None or t.account == account]
    return (
        len(mine),
        sum(1 for t in mine if t.realized > 0),
        sum(1 for t in mine if t.realized <= 0),
        sum((t.realized for t in mine), Decimal(0)),
        sum((t.realized for t in mine), Decimal(0)),  # every position is closed: all realized
    )


def _rows(records: list[Recorded]) -> list[tuple[int, int, int, bytes]]:
    return [
        (r.seq, to_micros(r.occurred_at), SCHEMA_VERSION, encode_event(r.event)) for r in records
    ]


@settings(max_examples=80, deadline=None)
@given(history=st.lists(trades, min_size=1, max_size=10), cut=st.integers(0, 40))
def test_each_accounts_sums_and_the_fleets_count_every_flow_once(
    history: list[Trade], cut: int
) -> None:
    records = Stamper().stamp_all(_events(history))
    # as the Ledger folds: a successor per record, each book kept as it was published
    live = Book()
    published = []
    for record in records:
        live = live.successor()
        live.apply(record)
        published.append((live, msgspec.json.encode(live.acc), msgspec.json.encode(live.accounts)))
    # as a rebuild folds: pages of rows
    rebuilt = Book()
    cut = min(cut, len(records))
    for page in (records[:cut], records[cut:]):
        if page:
            rebuilt.apply_facts(_rows(page), last_hash=page[-1].hash)
    # a snapshot at the cut, then the tail applied record by record
    resumed = Book()
    resumed.apply_all(records[:cut])
    resumed = decode_snapshot(encode_snapshot(resumed, T0 + timedelta(days=1)))
    for record in records[cut:]:
        resumed = resumed.successor()
        resumed.apply(record)
    used = {t.account for t in history}
    for book in (live, rebuilt, resumed):
        assert set(book.accounts) == used
        assert _figures(book, None) == _expected(history, None)
        for account in used:
            assert _figures(book, account) == _expected(history, account)
        assert msgspec.json.encode(book.acc) == msgspec.json.encode(live.acc)
        assert msgspec.json.encode(book.accounts) == msgspec.json.encode(live.accounts)
    # no book once published changed afterwards
    for book, fleet, accounts in published:
        assert msgspec.json.encode(book.acc) == fleet
        assert msgspec.json.encode(book.accounts) == accounts
