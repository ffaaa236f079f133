"""Adversary: sequential appends led inline on asyncio (5ee67d2's one-row optimistic insert,
550ba67's long batches) from three processes on one file, one killed with SIGKILL mid-way.
Each process's head goes stale at every turn of the others, so the one-row insert meets seq
head+1 taken, long batches are decided again after the tail, and ids appended by every process
meet the one stored first. Every acknowledged event is in the log as acknowledged, an id
appended by several is stored once and acknowledged the same to each, stream versions are
consecutive and the chain verifies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from ledger.store.sqlite import SQLiteEventStore
from tests._worker_process import kill_9, worker_process

ROUNDS = 40


def _read_acks(proc: Any, acks: list[list[Any]], upto: int | None) -> None:
    """Read acknowledgement lines until upto of them (None: until the worker is done)."""
    while upto is None or len(acks) < upto:
        line = proc.stdout.readline()
        assert line.endswith(b"\n"), proc.stderr.read().decode()
        message = json.loads(line)
        if isinstance(message, dict):
            assert "done" in message
            return
        acks.extend(message)


def test_three_processes_appending_inline_one_killed_keep_one_chain(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    acks: list[list[Any]] = []
    with (
        worker_process("tests._adv_append_worker", str(db), "a", str(ROUNDS)) as a,
        worker_process("tests._adv_append_worker", str(db), "b", str(ROUNDS)) as b,
        worker_process("tests._adv_append_worker", str(db), "c", str(ROUNDS)) as c,
    ):
        for proc in (a, b, c):
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline() or b"{}")
            assert "ready" in ready, proc.stderr.read() if proc.stderr else ""
        killed: list[list[Any]] = []
        _read_acks(a, killed, 200)  # well into its run, mid-way through the others'
        kill_9(a)
        acks.extend(killed)
        for proc in (b, c):
            mine: list[list[Any]] = []
            _read_acks(proc, mine, None)
            acks.extend(mine)
            assert proc.wait() == 0

    async def check() -> None:
        store = SQLiteEventStore(db, read_only=True)
        await store.open()
        try:
            await store.verify_chain()
            records = await store.read()
        finally:
            await store.close()
        by_seq = {r.seq: r for r in records}
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        ids = [r.event_id for r in records]
        assert len(ids) == len(set(ids)), "an id stored twice"
        versions: dict[str, int] = {}
        for record in records:
            versions[record.stream] = versions.get(record.stream, 0) + 1
            assert record.version == versions[record.stream]
        seen: dict[str, list[Any]] = {}
        for seq, event_id, digest, stream, version in acks:
            stored = by_seq.get(seq)
            assert stored is not None, f"acknowledged seq {seq} lost"
            assert (stored.event_id, stored.hash, stored.stream, stored.version) == (
                event_id,
                digest,
                stream,
                version,
            )
            before = seen.setdefault(event_id, [seq, digest])
            assert before == [seq, digest], f"{event_id} acknowledged differently"
        # the surviving workers ran every round: each of their ids is stored
        for tag in ("b", "c"):
            long_batches, singles = ROUNDS // 4, ROUNDS // 2  # rounds 1 and 0 (mod 4, 2)
            assert sum(1 for i in ids if i.startswith(f"{tag}-")) == long_batches * 40 + singles
        assert sum(1 for i in ids if i.startswith("shared-")) == ROUNDS // 4

    anyio.run(check)
