"""A task's lone lane (`GroupCommit.run_now` deciding holding the writer role, without the
queue's lock): it is taken by a task's sequential write once its loop is led from, and an
interrupt at any instruction of it leaves the queue and the role usable.

The lane is only taken on a loop whose last lead skipped nothing to join it: each scenario
first writes once untraced (that write leads after a turn of its loop), then sweeps the next
write, which takes the lane, as tests/test_write_role_interrupts.py sweeps a first write.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import anyio
import pytest

from ledger.store.writer import GroupCommit, WriterThread, deferred_completion
from tests._interrupts import WATCHDOG, Inject, no_cyclic_gc, on_thread
from tests.test_write_role_interrupts import (
    ERRORS,
    Job,
    Recorder,
    assert_usable,
    sweep,
)

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)


class CountingLock:
    """The queue's lock, counting its acquisitions (what the lane must not take)."""

    def __init__(self, lock: object) -> None:
        self._lock = lock
        self.acquired = 0

    def acquire(self, blocking: bool = True) -> bool:
        self.acquired += 1
        return bool(self._lock.acquire(blocking))  # type: ignore[attr-defined]

    def release(self) -> None:
        self._lock.release()  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def test_a_tasks_second_write_takes_the_lone_lane_without_the_queues_lock() -> None:
    writer = WriterThread("test-writer")
    process = Recorder()
    commits: GroupCommit[Job] = GroupCommit(writer, process)
    counting = CountingLock(commits._lock)
    commits._lock = counting  # type: ignore[assignment]
    taken: list[int] = []

    async def write(name: str) -> None:
        before = counting.acquired
        job = Job(name, deferred_completion())
        waiting = commits.run_now(job)
        if waiting is not None:
            await waiting
        taken.append(counting.acquired - before)

    async def main() -> None:
        with anyio.fail_after(WATCHDOG):
            for name in ("first", "second", "third"):
                await write(name)

    try:
        assert on_thread(lambda: asyncio.run(main())) is None
    finally:
        writer.stop()
    assert process.ran == ["first", "second", "third"]
    # the first leads through the queue (after a turn of its loop); the next ones run alone
    assert taken[0] > 0 and taken[1:] == [0, 0]
    assert not commits._draining and not commits._pending


@pytest.mark.parametrize("error", ERRORS)
def test_a_write_in_the_lone_lane_interrupted_anywhere_leaves_the_queue_usable(
    error: type[BaseException],
) -> None:
    def scenario(at: int | None) -> str | None:
        writer = WriterThread("test-writer")
        process = Recorder()
        commits: GroupCommit[Job] = GroupCommit(writer, process)
        inject = Inject(at, error)
        heard: list[BaseException | None] = []

        async def write(name: str) -> None:
            job = Job(name, deferred_completion())
            waiting = commits.run_now(job)
            if waiting is not None:
                await waiting

        async def main() -> None:
            with anyio.fail_after(WATCHDOG):
                await write("led")  # untraced: the loop is led from now on
                try:
                    with inject:
                        await write("lone")
                    heard.append(None)
                except BaseException as exc:  # the injected one: what this caller heard
                    heard.append(exc)

        crashed = on_thread(lambda: asyncio.run(main()))
        if crashed is not None:
            return f"{inject.where}: the loop's caller heard {crashed!r}"
        if inject.at is None:
            # the lane was taken: the lone write ran without a turn of its loop
            return (
                str(inject.count)
                if heard == [None] and process.ran == ["led", "lone"]
                else (f"not run alone: heard {heard!r}, ran {process.ran!r}")
            )
        if inject.where is None:
            return None if heard == [None] else f"no interrupt, yet heard {heard!r}"
        if [type(exc) for exc in heard] != [error]:
            return f"{inject.where}: heard {heard!r}"
        try:
            assert_usable(writer, commits, process)
        except AssertionError as failed:
            return f"{inject.where}: {failed}".splitlines()[0]
        return None

    assert sweep(scenario) == []
