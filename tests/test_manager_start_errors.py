"""The blocking manager's start-up failures are the ledger's typed errors, raised as they are.

A seed bot guards its start with `except LedgerError:`; the error used to arrive wrapped in
an ExceptionGroup (the manager's event-loop thread opens the ledger inside a task group), so
no such handler ever caught it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import OutputRefused, StoreUnavailable
from ledger.settings import Settings


def test_a_database_that_is_not_a_ledger_is_a_store_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    db.write_bytes(b"not a database, not a ledger, just bytes " * 10)
    with pytest.raises(StoreUnavailable, match="not a database"):
        ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings())
    assert db.read_bytes().startswith(b"not a database")


def test_positions_json_aimed_at_the_database_is_output_refused(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with ThreadSafePositionManager(tmp_path / "positions.json", settings=Settings()):
        pass
    before = db.read_bytes()
    with pytest.raises(OutputRefused, match="resolves to the ledger database"):
        ThreadSafePositionManager(db, settings=Settings())  # the seed's file_path, mistyped
    assert db.read_bytes() == before
