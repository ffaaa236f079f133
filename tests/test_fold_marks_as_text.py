"""A rebuild reads marks with their numbers as text (MarkText) and parses only those it folds:
the book must be the one the exact decoder gives, and a number that is no number must still
stop the fold when the fold needs it."""

from __future__ import annotations

from decimal import Decimal
from typing import get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import SCHEMA_VERSION, MarkText, decode_for_fold, encode_event
from ledger.envelope import Recorded
from ledger.errors import IntegrityError
from ledger.events import (
    AnyEvent,
    FundingRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
)
from ledger.store.base import FactRow, facts_from_rows, fold_facts_from_rows
from ledger.values import Side, Source, to_micros
from projections.book import Book, fold_records
from projections.snapshot import encode_snapshot
from tests.strategies import T0, Stamper


def test_mark_text_mirrors_position_marked() -> None:
    """Same fields in the same order with the same defaults; a Decimal there is text here."""
    exact = msgspec.structs.fields(PositionMarked)
    text = msgspec.structs.fields(MarkText)
    assert [f.name for f in text] == [f.name for f in exact]
    assert [f.default for f in text] == [f.default for f in exact]
    for mine, theirs in zip(text, exact, strict=True):
        exact_types = set(get_args(theirs.type)) or {theirs.type}
        if Decimal in exact_types:
            exact_types = (exact_types - {Decimal}) | {str, int}
        assert (set(get_args(mine.type)) or {mine.type}) == exact_types, mine.name
    assert MarkText.__struct_config__.tag == "PositionMarked"


def opened(position_id: str) -> PositionOpened:
    return PositionOpened(
        position_id=position_id,
        symbol="BTC/USDT:USDT",
        side=Side.BUY,
        qty=Decimal("0.5"),
        entry_price=Decimal(40_000),
        leverage=5,
    )


# margins a mark may report, zeros (which `marked` treats as none) and ints included
margins = (
    st.sampled_from(
        [None, Decimal(0), Decimal("0.00"), Decimal("-0"), Decimal("0E-8"), Decimal("0.5")]
    )
    | st.decimals(min_value=-1000, max_value=10**6, places=4)
    | st.integers(0, 3)
)
marks = st.builds(
    PositionMarked,
    position_id=st.sampled_from(["a", "b", "ghost"]),
    mark_price=st.decimals(min_value=1, max_value=10**5, places=2) | st.integers(1, 99),
    unrealized_pnl=st.none() | st.decimals(min_value=-1000, max_value=1000, places=8),
    contracts=st.none() | st.decimals(min_value=0, max_value=10, places=4),
    initial_margin=margins,
    source=st.sampled_from(Source),
    exchange_opened_ms=st.none() | st.integers(0, 2) | st.integers(1, 2**62),
)
fundings = st.sampled_from(["a", "b"]).map(
    lambda p: FundingRecorded(position_id=p, amount=Decimal("-0.1"), execution_id="f")
)
closes = st.sampled_from(["a", "b"]).map(
    lambda p: PositionClosed(
        position_id=p, qty=Decimal("0.5"), price=Decimal(1), realized_pnl=Decimal(0)
    )
)
# mostly marks, in runs broken now and then by another event of a position
events = st.lists(st.one_of(marks, marks, marks, marks, marks, fundings, closes), max_size=60)


def rows_of(records: list[Recorded]) -> list[FactRow]:
    return [
        (r.seq, to_micros(r.occurred_at), SCHEMA_VERSION, encode_event(r.event)) for r in records
    ]


def fold_rows(rows: list[FactRow], page: int, convert: object = fold_facts_from_rows) -> Book:
    book = Book()
    for start in range(0, len(rows), page):
        book.apply_facts(convert(rows[start : start + page]), last_hash="h")  # type: ignore[operator]
    return book


def same(a: Book, b: Book) -> None:
    assert (a.open, a.closed, a.acc, a.skipped, a.last_seq) == (
        b.open,
        b.closed,
        b.acc,
        b.skipped,
        b.last_seq,
    )
    assert encode_snapshot(a, T0) == encode_snapshot(b, T0)


@settings(max_examples=200, deadline=None)
@given(
    events=events,
    page=st.integers(1, 9),
)
def test_marks_read_as_text_fold_into_the_exact_book(events: list[AnyEvent], page: int) -> None:
    records = Stamper().stamp_all([opened("a"), opened("b"), *events])
    applied = fold_records(records)
    applied.last_hash = "h"
    rows = rows_of(records)
    same(fold_rows(rows, page), applied)
    same(fold_rows(rows, page, facts_from_rows), applied)


def mark(price: str = "1", margin: str | None = None) -> PositionMarked:
    return PositionMarked(
        position_id="a",
        mark_price=Decimal(price),
        initial_margin=None if margin is None else Decimal(margin),
    )


def with_body(rows: list[FactRow], seq: int, old: bytes, new: bytes) -> list[FactRow]:
    """rows with one body's text changed (as a hand-edited or corrupted log would have it)."""
    changed = rows[seq - 1][3].replace(old, new)
    assert changed != rows[seq - 1][3]
    return [(*r[:3], changed) if r[0] == seq else r for r in rows]


def test_a_superseded_marks_numbers_are_not_parsed() -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = with_body(rows_of(records), 2, b'"7"', b'"not a number"')
    assert isinstance(decode_for_fold(rows[1][3]), MarkText)
    expected = fold_records(records)
    expected.last_hash = "h"
    same(fold_rows(rows, 5), expected)  # the mark at 2 is superseded by 3: never folded


def test_a_folded_mark_that_is_no_number_is_named_by_its_seq() -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = with_body(rows_of(records), 3, b'"8"', b'"not a number"')
    with pytest.raises(IntegrityError) as caught:
        fold_rows(rows, 5)
    assert caught.value.seq == 3


def test_a_margin_kept_from_an_earlier_mark_is_parsed_and_named_by_its_seq() -> None:
    # the last mark reports no margin, so the run keeps the one reported at seq 2
    records = Stamper().stamp_all([opened("a"), mark("7", margin="9"), mark("8")])
    expected = fold_records(records)
    expected.last_hash = "h"
    rows = rows_of(records)
    same(fold_rows(rows, 5), expected)
    assert expected.open["a"].real_initial_margin == Decimal(9)
    with pytest.raises(IntegrityError) as caught:
        fold_rows(with_body(rows, 2, b'"9"', b'"9 dollars"'), 5)
    assert caught.value.seq == 2


def test_a_page_whose_mark_has_a_float_is_decoded_exactly() -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = with_body(rows_of(records), 3, b'"8"', b"8.50")
    book = fold_rows(rows, 5)
    assert book.open["a"].current_price == Decimal("8.50")  # as msgspec reads 8.50 into a Decimal
    assert (
        book.open["a"].current_price == fold_rows(rows, 5, facts_from_rows).open["a"].current_price
    )


def test_a_body_that_does_not_decode_still_raises() -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = rows_of(records)
    rows[1] = (*rows[1][:3], b'{"type": "Nonsense"}')
    with pytest.raises(IntegrityError) as caught:
        fold_facts_from_rows(rows)
    assert caught.value.seq == 2
