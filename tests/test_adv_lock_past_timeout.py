"""Attack (adversary): the blocking lane's inline BEGIN IMMEDIATE (run_transaction, for a thread
that may wait, the busy timeout set already) meeting another process's write lock held past
the busy timeout: SQLite's own wait runs out, `_begin_again` continues from that attempt and
gives up at the same deadline. The caller hears a typed StoreUnavailable (no hang, nothing
stored), the writer role and the queue are free, and once the other process commits, the
same call succeeds on a book that took the other process's event as its tail.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import StoreUnavailable
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from tests._workers import audit_log
from tests.test_adv_blocking_storm import hear, lock_holder, seed_kwargs, tell

WATCHDOG = 60.0


def test_a_lock_held_past_the_busy_timeout_fails_the_blocking_call_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "ledger.db"
    again: list[float] = []
    real = SQLiteEventStore._begin_again

    def counted(self: SQLiteEventStore, conn: Any, failed: Any, started: float) -> None:
        again.append(started)
        real(self, conn, failed, started)

    monkeypatch.setattr(SQLiteEventStore, "_begin_again", counted)
    settings = Settings(max_concurrent_positions=100, busy_timeout_ms=150)
    with (
        ThreadSafePositionManager(tmp_path / "p.json", db_path=db, settings=settings) as m,
        lock_holder(db, tmp_path / "child" / "p.json") as child,
    ):
        first = m.thread_safe_create_position(**seed_kwargs("FIRSTUSDT"))  # the lane is warm
        before = m.ledger.last_seq
        assert hear(child) == "ready"
        tell(child, "open 0")
        assert hear(child) == "locked"
        heard: list[object] = []

        def call() -> None:
            try:
                heard.append(m.thread_safe_create_position(**seed_kwargs("XUSDT")))
            except BaseException as exc:  # handed to the test
                heard.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(WATCHDOG)
        assert not thread.is_alive(), "the blocking call hung on a lock held past the timeout"
        assert len(heard) == 1 and isinstance(heard[0], StoreUnavailable), heard
        assert len(again) == 1  # the inline attempt's failure went on in _begin_again
        assert m.ledger.last_seq == before
        writer, queue = m.ledger.store.writer, m.ledger._queue()
        assert writer._holder is None and not writer._role.locked()
        assert not queue._draining and not queue._pending
        tell(child, "go")
        assert hear(child) == "acked child0"
        pid = m.thread_safe_create_position(**seed_kwargs("XUSDT"))
        assert {p.position_id for p in m.exact.get_active_positions()} == {first, "child0", pid}
        live = m.exact.get_active_positions()
        tell(child, "exit")
        assert child.wait(WATCHDOG) == 0
    audit = anyio.run(audit_log, db)
    assert live == list(audit.fold.open.values())
