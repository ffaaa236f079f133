"""A book never changes once a successor is made of it, whatever either of them folds next.

The Ledger folds each command on a successor of the live book while readers on other threads
hold older books; a successor shares the closed history, the sums (the fleet's and each
account's), the balances and `skipped` with the book it came from, copy-on-write. Here
random logs that reach every path writing those (opens in several accounts, the second
appearing late; funding and amendments after a close; marks, exits and closes of unknown
positions, skipped; balances per account; imports; rules) are folded the way the Ledger folds
them: a successor per chunk, by records or by facts (`apply_facts`), and, from an older book,
a second successor folding the rest again (the Ledger's fold again after a failed job). Each
book is compared, by value and deep (its snapshot's bytes, `skipped`, each account's
summary), with what it was when made; and the last book of each line with a fold from
nothing and with a snapshot plus its tail.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.envelope import Recorded
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
)
from ledger.values import Side, to_micros
from projections.book import Book, fold_records
from projections.snapshot import decode_snapshot, encode_snapshot
from tests.strategies import T0, Stamper

SAVED_AT = T0 + timedelta(days=1)
IDS = [f"p{i}" for i in range(6)]
ACCOUNTS = ["default", "main", "hedge"]

ids = st.sampled_from(IDS)
money = st.integers(-50_000, 50_000).map(lambda n: Decimal(n) / 100)
fees = st.integers(0, 300).map(lambda n: Decimal(n) / 100)
prices = st.integers(1, 10_000_000).map(lambda n: Decimal(n) / 100)
small = st.integers(1, 50).map(lambda n: Decimal(n) / 1000)

events: st.SearchStrategy[AnyEvent] = st.one_of(
    st.builds(
        PositionOpened,
        position_id=ids,
        symbol=st.sampled_from(["BTCUSDT", "ETHUSDT", "SOL/USDT:USDT"]),
        side=st.sampled_from(list(Side)),
        qty=st.integers(1000, 100_000).map(lambda n: Decimal(n) / 1000),
        entry_price=prices,
        leverage=st.integers(1, 20),
        fee=fees,
        account=st.sampled_from(ACCOUNTS),
    ),
    st.builds(PositionMarked, position_id=ids, mark_price=prices, unrealized_pnl=money),
    st.builds(
        PartialExitRecorded,
        position_id=ids,
        qty=small,
        price=prices,
        realized_pnl=money,
        fee=fees,
        pnl_estimated=st.booleans(),
    ),
    st.builds(PositionIncreased, position_id=ids, qty=small, price=prices, new_entry_price=prices),
    st.builds(
        PositionClosed,
        position_id=ids,
        qty=small,
        price=prices,
        realized_pnl=money,
        fee=fees,
        pnl_estimated=st.booleans(),
    ),
    st.builds(
        FundingRecorded,
        position_id=ids,
        amount=money,
        execution_id=st.integers(0, 10**6).map(str),
    ),
    st.builds(
        PnlAmended,
        position_id=ids,
        qty=small,
        price=prices,
        realized_pnl=money,
        estimated_pnl=money,
        exchange_ref=st.just("ref"),
    ),
    st.builds(
        BalanceObserved,
        total=prices,
        available=prices,
        account=st.sampled_from(ACCOUNTS),
    ),
    st.builds(
        HistoryImported,
        file_sha256=st.sampled_from(["a" * 64, "b" * 64]),
        file_name=st.just("positions.json"),
        open_positions=st.just(0),
        closed_positions=st.just(0),
    ),
    st.builds(
        RulesConfigured,
        max_concurrent_positions=st.integers(1, 9),
        min_leverage=st.just(1),
        max_leverage=st.integers(1, 100),
    ),
)


def deep(book: Book) -> tuple[object, ...]:
    """Everything a book shows, by value."""
    names = sorted(set(book.account_names()) | set(ACCOUNTS))
    return (
        encode_snapshot(book, SAVED_AT),
        list(book.skipped),
        [(name, book.summary(name)) for name in names],
        book.summary(),
    )


def _facts(records: list[Recorded]) -> list[tuple[int, int, AnyEvent]]:
    return [(r.seq, to_micros(r.occurred_at), r.event) for r in records]


def _fold_on(book: Book, records: list[Recorded], by_facts: bool) -> Book:
    """A successor of book with records folded, as the Ledger folds a command's or a page."""
    work = book.successor()
    if by_facts and records:
        work.apply_facts(_facts(records), last_hash=records[-1].hash)
    else:
        work.apply_all(records)
    return work


@settings(max_examples=200, deadline=None)
@given(
    log=st.lists(events, min_size=1, max_size=60),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=30),
    by_facts=st.lists(st.booleans(), min_size=1, max_size=30),
    branch_at=st.integers(0, 29),
    cut=st.integers(0, 60),
)
def test_a_book_never_changes_after_its_successor_is_made(
    log: list[AnyEvent],
    cuts: list[int],
    by_facts: list[bool],
    branch_at: int,
    cut: int,
) -> None:
    stamper = Stamper()
    records = [stamper.stamp(event) for event in log]
    line: list[tuple[Book, tuple[object, ...], int]] = []  # a book, as made, its records
    book, done = Book(), 0
    line.append((book, deep(book), 0))
    step = 0
    while done < len(records):
        size = cuts[step % len(cuts)]
        book = _fold_on(book, records[done : done + size], by_facts[step % len(by_facts)])
        done = min(done + size, len(records))
        line.append((book, deep(book), done))
        step += 1
    # from an older book, the rest again in one successor (its predecessor folded on since)
    older, _, at = line[branch_at % len(line)]
    again = _fold_on(older, records[at:], by_facts[0])
    # and the older book's next successor folded on too, by the other way
    twice = _fold_on(older, records[at:], not by_facts[0])
    for index, (held, as_made, _) in enumerate(line):
        assert deep(held) == as_made, f"book #{index} of {len(line)} changed"
    rebuilt = fold_records(records)
    loaded = decode_snapshot(encode_snapshot(fold_records(records[:cut]), SAVED_AT))
    as_loaded = deep(loaded)  # its closed history still undecoded (LazyClosed)
    resumed = _fold_on(loaded, records[cut:], by_facts[-1])
    resumed_again = _fold_on(loaded, records[cut:], not by_facts[-1])
    assert deep(loaded) == as_loaded, "a loaded snapshot's book changed"
    assert deep(resumed) == deep(resumed_again)
    assert deep(book) == deep(rebuilt) == deep(again) == deep(twice)
    # a snapshot keeps no `skipped` (what its tail skips, the resumed book counts)
    assert deep(resumed)[0::2] == deep(book)[0::2]
    assert deep(resumed)[2] == deep(book)[2]
