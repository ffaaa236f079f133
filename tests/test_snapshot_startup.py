"""positions.json: start-up from snapshot + tail, detection of bad snapshots, format, cadence."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from ledger import snapshot_file
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import Book, fold_records
from projections.snapshot import FORMAT_VERSION, decode_snapshot, encode_snapshot
from tests.strategies import T0

T = TypeVar("T")

pytestmark = pytest.mark.anyio

SAVED_AT = T0 + timedelta(days=30)
QUIET = Settings(snapshot_every_events=10_000, snapshot_every_seconds=3600)
SEED_SUMMARY_KEYS = {
    "active_positions",
    "used_margin",
    "unrealized_pnl",
    "closed_trades",
    "wins",
    "losses",
    "win_rate",
    "total_realized_pnl",
    "total_pnl",
    "balance",
    "available_balance",
}


def snapshot_path(db_path: Path) -> Path:
    return db_path.with_name("positions.json")


def same_book(a: Book, b: Book) -> bool:
    return encode_snapshot(a, SAVED_AT) == encode_snapshot(b, SAVED_AT)


async def trade(ledger: Ledger, round_: int) -> None:
    """A few of every kind of change: opens, marks, a partial exit, a close, a balance."""
    symbols = [f"A{round_}/USDT:USDT", f"B{round_}/USDT:USDT"]
    first = await ledger.open_position(symbols[0], "buy", entry_price=100, leverage=5, notional=500)
    second = await ledger.open_position(symbols[1], "sell", entry_price=50, leverage=3, qty=4)
    await ledger.mark(first.position_id, 110)
    await ledger.mark(second.position_id, 45, unrealized_pnl=19.5)
    await ledger.register_partial_exit(first.position_id, notional=150, price=110)
    await ledger.close_position(second.position_id, price=44, reason="tp")
    await ledger.observe_balance(1000 + round_, 900)


async def full_fold(db_path: Path) -> Book:
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        return fold_records(await store.read())
    finally:
        await store.close()


async def build_log(db_path: Path, rounds: int = 1) -> None:
    async with Ledger(db_path, settings=QUIET) as ledger:
        for round_ in range(rounds):
            await trade(ledger, round_)


class IterateSpy:
    """Records the after_seq of every read start-up makes of the log."""

    def __init__(self, store: SQLiteEventStore) -> None:
        self.after: list[int] = []
        # the fold's reads (start-up reads nothing else): a whole fold, its pages, the facts
        for name in ("fold_pages", "iterate_fold_facts", "iterate_facts"):
            setattr(store, name, self._spy(getattr(store, name)))

    def _spy(self, original: Callable[..., T]) -> Callable[..., T]:
        def iterate(*args: object, **kwargs: object) -> T:
            after_seq = kwargs.get("after_seq", 0)
            assert isinstance(after_seq, int)
            self.after.append(after_seq)
            return original(*args, **kwargs)

        return iterate


def spied_ledger(db_path: Path, settings: Settings = QUIET) -> tuple[Ledger, IterateSpy]:
    store = SQLiteEventStore(db_path)
    return Ledger(db_path, settings=settings, store=store), IterateSpy(store)


def read_snapshot(db_path: Path) -> Book:
    return decode_snapshot(snapshot_path(db_path).read_bytes())


# -- trusted snapshots ---------------------------------------------------------------------


async def test_start_up_uses_the_snapshot(db_path: Path) -> None:
    await build_log(db_path)
    saved = read_snapshot(db_path)
    assert saved.last_seq > 0
    ledger, spy = spied_ledger(db_path)
    async with ledger:
        assert ledger.rebuilt_on_start is False
        assert spy.after == [saved.last_seq]  # only the tail (empty here) was read
        assert same_book(ledger.book, await full_fold(db_path))


async def test_stale_snapshot_is_snapshot_plus_tail_not_a_rebuild(db_path: Path) -> None:
    async with Ledger(db_path, settings=QUIET) as ledger:
        await trade(ledger, 0)
        await ledger.write_snapshot()
        stale_seq = ledger.last_seq
        stale = snapshot_path(db_path).read_bytes()
        await trade(ledger, 1)
        await trade(ledger, 2)
        head = ledger.last_seq
    snapshot_path(db_path).write_bytes(stale)  # an older snapshot of this same log

    ledger, spy = spied_ledger(db_path)
    async with ledger:
        assert ledger.rebuilt_on_start is False
        assert spy.after == [stale_seq]
        assert ledger.last_seq == head > stale_seq
        assert same_book(ledger.book, await full_fold(db_path))
        # and the ledger keeps working from there
        await trade(ledger, 3)
    assert same_book(read_snapshot(db_path), await full_fold(db_path))


async def test_empty_log_and_empty_snapshot(db_path: Path) -> None:
    async with Ledger(db_path, settings=QUIET) as ledger:
        assert ledger.rebuilt_on_start is True  # no file yet
        assert ledger.last_seq == 0
    async with Ledger(db_path, settings=QUIET) as ledger:
        assert ledger.rebuilt_on_start is False
        assert ledger.active_positions() == []


# -- untrusted snapshots: detected, rebuilt, rewritten ---------------------------------------


def _missing(path: Path, _other: Path) -> None:
    path.unlink()


def _garbage(path: Path, _other: Path) -> None:
    path.write_bytes(os.urandom(64) + b"\x00\xff not json")


def _empty(path: Path, _other: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, _other: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    document = json.loads(path.read_bytes())
    change(document)
    path.write_text(json.dumps(document))


def _hash_edited(path: Path, _other: Path) -> None:
    _edit(path, lambda d: d.update(last_hash="f" * 64))


def _ahead_of_log(path: Path, _other: Path) -> None:
    _edit(path, lambda d: d.update(last_seq=int(str(d["last_seq"])) + 5))


def _wrong_format_version(path: Path, _other: Path) -> None:
    _edit(path, lambda d: d.update(format_version=FORMAT_VERSION + 1))


def _seed_format(path: Path, _other: Path) -> None:
    """The seed's own positions.json: no seq or hash to check against the log."""
    path.write_text(
        json.dumps(
            {
                "open_positions": {},
                "closed_positions": [],
                "session_stats": {"total_trades": 45, "wins": 27, "losses": 18},
                "last_saved": "2025-01-07T16:45:00",
            }
        )
    )


def _foreign(path: Path, other: Path) -> None:
    """A snapshot of another ledger's log, of the same length."""
    path.write_bytes(snapshot_path(other).read_bytes())


CORRUPTIONS = {
    "missing": _missing,
    "garbage": _garbage,
    "empty": _empty,
    "truncated": _truncated,
    "hash edited": _hash_edited,
    "ahead of the log": _ahead_of_log,
    "format version": _wrong_format_version,
    "seed format": _seed_format,
    "foreign": _foreign,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_bad_snapshot_is_detected_and_rebuilt(
    db_path: Path, tmp_path: Path, corruption: str, caplog: pytest.LogCaptureFixture
) -> None:
    await build_log(db_path, rounds=2)
    other = tmp_path / "other" / "ledger.db"
    await build_log(other, rounds=2)
    assert read_snapshot(other).last_seq == read_snapshot(db_path).last_seq
    CORRUPTIONS[corruption](snapshot_path(db_path), other)

    caplog.set_level(logging.INFO, logger="ledger")
    ledger, spy = spied_ledger(db_path)
    async with ledger:
        assert ledger.rebuilt_on_start is True
        assert spy.after == [0]  # the whole log was read
        expected = await full_fold(db_path)
        assert same_book(ledger.book, expected)
        # rewritten at start-up, before anything else happens, and valid now
        rewritten = read_snapshot(db_path)
        head = await ledger.store.head()
        assert (rewritten.last_seq, rewritten.last_hash) == (head.seq, head.hash)
        assert same_book(rewritten, expected)
    if corruption != "missing":
        assert any(r.levelno == logging.WARNING for r in caplog.records), "no warning logged"

    again, spy = spied_ledger(db_path)
    async with again:
        assert again.rebuilt_on_start is False
        assert spy.after == [head.seq]


async def test_snapshot_with_an_edited_figure_is_detected_and_rebuilt(db_path: Path) -> None:
    """A snapshot that still parses, with its seq and hash intact, but a figure changed
    (a flipped digit, a hand edit) must not become the book: it is corrupt."""
    await build_log(db_path)
    path = snapshot_path(db_path)
    document = json.loads(path.read_bytes())
    position_id = next(iter(document["open_positions"]))
    document["open_positions"][position_id]["realized_pnl"] += 1000
    path.write_text(json.dumps(document))
    async with Ledger(db_path, settings=QUIET) as ledger:
        assert same_book(ledger.book, await full_fold(db_path))
        assert ledger.rebuilt_on_start is True


# -- the file ----------------------------------------------------------------------------------


async def test_positions_json_keeps_the_seed_keys(db_path: Path) -> None:
    async with Ledger(db_path, settings=QUIET) as ledger:
        await trade(ledger, 0)
        open_ids = [p.position_id for p in ledger.active_positions()]
        closed_ids = [p.position_id for p in ledger.closed_positions()]
        head = await ledger.store.head()
    document = json.loads(snapshot_path(db_path).read_bytes())
    assert {
        "open_positions",
        "closed_positions",
        "session_stats",
        "last_saved",
        "last_seq",
        "last_hash",
        "format_version",
    } <= set(document)
    assert list(document["open_positions"]) == open_ids
    for position_id, position in document["open_positions"].items():
        assert position["position_id"] == position_id
        for key in ("symbol", "side", "entry_price", "position_size", "leverage", "partial_exits"):
            assert key in position
    assert isinstance(document["closed_positions"], list)
    assert [p["position_id"] for p in document["closed_positions"]] == closed_ids
    assert set(document["session_stats"]) >= SEED_SUMMARY_KEYS
    assert isinstance(document["session_stats"]["total_pnl"], int | float)  # a JSON number
    datetime.fromisoformat(document["last_saved"])
    assert (document["last_seq"], document["last_hash"]) == (head.seq, head.hash)
    assert document["format_version"] == FORMAT_VERSION
    partial = document["open_positions"][open_ids[0]]["partial_exits"][0]
    assert {"timestamp", "size", "price", "realized_pnl", "reason"} <= set(partial)
    assert partial["size"] == 150


async def test_positions_json_is_private(db_path: Path) -> None:
    snapshot_path(db_path).write_bytes(b"{}")  # someone left a world-readable file
    snapshot_path(db_path).chmod(0o644)
    async with Ledger(db_path, settings=QUIET) as ledger:
        await trade(ledger, 0)
        assert stat.S_IMODE(snapshot_path(db_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(snapshot_path(db_path).stat().st_mode) == 0o600
    leftovers = [p.name for p in db_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


class WriteSpy:
    """Counts positions.json writes and lets a test wait for one without sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seqs: list[int] = []
        self.written = threading.Event()
        original = snapshot_file.write_atomic

        def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
            original(path, data, mode=mode)
            self.seqs.append(decode_snapshot(data).last_seq)
            self.written.set()

        # the ledger calls the name it imported: patch it there
        monkeypatch.setattr("ledger.service.write_atomic", write_atomic)

    async def wait(self) -> None:
        done = await anyio.to_thread.run_sync(lambda: self.written.wait(10))
        assert done, "no snapshot was written"
        self.written.clear()


async def test_snapshot_every_n_events_not_per_event(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WriteSpy(monkeypatch)
    every = Settings(snapshot_every_events=5, snapshot_every_seconds=3600)
    async with Ledger(db_path, settings=every) as ledger:
        await spy.wait()  # the start-up snapshot of an empty log
        assert spy.seqs == [0]
        ids = [
            (
                await ledger.open_position(f"S{i}", "buy", entry_price=10, leverage=2, qty=1)
            ).position_id
            for i in range(3)
        ]
        await ledger.mark(ids[0], 11)  # 4 events: fewer than 5
        assert read_snapshot(db_path).last_seq == 0
        assert spy.seqs == [0]
        await ledger.mark(ids[1], 12)  # the 5th
        await spy.wait()
        assert spy.seqs == [0, 5]
        assert read_snapshot(db_path).last_seq == 5
        for _ in range(3):
            await ledger.mark(ids[2], 13)
        assert spy.seqs == [0, 5]
        assert read_snapshot(db_path).last_seq == 5
    # and on close
    assert spy.seqs == [0, 5, 8]
    assert read_snapshot(db_path).last_seq == 8
    assert same_book(read_snapshot(db_path), await full_fold(db_path))


async def test_no_write_on_close_when_nothing_changed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await build_log(db_path)
    spy = WriteSpy(monkeypatch)
    async with Ledger(db_path, settings=QUIET) as ledger:
        assert ledger.rebuilt_on_start is False
    assert spy.seqs == []


async def test_write_snapshot_on_demand(db_path: Path) -> None:
    async with Ledger(db_path, settings=QUIET) as ledger:
        await trade(ledger, 0)
        assert read_snapshot(db_path).last_seq == 0
        path = await ledger.write_snapshot()
        assert path == snapshot_path(db_path)
        assert read_snapshot(db_path).last_seq == ledger.last_seq
        assert same_book(read_snapshot(db_path), ledger.book)
