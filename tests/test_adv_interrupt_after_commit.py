"""Attack (adversary): a KeyboardInterrupt landing in the thread that runs a group right after
its COMMIT returned.

Python runs a signal's handler (SIGINT: KeyboardInterrupt, in the main thread) at the next
check after a call returns, so it can land right after `cur.execute("COMMIT")` in
`SQLiteEventStore.run_transaction`, before the head is published. The main thread of a seed
bot leads groups holding other threads' commands (it runs every job queued while it waited for
the writer role). Those other callers must not be told "nothing of this group was stored"
when it was: a bot retries a command it was told failed (a partial exit recorded twice).
Here the interrupt is delivered at that exact point with a trace function (deterministic: the
same exception, the same place a signal's handler would raise it), also with another writer
committing in between (the live book must take its event as well), and, as the control,
right before the COMMIT runs (after the insert returned): then that transaction stores
nothing; the leader's command is not run, and the other callers' commands, put back, are
committed by the writer thread, each caller told so (the interrupt is the leader's alone:
tests/test_leader_interrupts.py). For a group of appends on a thread no signal reaches, each
caller hears that nothing was stored.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import StoreError
from ledger.events import PositionOpened
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from tests._events import lone_mark as event
from tests._interrupts import LedGroup
from tests._workers import audit_log, book_state
from tests.test_adv_blocking_storm import seed_kwargs

WATCHDOG = 60.0
OTHERS = 3


def interrupt_at(where: str, meanwhile: Callable[[], object] | None = None) -> Any:
    """A trace function raising KeyboardInterrupt in this thread once, in run_transaction:
    at its first line after the COMMIT ("after"), or at the COMMIT itself, before it runs
    (after the insert returned: "before"); meanwhile() first (another writer's commit)."""
    code = SQLiteEventStore.run_transaction.__code__
    lines, first = inspect.getsourcelines(SQLiteEventStore.run_transaction)
    commit = [first + i for i, line in enumerate(lines) if 'cur.execute("COMMIT")' in line]
    after = [first + i for i, line in enumerate(lines) if line.strip().startswith("draft =")]
    assert len(commit) == 1 and after and after[0] > commit[0], "run_transaction changed shape"
    target = commit[0] if where == "before" else after[0]

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == target:
            sys.settrace(None)
            if meanwhile is not None:
                meanwhile()
            raise KeyboardInterrupt(f"a signal, right {where} COMMIT")
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    return tracer


@pytest.mark.parametrize("where", ["after", "after, another writer meanwhile", "before"])
def test_an_interrupt_around_commit_tells_the_groups_other_callers_what_was_stored(
    tmp_path: Path, where: str
) -> None:
    db = tmp_path / "ledger.db"
    settings = Settings(max_concurrent_positions=100)
    with (
        ThreadSafePositionManager(tmp_path / "p.json", db_path=db, settings=settings) as m,
        ThreadSafePositionManager(tmp_path / "b.json", db_path=db, settings=settings) as other_bot,
    ):
        warm = m.thread_safe_create_position(**seed_kwargs("WARMUSDT"))
        ledger = m.ledger
        # this thread leads the group (it enters first and waits for the role), the others
        # join it
        leading = LedGroup(ledger._queue(), ledger.store.writer, WATCHDOG)
        # another writer of the file commits after the group's COMMIT, before the group's
        # transaction hears the interrupt: the live book must take its event too
        meanwhile = None if where != "after, another writer meanwhile" else (
            lambda: other_bot.update_position_price(warm, 123)
        )  # fmt: skip

        def lead() -> object:
            sys.settrace(interrupt_at(where.split(",")[0], meanwhile))
            try:
                return m.thread_safe_create_position(**seed_kwargs("MAINUSDT"))
            finally:
                sys.settrace(None)

        others = [
            partial(m.thread_safe_create_position, **seed_kwargs(f"O{i}USDT"))
            for i in range(OTHERS)
        ]
        led, heard = leading.run(lead, others)
        leading.restore()
        assert isinstance(led, KeyboardInterrupt)  # the leader's thread hears its interrupt
        after = m.thread_safe_create_position(**seed_kwargs("AFTERUSDT"))
        live = book_state(ledger.book)

    audit = anyio.run(audit_log, db)
    stored = {r.event.symbol for r in audit.records if isinstance(r.event, PositionOpened)}
    group = {"MAINUSDT", *(f"O{i}USDT" for i in range(OTHERS))}
    if where != "before":
        assert group <= stored  # all committed
        for i, answer in enumerate(heard):
            # committed: each caller is told so (its position's id), never "nothing stored"
            assert isinstance(answer, str), (i, answer)
            assert answer in audit.fold.open
    else:
        # rolled back: the leader's command not run; the others', put back, committed once
        assert "MAINUSDT" not in stored
        assert group - {"MAINUSDT"} <= stored
        for i, answer in enumerate(heard):
            assert isinstance(answer, str), (i, answer)
            assert answer in audit.fold.open
    symbols = [r.event.symbol for r in audit.records if isinstance(r.event, PositionOpened)]
    assert len(symbols) == len(set(symbols))  # nothing stored twice
    assert after in audit.fold.open
    assert live == book_state(audit.fold)


@pytest.mark.parametrize("where", ["after", "before"])
def test_an_interrupt_around_commit_tells_a_group_of_appends_what_was_stored(
    db_path: Path, where: str
) -> None:
    """The same for the store's own group of appends (`EventStore._commit_appends`): a thread
    leads the group holding other threads' appends; the interrupt lands around its COMMIT."""

    async def main() -> tuple[object, list[object], list[str]]:
        store = SQLiteEventStore(db_path)
        await store.open()
        try:
            await store.append([event("warm")])
            leading = LedGroup(store._append_queue(), store.writer, WATCHDOG)

            def lead() -> object:
                sys.settrace(interrupt_at(where))
                try:
                    return store.append_blocking([event("lead")])[0].seq
                finally:
                    sys.settrace(None)

            def other(i: int) -> object:
                return store.append_blocking([event(f"o{i}")])[0].seq

            others = [partial(other, i) for i in range(3)]
            led, heard = await anyio.to_thread.run_sync(lambda: leading.run(lead, others))
            leading.restore()
            (after,) = await store.append([event("after")])
            assert after.seq == (await store.head()).seq
            ids = [r.event_id for r in await store.read()]
            assert (await store.verify_chain()).events == len(ids)
            return led, heard, ids
        finally:
            await store.close()

    led, heard, ids = anyio.run(main)
    assert isinstance(led, KeyboardInterrupt)  # the leading thread hears its interrupt
    group = {"lead", "o0", "o1", "o2"}
    if where == "after":
        assert group <= set(ids)
        assert all(isinstance(answer, int) for answer in heard), heard
    else:
        assert not group & set(ids)
        for answer in heard:
            assert isinstance(answer, StoreError) and "nothing" in str(answer), heard
    assert ids[-1] == "after" and len(ids) == len(set(ids))
