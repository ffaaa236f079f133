"""A mark of exactly its declared types skips the decoder's round trip
(`ledger.service._plain_mark`), as do the events of a position's own commands
(`_plain_event`); anything else still takes it and is refused as before."""

from __future__ import annotations

import typing
from decimal import Decimal
from pathlib import Path

import anyio
import msgspec
import pytest

from ledger import codec
from ledger.codec import decode_event, encode_event, ensure_decodable
from ledger.commands import MarkPosition
from ledger.errors import InvalidValue
from ledger.events import PartialExitRecorded, PositionClosed, PositionMarked, PositionOpened
from ledger.service import (
    _PLAIN_HIGH,
    _PLAIN_LOW,
    Ledger,
    _plain_event,
    _plain_mark,
    mark_command,
)
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side, Source, bounded, identifier, positive
from projections.book import fold_records

pytestmark = pytest.mark.anyio


class Number(Decimal):
    """A Decimal subclass: mark_command and check_command let it by, msgspec cannot write it."""


class Text(str):
    """A str subclass: the same."""


def test_the_plain_exponents_are_those_of_bounded_numbers_and_inside_the_codecs_range() -> None:
    assert codec._SAFE_LOW <= _PLAIN_LOW and _PLAIN_HIGH <= codec._SAFE_HIGH
    for text in ["1e-12", "1.5e-12", "0.001", "1", "999999999999999.99", "1e15", "-1e15"]:
        assert _PLAIN_LOW <= bounded("x", Decimal(text)).adjusted() <= _PLAIN_HIGH


NUMBERS: list[object] = [
    None, Decimal(0), Decimal("-0"), Decimal("1.5"), Decimal("-3"), Decimal("1e-12"),
    Decimal("1e15"), Decimal("123456789.123456789"), Decimal("1e-13"), Decimal("1e16"),
    Decimal("1e-101"), Decimal("1e31"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"),
    Number("2.5"), 3, 2.5, "4", True,
]  # fmt: skip


def test_a_plain_mark_is_exactly_one_the_decoder_reads_back_as_written() -> None:
    """Every mark _plain_mark passes, ensure_decodable passes and decodes to an equal event;
    a mark of any other type (a subclass, an int, a float, a str number), or out of range, is
    not plain."""
    plain = 0
    for position_id in ["p", "pos_\u00e9\x00", Text("p")]:
        for number in NUMBERS:
            for field in ["mark_price", "unrealized_pnl", "contracts", "initial_margin"]:
                for source in [Source.BOT, Source.EXCHANGE, "bot"]:
                    for opened in [None, 1700000000000]:
                        fields: dict[str, object] = {
                            "position_id": position_id,
                            "mark_price": Decimal(7),
                            field: number,
                            "source": source,
                            "exchange_opened_ms": opened,
                        }
                        mark = PositionMarked(**fields)  # type: ignore[arg-type]
                        if not _plain_mark(mark):
                            continue
                        plain += 1
                        ensure_decodable(mark)
                        back = decode_event(encode_event(mark))
                        assert type(back) is PositionMarked and back == mark
                        assert type(position_id) is str and type(source) is Source
                        assert opened is None
                        if number is None:
                            assert field != "mark_price"
                        else:
                            assert type(number) is Decimal and number.is_finite()
                            assert not number or Decimal("1e-12") <= abs(number) <= Decimal("1e15")
    assert plain > 50
    other = PositionOpened(
        position_id="p",
        symbol="X",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(1),
        leverage=1,
    )
    assert not _plain_mark(other)  # only marks


async def test_a_mark_of_a_subclass_is_refused_alone_among_concurrent_marks(
    db_path: Path,
) -> None:
    """A Decimal subclass price, a str subclass id: both pass mark_command, neither is plain,
    so the decoder's round trip refuses each with InvalidValue (without the guard the store's
    encoder would fail them as a StoreError) while the other marks of the group commit."""
    async with Ledger(db_path) as ledger:
        opened = await ledger.open_position(
            "BTC/USDT:USDT", "buy", entry_price=100, notional=500, leverage=5
        )
        pid = opened.position_id
        calls: list[tuple[object, object]] = [(pid, Decimal(100 + i)) for i in range(40)]
        calls[7] = (pid, Number(3))
        calls[23] = (Text(pid), Decimal(5))
        outcomes: list[object] = [None] * len(calls)

        async def mark(i: int) -> None:
            position_id, price = calls[i]
            try:
                outcomes[i] = await ledger.mark(position_id, price)  # type: ignore[arg-type]
            except Exception as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tasks:
            for i in range(len(calls)):
                tasks.start_soon(mark, i)
        refused = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
        assert refused == [7, 23], outcomes
        assert all(isinstance(outcomes[i], InvalidValue) for i in refused), outcomes
        live = ledger.book
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        assert (await store.verify_chain()).events == (await store.head()).seq
        log = await store.read()
    finally:
        await store.close()
    marks = [r.event.mark_price for r in log if isinstance(r.event, PositionMarked)]
    assert marks == [price for i, (_, price) in enumerate(calls) if i not in (7, 23)]
    assert all(type(m) is Decimal for m in marks)
    folded = fold_records(log)
    assert live.open == folded.open and live.last_hash == folded.last_hash


def _reference_mark(position_id: object, price: object) -> MarkPosition | str:
    """mark_command's checks written out field by field (no fast path): the command, or the
    field it refuses."""
    try:
        return MarkPosition(
            position_id=identifier("position_id", position_id),
            mark_price=positive("price", price),
        )
    except InvalidValue as refused:
        return refused.field


def test_mark_commands_fast_path_gives_what_the_field_by_field_checks_give() -> None:
    """mark_command takes a Decimal price alone in one test: for every id and price, the same
    command or the same refusal as each field checked on its own (identifier, positive)."""
    ids: list[object] = ["p", "pos_1", " p ", "", " ", "\t\n", "\u3000", "\x00", Text("p"), 7]
    prices: list[object] = [
        Decimal("1e-12"), Decimal("1e-13"), Decimal("0.99e-12"), Decimal("1e15"),
        Decimal("1.000000000000001e15"), Decimal("1e16"), Decimal(0), Decimal("-0"),
        Decimal(-5), Decimal("100.25"), Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity"),
        Decimal("Infinity"), Number("5"), Number("1e16"), 5, "5", 5.5, True,
    ]  # fmt: skip
    for position_id in ids:
        for price in prices:
            expected = _reference_mark(position_id, price)
            try:
                got: MarkPosition | str = mark_command(position_id, price)  # type: ignore[arg-type]
            except InvalidValue as refused:
                got = refused.field
            assert got == expected, (position_id, price)
            if isinstance(got, MarkPosition):
                assert isinstance(expected, MarkPosition)
                assert type(got.mark_price) is type(expected.mark_price)
                assert type(got.position_id) is type(expected.position_id)


# every value tried in each field of an event (a field takes those of its type and the rest)
VALUES: list[object] = [
    *NUMBERS, "", "text", "pos_\u00e9", "\ud800", Text("t"), Side.BUY, Source.EXCHANGE, False,
    0, 2, 2**53 - 1, 2**53, -(2**53), 2**64, 5.0,
]  # fmt: skip
GOOD = {
    PositionOpened: {
        "position_id": "pos_1",
        "symbol": "SOLUSDT",
        "side": Side.SELL,
        "qty": Decimal(5),
        "entry_price": Decimal("100.5"),
        "leverage": 5,
    },
    PartialExitRecorded: {
        "position_id": "pos_1",
        "qty": Decimal(2),
        "price": Decimal(110),
        "realized_pnl": Decimal("-20.25"),
    },
    PositionClosed: {
        "position_id": "pos_1",
        "qty": Decimal(3),
        "price": Decimal(105),
        "realized_pnl": Decimal(15),
    },
}


@pytest.mark.parametrize("cls", list(GOOD), ids=lambda cls: cls.__name__)
def test_a_plain_event_is_exactly_one_the_decoder_reads_back(cls: type[PositionOpened]) -> None:
    """Every event of a position's own commands that _plain_event passes, each field tried
    with every value, ensure_decodable passes and decodes to an equal event of the same
    field types; a field of another type than declared (a subclass, a bool for an int, an
    enum's text), a number out of range, a str that is not ASCII, is not plain."""
    plain = 0
    fields = [field.name for field in msgspec.structs.fields(cls)]
    for name in fields:
        for value in VALUES:
            try:
                event = cls(**{**GOOD[cls], name: value})  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if not _plain_event(event):
                continue
            plain += 1
            ensure_decodable(event)
            back = decode_event(encode_event(event))
            assert type(back) is cls and back == event
            assert [type(getattr(back, f)) for f in fields] == [
                type(getattr(event, f)) for f in fields
            ]
            kind = type(value)
            if kind is Decimal:
                assert value.is_finite()  # type: ignore[attr-defined]
                assert not value or Decimal("1e-12") <= abs(value) <= Decimal("1e15")  # type: ignore[arg-type]
            elif kind is str:
                assert value.isascii()  # type: ignore[attr-defined]
            elif kind is int:
                assert abs(value) < 2**53  # type: ignore[arg-type]
            else:
                assert kind in (type(None), bool, Side, Source)
    assert plain > 3 * len(fields)
    assert _plain_event(cls(**GOOD[cls]))  # type: ignore[arg-type]


class Odd:
    """No type any event declares: msgspec cannot write it."""


@pytest.mark.parametrize("cls", list(GOOD), ids=lambda cls: cls.__name__)
def test_every_field_of_a_position_event_is_looked_at(cls: type[PositionOpened]) -> None:
    """Each field of each event _plain_event passes on its own is checked by it (also one
    added to the event later): an object of no declared type in any one field, or None in
    any field that does not allow it, makes the event not plain."""
    assert _plain_event(cls(**GOOD[cls]))  # type: ignore[arg-type]
    for field in msgspec.structs.fields(cls):
        odd = cls(**{**GOOD[cls], field.name: Odd()})  # type: ignore[arg-type]
        assert not _plain_event(odd), field.name
        with pytest.raises(InvalidValue):
            ensure_decodable(odd)
        allowed = typing.get_args(field.type) or (field.type,)
        if type(None) not in allowed:
            missing = cls(**{**GOOD[cls], field.name: None})  # type: ignore[arg-type]
            assert not _plain_event(missing), field.name


async def test_an_open_with_text_the_codec_cannot_write_is_refused_as_before(
    db_path: Path,
) -> None:
    """A lone surrogate in a reason, a symbol or an id passes the builders (a str), is not
    plain, and the decoder's round trip refuses it with InvalidValue, storing nothing (without
    the guard the store's encoder would fail it as a StoreError); text beyond ASCII that the
    codec does write is stored as given."""
    async with Ledger(db_path) as ledger:
        for symbol, fields in (
            ("SOLUSDT", {"open_reason": "ML \ud800"}),
            ("SOL\udfffUSDT", {}),
            ("SOLUSDT", {"position_id": "pos_\ud800"}),
        ):
            with pytest.raises(InvalidValue):
                await ledger.open_position(
                    symbol,
                    "buy",
                    entry_price=100,
                    qty=5,
                    leverage=5,
                    **fields,
                )
        assert ledger.last_seq == 0
        opened = await ledger.open_position(
            "SOLUSDT", "buy", entry_price=100, qty=5, leverage=5, open_reason="stop \u00e9 \u2028"
        )
        closed = await ledger.close_position(opened.position_id, price=101, reason="\u6b62\u640d")
    assert closed.close_reason == "\u6b62\u640d"
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        log = await store.read()
    finally:
        await store.close()
    assert fold_records(log).closed[opened.position_id] == closed
    assert log[0].event.open_reason == "stop \u00e9 \u2028"  # type: ignore[union-attr]
