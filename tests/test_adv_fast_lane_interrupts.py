"""Attack (adversary): an interrupt or an error raised inside each step of the write path's
fast lanes, on the real ledger and store:

- the manager's usual create from a plain thread (its short command build, `transact_blocking`
  without `_checked`, `GroupCommit.run_blocking` running the lone job where it is, unqueued,
  `_decide_one`): raised in the decision, in the staging (`StoreTransaction._stage_one`'s
  encoding) and in the fold of the job's events into the group's fork;
- a store's lone append of one event, from a plain thread (`run_blocking`, `_stage_appends`'
  one-event path) and from a task on a loop (`run_now`, the lone-append lane).

Each time: the caller hears the very exception (KeyboardInterrupt and SystemExit as themselves;
an ordinary exception as itself or a typed StoreError), nothing is stored (or, for an ordinary
exception in the lone-append lane, whose failure sends the append the general way, stored
once and said so), the writer role and
the queue are free again (no holder, nobody draining, nothing pending), and the same call made
again succeeds, leaving the live book equal to a fold of the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

import ledger.service
import ledger.store.base
from ledger.blocking import ThreadSafePositionManager
from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.events import PositionMarked
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import GroupCommit, WriterThread
from projections.book import Book, fold_records
from tests._interrupts import on_thread
from tests._workers import book_state

WATCHDOG = 60.0
SETTINGS = Settings(max_concurrent_positions=100)
RAISED: list[type[BaseException]] = [KeyboardInterrupt, SystemExit, RuntimeError]


class Once:
    """Wraps a function so that its first call made while `armed` raises `error` instead."""

    def __init__(self, real: Callable[..., Any], error: type[BaseException]) -> None:
        self.real, self.error = real, error
        self.armed = False
        self.fired = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            self.fired += 1
            raise self.error("injected")
        return self.real(*args, **kwargs)


def assert_free(writer: WriterThread, queue: GroupCommit[Any]) -> None:
    assert writer._holder is None
    assert not writer._role.locked(), "the writer role was left held"
    assert not queue._draining and not queue._pending, "the queue was left draining"


def heard_as_raised(heard: object, error: type[BaseException]) -> None:
    if error is RuntimeError:  # an ordinary exception: as itself, or typed
        assert isinstance(heard, RuntimeError | StoreError), heard
    else:
        assert type(heard) is error, heard


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    ) as opened:
        yield opened


def create(manager: ThreadSafePositionManager) -> str:
    return manager.thread_safe_create_position(
        symbol="XUSDT", side="long", entry_price=100, position_size=250, leverage=5
    )


@pytest.mark.parametrize("error", RAISED)
@pytest.mark.parametrize("step", ["decide", "stage", "fold"])
def test_an_interrupt_in_a_lone_blocking_create_fails_it_alone_and_frees_everything(
    manager: ThreadSafePositionManager,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    error: type[BaseException],
) -> None:
    ledger_ = manager.ledger
    assert on_thread(lambda: manager.thread_safe_create_position(
        symbol="WARMUSDT", side="short", entry_price=10, position_size=50, leverage=2
    ), WATCHDOG)  # fmt: skip
    if step == "decide":
        once = Once(ledger.service.decide_checked, error)  # type: ignore[attr-defined]
        monkeypatch.setattr(ledger.service, "decide_checked", once)
    elif step == "stage":
        once = Once(ledger.store.base.encode_into, error)  # type: ignore[attr-defined]
        monkeypatch.setattr(ledger.store.base, "encode_into", once)
    else:
        once = Once(Book.apply_all, error)

        def apply_all(book: Book, records: Any) -> None:
            once(book, records)

        monkeypatch.setattr(Book, "apply_all", apply_all)
    before = ledger_.last_seq
    once.armed = True
    heard = on_thread(lambda: create(manager), WATCHDOG)
    assert once.fired == 1
    heard_as_raised(heard, error)
    assert ledger_.last_seq == before
    assert_free(ledger_.store.writer, ledger_._queue())
    assert "XUSDT" not in {p.symbol for p in ledger_.book.open.values()}
    # the same call again: no duplicate left behind
    pid = on_thread(lambda: create(manager), WATCHDOG)
    assert isinstance(pid, str) and pid in ledger_.book.open
    assert ledger_.last_seq == before + 1
    assert_free(ledger_.store.writer, ledger_._queue())
    assert isinstance(manager.db_path, Path)
    log = anyio.run(stored_records, manager.db_path)
    assert book_state(ledger_.book) == book_state(fold_records(log))


async def stored_records(path: Path) -> list[Any]:
    store = SQLiteEventStore(path, read_only=True)
    await store.open()
    try:
        assert (await store.verify_chain()).events == (await store.head()).seq
        return await store.read()
    finally:
        await store.close()


def mark(n: int) -> NewEvent:
    return NewEvent(
        stream="s",
        event=PositionMarked(position_id="s", mark_price=Decimal(100 + n)),
        event_id=f"e{n}",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize("error", RAISED)
@pytest.mark.parametrize("caller", ["thread", "loop"])
def test_an_interrupt_staging_a_lone_one_event_append_stores_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caller: str, error: type[BaseException]
) -> None:
    once = Once(ledger.store.base.encode_into, error)  # type: ignore[attr-defined]
    monkeypatch.setattr(ledger.store.base, "encode_into", once)

    async def main() -> None:
        store = SQLiteEventStore(db_path)
        await store.open()
        try:
            await store.append([mark(0)])
            once.armed = True
            if caller == "thread":
                heard = await anyio.to_thread.run_sync(
                    lambda: on_thread(lambda: store.append_blocking([mark(1)]), WATCHDOG)
                )
            else:
                try:
                    heard = await store.append([mark(1)])
                except BaseException as exc:  # the injected one: what this caller hears
                    heard = exc
            assert once.fired == 1
            if error is RuntimeError and isinstance(heard, list):
                # an ordinary exception in the lone-append lane's staging sends the append the
                # general way (SQLiteEventStore._append_alone), which stages it again: stored
                # once, and said so
                assert [r.seq for r in heard] == [2]
                assert (await store.head()).seq == 2
            else:
                heard_as_raised(heard, error)
                assert (await store.head()).seq == 1
            assert_free(store.writer, store._append_queue())
            # the same event again, from each kind of caller: stored once
            (again,) = await anyio.to_thread.run_sync(lambda: store.append_blocking([mark(1)]))
            (twice,) = await store.append([mark(1)])
            assert again.seq == twice.seq == 2
            (third,) = await store.append([mark(2)])
            assert third.seq == 3
            assert_free(store.writer, store._append_queue())
        finally:
            await store.close()

    anyio.run(main)
    assert [r.event_id for r in anyio.run(stored_records, db_path)] == ["e0", "e1", "e2"]
