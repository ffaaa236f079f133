"""An interrupt of the thread leading a group stays with that thread; its followers' commands
are each committed once and acknowledged.

A seed bot's main thread leads groups holding other threads' commands (it runs every job queued
while it waited for the writer role), and a signal's handler (SIGINT's KeyboardInterrupt) runs
in the main thread wherever it is: in the decision of another thread's command too. Here the
main thread leads a group of its own command and another thread's (tests/_interrupts.py's
LedGroup), and a KeyboardInterrupt is raised (a trace function, as a signal's handler raises it,
deterministic) before each instruction in turn of the group's processing: the ledger's
decisions, the rules, the store's transaction, the publishing and settling. Each time the main
thread hears it, the other thread's command is committed and acknowledged (never handed the
interrupt, never failed for it), and at the end no command is stored twice and the live book is
a fold of the log. The real-signal storm that found it is tests/test_adv_interrupt_locks.py's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from types import CodeType
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.events import PositionOpened
from ledger.rules import decide_checked
from ledger.service import Ledger, _CommandDecider
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import GroupCommit
from tests._interrupts import Inject, LedGroup, on_thread
from tests._workers import audit_log, book_state
from tests.test_adv_blocking_storm import seed_kwargs
from tests.test_write_role_interrupts import role_free

SETTINGS = Settings(
    max_concurrent_positions=100_000,
    synchronous="NORMAL",
    snapshot_every_events=10**9,
    snapshot_every_seconds=10**6,
)


def _codes(functions: Iterable[object]) -> set[CodeType]:
    """The code objects of these functions and of every function or lambda inside them."""
    found: set[CodeType] = set()
    todo = [getattr(f, "__code__", None) for f in functions]
    while todo:
        code = todo.pop()
        if isinstance(code, CodeType) and code not in found:
            found.add(code)
            todo.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return found


# what the leading thread runs of the group, holding the role: the ledger's transaction and
# decisions (another thread's command decided by the rules included), the store's
# transaction, and the group's taking and letting go
GROUP_PROCESSING = frozenset(
    _codes(
        [
            Ledger._commit_group,
            Ledger._decide_group,
            Ledger._stage_job,
            Ledger._staged,
            Ledger._publish,
            Ledger._after_commit,
            _CommandDecider.events,
            decide_checked,
            SQLiteEventStore.run_transaction,
            SQLiteEventStore._insert_proving,
            GroupCommit._lead_one_group,
            GroupCommit._take,
            GroupCommit._stop_leading,
        ]
    )
)


def led_group(manager: ThreadSafePositionManager) -> LedGroup:
    return LedGroup(manager.ledger._queue(), manager.ledger.store.writer)


def creates(manager: ThreadSafePositionManager, symbols: list[str]) -> list[Callable[[], object]]:
    return [partial(manager.thread_safe_create_position, **seed_kwargs(s)) for s in symbols]


def assert_usable(group: LedGroup) -> None:
    assert on_thread(lambda: group.writer.call_blocking(lambda: None)) is None
    assert role_free(group.writer), "the writer role was left held"
    assert not group.queue._draining and not group.queue._pending, "left draining"


@pytest.fixture
def manager(tmp_path: Path) -> Any:
    opened = ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    )
    try:
        yield opened
    finally:
        assert on_thread(opened.close) is None  # bounded: a close that hangs fails instead


def test_an_interrupt_anywhere_in_a_leaders_group_stays_with_the_leader(
    manager: ThreadSafePositionManager, tmp_path: Path
) -> None:
    assert threading.current_thread() is threading.main_thread()
    group = led_group(manager)
    create = manager.thread_safe_create_position
    create(**seed_kwargs("WARMUSDT"))
    counted = Inject(None, codes=GROUP_PROCESSING)

    def lead_counted() -> object:
        with counted:
            return create(**seed_kwargs("COUNTUSDT"))

    led, heard = group.run(lead_counted, creates(manager, ["FCOUNTUSDT"]))
    assert isinstance(led, str) and all(isinstance(answer, str) for answer in heard), heard
    assert counted.count > 500  # decisions of two commands and their transaction
    acknowledged = {answer for answer in heard if isinstance(answer, str)}
    failures: list[str] = []
    landed = 0
    for at in range(counted.count):
        inject = Inject(at, codes=GROUP_PROCESSING)

        def lead(inject: Inject = inject, at: int = at) -> object:
            with inject:
                return create(**seed_kwargs(f"M{at}USDT"))

        led, heard = group.run(lead, creates(manager, [f"F{at}USDT"]))
        landed += inject.where is not None
        wrong = [answer for answer in heard if not isinstance(answer, str)]
        if inject.where is not None and not isinstance(led, KeyboardInterrupt):
            failures.append(f"{inject.where}: the leader heard {led!r}")
        elif wrong:
            failures.append(f"{inject.where}: followers heard {wrong!r}")
        if failures:
            break  # one is enough to see: the rest would repeat it
        acknowledged.update(answer for answer in heard if isinstance(answer, str))
        assert_usable(group)
    assert failures == []
    assert landed > counted.count // 2  # the sweep ran through the group's processing
    live = book_state(manager.ledger.book)
    manager.close()
    audit = anyio.run(audit_log, tmp_path / "ledger.db")
    symbols = [r.event.symbol for r in audit.records if isinstance(r.event, PositionOpened)]
    assert len(symbols) == len(set(symbols)), "a command was stored twice"
    assert acknowledged <= set(audit.fold.open)  # each follower's command, committed
    assert live == book_state(audit.fold)


def test_an_interrupt_in_the_decision_of_a_followers_command_is_the_leaders(
    manager: ThreadSafePositionManager,
) -> None:
    """The signal lands while the leading main thread decides the other thread's command (the
    rules' `decide_checked`, the second of the group's two decisions): the main thread hears
    it, the other thread's command is committed all the same, and it is told so."""
    assert threading.current_thread() is threading.main_thread()
    group = led_group(manager)
    create = manager.thread_safe_create_position
    decision = frozenset({decide_checked.__code__})
    counted = Inject(None, codes=decision)

    def lead_counted() -> object:
        with counted:
            return create(**seed_kwargs("COUNTUSDT"))

    led, heard = group.run(lead_counted, creates(manager, ["FCOUNTUSDT"]))
    assert isinstance(led, str) and isinstance(heard[0], str), heard
    inject = Inject(counted.count * 3 // 4, codes=decision)  # inside the follower's decision

    def lead() -> object:
        with inject:
            return create(**seed_kwargs("MAINUSDT"))

    led, (followed,) = group.run(lead, creates(manager, ["FOLLOWUSDT"]))
    # the leader's interrupt, not handed to the follower, the follower's command not failed
    assert isinstance(led, KeyboardInterrupt) and isinstance(followed, str), (led, followed)
    book = manager.ledger.book
    assert book.open[followed].symbol == "FOLLOWUSDT"
    assert "MAINUSDT" not in {position.symbol for position in book.open.values()}
    assert_usable(group)
