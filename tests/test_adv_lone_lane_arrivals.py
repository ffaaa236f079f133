"""Adversary: arrivals while a task's lone write holds the writer role without the queue's
lock (the lone lane of `GroupCommit.run_now`, see DESIGN in ledger/store/writer.py).

The lone write's decider (it runs holding the role, on the task's loop, nobody draining)
stops there until the others have arrived and are waiting, then decides (or raises): a plain
thread's blocking command (`Ledger.transact_blocking`, the ThreadSafePositionManager's path)
and a task of a second event loop on its own thread, in both orders. Every interleaving is
forced by Events set where each arrival parks (a wrapped queue method or deque append), never
by a sleep. Each caller hears its own outcome, each acknowledged event is in the log once,
the chain verifies, and the queue and the role end idle.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ledger.envelope import Recorded
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from projections.book import Book
from tests.test_write_role import opening
from tests.test_write_role_attacks import WATCHDOG, log_of, run_on_own_loop
from tests.test_write_role_interrupts import role_free

SETTINGS = Settings(max_concurrent_positions=10_000)


class _Signalling(deque[Any]):
    """The queue's pending deque, signalling each append (a follower queued)."""

    def __init__(self, queued: threading.Semaphore) -> None:
        super().__init__()
        self.queued = queued

    def append(self, job: Any) -> None:
        super().append(job)
        self.queued.release()


def _heard(work: Callable[[], object]) -> object:
    try:
        return work()
    except BaseException as exc:  # handed to the test
        return exc


@pytest.mark.parametrize("order", ["thread-first", "loop-first"])
@pytest.mark.parametrize("decides", ["plans", "raises"])
def test_arrivals_while_a_lone_write_holds_the_role(
    db_path: Path, order: str, decides: str
) -> None:
    heard: dict[str, object] = {}
    seen: dict[str, object] = {}

    async def main() -> None:
        async with Ledger(db_path, settings=SETTINGS) as ledger:
            await ledger.transact(opening("warm1"))  # leads after a turn of its loop
            await ledger.transact(opening("warm2"))  # the lane from now on
            queue = ledger._jobs
            assert queue is not None
            writer = ledger.store.writer
            loop_thread = threading.get_ident()
            thread_parked = threading.Event()
            loop_parked = threading.Event()
            followed = threading.Semaphore(0)
            real_queue_alone = queue._queue_alone
            real_submit = writer.submit
            second_loop: list[int] = []

            def queue_alone(job: Any) -> None:  # a plain leader that found the role taken
                real_queue_alone(job)
                thread_parked.set()

            def submit(fn: Callable[[], None]) -> None:  # a task leader handing over
                real_submit(fn)
                if second_loop and threading.get_ident() == second_loop[0]:
                    loop_parked.set()

            queue._queue_alone = queue_alone  # type: ignore[method-assign]
            writer.submit = submit  # type: ignore[method-assign]
            pending = _Signalling(followed)
            pending.extend(queue._pending)
            queue._pending = pending

            def blocking() -> None:
                heard["thread"] = _heard(lambda: ledger.transact_blocking(opening("thread")))

            def other_loop() -> None:
                second_loop.append(threading.get_ident())

                async def write() -> list[Recorded]:
                    return await ledger.transact(opening("other"))

                heard["loop"] = _heard(lambda: asyncio.run(write()))

            arrivals = [
                threading.Thread(target=blocking, daemon=True),
                threading.Thread(target=other_loop, daemon=True),
            ]
            if order == "loop-first":
                arrivals.reverse()

            def lone(book: Book) -> Sequence[Plan]:
                seen["draining"] = queue._draining
                seen["on_loop"] = threading.get_ident() == loop_thread
                seen["held"] = writer._holder == loop_thread
                first, second = arrivals
                first.start()
                # the first arrival leads (nobody drains): a thread waits for the role, a
                # task hands its group to the writer thread; the second one follows
                assert (thread_parked if order == "thread-first" else loop_parked).wait(WATCHDOG)
                second.start()
                assert followed.acquire(timeout=WATCHDOG)
                if decides == "raises":
                    raise ValueError("the lone decider fails")
                return opening("lone")(book)

            heard["lone"] = await _async_heard(ledger.transact(lone))
            for thread in arrivals:
                await asyncio.to_thread(thread.join, WATCHDOG)
                assert not thread.is_alive(), "an arrival was never woken"
            queue._queue_alone = real_queue_alone  # type: ignore[method-assign]
            writer.submit = real_submit  # type: ignore[method-assign]
            # the queue and the role idle; the ledger goes on writing
            assert not queue._draining and not queue._pending
            assert await asyncio.to_thread(role_free, writer)
            await ledger.transact(opening("after"))

    run_on_own_loop(main)
    assert seen == {"draining": False, "on_loop": True, "held": True}, "the lane not taken"
    if decides == "raises":
        assert isinstance(heard["lone"], ValueError), heard
    for who in ("thread", "loop") + (("lone",) if decides == "plans" else ()):
        assert isinstance(heard[who], list) and len(heard[who]) == 1, (who, heard[who])  # type: ignore[arg-type]
    records = asyncio.run(log_of(db_path))
    acknowledged = [
        record
        for who in ("lone", "thread", "loop")
        if isinstance(heard[who], list)
        for record in heard[who]  # type: ignore[attr-defined]
    ]
    by_id = {record.event_id: record for record in records}
    assert [by_id.get(record.event_id) for record in acknowledged] == acknowledged
    expected = {"warm1", "warm2", "thread", "other", "after"} | (
        {"lone"} if decides == "plans" else set()
    )
    opened = [getattr(record.event, "position_id", None) for record in records]
    assert sorted(map(str, opened)) == sorted(expected)  # each once, the failed one never


async def _async_heard(work: Any) -> object:
    try:
        return await work
    except BaseException as exc:  # handed to the test
        return exc
