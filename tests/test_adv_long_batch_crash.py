"""Adversary: long batches (staged column by column, their rows dropped from the transaction
once inserted, before the COMMIT: 77a72a1, 240553d) appended by two tasks of a process killed
with a real SIGKILL at a random acknowledgement: every acknowledged batch is stored whole with
the seqs and hashes it was given, no batch is stored in part, the chain verifies, and a second
writer process (and then this one) goes on from the crashed log."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

from ledger.store.sqlite import SQLiteEventStore
from tests._adv_long_batch_worker import batch
from tests._worker_process import worker_process

TRIALS = 4
_ID = re.compile(r"^(r\d+-\d-\d+)-(\d+)of(\d+)$")


def _kill_at_an_ack(db: Path, runs: list[str], rng: random.Random) -> list[list[list[object]]]:
    """Writers (one process each, all on db at once), each killed -9 once it acknowledged a
    random number of batches; every batch each acknowledged."""
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                worker_process("tests._adv_long_batch_worker", str(db), run, stdin=True)
            )
            for run in runs
        ]
        lines: list[bytes] = []
        for proc in procs:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline() or b"{}")
            assert "ready" in ready, proc.stderr.read() if proc.stderr else ""
        for proc in procs:  # all at once
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for proc in procs:  # (the others write on meanwhile)
            assert proc.stdout is not None
            got = [proc.stdout.readline() for _ in range(rng.randint(1, 12))]
            assert all(line.endswith(b"\n") for line in got), "a writer ended early"
            lines += got
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            assert proc.wait() == -signal.SIGKILL
            assert proc.stdout is not None
            lines.append(proc.stdout.read())
    acked = []
    for output in lines:
        # a line not finished when its writer died was never acknowledged
        acked += [json.loads(raw)["batch"] for raw in output.split(b"\n")[:-1]]
    return acked


async def _check(db: Path, acked: list[list[list[object]]], tag: str) -> None:
    store = SQLiteEventStore(db)
    await store.open()
    try:
        records = await store.read()
        report = await store.verify_chain()
        assert report.events == len(records) == report.last_seq
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        by_seq = {r.seq: r for r in records}
        versions: dict[str, list[int]] = defaultdict(list)
        for record in records:  # each stream's versions gapless, whichever process wrote them
            versions[record.stream].append(record.version)
        assert all(v == list(range(1, len(v) + 1)) for v in versions.values()), versions
        for line in acked:
            seqs = [int(str(seq)) for seq, _, _ in line]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a batch split"
            for seq, event_id, digest in line:
                stored = by_seq.get(seq)  # type: ignore[call-overload]
                assert stored is not None, f"acknowledged seq {seq} lost"
                assert (stored.event_id, stored.hash) == (event_id, digest)
        parts: dict[str, list[int]] = defaultdict(list)
        sizes: dict[str, int] = {}
        for record in records:
            match = _ID.match(record.event_id)
            assert match is not None, record.event_id
            parts[match[1]].append(int(match[2]))
            sizes[match[1]] = int(match[3])
        for key, indexes in parts.items():  # each batch stored whole, in order, or not at all
            assert indexes == list(range(sizes[key])), f"batch {key} stored in part"
        # the log takes the next batch where the crashed writer left it
        more = await store.append(batch(tag, 0, 0))
        assert [r.seq for r in more] == list(range(len(records) + 1, len(records) + 1 + len(more)))
    finally:
        await store.close()


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_writer_of_long_batches_killed_9_loses_no_acknowledged_batch_and_splits_none(
    trial: int, tmp_path: Path
) -> None:
    rng = random.Random(9090 + trial)
    db = tmp_path / "ledger.db"
    acked_all: list[list[list[object]]] = []
    # one writer, then two at once on the crashed log (the same streams: each reads the
    # versions the others stored, its head often stale)
    for number, runs in enumerate((["r0"], ["r1", "r2"])):
        acked = _kill_at_an_ack(db, runs, rng)
        assert acked, "nothing acknowledged before the kill"
        acked_all.extend(acked)
        anyio.run(_check, db, acked_all, f"r5{number}")
