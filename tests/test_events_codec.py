"""Events and their bytes: round trips, no floats anywhere, and upcasting of old versions."""

from __future__ import annotations

import sqlite3
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

import ledger.codec as codec
from ledger.codec import decode_event, encode_event, event_type
from ledger.commands import AnyCommand, Limits
from ledger.envelope import GENESIS_HASH, NewEvent, Recorded, chain_hash
from ledger.events import (
    ACCOUNT_STREAM,
    AnyEvent,
    BalanceObserved,
    ExitAbandoned,
    ExitIntended,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
    stream_of,
)
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side, Source, to_micros
from projections.book import fold_records
from tests.strategies import T0, Stamper

D = Decimal

SAMPLES: list[AnyEvent] = [
    PositionOpened(
        position_id="p1",
        symbol="SOL/USDT:USDT",
        side=Side.SELL,
        qty=D("5.000"),
        entry_price=D("100.50"),
        leverage=5,
        source=Source.EXCHANGE,
        position_idx=2,
        real_initial_margin=D("100.1"),
        fee=D("0.3015"),
        confidence=D("0.77"),
        open_reason="ML BUY 77% | TF[15m:↑72%]",
        atr=D("2.3"),
        adx=D("28.5"),
        volatility=D("0.028"),
    ),
    PositionIncreased(
        position_id="p1",
        qty=D(1),
        price=D("99"),
        new_entry_price=D("100.25"),
        fee=D("0.05"),
        source=Source.BOT,
    ),
    PositionMarked(
        position_id="p1",
        mark_price=D("105.2"),
        unrealized_pnl=D("-23.5"),
        contracts=D(6),
        initial_margin=D("120.3"),
        source=Source.EXCHANGE,
    ),
    PartialExitRecorded(
        position_id="p1",
        qty=D("1.5"),
        price=D("110"),
        realized_pnl=D("-14.6"),
        fee=D("0.1"),
        reason="partial_exit_50_roe",
        source=Source.BOT,
        rule="roe>=50",
    ),
    FundingRecorded(position_id="p1", amount=D("-0.0123"), execution_id="exec-1"),
    ExitIntended(position_id="p1", rule="partial_exit_50_roe", qty=D("0.25"), order_link_id="pl1"),
    ExitAbandoned(position_id="p1", rule="partial_exit_50_roe", order_link_id="pl1", reason="x"),
    PositionClosed(
        position_id="p1",
        qty=D("4.5"),
        price=D("1E+2"),
        realized_pnl=D("0.00"),
        fee=D("0.2"),
        reason="stop",
        source=Source.EXCHANGE,
        pnl_estimated=True,
        exchange_ref="order-9",
    ),
    PnlAmended(
        position_id="p1",
        qty=D("0.5"),
        price=D("61000"),
        realized_pnl=D("9.3345"),
        estimated_pnl=D("1.00"),
        fee=D("0.33"),
        exchange_ref="ord-1:1736265600000:0.5",
    ),
    BalanceObserved(total=D("1000.123456789"), available=D("900"), currency="USDC"),
    HistoryImported(
        file_sha256="ab" * 32, file_name="positions.json", open_positions=2, closed_positions=40
    ),
    RulesConfigured(max_concurrent_positions=10, min_leverage=2, max_leverage=50),
]


def test_there_is_a_sample_of_every_event_kind() -> None:
    kinds = set(typing.get_args(AnyEvent))
    assert {type(sample) for sample in SAMPLES} == kinds


@pytest.mark.parametrize("event", SAMPLES, ids=event_type)
def test_every_event_round_trips(event: AnyEvent) -> None:
    body = encode_event(event)
    decoded = decode_event(body)
    assert decoded == event
    assert type(decoded) is type(event)
    assert encode_event(decoded) == body
    for field in msgspec.structs.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, Decimal):  # exact digits, not just an equal value
            assert str(getattr(decoded, field.name)) == str(value)
    assert msgspec.json.decode(body)["type"] == event_type(event) == type(event).__name__


@pytest.mark.parametrize("event", SAMPLES, ids=event_type)
def test_every_event_round_trips_in_an_envelope(event: AnyEvent) -> None:
    record = Stamper().stamp(event)
    again = msgspec.json.decode(msgspec.json.encode(record), type=Recorded)
    assert again == record
    assert record.stream == (ACCOUNT_STREAM if stream_of(event) == ACCOUNT_STREAM else "p1")


def test_every_event_kind_folds_through_a_rebuild() -> None:
    records = Stamper().stamp_all(SAMPLES)
    book = fold_records(records)
    assert book.skipped == []
    assert "p1" in book.closed
    position = book.closed["p1"]
    assert position.qty == D(6) - D("1.5")
    assert position.realized_pnl == (
        D("-0.3015") - D("0.05") + D("-14.6") + D("-0.0123") + (D("9.3345") - D("1.00"))
    )
    assert (book.balance, book.available) == (D("1000.123456789"), D(900))
    assert book.imported_files == {"ab" * 32: "positions.json"}


def test_events_are_frozen() -> None:
    event = SAMPLES[0]
    assert isinstance(event, PositionOpened)
    with pytest.raises(AttributeError):
        event.qty = D(1)  # type: ignore[misc]


def test_unknown_type_or_bad_field_does_not_decode() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type": "PositionVanished", "position_id": "p1"}')
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type": "PositionMarked", "position_id": "p1", "mark_price": [1]}')


# -- no floats ----------------------------------------------------------------------------------


def float_fields(tp: object) -> list[str]:
    """Paths to every float reachable from a type (struct fields, unions, containers)."""
    found: list[str] = []
    seen: set[type] = set()

    def walk(info: mi.Type, path: str) -> None:
        if isinstance(info, mi.FloatType):
            found.append(path)
        elif isinstance(info, mi.StructType):
            if info.cls in seen:
                return
            seen.add(info.cls)
            for field in info.fields:
                walk(field.type, f"{info.cls.__name__}.{field.name}")
        elif isinstance(info, mi.UnionType):
            for member in info.types:
                walk(member, path)
        elif isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            walk(info.item_type, f"{path}[]")
        elif isinstance(info, mi.TupleType):
            for item in info.item_types:
                walk(item, f"{path}[]")
        elif isinstance(info, mi.DictType):
            walk(info.key_type, f"{path}{{key}}")
            walk(info.value_type, f"{path}{{}}")
        elif isinstance(info, mi.Metadata):
            walk(info.type, path)

    # commands are an untagged union: inspect each member on its own
    for member in typing.get_args(tp) or (tp,):
        walk(mi.type_info(member), "")
    return found


class _Inner(msgspec.Struct):
    ratio: float | None


class _Outer(msgspec.Struct):
    qty: Decimal
    inner: list[_Inner]
    rates: dict[str, float]


def test_the_float_finder_finds_floats() -> None:
    assert float_fields(_Outer) == ["_Inner.ratio", "_Outer.rates{}"]
    assert float_fields(_Outer | int) == ["_Inner.ratio", "_Outer.rates{}"]


@pytest.mark.parametrize(
    "tp",
    [AnyEvent, AnyCommand, Limits, Recorded, NewEvent],
    ids=["events", "commands", "limits", "recorded", "new event"],
)
def test_no_event_or_command_has_a_float_field(tp: object) -> None:
    assert float_fields(tp) == []


def test_no_event_type_hint_mentions_float() -> None:
    for cls in typing.get_args(AnyEvent):
        hints = typing.get_type_hints(cls)
        assert not [name for name, hint in hints.items() if "float" in repr(hint)], cls


# -- upcasting ---------------------------------------------------------------------------------


def _rename_price(raw: dict[str, Any]) -> dict[str, Any]:
    """v0 PositionMarked called its mark `price`."""
    upgraded = dict(raw)
    upgraded["mark_price"] = upgraded.pop("price")
    return upgraded


OLD_MARK = b'{"type": "PositionMarked", "position_id": "p1", "price": "101.5"}'


def test_an_upcaster_turns_an_old_shape_into_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(codec.UPCASTERS, ("PositionMarked", 0), _rename_price)
    event = decode_event(OLD_MARK, 0)
    assert event == PositionMarked(position_id="p1", mark_price=D("101.5"))
    # other event types of version 0 pass through untouched
    old_balance = b'{"type": "BalanceObserved", "total": "5", "available": "4"}'
    assert decode_event(old_balance, 0) == BalanceObserved(total=D(5), available=D(4))


def test_upcasters_chain_across_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a version 2 in the code: a v0 body goes v0 -> v1 -> v2, a v1 body v1 -> v2."""

    def add_source(raw: dict[str, Any]) -> dict[str, Any]:
        return {**raw, "source": "exchange"}

    monkeypatch.setattr(codec, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(codec.UPCASTERS, ("PositionMarked", 0), _rename_price)
    monkeypatch.setitem(codec.UPCASTERS, ("PositionMarked", 1), add_source)
    upgraded = PositionMarked(position_id="p1", mark_price=D("101.5"), source=Source.EXCHANGE)
    assert decode_event(OLD_MARK, 0) == upgraded
    v1 = b'{"type": "PositionMarked", "position_id": "p1", "mark_price": "101.5"}'
    assert decode_event(v1, 1) == upgraded
    assert decode_event(encode_event(upgraded), 2) == upgraded


def test_without_its_upcaster_an_old_shape_does_not_decode() -> None:
    assert ("PositionMarked", 0) not in codec.UPCASTERS
    with pytest.raises(msgspec.ValidationError):
        decode_event(OLD_MARK, 0)


@pytest.mark.anyio
async def test_the_store_reads_an_old_row_through_its_upcaster(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(codec.UPCASTERS, ("PositionMarked", 0), _rename_price)
    store = SQLiteEventStore(db_path)
    await store.open()
    try:
        (first,) = await store.append(
            [NewEvent(stream="p1", event=SAMPLES[0], event_id="e1", occurred_at=T0)]
        )
        # a row written by an older release: schema_version 0, old field name, hashed as stored
        us = to_micros(T0)
        digest = chain_hash(
            first.hash,
            seq=2,
            stream="p1",
            version=2,
            event_id="old",
            occurred_us=us,
            recorded_us=us,
            schema_version=0,
            body=OLD_MARK,
        )
        conn = sqlite3.connect(db_path)
        conn.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
            (2, "p1", 2, "old", "PositionMarked", 0, us, us, OLD_MARK, digest),
        )
        conn.commit()
        conn.close()
        records = await store.read()
        assert records[1].event == PositionMarked(position_id="p1", mark_price=D("101.5"))
        assert records[1].schema_version == 0
        assert (await store.verify_chain()).last_hash == digest
        book = fold_records(records)
        assert book.open["p1"].current_price == D("101.5")
    finally:
        await store.close()
    assert digest != GENESIS_HASH
