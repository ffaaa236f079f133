"""Adversary: per-symbol figures layered (projections.stats.SymbolLayers) under books that
branch and are read at any moment.

A random program over many symbols (past the layering threshold, patched low so that layers
over layers and their merges all occur): make a successor of any book held so far and fold an
event into it, fold an event into an OLD book after its successor was made (both go on from
the shared figures), read a book from outside (`acc`, `accounts`, `summary()`: which
flattens its tables in place, its successor perhaps sharing them) and take its snapshot
(positions.json) mid-way. At the end every book is, figure for figure and positions.json
byte for byte, the rebuild of its own history, and its per-symbol figures equal sums
computed here from that history alone (an independent reference: no Book, no Accumulators).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.envelope import Recorded
from ledger.events import AnyEvent, FundingRecorded, PositionClosed, PositionOpened
from ledger.values import Side
from projections import stats
from projections.book import Book, fold_records
from projections.snapshot import decode_snapshot, encode_snapshot
from tests._events import AT, recorded

SYMBOLS = 90


@dataclass
class _Held:
    book: Book
    history: list[Recorded] = field(default_factory=list)
    closed: list[tuple[str, str, str]] = field(default_factory=list)  # id, symbol, account


def _fold(held: _Held, events: list[AnyEvent], book: Book) -> _Held:
    history = list(held.history)
    for event in events:
        record = recorded(len(history) + 1, event)
        book.apply(record)
        history.append(record)
    closed = list(held.closed)
    for event in events:
        if type(event) is PositionOpened:
            closed.append((event.position_id, event.symbol, event.account))
    return _Held(book, history, closed)


def _reference(
    history: list[Recorded],
) -> dict[str, dict[str, tuple[int, int, int, Decimal, Decimal]]]:
    """Per account ("" for the fleet) and symbol: closes, wins, losses, realized PnL, funding,
    from the events alone (each position here opens and closes at once, funding after)."""
    symbol_of: dict[str, tuple[str, str]] = {}
    pnl: dict[str, Decimal] = {}
    funding: dict[str, Decimal] = {}
    for record in history:
        event = record.event
        if type(event) is PositionOpened:
            symbol_of[event.position_id] = (event.symbol, event.account)
        elif type(event) is PositionClosed:
            pnl[event.position_id] = event.realized_pnl
        elif type(event) is FundingRecorded:
            pnl[event.position_id] += event.amount
            funding[event.position_id] = funding.get(event.position_id, Decimal(0)) + event.amount
    out: dict[str, dict[str, tuple[int, int, int, Decimal, Decimal]]] = {}
    for position_id, (symbol, account) in symbol_of.items():
        for who in ("", account):
            closes, wins, losses, total, paid = out.setdefault(who, {}).get(
                symbol, (0, 0, 0, Decimal(0), Decimal(0))
            )
            won = pnl[position_id] > 0
            out[who][symbol] = (
                closes + 1,
                wins + won,
                losses + (not won),
                total + pnl[position_id],
                paid + funding.get(position_id, Decimal(0)),
            )
    return out


def _figures(book: Book) -> dict[str, dict[str, tuple[int, int, int, Decimal, Decimal]]]:
    out = {}
    for who, acc in [("", book.acc), *book.accounts.items()]:
        out[who] = {
            symbol: (s.closed_trades, s.wins, s.losses, s.realized_pnl, s.funding)
            for symbol, s in acc.per_symbol.items()
        }
    return out


_step = st.tuples(
    st.sampled_from(["successor", "successor", "successor", "old", "read", "snapshot"]),
    st.integers(0, 10_000),  # which held book
    st.integers(0, SYMBOLS - 1),  # symbol
    st.sampled_from(["default", "second"]),
    st.integers(-30, 30),  # pnl, or funding
    st.booleans(),  # a funding payment instead of a close
)


@settings(max_examples=40, deadline=None)
@given(program=st.lists(_step, min_size=1, max_size=160), threshold=st.integers(0, 8))
def test_branching_books_read_at_any_moment_stay_their_own_histories_rebuild(
    program: list[tuple[str, int, int, str, int, bool]], threshold: int
) -> None:
    with patch.object(stats, "LAYERED_FROM", threshold):
        # a book with many symbols already (a table past any threshold), as after a restart
        seed_events: list[AnyEvent] = []
        for n in range(SYMBOLS):
            seed_events += _pair(f"seed{n}", n, "default", n % 7 - 3)
        held = [_fold(_Held(Book()), seed_events, Book())]
        snapshots: list[tuple[int, bytes]] = []
        for n, (kind, which, symbol, account, amount, funds) in enumerate(program):
            index = which % len(held)
            chosen = held[index]
            if kind == "read":
                chosen.book.summary()
                assert chosen.book.acc is not None and chosen.book.accounts is not None
                continue
            if kind == "snapshot":
                snapshots.append((index, encode_snapshot(chosen.book, AT)))
                continue
            if funds and chosen.closed:
                position_id = chosen.closed[symbol % len(chosen.closed)][0]
                events: list[AnyEvent] = [
                    FundingRecorded(
                        position_id=position_id, amount=Decimal(amount), execution_id=f"f{n}"
                    )
                ]
            else:
                events = _pair(f"p{n}", symbol, account, amount)
            if kind == "successor":
                held.append(_fold(chosen, events, chosen.book.successor()))
            else:  # the old book itself, folded on after its successor (if any) was made
                held[index] = _fold(chosen, events, chosen.book)
        # each snapshot taken mid-way is the rebuild of what its book held then (the book
        # may have been folded on since: the old-book steps), and resumes to it
        for index, snapshot in snapshots:
            decoded = decode_snapshot(snapshot)
            prefix = held[index].history[: decoded.last_seq]
            assert snapshot == encode_snapshot(fold_records(prefix), AT)
        for one in held:
            rebuilt = fold_records(one.history)
            assert encode_snapshot(one.book, AT) == encode_snapshot(rebuilt, AT)
            assert one.book.summary() == rebuilt.summary()
            assert _figures(one.book) == _reference(one.history)


def _pair(position_id: str, symbol: int, account: str, pnl: int) -> list[AnyEvent]:
    return [
        PositionOpened(
            position_id=position_id,
            symbol=f"S{symbol}USDT",
            side=Side.BUY,
            qty=Decimal(1),
            entry_price=Decimal(100),
            leverage=2,
            account=account,
        ),
        PositionClosed(
            position_id=position_id,
            qty=Decimal(1),
            price=Decimal(100 + pnl),
            realized_pnl=Decimal(pnl),
            reason="t",
        ),
    ]
