"""Adversary: KeyboardInterrupt / SystemExit landing anywhere in the write path's lock code (the
writer role, the group-commit queue's lock, the manager's): injected before every opcode of
those sequences, and real SIGINTs delivered to a process in the middle of a storm of manager
writes. Afterwards the store still takes writes from other threads and close() returns; every
wait is bounded and fails, none is a timed race."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio

from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings
from projections.book import fold_records
from tests._interrupts import LOCK_CODE, Inject, bounded
from tests._workers import audit_log, book_state

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG = 240.0
SIGNALS = 10_000
SETTINGS = Settings(
    max_concurrent_positions=100_000, snapshot_every_events=10**9, snapshot_every_seconds=10**6
)


def _create(manager: ThreadSafePositionManager, symbol: str) -> str:
    return manager.thread_safe_create_position(
        symbol=symbol, side="long", entry_price=10, position_size=100, leverage=2
    )


def test_an_interrupt_before_any_opcode_of_a_thread_command_wedges_nothing(
    tmp_path: Path,
) -> None:
    """A thread makes manager commands (a create, a mark) with an interrupt before each
    opcode of the lock code in turn. After each: another thread's command completes, and so
    does this thread's next one; at the end the live book is a fold of the log and close()
    returns. (The whole run is bounded: a thread of its own, joined with a bound.)"""
    manager = ThreadSafePositionManager(
        file_path=tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    )

    def attack() -> tuple[int, tuple[object, ...]]:
        fired = 0
        pid = _create(manager, "FIRSTUSDT")
        for command in ("create", "mark"):
            for at in range(100_000):
                trace = Inject(at, files=LOCK_CODE, nops=True)
                sys.settrace(trace)
                try:
                    if command == "create":
                        _create(manager, f"C{at}USDT")
                    else:
                        manager.update_position_price(pid, 10 + at)
                except KeyboardInterrupt:
                    assert trace.where is not None
                finally:
                    sys.settrace(None)
                if trace.where is None:
                    break
                fired += 1
                other = f"O{command}{at}USDT"
                bounded(lambda s=other: _create(manager, s), f"{trace.where}")  # type: ignore[misc]
            _create(manager, f"AFTER{command}USDT")
        return fired, book_state(manager.ledger.book)

    try:
        outcome = bounded(attack, "the attack", WATCHDOG)
    finally:
        bounded(manager.close, "close")
    assert isinstance(outcome, tuple)
    fired, live = outcome
    assert fired > 100
    assert live == book_state(anyio.run(audit_log, tmp_path / "ledger.db").fold)


def test_an_interrupt_between_a_commit_and_its_group_settled_keeps_the_book_a_fold_of_the_log(
    tmp_path: Path,
) -> None:
    """An interrupt before each opcode of the Ledger's group commit (`Ledger._commit_group`,
    `_publish`), a manager command at a time from a thread: after each, the live book is a
    fold of the log. It was not when the interrupt landed between the transaction's return
    (committed) and the book's publication: the log held the command, the book did not."""
    manager = ThreadSafePositionManager(
        file_path=tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    )
    only = {Ledger._commit_group.__code__, Ledger._publish.__code__}

    def attack() -> int:
        fired = 0
        for at in range(10_000):
            trace = Inject(at, codes=only, nops=True)
            sys.settrace(trace)
            try:
                _create(manager, f"C{at}USDT")
            except KeyboardInterrupt:
                assert trace.where is not None
            finally:
                sys.settrace(None)
            if trace.where is None:
                return fired
            fired += 1
            records = manager._portal.call(manager.ledger.store.read)  # type: ignore[union-attr]
            assert book_state(manager.ledger.book) == book_state(fold_records(records)), (
                f"the live book is not the log's after an interrupt at {trace.where}"
            )
        return fired

    try:
        fired = bounded(attack, "the attack", WATCHDOG)
    finally:
        bounded(manager.close, "close")
    assert isinstance(fired, int) and fired > 20


def test_an_interrupt_before_any_opcode_of_a_task_command_wedges_nothing(tmp_path: Path) -> None:
    """The same for tasks of a loop running in a process's main thread
    (tests/_adv_task_interrupt_worker.py): a command alone (the lone lane), then three at
    once (a group), each task hearing the interrupt injected while it runs. After each: a
    command from another thread and one from a task complete; at the end the live book is a
    fold of the log and the Ledger closes."""
    done = subprocess.run(
        [sys.executable, "-m", "tests._adv_task_interrupt_worker", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-20_000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["fired"] > 100
    assert result["live"] == result["fold"]


def test_a_sigint_storm_on_a_process_of_manager_writes_leaves_a_store_that_works(
    tmp_path: Path,
) -> None:
    """Real SIGINTs, one at a time (the next once the last was heard), to a process whose
    main thread and three helper threads write through one ThreadSafePositionManager
    (tests/_adv_sigint_storm_worker.py); the main thread hears each as KeyboardInterrupt and
    goes on. Then: the helpers finish, a new write completes, the live book is a fold of the
    log, every acknowledged helper command is stored, close() returns."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests._adv_sigint_storm_worker", str(tmp_path), "3"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        watchdog = threading.Timer(WATCHDOG, worker.kill)
        watchdog.start()
        result = None
        try:
            assert worker.stdout is not None and worker.stdin is not None
            sent = 0
            for line in worker.stdout:
                said = json.loads(line)
                if "result" in said:
                    result = said["result"]
                    break
                if sent < SIGNALS:  # each report ("interrupted": n) asks for the next one
                    os.kill(worker.pid, signal.SIGINT)
                    sent += 1
                elif sent == SIGNALS:
                    worker.stdin.write("stop\n")
                    worker.stdin.flush()
                    sent += 1
            assert worker.stderr is not None
            errors = worker.stderr.read()
            assert worker.wait(WATCHDOG) == 0, errors[-20_000:]
        finally:
            watchdog.cancel()
            worker.kill()
    assert result is not None, errors[-20_000:]
    assert result["heard"] >= SIGNALS and result["errors"] == [], result
    assert result["helpers_alive"] == 0 and result["write_after"] == "ok", result
    assert result["close"] == "ok" and result["book_is_fold"], result
    assert result["helper_acked_stored"] and result["main_stored_attempted"], result
