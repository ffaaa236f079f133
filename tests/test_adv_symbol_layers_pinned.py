"""Adversary: positions.json byte for byte as before per-symbol figures were layered
(projections.stats.SymbolLayers, 3550d89). A fixed history over 300 symbols and two
accounts (closes won and lost, closes of the same symbols again and again, funding settled
after a close), folded as the Ledger folds (a successor per event, the old books kept and
read), with snapshots taken mid-way and at the end: each snapshot's sha256 is pinned as the
code before layering wrote it (main at 00cf395)."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from ledger.envelope import Recorded
from ledger.events import AnyEvent, FundingRecorded, PositionClosed, PositionOpened
from ledger.values import Side
from projections.book import Book, fold_records
from projections.snapshot import decode_snapshot, encode_snapshot
from tests._events import AT, recorded_in_order

CUTS = (150, 700, 1_300, 1_516)


def _history() -> list[Recorded]:
    events: list[AnyEvent] = []
    closed: list[str] = []
    for n in range(700):
        symbol = f"S{(n * 37) % 300}USDT" if n < 400 else f"S{n % 11}USDT"  # again and again
        position_id = f"p{n}"
        pnl = Decimal((n * 7919) % 61 - 30) / 4
        events.append(
            PositionOpened(
                position_id=position_id,
                symbol=symbol,
                side=Side.BUY if n % 3 else Side.SELL,
                qty=Decimal("1.5"),
                entry_price=Decimal("100.25"),
                leverage=3,
                account="default" if n % 5 else "second",
                fee=Decimal("0.01") * (n % 4),
            )
        )
        events.append(
            PositionClosed(
                position_id=position_id,
                qty=Decimal("1.5"),
                price=Decimal("100.25") + pnl,
                realized_pnl=pnl,
                fee=Decimal("0.02"),
                reason="t",
            )
        )
        closed.append(position_id)
        if n % 6 == 5:
            events.append(
                FundingRecorded(
                    position_id=closed[(n * 13) % len(closed)],
                    amount=Decimal((n % 9) - 4) / 100,
                    execution_id=f"f{n}",
                )
            )
    return recorded_in_order(events)


def _snapshots(records: list[Recorded]) -> list[bytes]:
    """positions.json at each cut, folded a successor per event, every 97th book read (its
    summary: the figures flattened) and every old book kept."""
    book = Book()
    held: list[Book] = []
    taken: list[bytes] = []
    for record in records:
        book = book.successor()
        book.apply(record)
        held.append(book)
        if record.seq % 97 == 0:
            held[record.seq // 2].summary()
        if record.seq in CUTS:
            taken.append(encode_snapshot(book, AT))
    return taken


PINNED = [
    "8ef2c74e08c7b61675285254c3bcb1919e8527ed6f5f1ab47401d37e5af18349",
    "590f23b621eecdf0096684d8c09a5c904e1523e07ecbf456f3b47793a5e370f6",
    "c2485856fbb6678e1dcc34d5f2dad87b0c5fc982cbd45a6b80ffd66fb1452357",
    "ebcd65d2ccf7a0c5ec3e64ab7ca056bda90d0c3a80fbd7391d0534db188b7750",
]


def test_positions_json_is_the_bytes_the_code_before_layering_wrote() -> None:
    records = _history()
    assert records[-1].seq == CUTS[-1]
    snapshots = _snapshots(records)
    assert [hashlib.sha256(s).hexdigest() for s in snapshots] == PINNED
    # and a snapshot resumed with its tail is the rebuild, byte for byte
    resumed = decode_snapshot(snapshots[1])
    resumed.apply_all(records[CUTS[1] :])
    assert (
        encode_snapshot(resumed, AT) == snapshots[-1] == encode_snapshot(fold_records(records), AT)
    )
