"""A writer process killed with SIGKILL at random moments loses nothing it acknowledged.

Each trial starts `python -m tests._workers crash ...` (a Ledger appending continuously with
synchronous=FULL, printing every acknowledged command's seqs, ids and hashes), kills it after a
random number of acknowledgements, then audits the database and starts a Ledger on it.
CRASH_TRIALS=N runs more trials; CRASH_SEED=S replays a failing run (the seed is in every
failure message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.commands import OpenPosition
from ledger.errors import SnapshotError
from ledger.service import Ledger
from ledger.values import Side
from projections.snapshot import decode_snapshot
from tests._workers import audit_log, book_state, crash_settings, kind

ROOT = Path(__file__).resolve().parents[1]
CRASH_TRIALS = int(os.environ.get("CRASH_TRIALS", "20"))
CRASH_SEED = int(os.environ.get("CRASH_SEED", "8081"))
STYLES = ("mid-commit", "during-snapshot", "random")
WATCHDOG_SECONDS = 30.0
KILL_JITTER_SECONDS = 0.0025


def _run_and_kill(
    db: Path, snapshot_every: int, run: str, style: str, rng: random.Random
) -> tuple[int, list[dict[str, Any]], int]:
    """Start the writer, SIGKILL it at a random ack; returns (ready seq, acks, acks wanted)."""
    errors = db.with_name(f"writer-{run}.stderr")
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests._workers", "crash", str(db), str(snapshot_every), run],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    watchdog = threading.Timer(WATCHDOG_SECONDS, proc.kill)
    watchdog.start()
    assert proc.stdout is not None
    try:
        ready = json.loads(proc.stdout.readline() or b"{}").get("ready")
        assert isinstance(ready, int), errors.read_text()
        wanted = rng.randint(1, 80)
        received: list[bytes] = []
        acked = 0
        while True:
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), f"writer ended early: {errors.read_text()}"
            received.append(line)
            message = json.loads(line)
            acked += "events" in message
            if acked < wanted:
                continue
            if style == "random":
                break
            # mid-commit: the writer is inserting and committing a transaction that holds
            # an exit of all that is left and its close (two events of one command)
            if style == "mid-commit" and "committing" in message:
                break
            # during-snapshot: the writer has just started writing positions.json
            if style == "during-snapshot" and "snapshot" in message:
                break
        if style != "random":
            # the announcement comes just before the commit (or the snapshot) starts: a
            # random few milliseconds more put the kill before, inside or after it
            time.sleep(rng.uniform(0, KILL_JITTER_SECONDS))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        output = b"".join(received) + proc.stdout.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # a line the writer had not finished writing was never acknowledged
    messages = [json.loads(raw) for raw in output.split(b"\n")[:-1]]
    acks = [message for message in messages if "events" in message]
    return ready, acks, wanted


async def _check_after_crash(
    db: Path, snapshot_every: int, acks: list[dict[str, Any]], run: str
) -> int:
    audit = await audit_log(db)
    by_seq = {r.seq: r for r in audit.records}
    for ack in acks:
        seqs = [seq for seq, _, _, _ in ack["events"]]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"command split: {ack}"
        for seq, event_id, digest, event_kind in ack["events"]:
            stored = by_seq.get(seq)
            assert stored is not None, f"acknowledged seq {seq} lost ({ack})"
            assert (stored.event_id, stored.hash, kind(stored)) == (event_id, digest, event_kind)
        if ack["step"] == "exit-all":
            assert [k for *_, k in ack["events"]] == ["PartialExitRecorded", "PositionClosed"]

    # the snapshot is whole (atomic rename) and is trusted exactly when it matches the log
    snapshot = db.with_name("positions.json")
    try:
        saved = decode_snapshot(snapshot.read_bytes())
    except (FileNotFoundError, SnapshotError) as exc:
        raise AssertionError(f"positions.json unusable after SIGKILL: {exc}") from exc
    stored = by_seq.get(saved.last_seq)
    matches = saved.last_seq == 0 or (stored is not None and stored.hash == saved.last_hash)
    if saved.last_seq > len(audit.records):
        assert not matches

    async with Ledger(db, settings=crash_settings(snapshot_every)) as ledger:
        assert ledger.rebuilt_on_start is not matches
        assert book_state(ledger.book) == book_state(audit.fold)
        await ledger.execute(
            OpenPosition(
                position_id=f"after-{run}",
                symbol=f"AFTER{run}USDT",
                side=Side.SELL,
                qty=Decimal(1),
                entry_price=Decimal(50),
                leverage=2,
            )
        )
        assert ledger.last_seq == len(audit.records) + 1
    after = await audit_log(db)
    assert after.records[:-1] == audit.records
    assert after.fold.open[f"after-{run}"].qty == 1
    return len(after.records)


@pytest.mark.parametrize("trial", range(CRASH_TRIALS))
def test_sigkill_loses_no_acknowledged_event_and_restarts_clean(trial: int, tmp_path: Path) -> None:
    seed = CRASH_SEED + trial
    rng = random.Random(seed)
    style = STYLES[trial % len(STYLES)]
    snapshot_every = rng.choice([1, 2, 3]) if style == "during-snapshot" else 1000
    db = tmp_path / "ledger.db"
    rounds = 2 if trial % 2 else 1  # the second round starts the writer on a crashed log
    expected_ready = 0
    for round_no in range(rounds):
        run = f"r{round_no}"
        context = f"seed={seed} style={style} snapshot_every={snapshot_every} round={round_no}"
        try:
            ready, acks, wanted = _run_and_kill(db, snapshot_every, run, style, rng)
            assert ready == expected_ready
            assert len(acks) >= wanted
            expected_ready = anyio.run(_check_after_crash, db, snapshot_every, acks, run)
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
