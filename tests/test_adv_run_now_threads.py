"""Adversary: one store appended to at once from the loop it was opened on, from three other
event loops on their own threads (several tasks each: `GroupCommit.run_now` leads a task's job
alone, others follow or are handed to the writer thread) and from two plain threads
(`append_blocking`), single events and long batches alike, each caller on its own streams
with the expected version it last saw (c7482e3, 1660608: deferred completions, the inlined
head publish, the per-queue skipped-yield count). No caller ever meets a version conflict (each
stream's versions are only its caller's), nothing is lost or doubled, every acknowledgement is
in the log as acknowledged, versions are consecutive and the chain verifies."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import NewEvent, Recorded
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio

ROUNDS = 24


def _batch(stream: str, round_: int) -> list[NewEvent]:
    size = 33 if round_ % 3 == 2 else 1  # a long batch every third round
    at = datetime.now(UTC)
    return [
        NewEvent(
            stream=stream,
            event=PositionMarked(position_id=stream, mark_price=Decimal(f"{round_}.{j}")),
            event_id=f"{stream}/{round_}/{j}",
            occurred_at=at,
        )
        for j in range(size)
    ]


async def test_loops_threads_and_tasks_appending_to_one_store_keep_every_stream_in_order(
    db_path: Path,
) -> None:
    store = SQLiteEventStore(db_path, synchronous="NORMAL")
    await store.open()
    acked: list[Recorded] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def note(records: list[Recorded]) -> None:
        with lock:
            acked.extend(records)

    async def task_writer(stream: str) -> None:
        version = 0
        for round_ in range(ROUNDS):
            batch = _batch(stream, round_)
            records = await store.append(batch, expected_versions={stream: version})
            assert [r.version for r in records] == list(
                range(version + 1, version + 1 + len(batch))
            )
            version += len(batch)
            note(records)

    async def loop_main(tag: str) -> None:
        async with anyio.create_task_group() as group:
            for t in range(3):
                group.start_soon(task_writer, f"{tag}-t{t}")

    def loop_thread(tag: str) -> None:
        try:
            asyncio.run(loop_main(tag))
        except BaseException as exc:  # handed to the test below
            failures.append(exc)

    def blocking_thread(stream: str) -> None:
        try:
            version = 0
            for round_ in range(ROUNDS):
                batch = _batch(stream, round_)
                records = store.append_blocking(batch, expected_versions={stream: version})
                version += len(batch)
                note(records)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(f"loop{i}",)) for i in range(3)]
    threads += [threading.Thread(target=blocking_thread, args=(f"plain{i}",)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        await loop_main("main")
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join)
        assert not failures, failures
        await store.verify_chain()
        records = await store.read()
    finally:
        await store.close()
    streams = [f"loop{i}-t{t}" for i in range(3) for t in range(3)]
    streams += [f"main-t{t}" for t in range(3)] + ["plain0", "plain1"]
    per_stream = sum(len(_batch("x", r)) for r in range(ROUNDS))
    assert len(records) == len(streams) * per_stream
    assert sorted((r.seq, r.event_id, r.hash) for r in acked) == [
        (r.seq, r.event_id, r.hash) for r in records
    ]
    versions: dict[str, int] = {}
    for record in records:
        versions[record.stream] = versions.get(record.stream, 0) + 1
        assert record.version == versions[record.stream]
        assert record.event_id.startswith(f"{record.stream}/")
    assert versions == dict.fromkeys(streams, per_stream)
