"""A plain thread's write (`GroupCommit.run_blocking`, the ThreadSafePositionManager's path):
nobody draining and the role free, it runs its job alone where it is, unqueued; everything else
goes the way a group goes (see DESIGN in ledger/store/writer.py).

Each guard of that path has its test here: jobs queued behind the lone job are handed over
and committed as one group; a leader finding the role taken waits for it and runs all that
queued meanwhile in one group; WouldWait hands the job to the writer thread; a thread holding
the role is refused instead of waiting for itself; an interrupt reaches the caller and the
queue goes on; a failing job fails alone. Interleavings are forced with threading.Events set
from inside a transaction and a count of the callers that entered the queue, never hoped for;
every scenario runs on daemon threads joined with a watchdog, so a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import StoreUnavailable
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import (
    Completion,
    GroupCommit,
    WouldWait,
    WriterThread,
    deferred_blocking_completion,
)
from projections.book import Book
from tests._interrupts import counting_entries
from tests.test_write_role import opening

WATCHDOG = 60.0  # seconds a scenario may take before it counts as hung
SETTINGS = Settings(max_concurrent_positions=1000)


class Job:
    def __init__(self, name: str) -> None:
        self.name = name
        self.done = deferred_blocking_completion()
        self.error: BaseException | None = None


class Recorder:
    """A GroupCommit's process: notes (thread, names) of every group, settles its jobs; a
    group holding `hold` waits inside until `release` is set, after setting `inside`."""

    def __init__(self, hold: str | None = None) -> None:
        self.groups: list[tuple[int, list[str]]] = []
        self.hold = hold
        self.inside, self.release = threading.Event(), threading.Event()

    def __call__(self, group: list[Job]) -> None:
        try:
            self.groups.append((threading.get_ident(), [job.name for job in group]))
            if self.hold in {job.name for job in group}:
                self.inside.set()
                assert self.release.wait(WATCHDOG)
        finally:
            Completion.set_all([job.done for job in group])


def start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join_all(threads: Sequence[threading.Thread]) -> None:
    for thread in threads:
        thread.join(WATCHDOG)
        assert not thread.is_alive(), "hung: a caller was never woken"


def blocking_caller(
    commits: GroupCommit[Job], name: str, threads: dict[str, int], outcome: dict[str, object]
) -> Callable[[], None]:
    def call() -> None:
        threads[name] = threading.get_ident()
        job = Job(name)
        try:
            commits.run_blocking(job)
            outcome[name] = job.error or "done"
        except BaseException as exc:  # handed to the test's thread
            outcome[name] = exc

    return call


def test_jobs_queued_behind_a_lone_blocking_job_are_handed_over_in_one_group() -> None:
    writer = WriterThread("test-writer")
    process = Recorder(hold="lead")
    commits: GroupCommit[Job] = GroupCommit(writer, process)
    entered = counting_entries(commits)
    threads: dict[str, int] = {}
    outcome: dict[str, object] = {}
    try:
        callers = [start(blocking_caller(commits, "lead", threads, outcome))]
        assert process.inside.wait(WATCHDOG)
        for name in ("q1", "q2", "q3"):
            callers.append(start(blocking_caller(commits, name, threads, outcome)))
        for _ in range(4):
            assert entered.acquire(timeout=WATCHDOG)
        process.release.set()
        join_all(callers)
        assert outcome == {"lead": "done", "q1": "done", "q2": "done", "q3": "done"}
        # nobody drains now: the next caller runs its job alone on its own thread
        join_all([start(blocking_caller(commits, "after", threads, outcome))])
    finally:
        writer.stop()
    (lead_thread, lead_group), (rest_thread, rest_group), after = process.groups
    assert (lead_thread, lead_group) == (threads["lead"], ["lead"])
    assert rest_thread == writer._thread.ident and sorted(rest_group) == ["q1", "q2", "q3"]
    assert after == (threads["after"], ["after"]) and outcome["after"] == "done"


def test_a_blocking_leader_finding_the_role_taken_runs_all_queued_by_then_in_one_group() -> None:
    writer = WriterThread("test-writer")
    process = Recorder()
    commits: GroupCommit[Job] = GroupCommit(writer, process)
    entered = counting_entries(commits)
    threads: dict[str, int] = {}
    outcome: dict[str, object] = {}
    held, free = threading.Event(), threading.Event()

    def hold_role() -> None:  # the writer thread holds the role (another queue's group)
        held.set()
        assert free.wait(WATCHDOG)

    try:
        holder = start(lambda: writer.call_blocking(hold_role))
        assert held.wait(WATCHDOG)
        callers = [start(blocking_caller(commits, "lead", threads, outcome))]
        assert entered.acquire(timeout=WATCHDOG)  # it leads (the role is still taken)
        for name in ("q1", "q2"):
            callers.append(start(blocking_caller(commits, name, threads, outcome)))
        for _ in range(2):
            assert entered.acquire(timeout=WATCHDOG)
        free.set()
        join_all([holder, *callers])
    finally:
        writer.stop()
    assert outcome == {"lead": "done", "q1": "done", "q2": "done"}
    # one group, the leader's job first, on the leader's thread: the jobs that queued while
    # it waited for the role share its transaction
    assert process.groups == [(threads["lead"], ["lead", "q1", "q2"])]


def test_would_wait_on_a_lone_blocking_job_hands_it_to_the_writer_thread() -> None:
    writer = WriterThread("test-writer")
    groups: list[tuple[int, list[str]]] = []

    def process(group: list[Job]) -> None:
        if threading.get_ident() != writer._thread.ident:
            raise WouldWait("nothing done: the writer thread may wait")
        groups.append((threading.get_ident(), [job.name for job in group]))
        Completion.set_all([job.done for job in group])

    commits: GroupCommit[Job] = GroupCommit(writer, process)
    outcome: dict[str, object] = {}
    try:
        join_all([start(blocking_caller(commits, "job", {}, outcome))])
    finally:
        writer.stop()
    assert outcome == {"job": "done"}
    assert groups == [(writer._thread.ident, ["job"])]


@pytest.mark.parametrize("queue", ["same", "another"])
def test_a_blocking_write_on_the_thread_holding_the_role_is_refused(queue: str) -> None:
    """A job's process that makes a blocking write (in this queue, or another queue of the
    same store) would wait for itself: it is refused with StoreUnavailable instead."""
    writer = WriterThread("test-writer")
    inner: list[BaseException | str] = []
    commits: GroupCommit[Job]

    def process(group: list[Job]) -> None:
        try:
            if group[0].name == "outer":
                try:
                    target.run_blocking(Job("inner"))
                    inner.append("ran")
                except StoreUnavailable as exc:
                    inner.append(exc)
        finally:
            Completion.set_all([job.done for job in group])

    commits = GroupCommit(writer, process)
    target = commits if queue == "same" else GroupCommit(writer, process)
    outcome: dict[str, object] = {}
    try:
        join_all([start(blocking_caller(commits, "outer", {}, outcome))])
    finally:
        writer.stop()
    assert outcome == {"outer": "done"}
    assert len(inner) == 1 and isinstance(inner[0], StoreUnavailable)


def test_an_interrupt_in_a_lone_blocking_job_reaches_its_caller_and_the_queue_goes_on() -> None:
    writer = WriterThread("test-writer")
    process = Recorder(hold="lead")
    real = process.__call__

    def interrupting(group: list[Job]) -> None:
        real(group)  # settled, then interrupted, as `Ledger._commit_group` is
        if group[0].name == "lead":
            raise KeyboardInterrupt

    commits: GroupCommit[Job] = GroupCommit(writer, interrupting)
    entered = counting_entries(commits)
    threads: dict[str, int] = {}
    outcome: dict[str, object] = {}
    try:
        callers = [start(blocking_caller(commits, "lead", threads, outcome))]
        assert process.inside.wait(WATCHDOG)
        for name in ("q1", "q2"):
            callers.append(start(blocking_caller(commits, name, threads, outcome)))
        for _ in range(3):
            assert entered.acquire(timeout=WATCHDOG)
        process.release.set()
        join_all(callers)
        assert isinstance(outcome.pop("lead"), KeyboardInterrupt)
        assert outcome == {"q1": "done", "q2": "done"}
        # the role is free and nobody drains: the next write runs inline on its thread
        join_all([start(blocking_caller(commits, "after", threads, outcome))])
        assert process.groups[-1] == (threads["after"], ["after"])
    finally:
        writer.stop()
    assert [sorted(names) for _, names in process.groups] == [
        ["lead"],
        ["q1", "q2"],
        ["after"],
    ]


# -- through the Ledger and the manager -----------------------------------------------------


def _on_own_loop(
    db_path: Path, scenario: Callable[[Ledger], Any], store: SQLiteEventStore | None = None
) -> Any:
    """Open a Ledger on an event loop of its own thread, run scenario(ledger) on a plain
    thread (the way a bot calls it), close; fails instead of hanging past the watchdog."""
    outcome: list[Any] = []

    async def main() -> None:
        opened = (
            Ledger(store=store, settings=SETTINGS) if store else Ledger(db_path, settings=SETTINGS)
        )
        async with opened as ledger:
            outcome.append(await anyio.to_thread.run_sync(scenario, ledger))

    loop_thread = start(lambda: anyio.run(main))
    join_all([loop_thread])
    return outcome[0]


def test_a_failing_lone_blocking_command_fails_alone_and_the_next_runs_inline(
    db_path: Path,
) -> None:
    def scenario(ledger: Ledger) -> tuple[str, list[int], list[str], int]:
        transactions = _on_thread_counting(ledger)

        def refusing(book: Book) -> Sequence[Plan]:
            raise ValueError("refused by the decider")

        try:
            ledger.transact_blocking(refusing)
            heard = "stored"
        except ValueError as exc:
            heard = str(exc)
        seqs = [r.seq for r in ledger.transact_blocking(opening("after"))]
        me = threading.get_ident()
        assert transactions == [me, me]  # both inline on this thread
        return heard, seqs, sorted(ledger.book.open), ledger.last_seq

    assert _on_own_loop(db_path, scenario) == ("refused by the decider", [1], ["after"], 1)


def test_manager_threads_writing_at_once_commit_everything_in_shared_groups(
    tmp_path: Path,
) -> None:
    """A bot thread's create runs inline; three more threads' creates arrive meanwhile: all
    four commit, the three in one transaction on the writer thread, and each caller gets its
    own id back."""
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    ) as manager:
        ledger = manager.ledger
        first_seq = ledger.last_seq
        inside, release = threading.Event(), threading.Event()
        transactions: list[int] = []
        real = ledger.store.run_transaction

        def held_first(unit: Callable[[StoreTransaction], Any]) -> Any:
            transactions.append(threading.get_ident())
            if len(transactions) == 1:
                inside.set()
                assert release.wait(WATCHDOG)
            return real(unit)

        ledger.store.run_transaction = held_first  # type: ignore[method-assign]
        entered = counting_entries(ledger._queue())
        ids: dict[str, object] = {}
        threads: dict[str, int] = {}

        def create(symbol: str) -> Callable[[], None]:
            def call() -> None:
                threads[symbol] = threading.get_ident()
                try:
                    ids[symbol] = manager.thread_safe_create_position(
                        symbol=symbol,
                        side="buy",
                        entry_price=100.0,
                        position_size=500.0,
                        leverage=5,
                    )
                except BaseException as exc:  # handed to the test's thread
                    ids[symbol] = exc

            return call

        callers = [start(create("AUSDT"))]
        assert inside.wait(WATCHDOG)
        for symbol in ("BUSDT", "CUSDT", "DUSDT"):
            callers.append(start(create(symbol)))
        for _ in range(4):
            assert entered.acquire(timeout=WATCHDOG)
        release.set()
        join_all(callers)
        assert all(isinstance(v, str) for v in ids.values()), ids
        active = {p.symbol: p.position_id for p in manager.get_active_positions()}
        assert active == ids
        assert transactions[0] == threads["AUSDT"]
        assert transactions[1:] == [ledger.store.writer._thread.ident]  # one group of three
        # four opens, and the RulesConfigured a ledger under non-default limits records once
        assert ledger.last_seq == first_seq + 5


def _on_thread_counting(ledger: Ledger) -> list[int]:
    """The thread of every transaction the ledger's store runs from now on."""
    transactions: list[int] = []
    real = ledger.store.run_transaction

    def counted(unit: Callable[[StoreTransaction], Any]) -> Any:
        transactions.append(threading.get_ident())
        return real(unit)

    ledger.store.run_transaction = counted  # type: ignore[method-assign]
    return transactions


def _begins(store: SQLiteEventStore, then: Callable[[], None]) -> list[BaseException | None]:
    """Each BEGIN the store makes the whole way (`_begin`: None) or goes on with after a first
    attempt failed (`_begin_again`: what that raised); then() runs before the latter."""
    seen: list[BaseException | None] = []
    real_begin, real_again = store._begin, store._begin_again

    def begin(conn: Any) -> None:
        seen.append(None)
        real_begin(conn)

    def again(conn: Any, failed: Any, started: float) -> None:
        seen.append(failed)
        then()
        real_again(conn, failed, started)

    store._begin = begin  # type: ignore[method-assign]
    store._begin_again = again  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("freed", [True, False])
def test_a_blocking_command_meeting_another_writers_lock_waits_on_its_own_thread(
    db_path: Path, freed: bool
) -> None:
    """Another connection holds the write lock when a thread's command begins: its first
    BEGIN waits the busy timeout on the thread itself, and its retries go on from there
    (`_begin_again` told what the first attempt raised, not a second wait from scratch). The lock
    freed meanwhile, the command commits on its thread; held past the timeout, it fails with
    StoreUnavailable, and the next command commits inline again."""
    store = SQLiteEventStore(db_path, busy_timeout_ms=200)

    def scenario(ledger: Ledger) -> tuple[list[BaseException | None], str, list[str]]:
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            transactions = _on_thread_counting(ledger)

            def free_the_lock() -> None:
                if freed and other.in_transaction:
                    other.execute("COMMIT")

            begins = _begins(store, free_the_lock)
            try:
                ledger.transact_blocking(opening("waited"))
                heard = "stored"
            except StoreUnavailable as exc:
                heard = "lock" if "lock" in str(exc) else repr(exc)
            if other.in_transaction:
                other.execute("COMMIT")
            if not freed:
                ledger.transact_blocking(opening("after"))
            me = threading.get_ident()
            assert set(transactions) == {me}
            return begins, heard, sorted(ledger.book.open)
        finally:
            other.close()

    begins, heard, opened = _on_own_loop(db_path, scenario, store)
    assert heard == ("stored" if freed else "lock")
    assert opened == (["waited"] if freed else ["after"])
    # one BEGIN gone on with, the first attempt's own: none made again from scratch
    (first,) = begins
    assert isinstance(first, sqlite3.OperationalError) and "locked" in str(first)
