"""Shared by the interrupt tests: an interrupt injected before a chosen instruction (as a
signal's handler raises one in the main thread), a wait on another thread that fails the test
instead of hanging it, a group led by this thread (or by a task of its loop) holding other
threads' writes, and the sweep of a store's append after another store left its head stale."""

from __future__ import annotations

import asyncio
import contextlib
import dis
import gc
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import anyio
import pytest

import ledger.blocking
import ledger.service
import ledger.store.writer
from ledger.errors import StoreError
from ledger.store.base import EventStore
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import Completion, GroupCommit, WriterThread
from tests._events import lone_mark as event

NOP = dis.opmap["NOP"]
WATCHDOG = 10.0  # seconds a wait on a thread may take before it counts as hung
BOUND = 30.0  # the same for a whole write that must succeed (`bounded`)


def functions_of(*owners: type) -> set[CodeType]:
    """The code of every function a class defines (static methods included)."""
    codes: set[CodeType] = set()
    for owner in owners:
        for value in vars(owner).values():
            function = value.__func__ if isinstance(value, staticmethod) else value
            if callable(function) and hasattr(function, "__code__"):
                codes.add(function.__code__)
    return codes


# the write path a caller's thread runs (not a group's process: a job's own code is the
# domain of tests/test_adv_interrupt_after_commit.py and test_adv_fast_lane_interrupts.py)
WRITE_PATH = frozenset(
    functions_of(GroupCommit, WriterThread)
    | {Completion.wait_blocking.__code__, Completion._arm.__code__}
)
# the write path's lock code, file by file: the writer role and group commit, the manager,
# the Ledger's blocking and async command paths
LOCK_CODE = frozenset(
    {ledger.store.writer.__file__, ledger.blocking.__file__, ledger.service.__file__}
)


@pytest.fixture(autouse=True)
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector off for a test (see Inject.__enter__), on again after it: import
    it into each test module that injects (with `__all__` naming it, or ruff drops it)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


class Inject:
    """A trace function for this thread (`with` it, or `sys.settrace` it): counts the
    instructions it executes in `codes` (the write path unless told), or with `files` in any
    function of those files, and raises `error` just before the one numbered `at` (from 0;
    never, with at=None), once; `where` names it. With `task` set, in that asyncio task's
    frames only. A NOP (a `try:` line) is passed over unless `nops`: no signal's handler runs
    there in CPython (and the compiler leaves it out of the exception table), but a trace's
    exception raised there escapes the `try` it opens, a harsher attack."""

    def __init__(
        self,
        at: int | None,
        error: type[BaseException] = KeyboardInterrupt,
        codes: Collection[CodeType] = WRITE_PATH,
        *,
        files: Collection[str] | None = None,
        task: asyncio.Task[Any] | None = None,
        nops: bool = False,
    ) -> None:
        self.at, self.error, self.codes, self.files = at, error, codes, files
        self.task, self.nops = task, nops
        self.count = 0
        self.where: str | None = None
        self.within = False  # set by `with`: this thread's trace for the block, ended at the raise

    def _local(self, frame: FrameType, event: str, arg: object) -> Any:
        # once raised it raises no more; set with sys.settrace, it goes on tracing (another
        # task of this thread may have set its own trace since, which settrace(None) would end)
        if event == "opcode" and self.where is None:
            code = frame.f_code
            if self.nops or code.co_code[frame.f_lasti] != NOP:
                if self.count == self.at:
                    self.where = (
                        f"#{self.at} {code.co_qualname} line {frame.f_lineno}"
                        f" offset {frame.f_lasti}"
                    )
                    if self.within:
                        sys.settrace(None)
                    raise self.error(f"injected at {self.where}")
                self.count += 1
        return self._local

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        code = frame.f_code
        if (code in self.codes if self.files is None else code.co_filename in self.files) and (
            self.task is None or asyncio.current_task() is self.task
        ):
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self._local
        return None

    def __enter__(self) -> Inject:
        # what an earlier run left to the cyclic collector (a generator of the write path
        # interrupted there) is finalized now, untraced: with the collector off meanwhile
        # (no_cyclic_gc), a collection can never run it, traced, at a point that depends on
        # allocations, which made the instructions counted differ from run to run (a young
        # collection: what an older generation holds waits, uncollected, for the test's end)
        gc.collect(0)
        self.within = True
        sys.settrace(self)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


def outcome_of(work: Callable[[], object]) -> object:
    """What work() ended with: its result, or the exception it raised (the injected one too)."""
    try:
        return work()
    except BaseException as exc:  # handed to the test
        return exc


def on_thread(work: Callable[[], object], limit: float = WATCHDOG, what: str = "it") -> object:
    """work() on a fresh daemon thread, joined with a bound that fails the test when it
    passes: its result, or the exception it raised."""
    box: list[object] = []

    def body() -> None:
        try:
            box.append(work())
        except BaseException as exc:  # the injected one too: handed to the test
            box.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"{what}: hung"
    return box[0]


def bounded(work: Callable[[], object], what: str, limit: float = BOUND) -> object:
    """`on_thread`, for work that must succeed: an exception fails the test too."""
    outcome = on_thread(work, limit, what)
    if isinstance(outcome, BaseException):
        raise AssertionError(f"{what}: {outcome!r}") from outcome
    return outcome


@contextlib.contextmanager
def normal_store(path: Path) -> Iterator[SQLiteEventStore]:
    """An open SQLite store at synchronous=NORMAL for the append sweeps; closed on a thread of
    its own, bounded: a close that hangs fails instead."""
    opened = SQLiteEventStore(path, synchronous="NORMAL")
    anyio.run(opened.open)
    try:
        yield opened
    finally:
        assert on_thread(lambda: anyio.run(opened.close)) is None


def counting_entries(
    commits: GroupCommit[Any], *, followers_only: bool = False
) -> threading.Semaphore:
    """Released once per caller that has entered the queue (led, or queued its job); with
    followers_only, once per caller that queued its job behind a lead."""
    entered = threading.Semaphore(0)
    real_enter = commits._enter

    def counted_enter(job: Any) -> bool:
        leads = real_enter(job)
        if not (leads and followers_only):
            entered.release()
        return leads

    commits._enter = counted_enter  # type: ignore[method-assign]
    return entered


class LedGroup:
    """This thread's next write to `queue` leads a group holding other threads' writes: the
    writer thread holds the role until each of them is queued behind the leader's (counted
    as it queues, in `GroupCommit._enter`: no sleep), then lets it go, and the leader, which
    waited for the role, runs them all as one group."""

    def __init__(self, queue: GroupCommit[Any], writer: WriterThread, limit: float = WATCHDOG):
        self.queue, self.writer, self.limit = queue, writer, limit
        self.leader: int | None = None  # while it runs: the leading thread
        self.lead_in = threading.Event()
        self.others_in = threading.Semaphore(0)
        self.real_enter = queue._enter
        queue._enter = self._counted_enter  # type: ignore[method-assign]

    def _counted_enter(self, job: Any) -> bool:
        leads = self.real_enter(job)
        if self.leader is None:  # a write outside `run`: nothing to count
            return leads
        if threading.get_ident() == self.leader:
            self.lead_in.set()
        else:
            self.others_in.release()
        return leads

    def restore(self) -> None:
        """The queue as it was."""
        self.queue._enter = self.real_enter  # type: ignore[method-assign]

    def run(
        self, lead: Callable[[], object], follows: Sequence[Callable[[], object]]
    ) -> tuple[object, list[object]]:
        """lead() on this thread, leading the group of each of follows() on a thread of its
        own: what each heard (its result, or the exception it raised)."""
        self.lead_in, self.others_in = threading.Event(), threading.Semaphore(0)
        self.leader = threading.get_ident()
        hold, held = threading.Event(), threading.Event()

        def holding() -> None:
            held.set()
            hold.wait(self.limit)

        self.writer.submit(holding)
        assert held.wait(self.limit)
        heard: list[object] = [None] * len(follows)

        def follow(i: int) -> None:
            try:
                heard[i] = follows[i]()
            except BaseException as exc:  # handed to the test
                heard[i] = exc

        followers = [
            threading.Thread(target=follow, args=(i,), daemon=True) for i in range(len(follows))
        ]

        def start_followers_then_release() -> None:
            try:
                assert self.lead_in.wait(self.limit)
                for thread in followers:
                    thread.start()
                for _ in followers:
                    assert self.others_in.acquire(timeout=self.limit)
            finally:
                hold.set()

        starter = threading.Thread(target=start_followers_then_release, daemon=True)
        starter.start()
        try:
            led = lead()
        except BaseException as exc:  # handed to the test
            led = exc
        finally:
            self.lead_in.set()  # interrupted before it led: the followers go on all the same
        for thread in [starter, *followers]:
            thread.join(self.limit)
            assert not thread.is_alive(), "a follower was never woken"
        self.leader = None
        return led, heard


def task_leads_a_group(
    store: EventStore, inject: Inject, queued: threading.Semaphore, *, lead: str, follow: str
) -> tuple[object, object]:
    """An asyncio task of this thread (a fresh loop) appends [event(lead)] to store, with
    inject tracing that task's frames, and leads a group on its loop: in the task's turn,
    another thread's `append_blocking` of [event(follow)] queues behind it (queued: released
    once it has, `counting_entries(..., followers_only=True)`). What each heard: its records,
    or the exception it raised (the task's, as asyncio.run raised it)."""
    followed: list[object] = []
    follower = threading.Thread(
        target=lambda: followed.append(outcome_of(partial(store.append_blocking, [event(follow)]))),
        daemon=True,
    )

    async def leading() -> object:
        inject.task = asyncio.current_task()
        sys.settrace(inject)
        try:
            return await store.append([event(lead)])
        finally:
            sys.settrace(None)

    async def queue_follower() -> None:  # runs in the leader's turn
        follower.start()
        assert queued.acquire(timeout=WATCHDOG)

    tasks: list[asyncio.Task[Any]] = []

    async def scenario() -> object:
        tasks.append(leader := asyncio.create_task(leading()))
        tasks.append(following := asyncio.create_task(queue_follower()))
        await following
        return await leader

    led = outcome_of(partial(asyncio.run, scenario()))
    for task in tasks:  # the interrupt a task ended with, retrieved: never logged later by
        if task.done() and not task.cancelled():  # its finalizer, in another test's import
            task.exception()
    follower.join(WATCHDOG)
    assert not follower.is_alive(), "the follower was never woken"
    return led, followed[0]


def sweep_with_a_stale_head(
    mine: EventStore,
    other: EventStore,
    codes: frozenset[CodeType],
    *,
    at_least: int,
    reader: Callable[[], EventStore],
) -> list[str]:
    """An interrupt before each instruction of codes in turn (Inject), in an append of mine
    made after other's commits left mine's head stale; after each, both stores append again
    and the log is checked by a fresh reader() (`log_problem`). The first failure, if any
    (the later writes chain on it); both stores closed. at_least: how many instructions the
    sweep must cover (it goes through the tail read and the run again)."""
    failures: list[str] = []
    try:
        mine.append_blocking([event("warm")])
        other.append_blocking([event("o-warm-1"), event("o-warm-2")])  # mine's head stale
        counted = Inject(None, codes=codes)
        with counted:
            mine.append_blocking([event("counted")])
        assert counted.count > at_least
        for at in range(counted.count):
            other.append_blocking([event(f"o{at}-1"), event(f"o{at}-2")])
            inject = Inject(at, codes=codes)
            try:
                with inject:
                    mine.append_blocking([event(f"m{at}")])
            except (KeyboardInterrupt, StoreError):
                pass
            mine.append_blocking([event(f"after{at}")])
            other.append_blocking([event(f"o-after{at}")])
            mine.append_blocking([event(f"again{at}")])
            problem = anyio.run(log_problem, reader())
            if problem:
                failures.append(f"{inject.where}: {problem}")
                break
    finally:
        anyio.run(mine.close)
        anyio.run(other.close)
    return failures


async def log_problem(store: EventStore) -> str | None:
    """What is wrong with the log store (opened here, closed after) reads: a chain that fails
    verification, or an event stored twice; None when it is whole."""
    await store.open()
    try:
        ids = [record.event_id for record in await store.read()]
        try:
            checked = (await store.verify_chain()).events
        except StoreError as broken:
            return str(broken)
        if checked != len(ids) or len(ids) != len(set(ids)):
            return f"the log {ids[-4:]}"
        return None
    finally:
        await store.close()
