"""An interrupt landing at any instruction of the write path leaves the store usable.

CPython runs a signal's Python handler (SIGINT's KeyboardInterrupt, a bot's handler raising
SystemExit) in the main thread between two instructions: right after a C call returned (a
`lock.acquire()` that took the lock), at a function's entry, at a backward jump. If that lands
between taking the writer role (or the queue's lock, or the lead of a queue) and the code
that gives it back, every later write and `close()` wait for ever.

Here the interrupt is raised by a trace function (`f_trace_opcodes`) at each instruction in
turn that the caller's thread executes in the write path (every function of `GroupCommit` and
`WriterThread`, a waiting caller's Completion; not a NOP, where no handler runs): a sweep
first counts them for one call, then
runs the call once per instruction, raising there. After each: the caller heard the very
exception (or its call finished first), the role and the queue are free, writes from threads
and from tasks succeed, and the writer stops. Every wait is bounded (a thread joined with a
timeout, `anyio.fail_after`) and fails the test instead of hanging it. The same through the
real manager from the main thread and a Ledger command on an event loop of the main thread;
and with a real SIGINT (`_thread.interrupt_main`) pending when the role's blocking acquire
returns, the classic window, also shown for a bare `lock.acquire()` against `with lock:`.
"""

from __future__ import annotations

import _thread
import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.writer import (
    Completion,
    GroupCommit,
    WriterThread,
    deferred_blocking_completion,
    deferred_completion,
)
from projections.book import fold_records
from tests._interrupts import WATCHDOG, Inject, counting_entries, no_cyclic_gc, on_thread
from tests._workers import book_state
from tests.test_write_role import opening

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

MAX_FAILURES = 5  # a sweep stops after so many (each may have waited out a watchdog)
ERRORS: list[type[BaseException]] = [KeyboardInterrupt, SystemExit]
SETTINGS = Settings(max_concurrent_positions=10_000, synchronous="NORMAL")


class Job:
    def __init__(self, name: str, done: Completion | None = None) -> None:
        self.name = name
        self.done = done if done is not None else deferred_blocking_completion()
        self.error: BaseException | None = None


class Recorder:
    """A GroupCommit's process: notes the names of every group it ran, settles its jobs."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, group: list[Job]) -> None:
        try:
            self.ran.extend(job.name for job in group)
        finally:
            Completion.set_all([job.done for job in group])


def role_free(writer: WriterThread) -> bool:
    """Nobody holds the role (asked from a thread that does not hold it)."""
    if not writer._role.acquire(False):
        return False
    writer._role.release()
    return True


def assert_usable(writer: WriterThread, commits: GroupCommit[Job], process: Recorder) -> None:
    """The role and the queue are free, a thread's and a task's writes run, the writer stops."""
    assert on_thread(lambda: writer.call_blocking(lambda: None)) is None  # what was handed over ran
    assert role_free(writer), "the writer role was left held"
    assert writer._holder is None
    assert not commits._draining and not commits._pending, "the queue was left draining"
    assert on_thread(lambda: commits.run_blocking(Job("thread after"))) is None

    async def task() -> None:
        with anyio.fail_after(WATCHDOG):
            job = Job("task after", deferred_completion())
            waiting = commits.run_now(job)
            if waiting is not None:
                await waiting

    assert on_thread(lambda: asyncio.run(task())) is None
    assert process.ran[-2:] == ["thread after", "task after"]
    assert on_thread(writer.stop) is None


def sweep(scenario: Callable[[int | None], str | None]) -> list[str]:
    """Run scenario(None) to count the instructions, then scenario(n) for each n: the
    failures, each named by where the interrupt landed."""
    total = scenario(None)
    assert total is not None and int(total) > 10, total
    failures: list[str] = []
    for at in range(int(total)):
        failure = scenario(at)
        if failure is not None:
            failures.append(failure)
            if len(failures) >= MAX_FAILURES:
                break
    return failures


def _outcome(inject: Inject, heard: object, error: type[BaseException]) -> str | None:
    """None when the caller heard the injected exception (or finished before it landed)."""
    if inject.at is None:
        return str(inject.count)
    if inject.where is None:
        return None if heard is None else f"no interrupt, yet heard {heard!r}"
    if type(heard) is not error:
        return f"{inject.where}: heard {heard!r}"
    return None


def _checked(inject: Inject, check: Callable[[], None]) -> str | None:
    try:
        check()
    except AssertionError as failed:
        return f"{inject.where}: {failed}".splitlines()[0]
    return None


# -- the GroupCommit on its own, a fresh writer for each instruction ------------------------


@pytest.mark.parametrize("error", ERRORS)
def test_a_lone_blocking_write_interrupted_anywhere_leaves_the_queue_usable(
    error: type[BaseException],
) -> None:
    """`run_blocking`, the role free: the lone job run where it is (`_run_alone`)."""

    def scenario(at: int | None) -> str | None:
        writer = WriterThread("test-writer")
        process = Recorder()
        commits: GroupCommit[Job] = GroupCommit(writer, process)
        inject = Inject(at, error)

        def call() -> None:
            with inject:
                commits.run_blocking(Job("lead"))

        heard = on_thread(call)
        return _outcome(inject, heard, error) or (
            None
            if at is None
            else _checked(inject, lambda: assert_usable(writer, commits, process))
        )

    assert sweep(scenario) == []


@pytest.mark.parametrize("error", ERRORS)
def test_a_blocking_leader_interrupted_anywhere_in_its_group_leaves_no_follower_waiting(
    error: type[BaseException],
) -> None:
    """`run_blocking`, the role taken: the leader queues its job, waits for the role
    (`try_run`) while two followers queue theirs, and runs them all as one group. Wherever it
    is interrupted, every follower is settled and the queue goes on."""

    def scenario(at: int | None) -> str | None:
        writer = WriterThread("test-writer")
        process = Recorder()
        commits: GroupCommit[Job] = GroupCommit(writer, process)
        held, free = threading.Event(), threading.Event()
        followers: list[threading.Thread] = []
        outcome: dict[str, object] = {}

        def hold_role() -> None:
            held.set()
            assert free.wait(WATCHDOG)

        def follower(name: str) -> Callable[[], None]:
            def call() -> None:
                job = Job(name)
                try:
                    commits.run_blocking(job)
                    outcome[name] = job.error or "done"
                except BaseException as exc:  # handed to the test
                    outcome[name] = exc

            return call

        real_queue_alone = commits._queue_alone

        def queue_alone_then_followers(job: Job) -> None:
            real_queue_alone(job)
            for name in ("f1", "f2"):
                thread = threading.Thread(target=follower(name), daemon=True)
                thread.start()
                followers.append(thread)
                assert entered.acquire(timeout=WATCHDOG)
            free.set()

        commits._queue_alone = queue_alone_then_followers  # type: ignore[method-assign]
        entered = counting_entries(commits)
        holder = threading.Thread(target=lambda: writer.call_blocking(hold_role), daemon=True)
        holder.start()
        assert held.wait(WATCHDOG)
        inject = Inject(at, error)

        def call() -> None:
            try:
                with inject:
                    commits.run_blocking(Job("lead"))
            finally:
                free.set()

        heard = on_thread(call)
        failure = _outcome(inject, heard, error)
        if failure is not None or at is None:
            return failure

        def check() -> None:
            assert on_thread(lambda: writer.call_blocking(lambda: None)) is None
            assert role_free(writer), "the writer role was left held"
            for thread in [holder, *followers]:
                thread.join(WATCHDOG)
                assert not thread.is_alive(), "a follower was never woken"
            assert all(outcome[name] == "done" for name in outcome), outcome
            assert_usable(writer, commits, process)

        return _checked(inject, check)

    assert sweep(scenario) == []


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("tasks", [1, 3])
def test_a_task_write_interrupted_anywhere_leaves_the_queue_usable(
    error: type[BaseException], tasks: int
) -> None:
    """`run_now` on an asyncio loop: one task alone (its job run where it is), or three
    started together (the first leads all three as a group after one turn of the loop);
    the first task is interrupted, the others must finish."""

    def scenario(at: int | None) -> str | None:
        writer = WriterThread("test-writer")
        process = Recorder()
        commits: GroupCommit[Job] = GroupCommit(writer, process)
        inject = Inject(at, error)
        heard: dict[str, object] = {}

        async def write(name: str) -> None:
            job = Job(name, deferred_completion())
            try:
                waiting = commits.run_now(job)
                if waiting is not None:
                    await waiting
                heard[name] = None
            except BaseException as exc:  # the injected one: what this caller heard
                heard[name] = exc

        async def main() -> None:
            with anyio.fail_after(WATCHDOG), inject:  # every write path on this thread
                others = [asyncio.ensure_future(write(f"t{i}")) for i in range(1, tasks)]
                await write("t0")
                await asyncio.gather(*others)

        # where it landed (the first task's write, another's, a lead task of the loop), the
        # caller there heard it, or else the loop's caller did; nobody else heard anything
        crashed = on_thread(lambda: asyncio.run(main()))
        errors = [exc for exc in [*heard.values(), crashed] if exc is not None]
        if inject.at is None:
            return str(inject.count) if not errors and len(heard) == tasks else repr(errors)
        if inject.where is None:
            return None if not errors else f"no interrupt, yet heard {errors!r}"
        if crashed is not None and type(crashed) is error:
            # at the first instruction of a lead task's step, where nothing of ours can
            # guard it: the loop's caller hears it, and the loop's shutdown cancels the
            # tasks still waiting (the lead task's done-callback recovered the queue)
            errors = [e for e in errors if not isinstance(e, asyncio.CancelledError)]
        if [type(exc) for exc in errors] != [error]:
            return f"{inject.where}: heard {errors!r}"
        return _checked(inject, lambda: assert_usable(writer, commits, process))

    assert sweep(scenario) == []


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("may_wait", [True, False])
def test_try_run_interrupted_anywhere_leaves_the_role_free(
    error: type[BaseException], may_wait: bool
) -> None:
    def scenario(at: int | None) -> str | None:
        writer = WriterThread("test-writer")
        inject = Inject(at, error)
        ran: list[bool] = []

        def call() -> None:
            with inject:
                assert writer.try_run(lambda: ran.append(writer.on_thread), may_wait=may_wait)

        heard = on_thread(call)
        failure = _outcome(inject, heard, error)
        if failure is not None or at is None:
            return failure

        def check() -> None:
            assert ran in ([], [True])
            assert on_thread(lambda: writer.call_blocking(lambda: None)) is None
            assert role_free(writer), "the writer role was left held"
            assert writer._holder is None
            assert on_thread(lambda: writer.try_run(lambda: None, may_wait=True)) is True
            assert on_thread(writer.stop) is None

        return _checked(inject, check)

    assert sweep(scenario) == []


# -- the real manager and Ledger, interrupted in the main thread ---------------------------


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    opened = ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    )
    try:
        yield opened
    finally:
        # bounded: a close that hangs fails the test instead
        assert on_thread(opened.close) is None


def create(manager: ThreadSafePositionManager, symbol: str) -> str:
    return manager.thread_safe_create_position(
        symbol=symbol, side="long", entry_price=100, position_size=250, leverage=5
    )


def test_a_manager_command_interrupted_anywhere_in_the_main_thread_leaves_it_usable(
    manager: ThreadSafePositionManager,
) -> None:
    assert threading.current_thread() is threading.main_thread()
    ledger = manager.ledger
    create(manager, "WARMUSDT")
    counted = Inject(None)
    with counted:
        create(manager, "COUNTUSDT")
    assert counted.count > 20
    failures: list[str] = []
    for at in range(counted.count):
        inject = Inject(at)
        try:
            with inject:
                create(manager, f"S{at}USDT")
            heard: object = None
        except KeyboardInterrupt as exc:
            heard = exc
        failure = _outcome(inject, heard, KeyboardInterrupt)
        if failure is None:
            failure = _checked(inject, partial(_manager_usable, manager, at))
        if failure is not None:
            failures.append(failure)
            break  # the ledger may be stuck now: what follows would only repeat it
    assert failures == []
    assert isinstance(manager.db_path, Path)
    log = anyio.run(_stored, manager.db_path)
    assert book_state(ledger.book) == book_state(fold_records(log))


def _manager_usable(manager: ThreadSafePositionManager, at: int) -> None:
    writer = manager.ledger.store.writer
    assert on_thread(lambda: writer.call_blocking(lambda: None)) is None
    assert role_free(writer), "the writer role was left held"
    assert writer._holder is None
    queue = manager.ledger._queue()
    assert not queue._draining and not queue._pending, "the queue was left draining"
    other = on_thread(lambda: create(manager, f"T{at}USDT"))
    assert isinstance(other, str), other
    mine = create(manager, f"M{at}USDT")  # this thread's next write, its wake-ups its own
    assert isinstance(mine, str)


async def _stored(path: Path) -> list[Any]:
    from ledger.store.sqlite import SQLiteEventStore

    store = SQLiteEventStore(path, read_only=True)
    await store.open()
    try:
        return await store.read()
    finally:
        await store.close()


@pytest.mark.parametrize("tasks", [1, 3])
def test_a_ledger_command_interrupted_anywhere_on_a_main_thread_loop_leaves_it_usable(
    db_path: Path, tasks: int
) -> None:
    """A Ledger's command on an event loop of the main thread (`run_now`): alone, or the
    first of three started together (then it leads them as a group after a turn)."""
    assert threading.current_thread() is threading.main_thread()

    async def command(ledger: Ledger, name: str) -> None:
        await ledger.open_position(name, "buy", entry_price=100, qty=1, leverage=5)

    async def interrupted(ledger: Ledger, inject: Inject, name: str) -> object:
        others = [asyncio.ensure_future(command(ledger, f"{name}-{i}")) for i in range(1, tasks)]
        inject.task = asyncio.current_task()
        try:
            with inject:
                await command(ledger, name)
            heard: object = None
        except KeyboardInterrupt as exc:
            heard = exc
        await asyncio.gather(*others)
        return heard

    async def main() -> list[str]:
        failures: list[str] = []
        ledger = await Ledger(db_path, settings=SETTINGS).__aenter__()
        with anyio.fail_after(WATCHDOG):
            await command(ledger, "WARMUSDT")
            counted = Inject(None)
            await interrupted(ledger, counted, "COUNTUSDT")
            assert counted.count > 10
            for at in range(counted.count):
                inject = Inject(at)
                heard = await interrupted(ledger, inject, f"S{at}USDT")
                failure = _outcome(inject, heard, KeyboardInterrupt)
                if failure is None:
                    failure = await _ledger_usable(ledger, inject, at)
                if failure is not None:
                    return [failure]  # stuck: left open (its close would wait for ever)
        log = await _stored(db_path)
        assert book_state(ledger.book) == book_state(fold_records(log))
        # usable after every interrupt, so its close cannot wait for a role or a drainer
        await ledger.__aexit__(None, None, None)
        return failures

    assert anyio.run(main) == []


async def _ledger_usable(ledger: Ledger, inject: Inject, at: int) -> str | None:
    writer = ledger.store.writer
    queue = ledger._queue()
    try:
        await writer.call(lambda: None)  # what was handed over ran
        assert role_free(writer), "the writer role was left held"
        assert writer._holder is None
        assert not queue._draining and not queue._pending, "the queue was left draining"
        other = await anyio.to_thread.run_sync(
            lambda: on_thread(lambda: ledger.transact_blocking(opening(f"t{at}")))
        )
        assert isinstance(other, list), other
        await ledger.open_position(f"M{at}USDT", "buy", entry_price=100, qty=1, leverage=5)
    except AssertionError as failed:
        return f"{inject.where}: {failed}".splitlines()[0]
    return None


# -- a real signal, pending when the role's blocking acquire returns ------------------------


def _when_main_waits_in(function: str, then: Callable[[], None]) -> threading.Thread:
    """A thread that waits until the main thread's innermost frame is `function`, then runs
    then() (the main thread blocked in a C call made there)."""
    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        deadline = time.monotonic() + WATCHDOG
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == function:
                break
            time.sleep(0.001)  # polling a state the main thread is blocked in, not a race
        then()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread for the test, whatever this process
    inherited: a shell starts a background job (a CI step's `scripts/test &`) with SIGINT
    ignored, Python then leaves it ignored, and `_thread.interrupt_main()` does nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("sigint_raises")
def test_a_sigint_pending_when_a_bare_acquire_returns_leaks_the_lock_and_with_does_not() -> None:
    """What CPython 3.11 does (the claim the role's design rests on): a SIGINT made pending
    while the main thread waits in `lock.acquire()` raises right after the call returned the
    lock (before a following `try:` is entered); `with lock:` runs no handler between the
    C `__enter__` and its block, so its `__exit__` gives the lock back."""
    for form in ("bare", "with"):
        lock = threading.Lock()
        lock.acquire()

        def interrupt_then_free(lock: Any = lock) -> None:
            _thread.interrupt_main()
            lock.release()

        watcher = _when_main_waits_in(f"take_{form}", interrupt_then_free)
        with pytest.raises(KeyboardInterrupt):
            (_take_bare if form == "bare" else _take_with)(lock)
        watcher.join(WATCHDOG)
        if form == "bare":
            assert lock.locked(), "the bare acquire's lock was given back after all"
            lock.release()
        else:
            assert not lock.locked(), "with lock: leaked it"


def _take_bare(lock: Any) -> None:
    take_bare(lock)


def take_bare(lock: Any) -> None:
    lock.acquire()
    try:
        pass
    finally:
        lock.release()


def _take_with(lock: Any) -> None:
    take_with(lock)


def take_with(lock: Any) -> None:
    with lock:
        pass


@pytest.mark.usefixtures("sigint_raises")
def test_a_sigint_pending_when_a_leader_takes_the_role_leaves_the_store_usable(
    manager: ThreadSafePositionManager,
) -> None:
    """The main thread's command finds the role taken (the writer thread runs something),
    waits for it in `WriterThread.try_run`; a SIGINT arrives meanwhile and the role is
    freed: the acquire returns the role, the handler raises right there. The caller hears
    KeyboardInterrupt; the role is free, the next writes from threads and this thread run,
    and the manager closes (the fixture, bounded)."""
    assert threading.current_thread() is threading.main_thread()
    writer = manager.ledger.store.writer
    create(manager, "WARMUSDT")
    held, free = threading.Event(), threading.Event()

    def hold_role() -> None:
        held.set()
        assert free.wait(WATCHDOG)

    holder = threading.Thread(target=lambda: writer.call_blocking(hold_role), daemon=True)
    holder.start()
    assert held.wait(WATCHDOG)

    def interrupt_then_free() -> None:
        _thread.interrupt_main()
        free.set()

    watcher = _when_main_waits_in("try_run", interrupt_then_free)
    with pytest.raises(KeyboardInterrupt):
        create(manager, "SIGUSDT")
    watcher.join(WATCHDOG)
    holder.join(WATCHDOG)
    assert not holder.is_alive()
    _manager_usable(manager, 0)
