"""Ledger.subscribe: catch up from the log, then live (this process and others), never in the way.

The seed's "update adaptive memory, trigger AI analysis" on close becomes a subscriber:
`async for record in ledger.subscribe(from_seq=...)`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import anyio
import pytest

from ledger.envelope import Recorded
from ledger.events import PositionClosed, PositionMarked, PositionOpened
from ledger.service import Ledger

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def stream(ledger: Ledger, from_seq: int = 0, poll: float = 0.25) -> AsyncGenerator[Recorded]:
    return cast(AsyncGenerator[Recorded], ledger.subscribe(from_seq, poll_interval=poll))


async def open_some(ledger: Ledger, count: int, start: int = 0) -> list[str]:
    ids = []
    for n in range(start, start + count):
        position = await ledger.open_position(
            f"C{n}/USDT:USDT", "buy", entry_price="10", qty="1", leverage=5
        )
        ids.append(position.position_id)
    return ids


async def test_catch_up_from_the_log_then_live(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        opened = await open_some(ledger, 3)
        # a long poll interval: live events must come from the append itself, not a poll
        records = stream(ledger, poll=60)
        with anyio.fail_after(5):
            caught_up = [await anext(records) for _ in range(3)]
            assert [r.seq for r in caught_up] == [1, 2, 3]
            assert [r.event.position_id for r in caught_up] == opened  # type: ignore[union-attr]
            await ledger.mark(opened[0], "11")
            await ledger.close_position(opened[1], price="12", reason="tp")
            live = [await anext(records) for _ in range(2)]
        assert [r.seq for r in live] == [4, 5]
        assert isinstance(live[0].event, PositionMarked)
        assert isinstance(live[1].event, PositionClosed)
        await records.aclose()


async def test_from_seq_starts_after_that_event(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await open_some(ledger, 4)
        records = stream(ledger, from_seq=2)
        with anyio.fail_after(5):
            assert (await anext(records)).seq == 3
        await records.aclose()


async def balances(ledger: Ledger, count: int) -> None:
    for n in range(count):
        await ledger.observe_balance(1000 + n, 900)


async def test_appends_during_catch_up_are_neither_lost_nor_repeated(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await balances(ledger, 40)
        seen: list[int] = []

        async def subscriber() -> None:
            async for record in ledger.subscribe():
                seen.append(record.seq)
                if record.seq == 80:
                    return

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(subscriber)
                await balances(ledger, 40)
        assert seen == list(range(1, 81))


CHILD = """
import sys
import anyio
from ledger.service import Ledger

async def main(db: str) -> None:
    async with Ledger(db) as ledger:
        position = await ledger.open_position(
            "XRP/USDT:USDT", "sell", entry_price="0.5", qty="100", leverage=3
        )
        await ledger.mark(position.position_id, "0.49")
        print(position.position_id, flush=True)

anyio.run(main, sys.argv[1])
"""


async def test_events_appended_by_another_process_arrive(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await open_some(ledger, 1)
        live = anyio.Event()
        received: list[Recorded] = []

        async def subscriber() -> None:
            async for record in ledger.subscribe(poll_interval=0.05):
                received.append(record)
                live.set()  # caught up: from here on it waits for new events
                if len(received) == 3:
                    return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(subscriber)
                await live.wait()
                result = await anyio.run_process(
                    [sys.executable, "-c", CHILD, str(db_path)], cwd=ROOT, check=True
                )
        child_position = result.stdout.decode().strip()
        _, opened, marked = received
        assert isinstance(opened.event, PositionOpened)
        assert opened.event.position_id == child_position and opened.seq == 2
        assert isinstance(marked.event, PositionMarked) and marked.seq == 3
        assert ledger.get_position(child_position) is None  # appended elsewhere: not applied yet


async def test_a_stalled_subscriber_never_holds_up_appends(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        (position_id,) = await open_some(ledger, 1)
        gate = anyio.Event()
        first = anyio.Event()
        seen: list[int] = []

        async def stalled() -> None:
            async for record in ledger.subscribe():
                seen.append(record.seq)
                first.set()
                await gate.wait()  # a subscriber busy with something slow
                if record.seq == 201:
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(stalled)
            with anyio.fail_after(5):
                await first.wait()
            with anyio.fail_after(30):
                for n in range(200):
                    await ledger.mark(position_id, str(10 + n % 7))
            assert ledger.last_seq == 201 and seen == [1]  # appended while it waited
            gate.set()
        assert seen == list(range(1, 202))


async def test_a_failing_subscriber_breaks_only_itself(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        (position_id,) = await open_some(ledger, 1)
        healthy: list[int] = []

        async def failing() -> None:
            async for _ in ledger.subscribe():
                raise RuntimeError("the AI analysis crashed")

        async def watching() -> None:
            async for record in ledger.subscribe():
                healthy.append(record.seq)
                if record.seq == 3:
                    return

        with pytest.raises(RuntimeError, match="AI analysis"):
            await failing()
        async with anyio.create_task_group() as group:
            group.start_soon(watching)
            with anyio.fail_after(10):
                await ledger.mark(position_id, "11")
                await ledger.close_position(position_id, price="12")
        assert healthy == [1, 2, 3]
        position = ledger.get_position(position_id)
        assert position is not None and not position.is_open


async def test_cancelling_a_waiting_subscriber_leaves_the_ledger_working(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await open_some(ledger, 1)
        with anyio.move_on_after(0.05):
            async for _ in ledger.subscribe(from_seq=ledger.last_seq):
                pass  # nothing comes: cancelled while waiting
        await open_some(ledger, 1, start=1)
        assert ledger.last_seq == 2
