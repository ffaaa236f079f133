"""A follower whose command may be stored is never told that nothing was stored.

The main thread leads a group holding another thread's command; a KeyboardInterrupt lands right
after the group's COMMIT returned (where a signal's handler runs: right after a call). The
ledger then asks the store whether the group is stored; here it cannot tell, because another
writer took the write lock right after the COMMIT and holds it past the busy timeout (a second
Ctrl-C in the asking ends it the same way). The group is in the log. Told "append failed,
nothing of this group was stored", the follower's bot would write it again; it must hear that
the outcome is unknown (OutcomeUnknown, not a StoreError), and the book shows the command from
the next write on: also when the interrupt landed in the head's publishing (whole after it:
ac0f29c), where no tail read brings the group into the book any more. The same holds for a
group of the store's own appends (`store.append_blocking`). Both say what happened in the same
words (`OutcomeUnknown.interrupted`): the interrupt, that it may be stored, what to do.
"""

from __future__ import annotations

import inspect
import sqlite3
import sys
import threading
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import msgspec
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import OutcomeUnknown, StoreError
from ledger.store.sqlite import SQLiteEventStore
from tests._events import lone_mark as event
from tests._interrupts import LedGroup, on_thread
from tests._workers import audit_log, book_state
from tests.test_adv_blocking_storm import seed_kwargs
from tests.test_leader_interrupts import SETTINGS

RUN_TRANSACTION = SQLiteEventStore.run_transaction.__code__
_SOURCE, _FIRST = inspect.getsourcelines(SQLiteEventStore.run_transaction)
COMMIT_LINE = next(
    _FIRST + i for i, line in enumerate(_SOURCE) if line.strip() == 'cur.execute("COMMIT")'
)


class AfterCommit:
    """A trace (this thread) that raises KeyboardInterrupt at the `lines_after`-th line
    run_transaction runs after its COMMIT returned, once; `before` runs first (another writer
    takes the lock)."""

    def __init__(self, before: Any, lines_after: int = 1) -> None:
        self.before = before
        self.lines_after = lines_after
        self.committed = False
        self.landed = False

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code is RUN_TRANSACTION and not self.landed:
            return self._line
        return None

    def _line(self, frame: FrameType, event: str, arg: object) -> Any:
        if event != "line" or self.landed:
            return self._line
        if self.committed:
            self.lines_after -= 1
            if self.lines_after == 0:
                self.landed = True
                self.before()
                raise KeyboardInterrupt(f"at line {frame.f_lineno}, after the COMMIT returned")
            return self._line
        self.committed = frame.f_lineno == COMMIT_LINE
        return self._line


def assert_informative(unknown: OutcomeUnknown, interrupt: BaseException, redo: str) -> None:
    """The message names the interrupt, says the write may be stored and that the log could
    not be read, and what not to do before reading it; made by the one constructor."""
    message = str(unknown)
    for part in (repr(interrupt), "may have been stored", "could not be read", redo):
        assert part in message, message
    assert message == str(OutcomeUnknown.interrupted(interrupt, redo=redo))


# the line after the COMMIT, then into the head's publishing (its seq, its hash set)
@pytest.mark.parametrize("lines_after", [1, 2, 3, 4])
def test_a_follower_of_a_group_that_may_be_stored_is_not_told_nothing_was(
    tmp_path: Path, lines_after: int
) -> None:
    assert threading.current_thread() is threading.main_thread()
    db = tmp_path / "ledger.db"
    settings = msgspec.structs.replace(SETTINGS, busy_timeout_ms=200)
    manager = ThreadSafePositionManager(tmp_path / "positions.json", db_path=db, settings=settings)
    other_writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        group = LedGroup(manager.ledger._queue(), manager.ledger.store.writer)
        create = manager.thread_safe_create_position
        create(**seed_kwargs("WARMUSDT"))
        interrupt = AfterCommit(lambda: other_writer.execute("BEGIN IMMEDIATE"), lines_after)

        def lead() -> object:
            sys.settrace(interrupt)
            try:
                return create(**seed_kwargs("MAINUSDT"))
            finally:
                sys.settrace(None)

        led, (followed,) = group.run(lead, [partial(create, **seed_kwargs("FOLLOWUSDT"))])
        other_writer.execute("ROLLBACK")
        assert interrupt.landed and isinstance(led, KeyboardInterrupt), led
        audit = anyio.run(audit_log, db)
        stored = {position.symbol for position in audit.fold.open.values()}
        assert "FOLLOWUSDT" in stored  # committed before the interrupt
        assert not isinstance(followed, StoreError), followed  # "nothing was stored"
        assert isinstance(followed, OutcomeUnknown), followed
        assert_informative(followed, led, "writing it")
        create(**seed_kwargs("NEXTUSDT"))  # the next write reads the log
        live = book_state(manager.ledger.book)
        assert {p.symbol for p in manager.ledger.book.open.values()} >= stored
    finally:
        other_writer.close()
        assert on_thread(manager.close) is None
    assert live == book_state(anyio.run(audit_log, db).fold)


async def _stored_ids(db: Path) -> set[str]:
    store = SQLiteEventStore(db)
    await store.open()
    try:
        return {record.event_id for record in await store.read()}
    finally:
        await store.close()


@pytest.mark.parametrize("lines_after", [1, 2, 3, 4])
def test_a_follower_of_an_append_group_that_may_be_stored_is_not_told_nothing_was(
    tmp_path: Path, lines_after: int
) -> None:
    assert threading.current_thread() is threading.main_thread()
    db = tmp_path / "ledger.db"
    store = SQLiteEventStore(db, synchronous="NORMAL", busy_timeout_ms=200)
    anyio.run(store.open)
    other_writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        group = LedGroup(store._append_queue(), store.writer)
        store.append_blocking([event("warm")])
        interrupt = AfterCommit(lambda: other_writer.execute("BEGIN IMMEDIATE"), lines_after)

        def lead() -> object:
            sys.settrace(interrupt)
            try:
                return store.append_blocking([event("main")])
            finally:
                sys.settrace(None)

        led, (followed,) = group.run(lead, [partial(store.append_blocking, [event("follow")])])
        other_writer.execute("ROLLBACK")
        assert interrupt.landed and isinstance(led, KeyboardInterrupt), led
        assert "follow" in anyio.run(_stored_ids, db)  # committed before the interrupt
        assert not isinstance(followed, StoreError), followed  # "nothing was stored"
        assert isinstance(followed, OutcomeUnknown), followed
        assert_informative(followed, led, "appending it")
    finally:
        other_writer.close()
        assert on_thread(lambda: anyio.run(store.close)) is None
