"""The rebuild's fast path (Book.apply_facts over what iterate_fold_facts reads) builds the
book `apply` builds: marks read with their numbers as text (MarkText) and parsed only when
folded, runs of marks folded once, cash flows and closes settled per page, across accounts and
from a snapshot; and a number that is no number still stops the fold when the fold needs it."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import (
    SCHEMA_VERSION,
    FactRow,
    FoldFact,
    MarkText,
    decode_current,
    decode_for_fold,
    decode_for_fold_at,
    encode_event,
    mark_from_text,
)
from ledger.envelope import Recorded
from ledger.errors import IntegrityError
from ledger.events import (
    DEFAULT_ACCOUNT,
    AnyEvent,
    FundingRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
)
from ledger.store.base import facts_from_rows
from ledger.values import Side, Source, to_micros
from projections.book import Book, fold_records
from projections.snapshot import decode_snapshot, encode_snapshot
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


def opened(position_id: str, account: str = DEFAULT_ACCOUNT) -> PositionOpened:
    return PositionOpened(
        position_id=position_id,
        symbol="BTC/USDT:USDT" if position_id == "a" else "ETH/USDT:USDT",
        side=Side.BUY,
        qty=Decimal("0.5"),
        entry_price=Decimal(40_000),
        leverage=5,
        fee=Decimal("1.25"),
        account=account,
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
closes = st.builds(
    PositionClosed,
    position_id=st.sampled_from(["a", "b"]),
    qty=st.just(Decimal("0.5")),
    price=st.just(Decimal(1)),
    realized_pnl=st.decimals(min_value=-50, max_value=50, places=2),
)
# mostly marks, in runs broken now and then by another event of a position
events = st.lists(st.one_of(marks, marks, marks, marks, marks, fundings, closes), max_size=60)


@settings(max_examples=200, deadline=None)
@given(event=marks)
def test_a_mark_read_as_text_is_the_mark_the_exact_decoder_reads(event: PositionMarked) -> None:
    body = encode_event(event)
    text = decode_for_fold(body)
    assert isinstance(text, MarkText)
    exact = decode_current(body)
    assert mark_from_text(text) == exact
    # equal numbers are not enough: the same digits and exponent (what positions.json shows)
    assert encode_event(mark_from_text(text)) == encode_event(exact)


def rows_of(records: list[Recorded]) -> list[FactRow]:
    return [
        (r.seq, to_micros(r.occurred_at), SCHEMA_VERSION, encode_event(r.event)) for r in records
    ]


def fold_facts_from_rows(rows: list[FactRow]) -> Sequence[FoldFact]:
    """A page of facts whose marks are MarkText, numbers unparsed (as the fold's decoder reads
    them), a page it cannot read decoded exactly (IntegrityError naming the first bad body):
    the third form of page `Book.apply_facts` takes."""
    current = SCHEMA_VERSION
    try:
        return [
            (
                seq,
                at,
                decode_for_fold(body) if schema == current else decode_for_fold_at(body, schema),
            )
            for seq, at, schema, body in rows
        ]
    except (msgspec.DecodeError, msgspec.ValidationError):
        return facts_from_rows(rows)


def fold_rows(rows: list[FactRow], page: int, convert: object = fold_facts_from_rows) -> Book:
    book = Book()
    for start in range(0, len(rows), page):
        book.apply_facts(convert(rows[start : start + page]), last_hash="h")  # type: ignore[operator]
    return book


def as_rows(rows: list[FactRow]) -> list[FactRow]:
    """The rows themselves, as a rebuild folds them (the fold decodes what it folds)."""
    return rows


# the three ways a page reaches the fold: rows, facts with marks as text, facts decoded exactly
READS = pytest.mark.parametrize("convert", [as_rows, fold_facts_from_rows, facts_from_rows])
# the two that leave a mark the fold does not fold unread
LAZY_READS = pytest.mark.parametrize("convert", [as_rows, fold_facts_from_rows])


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
    same(fold_rows(rows, page, as_rows), applied)
    same(fold_rows(rows, page, facts_from_rows), applied)


@settings(max_examples=100, deadline=None)
@given(
    accounts=st.tuples(*[st.sampled_from([DEFAULT_ACCOUNT, "desk"])] * 2),
    events=events,
    page=st.integers(1, 9),
    data=st.data(),
)
def test_the_fast_path_across_accounts_and_from_a_snapshot(
    accounts: tuple[str, str], events: list[AnyEvent], page: int, data: st.DataObject
) -> None:
    records = Stamper().stamp_all([opened("a", accounts[0]), opened("b", accounts[1]), *events])
    applied = fold_records(records)
    applied.last_hash = "h"
    rows = rows_of(records)
    same(fold_rows(rows, page), applied)
    same(fold_rows(rows, page, as_rows), applied)
    # a book from positions.json (its sums decoded, not built) taking the rest of the log
    cut = data.draw(st.integers(0, len(records)), label="cut")
    resumed = decode_snapshot(encode_snapshot(fold_records(records[:cut]), T0))
    for start in range(cut, len(rows), page):
        resumed.apply_facts(rows[start : start + page], last_hash="h")
    if cut == len(records):
        resumed.last_hash = "h"
    # (positions.json keeps no list of skipped events: only those after it are known)
    assert resumed.skipped == [seq for seq in applied.skipped if seq > cut]
    resumed.skipped = applied.skipped
    same(resumed, applied)
    assert resumed.accounts == applied.accounts
    assert resumed.summary(accounts[1]) == applied.summary(accounts[1])


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


@LAZY_READS
def test_a_superseded_marks_numbers_are_not_parsed(convert: object) -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = with_body(rows_of(records), 2, b'"7"', b'"not a number"')
    assert isinstance(decode_for_fold(rows[1][3]), MarkText)
    expected = fold_records(records)
    expected.last_hash = "h"
    same(fold_rows(rows, 5, convert), expected)  # the mark at 2 is superseded by 3: never folded


@READS
def test_a_folded_mark_that_is_no_number_is_named_by_its_seq(convert: object) -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = with_body(rows_of(records), 3, b'"8"', b'"not a number"')
    with pytest.raises(IntegrityError) as caught:
        fold_rows(rows, 5, convert)
    assert caught.value.seq == 3


@READS
def test_a_margin_kept_from_an_earlier_mark_is_parsed_and_named_by_its_seq(convert: object) -> None:
    # the last mark reports no margin, so the run keeps the one reported at seq 2
    records = Stamper().stamp_all([opened("a"), mark("7", margin="9"), mark("8")])
    expected = fold_records(records)
    expected.last_hash = "h"
    rows = rows_of(records)
    same(fold_rows(rows, 5, convert), expected)
    assert expected.open["a"].real_initial_margin == Decimal(9)
    with pytest.raises(IntegrityError) as caught:
        fold_rows(with_body(rows, 2, b'"9"', b'"9 dollars"'), 5, convert)
    assert caught.value.seq == 2


def test_a_page_whose_mark_has_a_float_is_decoded_exactly() -> None:
    records = Stamper().stamp_all([opened("a"), mark("7"), mark("8")])
    rows = with_body(rows_of(records), 3, b'"8"', b"8.50")
    book = fold_rows(rows, 5)
    assert book.open["a"].current_price == Decimal("8.50")  # as msgspec reads 8.50 into a Decimal
    assert fold_rows(rows, 5, as_rows).open["a"].current_price == Decimal("8.50")
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
    with pytest.raises(IntegrityError) as caught:
        fold_rows(rows, 5, as_rows)
    assert caught.value.seq == 2


def test_an_accounts_sums_apart_from_the_fleets_are_settled_apart() -> None:
    """One account whose sums are not the fleet's (a positions.json from before accounts, say)
    gets its own flows, not a copy of the fleet's sums."""
    records = Stamper().stamp_all(
        [
            opened("a"),
            FundingRecorded(position_id="a", amount=Decimal("-3.5"), execution_id="f"),
            PositionClosed(
                position_id="a", qty=Decimal("0.5"), price=Decimal(1), realized_pnl=Decimal(7)
            ),
        ]
    )

    def start() -> Book:
        book = Book()
        book.acc.equity = book.acc.peak_equity = Decimal(100)
        book.acc.closed_trades = 4
        return book

    applied = start()
    applied.apply_all(records)
    fast = start()
    fast.apply_facts(fold_facts_from_rows(rows_of(records)), last_hash=records[-1].hash)
    assert fast.acc == applied.acc
    assert fast.accounts == applied.accounts
    assert fast.accounts[DEFAULT_ACCOUNT] != fast.acc


@settings(max_examples=50, deadline=None)
@given(events=events, page=st.integers(1, 9))
def test_a_log_of_the_first_schema_folds_as_its_upcast_events(
    events: list[AnyEvent], page: int
) -> None:
    """Schema 1 knew no accounts: its bodies have none, and its marks read as text too."""
    records = Stamper().stamp_all([opened("a"), opened("b"), *events])
    expected = fold_records(records)
    expected.last_hash = "h"
    first: list[FactRow] = []
    for seq, at, _, body in rows_of(records):
        raw = msgspec.json.decode(body)
        if raw["type"] == "PositionOpened":
            del raw["account"]
        first.append((seq, at, 1, msgspec.json.encode(raw)))
    same(fold_rows(first, page), expected)
    same(fold_rows(first, page, as_rows), expected)
    same(fold_rows(first, page, facts_from_rows), expected)
    for _, _, _, body in first:
        if b'"type":"PositionMarked"' in body:
            assert isinstance(decode_for_fold_at(body, 1), MarkText)  # no upcaster changes a mark
