"""A rebuild folds rows still encoded (Book.apply_facts on what iterate_fold_facts reads): a
mark is put in its position's run by its body's text and decoded only if the fold reads it. The
text it goes by is held to the encoder here, and the book must be the exact one whatever form a
body comes in (the encoder's, another writer's spacing, an id written with escapes)."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import (
    BOT_MARK_TAIL,
    MARK_HEAD,
    NO_OPENED_TAIL,
    SCHEMA_VERSION,
    FactRow,
    encode_event,
)
from ledger.envelope import Recorded
from ledger.errors import IntegrityError
from ledger.events import AnyEvent, FundingRecorded, PositionClosed, PositionMarked, PositionOpened
from ledger.values import Side, Source, to_micros
from projections.book import Book, fold_records
from tests.strategies import Stamper
from tests.test_fold_marks_as_text import same

# ids a JSON string writes as they are, and ids it must escape (a quote, a backslash, a control)
IDS = ["a", "pos_54570f052c58", "é-ü", 'q"uote', "back\\slash", "ctl\x01"]

marks = st.builds(
    PositionMarked,
    position_id=st.sampled_from([*IDS, "ghost"]),
    mark_price=st.decimals(min_value=1, max_value=10**5, places=2) | st.integers(1, 99),
    unrealized_pnl=st.none() | st.decimals(min_value=-1000, max_value=1000, places=8),
    contracts=st.none() | st.decimals(min_value=0, max_value=10, places=4),
    initial_margin=st.none()
    | st.sampled_from([Decimal(0), Decimal("0.00")])
    | st.decimals(min_value=0, max_value=10**6, places=4),
    source=st.sampled_from(Source),
    exchange_opened_ms=st.none() | st.integers(0, 2) | st.integers(1, 2**62),
)


@settings(max_examples=300, deadline=None)
@given(event=marks)
def test_a_marks_body_is_written_as_the_fold_reads_it(event: PositionMarked) -> None:
    body = encode_event(event)
    assert body.startswith(MARK_HEAD)
    written_id = msgspec.json.encode(event.position_id)
    if written_id == b'"' + event.position_id.encode() + b'"':  # no escapes
        assert body[len(MARK_HEAD) :].startswith(event.position_id.encode() + b'"')
    assert body.endswith(NO_OPENED_TAIL) == (event.exchange_opened_ms is None)
    reports_nothing_kept = (
        event.initial_margin is None
        and event.source is Source.BOT
        and event.exchange_opened_ms is None
    )
    assert body.endswith(BOT_MARK_TAIL) == reports_nothing_kept


def opened(position_id: str) -> PositionOpened:
    return PositionOpened(
        position_id=position_id,
        symbol="BTC/USDT:USDT",
        side=Side.BUY,
        qty=Decimal("0.5"),
        entry_price=Decimal(40_000),
        leverage=5,
        fee=Decimal("1.25"),
    )


def escaped(body: bytes, position_id: str) -> bytes:
    """The body with its position id written as \\u escapes, every character of it."""
    plain = b'"position_id":' + msgspec.json.encode(position_id)
    spelled = "".join(f"\\u{ord(c):04x}" for c in position_id)
    assert plain in body
    return body.replace(plain, b'"position_id":"' + spelled.encode() + b'"', 1)


FORMS = ["encoder", "spaced", "escaped"]


def written(record: Recorded, form: str) -> bytes:
    body = encode_event(record.event)
    if form == "spaced":  # another writer's layout: the same JSON, spaced out
        return msgspec.json.format(body, indent=1)
    if form == "escaped" and isinstance(record.event, PositionMarked):
        return escaped(body, record.event.position_id)
    return body


fundings = st.sampled_from(IDS).map(
    lambda p: FundingRecorded(position_id=p, amount=Decimal("-0.1"), execution_id="f")
)
closes = st.builds(
    PositionClosed,
    position_id=st.sampled_from(IDS),
    qty=st.just(Decimal("0.5")),
    price=st.just(Decimal(1)),
    realized_pnl=st.decimals(min_value=-50, max_value=50, places=2),
)
events = st.lists(st.one_of(marks, marks, marks, marks, marks, fundings, closes), max_size=80)


@settings(max_examples=200, deadline=None)
@given(events=events, page=st.integers(1, 12), data=st.data())
def test_rows_in_any_form_fold_into_the_exact_book(
    events: list[AnyEvent], page: int, data: st.DataObject
) -> None:
    records = Stamper().stamp_all([*(opened(p) for p in IDS), *events])
    expected = fold_records(records)
    expected.last_hash = "h"
    forms = data.draw(
        st.lists(st.sampled_from(FORMS), min_size=len(records), max_size=len(records))
    )
    rows: list[FactRow] = [
        (r.seq, to_micros(r.occurred_at), SCHEMA_VERSION, written(r, form))
        for r, form in zip(records, forms, strict=True)
    ]
    book = Book()
    for start in range(0, len(rows), page):
        book.apply_facts(rows[start : start + page], last_hash="h")
    same(book, expected)


def row(record: Recorded, body: bytes | None = None) -> FactRow:
    """The record's row, with another body if given."""
    written = encode_event(record.event) if body is None else body
    return (record.seq, to_micros(record.occurred_at), SCHEMA_VERSION, written)


@pytest.mark.parametrize(
    "bad",
    [
        MARK_HEAD + b"a",  # cut inside the id
        MARK_HEAD + b'a","mark_price":"1"',  # cut after a field
        MARK_HEAD + b'a","mark_price":[]}',  # a number that is a list
    ],
)
def test_a_mark_the_fold_reads_that_does_not_decode_raises(bad: bytes) -> None:
    """A mark is decoded where the fold reads it: the first of its position in a page (to
    learn its id, and a body cut inside the id always), the last of its run."""
    records = Stamper().stamp_all(
        [opened("a"), PositionMarked(position_id="a", mark_price=Decimal(1))]
    )
    rows = [row(r) for r in records]
    bad_row = (3, rows[1][1] + 1, SCHEMA_VERSION, bad)
    for page in ([*rows, bad_row], [bad_row]):
        book = Book()
        if page[0][0] == 3:
            book.apply_facts(rows, last_hash="h")
        with pytest.raises(IntegrityError) as caught:
            book.apply_facts(page, last_hash="h")
        assert caught.value.seq == 3


def test_the_last_mark_of_a_run_is_decoded_and_named_by_its_seq() -> None:
    records = Stamper().stamp_all(
        [opened("a"), *(PositionMarked(position_id="a", mark_price=Decimal(p)) for p in "123")]
    )
    rows = [row(r) for r in records]
    rows[3] = row(records[3], rows[3][3].replace(b'"mark_price":"3"', b'"mark_price":{}'))
    with pytest.raises(IntegrityError) as caught:
        Book().apply_facts(rows, last_hash="h")
    assert caught.value.seq == 4


def test_a_superseded_mark_is_not_decoded() -> None:
    """Beyond its position id, a mark the next mark of its position supersedes is never read
    (as its numbers were never parsed before): the book is the one without it; `ledger
    verify` reads every body and names it."""
    events: list[AnyEvent] = [opened("a")]
    events += [PositionMarked(position_id="a", mark_price=Decimal(p)) for p in "123"]
    records = Stamper().stamp_all(events)
    rows = [row(r) for r in records]
    # (the first mark of a position in a page is decoded: it names the id for the others)
    rows[2] = row(records[2], rows[2][3].replace(b'"mark_price":"2"', b'"mark_price":{}'))
    book = Book()
    book.apply_facts(rows, last_hash="h")
    expected = fold_records(records)
    expected.last_hash = "h"
    same(book, expected)


@settings(max_examples=100, deadline=None)
@given(events=events, page=st.integers(1, 12), data=st.data())
def test_rows_the_book_holds_already_are_passed_over(
    events: list[AnyEvent], page: int, data: st.DataObject
) -> None:
    """A page that starts at or below the book's last seq (a replay from an earlier point)
    folds only the rows after it."""
    records = Stamper().stamp_all([*(opened(p) for p in IDS), *events])
    expected = fold_records(records)
    expected.last_hash = "h"
    rows = [row(r) for r in records]
    cut = data.draw(st.integers(0, len(rows)), label="cut")
    again = data.draw(st.integers(0, cut), label="replayed from")
    book = Book()
    book.apply_facts(rows[:cut], last_hash="h")
    for start in range(again, len(rows), page):
        book.apply_facts(rows[start : start + page], last_hash="h")
    if not rows[again:]:
        book.last_hash = "h"
    same(book, expected)
