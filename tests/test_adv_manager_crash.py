"""Attack (adversary): kill -9 a process whose plain threads write through the blocking fast
lane (`GroupCommit.run_blocking` running a lone job where it is, the manager's short create,
`StoreTransaction._stage_one`, BEGIN IMMEDIATE inline), positions.json rewritten every few
events under them; three kills in a row on the same folder, each after a different number of
acknowledgements, each restart from what the last one left.

After each kill: nothing acknowledged is lost (every printed open, mark, exit and close is in
the log), the log audits clean (gapless, the chain verifies, an exit of all that is left and its
close in one commit), and a manager reopened from positions.json plus the tail holds exactly
the fold of the log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import anyio

from ledger.blocking import ThreadSafePositionManager
from ledger.events import PartialExitRecorded, PositionClosed, PositionMarked, PositionOpened
from ledger.settings import Settings
from tests._workers import audit_log

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG = 60.0
KILL_AFTER = (13, 58, 111)  # acknowledgements before each kill


def run_and_kill(folder: Path, run: int, acks_wanted: int) -> list[tuple[str, str]]:
    """Start the writer, SIGKILL it once it acknowledged acks_wanted calls; every line it
    finished writing (its acknowledgements)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._adv_manager_crash_worker", str(folder), str(run)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(WATCHDOG, proc.kill)
    watchdog.start()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        lines = [proc.stdout.readline()]
        assert lines[0] == b"ready -\n", proc.stderr.read().decode()
        while len(lines) <= acks_wanted:
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), f"the writer ended early: {proc.stderr.read().decode()}"
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        rest = proc.stdout.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    # a line not finished when the kill came was never acknowledged
    finished = (b"".join(lines[1:]) + rest).split(b"\n")[:-1]
    pairs = [line.decode().split(" ") for line in finished]
    return [(verb, pid) for verb, pid in pairs]


def test_kill_9_under_manager_threads_loses_nothing_acknowledged(tmp_path: Path) -> None:
    acked: list[tuple[str, str]] = []
    for run, wanted in enumerate(KILL_AFTER):
        acked += run_and_kill(tmp_path, run, wanted)
        audit = anyio.run(audit_log, tmp_path / "ledger.db")
        by_kind: dict[type, Counter[str]] = {
            kind: Counter(r.event.position_id for r in audit.records if type(r.event) is kind)
            for kind in (PositionOpened, PositionMarked, PartialExitRecorded, PositionClosed)
        }
        for verb, pid in acked:
            kind = {
                "open": PositionOpened,
                "mark": PositionMarked,
                "exit": PartialExitRecorded,
                "close": PositionClosed,
            }[verb]
            assert by_kind[kind][pid] == 1, (verb, pid)
        assert all(count == 1 for count in by_kind[PositionOpened].values())
        fold = audit.fold
        with ThreadSafePositionManager(
            tmp_path / "positions.json",
            db_path=tmp_path / "ledger.db",
            settings=Settings(max_concurrent_positions=1000),
        ) as reopened:
            assert reopened.exact.get_active_positions() == list(fold.open.values())
            assert reopened.exact.get_closed_positions() == list(fold.closed.values())
            assert reopened.exact.get_session_summary() == fold.summary()
    assert len({pid for verb, pid in acked if verb == "close"}) >= 10
