"""Closed positions of a snapshot decoded on first use: the book reads exactly as a decoded one.

The property test (test_properties) checks snapshot + tail == rebuild on drawn histories; these
pin what start-up relies on: ids answer without decoding, closes folded before the decode keep
their place, one set of positions however many threads ask, the next snapshot written without
decoding, and a start-up that reads no closed history does not decode it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import ChainMap
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import Recorded
from ledger.errors import PositionAlreadyClosed, SnapshotError
from ledger.events import AnyEvent, FundingRecorded, PositionClosed, PositionOpened
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import Side
from projections._lazy_closed import LazyClosed
from projections.book import Book, fold_records
from projections.positions import Position
from projections.snapshot import _UNSIGNED, _sign, decode_snapshot, encode_snapshot
from tests.strategies import T0, Stamper

QUIET = Settings(snapshot_every_events=10_000, snapshot_every_seconds=3600)


def opened(pid: str, price: int = 100) -> PositionOpened:
    return PositionOpened(
        position_id=pid,
        symbol="SOL/USDT:USDT",
        side=Side.BUY,
        qty=Decimal("2"),
        entry_price=Decimal(price),
        leverage=5,
    )


def closed(pid: str, pnl: str) -> PositionClosed:
    return PositionClosed(
        position_id=pid, qty=Decimal("2"), price=Decimal("101"), realized_pnl=Decimal(pnl)
    )


def trades(ids: list[str]) -> list[AnyEvent]:
    events: list[AnyEvent] = []
    for n, pid in enumerate(ids):
        events += [opened(pid), closed(pid, f"{n - 1}.5")]
    return events


def lazy(book: Book) -> LazyClosed:
    assert isinstance(book.closed, LazyClosed)
    return book.closed


class Counting:
    """Wraps a LazyClosed's decoder: how many times the closed positions were decoded."""

    def __init__(self, mapping: LazyClosed) -> None:
        self.calls = 0
        self.inner = mapping._decode
        mapping._decode = self

    def __call__(self, data: bytes) -> list[Position]:
        self.calls += 1
        return self.inner(data)


def test_ids_len_and_order_answer_without_decoding() -> None:
    stamper = Stamper()
    records = stamper.stamp_all([*trades(["a", "b", "c"]), opened("d")])
    book = decode_snapshot(encode_snapshot(fold_records(records), T0))
    closed_ = lazy(book)
    counting = Counting(closed_)
    assert "b" in closed_ and "d" not in closed_ and "zz" not in closed_
    assert closed_.get("zz") is None
    assert len(closed_) == 3 and list(closed_) == ["a", "b", "c"]
    assert book.get("d") is not None  # open: found without touching closed history
    assert counting.calls == 0 and not closed_.decoded
    # the first read of a position decodes them all, once
    assert closed_["b"].realized_pnl == Decimal("0.5")
    assert [p.realized_pnl for p in closed_.values()] == [
        Decimal(s) for s in ("-1.5", "0.5", "1.5")
    ]
    assert counting.calls == 1 and closed_.decoded


def test_closes_folded_before_the_decode_read_as_a_dict_would() -> None:
    """A tail folded onto the snapshot before anything reads closed history: new closes go
    after the snapshot's, an amended one (funding after its close) keeps its place."""
    stamper = Stamper()
    head = stamper.stamp_all(trades(["a", "b"]))
    tail = stamper.stamp_all(
        [
            *trades(["c"]),
            FundingRecorded(position_id="a", amount=Decimal("-0.25"), execution_id="f1"),
            *trades(["d"]),
        ]
    )
    resumed = decode_snapshot(encode_snapshot(fold_records(head), T0))
    counting = Counting(lazy(resumed))
    resumed.apply_all(tail[:2])  # c opened and closed: no decode needed
    assert counting.calls == 0
    resumed.apply_all(tail[2:])  # funding on closed a: reads it, so decodes
    assert counting.calls == 1

    rebuilt = fold_records(head + tail)
    assert list(resumed.closed) == list(rebuilt.closed) == ["a", "b", "c", "d"]
    assert dict(resumed.closed) == dict(rebuilt.closed)
    assert resumed.closed["a"].funding == Decimal("-0.25")
    assert encode_snapshot(resumed, T0) == encode_snapshot(rebuilt, T0)


def test_writes_before_the_decode_are_kept_by_it() -> None:
    stamper = Stamper()
    book = decode_snapshot(encode_snapshot(fold_records(stamper.stamp_all(trades(["a"]))), T0))
    closed_ = lazy(book)
    extra = fold_records(Stamper().stamp_all(trades(["x", "a"])))
    closed_["x"] = extra.closed["x"]
    closed_["a"] = extra.closed["a"]  # replaces the snapshot's a, in a's place
    assert not closed_.decoded and len(closed_) == 2 and list(closed_) == ["a", "x"]
    assert closed_["a"] == extra.closed["a"] and not closed_.decoded
    assert dict(closed_.items()) == {"a": extra.closed["a"], "x": extra.closed["x"]}
    del closed_["x"]
    assert list(closed_) == ["a"] and "x" not in closed_


def test_threads_reading_at_once_all_see_the_positions_stored_first() -> None:
    ids = [f"p{n}" for n in range(300)]
    book = decode_snapshot(encode_snapshot(fold_records(Stamper().stamp_all(trades(ids))), T0))
    closed_ = lazy(book)
    counting = Counting(closed_)
    start = threading.Barrier(4)
    seen: list[list[Position]] = []

    def read() -> None:
        start.wait()
        seen.append([closed_[pid] for pid in ids])

    workers = [threading.Thread(target=read) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert 1 <= counting.calls <= 4 and closed_.decoded
    assert len(seen) == 4 and all(
        all(a is b for a, b in zip(run, seen[0], strict=True)) for run in seen
    )


def test_a_signed_file_whose_closed_positions_do_not_decode_raises_a_snapshot_error() -> None:
    """Only a file re-signed by hand gets here (the checksum covers every byte): its closed
    history fails as a SnapshotError when first read, not as some other error."""
    data = encode_snapshot(fold_records(Stamper().stamp_all(trades(["a"]))), T0)
    forged = data.replace(b'"leverage": 5', b'"leverage": "five"', 1)
    unsigned = _sign(forged, _UNSIGNED)
    book = decode_snapshot(_sign(unsigned, hashlib.sha256(unsigned).hexdigest()))
    assert "a" in book.closed
    with pytest.raises(SnapshotError):
        book.closed["a"]


# -- the next snapshot, written without decoding ------------------------------------------------


def resumed_by_commits(head: list[Recorded], tail: list[Recorded]) -> Book:
    """The snapshot of head, then tail one commit at a time as the Ledger folds it: each
    commit on a successor of the book before (closed history in layers)."""
    book = decode_snapshot(encode_snapshot(fold_records(head), T0))
    for record in tail:
        book = book.successor()
        book.apply(record)
    return book


@pytest.mark.parametrize("closes_since", [0, 3, 200])
def test_the_next_snapshot_copies_undecoded_closed_history(closes_since: int) -> None:
    """Closes since the snapshot are appended to its closed history's JSON: the bytes a
    decoded book writes, and nothing decoded (200 closes: the layers were merged too)."""
    stamper = Stamper()
    head = stamper.stamp_all(trades([f"h{n}" for n in range(40)]))
    tail = stamper.stamp_all([*trades([f"t{n}" for n in range(closes_since)]), opened("o")])
    book = resumed_by_commits(head, tail)
    base = book.closed.maps[-1] if isinstance(book.closed, ChainMap) else book.closed
    assert isinstance(base, LazyClosed)
    counting = Counting(base)
    written = encode_snapshot(book, T0)
    assert counting.calls == 0 and not base.decoded
    assert written == encode_snapshot(fold_records(head + tail), T0)
    assert decode_snapshot(written).closed.keys() == fold_records(head + tail).closed.keys()


def test_from_an_empty_closed_history_too() -> None:
    stamper = Stamper()
    head = stamper.stamp_all([opened("o")])
    tail = stamper.stamp_all(trades(["a", "b"]))
    book = resumed_by_commits(head, tail)
    assert encode_snapshot(book, T0) == encode_snapshot(fold_records(head + tail), T0)


def test_a_snapshot_after_a_closed_position_changed_is_written_decoded() -> None:
    stamper = Stamper()
    head = stamper.stamp_all(trades(["a", "b"]))
    tail = stamper.stamp_all(
        [FundingRecorded(position_id="b", amount=Decimal("1.25"), execution_id="f"), opened("c")]
    )
    book = resumed_by_commits(head, tail)
    assert encode_snapshot(book, T0) == encode_snapshot(fold_records(head + tail), T0)
    assert book.closed["b"].funding == Decimal("1.25")


# -- through the Ledger -----------------------------------------------------------------------


async def _trade(ledger: Ledger, n: int) -> str:
    position = await ledger.open_position(
        f"T{n}/USDT:USDT", "buy", entry_price=100, leverage=5, notional=500
    )
    await ledger.close_position(position.position_id, price=101 + n, reason="tp")
    return position.position_id


@pytest.mark.anyio
async def test_start_up_from_a_snapshot_decodes_no_closed_history(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    async with Ledger(db, settings=QUIET) as ledger:
        before = [await _trade(ledger, n) for n in range(5)]
        await ledger.write_snapshot()
        tail = [await _trade(ledger, n) for n in range(5, 8)]
        expected = {p.position_id: p for p in ledger.closed_positions()}
        assert list(expected) == before + tail

    async with Ledger(db, settings=QUIET) as ledger:
        assert ledger.rebuilt_on_start is False
        closed_ = lazy(ledger.book)
        assert not closed_.decoded  # the tail's opens and closes asked only for ids
        assert ledger.session_summary().closed_trades == 8
        with pytest.raises(PositionAlreadyClosed):
            await ledger.close_position(before[0], price=1)
        assert not closed_.decoded
        # and closed history reads in full once asked for, in order
        assert {p.position_id: p for p in ledger.closed_positions()} == expected
        assert closed_.decoded
        await _trade(ledger, 9)
        assert len(ledger.closed_positions()) == 9
