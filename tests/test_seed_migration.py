"""A seed bot's positions.json at start-up: imported into an empty log, or moved aside, but
never overwritten, truncated or deleted; and positions.json as a cache that may fail."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import SnapshotError
from ledger.service import Ledger
from ledger.settings import Settings
from projections import snapshot as snapshot_format
from projections.snapshot import PROJECTION_VERSION, written_by_ledger
from tests.seed_reference import SEED_EXAMPLE, doc_example, seed_bot_session

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
QUIET = Settings(snapshot_every_events=10_000, snapshot_every_seconds=3600)


def event_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(count)
    finally:
        conn.close()


def kept_beside(folder: Path, kind: str) -> list[Path]:
    return sorted(folder.glob(f"positions.{kind}-*.json"))


def d(value: Any) -> Decimal:
    """A JSON number as the seed wrote it, read exactly (the reference arithmetic)."""
    return Decimal(str(value))


def seed_file_from_code(folder: Path) -> bytes:
    """positions.json as the seed's own _save_to_file writes it after a short session."""
    (folder / "seed-bot").mkdir(exist_ok=True)
    path = folder / "seed-bot" / "positions.json"
    seed_bot_session(path)
    return path.read_bytes()


SEED_FILES: dict[str, Callable[[Path], bytes]] = {
    "the seed's documented example": lambda folder: SEED_EXAMPLE.encode(),
    "a file written by the seed's code": seed_file_from_code,
}


def test_the_example_is_the_seed_documentations() -> None:
    text = doc_example()
    if text is None:
        pytest.skip("the seed's documentation is not beside this checkout")
    assert json.loads(text) == json.loads(SEED_EXAMPLE)


# -- an empty log and a seed file: imported, original kept --------------------------------


def expected_open(document: dict[str, Any]) -> dict[str, tuple[Decimal, Decimal]]:
    """Per open position: (opening qty, realized PnL of its exits), from the file alone.

    The seed's position_size is notional at entry of what is left; each exit's size is notional
    at entry of what left, so the opening qty is (position_size + exit sizes) / entry."""
    expected = {}
    for pid, raw in document["open_positions"].items():
        exits = raw.get("partial_exits") or []
        entry = d(raw["entry_price"])
        notional = d(raw["position_size"]) + sum((d(e["size"]) for e in exits), Decimal(0))
        realized = sum((d(e["realized_pnl"]) for e in exits), Decimal(0))
        expected[pid] = (notional / entry, realized)
    return expected


@pytest.mark.parametrize("make", list(SEED_FILES))
async def test_a_seed_file_beside_an_empty_log_is_imported_and_kept(
    tmp_path: Path, make: str, caplog: pytest.LogCaptureFixture
) -> None:
    original = SEED_FILES[make](tmp_path)
    path = tmp_path / "positions.json"
    path.write_bytes(original)
    document = json.loads(original)
    caplog.set_level(logging.INFO, logger="ledger")

    async with Ledger(tmp_path / "ledger.db", settings=QUIET) as ledger:
        expected = expected_open(document)
        assert {p.position_id for p in ledger.active_positions()} == set(expected)
        for position in ledger.active_positions():
            qty, realized = expected[position.position_id]
            assert position.initial_qty == qty
            assert position.realized_pnl == realized
            assert len(position.partial_exits) == len(
                document["open_positions"][position.position_id].get("partial_exits") or []
            )
        closed = document["closed_positions"]
        assert sorted(p.position_id for p in ledger.closed_positions()) == sorted(
            c["position_id"] for c in closed
        )
        for position in ledger.closed_positions():
            [raw] = [c for c in closed if c["position_id"] == position.position_id]
            assert position.realized_pnl == d(raw["unrealized_pnl"])
        head = ledger.last_seq
        assert head > 0

    [kept] = kept_beside(tmp_path, "seed")
    assert kept.read_bytes() == original  # byte for byte, beside the new file
    mark = written_by_ledger(path.read_bytes())
    assert mark is not None and mark[0] == head  # positions.json is now the ledger's own
    assert any(str(kept) in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)

    # the next start-up trusts its own snapshot and imports nothing again
    async with Ledger(tmp_path / "ledger.db", settings=QUIET) as again:
        assert again.rebuilt_on_start is False
        assert again.last_seq == head
    assert event_count(tmp_path / "ledger.db") == head


async def test_the_import_is_idempotent_by_the_files_hash(tmp_path: Path) -> None:
    """A crash after the import but before the original was renamed: the same file found again
    beside the log that holds it is kept aside, not imported twice."""
    original = seed_file_from_code(tmp_path)
    path = tmp_path / "positions.json"
    path.write_bytes(original)
    async with Ledger(tmp_path / "ledger.db", settings=QUIET) as ledger:
        head = ledger.last_seq
    path.write_bytes(original)  # as if the rename had not happened
    async with Ledger(tmp_path / "ledger.db", settings=QUIET) as ledger:
        assert ledger.last_seq == head
    assert event_count(tmp_path / "ledger.db") == head
    assert [p.read_bytes() for p in kept_beside(tmp_path, "seed")] == [original, original]


def test_the_blocking_manager_without_arguments_migrates_the_seeds_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ThreadSafePositionManager() in the seed bot's folder: ./positions.json, ./ledger.db."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("POSITION_LEDGER_"):
            monkeypatch.delenv(name)
    (tmp_path / "positions.json").write_text(SEED_EXAMPLE)
    manager = ThreadSafePositionManager()
    try:
        assert manager.file_path == Path("positions.json")
        assert manager.db_path == Path("ledger.db")
        position = manager.get_position("pos_abc123")
        assert position is not None
        assert position.symbol == "SOL/USDT:USDT"
        assert position.open_time.startswith("2025-01-07T16:45:00")
    finally:
        manager.close()
    assert (tmp_path / "ledger.db").exists()
    [kept] = kept_beside(tmp_path, "seed")
    assert kept.read_text() == SEED_EXAMPLE


OPEN_AND_REPORT = """
import sys, anyio
from ledger.service import Ledger

async def main() -> None:
    async with Ledger(sys.argv[1]) as ledger:
        print(ledger.last_seq, len(ledger.active_positions()))

anyio.run(main)
"""


def test_two_processes_starting_at_once_import_the_file_once(tmp_path: Path) -> None:
    original = seed_file_from_code(tmp_path)
    (tmp_path / "positions.json").write_bytes(original)
    db = tmp_path / "ledger.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_REPORT, str(db)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    document = json.loads(original)
    for out, _ in outputs:  # each started with the seed's open position
        assert out.split()[1] == str(len(document["open_positions"]))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM events")]
    finally:
        conn.close()
    assert [b["type"] for b in bodies].count("HistoryImported") == 1
    assert [p.read_bytes() for p in kept_beside(tmp_path, "seed")] == [original]
    assert written_by_ledger((tmp_path / "positions.json").read_bytes()) is not None


async def test_its_own_file_of_an_older_version_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot this ledger wrote with older folds, of this very log: the log holds all it
    says, so it is simply rebuilt and rewritten (nothing moved aside)."""
    db = tmp_path / "ledger.db"
    monkeypatch.setattr(snapshot_format, "PROJECTION_VERSION", PROJECTION_VERSION - 1)
    head = await build_log(db)
    monkeypatch.undo()
    async with Ledger(db, settings=QUIET) as ledger:
        assert ledger.rebuilt_on_start is True and ledger.last_seq == head
    document = json.loads((tmp_path / "positions.json").read_bytes())
    assert document["projection_version"] == PROJECTION_VERSION
    assert list(tmp_path.glob("positions.*-*.json")) == []


# -- a log that already holds events, or a file that is not one: moved aside -----------------


async def build_log(db: Path) -> int:
    async with Ledger(db, settings=QUIET) as ledger:
        await ledger.open_position("XRP/USDT:USDT", "buy", entry_price="0.5", qty=100, leverage=2)
        return ledger.last_seq


@pytest.mark.parametrize("make", list(SEED_FILES))
async def test_a_seed_file_beside_a_log_with_events_is_moved_aside(
    tmp_path: Path, make: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "ledger.db"
    original = SEED_FILES[make](tmp_path)
    head = await build_log(db)
    path = tmp_path / "positions.json"
    path.write_bytes(original)  # the seed bot ran again in the ledger's folder
    caplog.set_level(logging.WARNING, logger="ledger")

    async with Ledger(db, settings=QUIET) as ledger:
        assert ledger.last_seq == head  # nothing imported into a log that has a history
        assert [p.symbol for p in ledger.active_positions()] == ["XRP/USDT:USDT"]
    [kept] = kept_beside(tmp_path, "seed")
    assert kept.read_bytes() == original
    assert written_by_ledger(path.read_bytes()) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(kept) in w and "not imported" in w for w in warnings), warnings


UNREADABLE: dict[str, Callable[[Path], bytes]] = {
    "truncated example": lambda _: SEED_EXAMPLE.encode()[: len(SEED_EXAMPLE) // 2],
    # the seed's own writer killed half way (its temp file renamed by hand, say)
    "truncated seed file": lambda folder: seed_file_from_code(folder)[:1000],
    "not JSON": lambda _: b"\x00\xffpositions",
    "a JSON list": lambda _: b"[1, 2, 3]",
    "a JSON object of something else": lambda _: b'{"orders": []}',
    "deeply nested": lambda _: b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("log_has_events", [False, True])
@pytest.mark.parametrize("content", list(UNREADABLE))
async def test_an_unreadable_file_is_moved_aside_with_a_warning(
    tmp_path: Path, content: str, log_has_events: bool, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "ledger.db"
    head = await build_log(db) if log_has_events else 0
    original = UNREADABLE[content](tmp_path)
    (tmp_path / "positions.json").write_bytes(original)
    caplog.set_level(logging.WARNING, logger="ledger")
    async with Ledger(db, settings=QUIET) as ledger:
        assert ledger.last_seq == head
    [kept] = kept_beside(tmp_path, "unreadable")
    assert kept.read_bytes() == original
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(kept) in w for w in warnings), warnings


async def test_another_logs_snapshot_is_kept_not_overwritten(tmp_path: Path) -> None:
    """Written by a ledger, but of a history this log does not hold (its log was lost): it may be
    the only record of that history."""
    other = tmp_path / "other"
    other.mkdir()
    await build_log(other / "ledger.db")
    theirs = (other / "positions.json").read_bytes()
    (tmp_path / "positions.json").write_bytes(theirs)
    async with Ledger(tmp_path / "ledger.db", settings=QUIET) as ledger:
        assert ledger.last_seq == 0
    [kept] = kept_beside(tmp_path, "orphan")
    assert kept.read_bytes() == theirs


async def test_a_file_replaced_while_running_is_moved_aside_not_overwritten(
    tmp_path: Path,
) -> None:
    """A seed bot still running in the folder rewrites positions.json under the ledger."""
    db = tmp_path / "ledger.db"
    async with Ledger(db, settings=QUIET) as ledger:
        await ledger.open_position("XRP/USDT:USDT", "buy", entry_price="0.5", qty=100, leverage=2)
        await ledger.write_snapshot()
        seed_bot_session(tmp_path / "positions.json")  # the seed's _save_to_file replaces it
        seed_written = (tmp_path / "positions.json").read_bytes()
        await ledger.write_snapshot()
        assert written_by_ledger((tmp_path / "positions.json").read_bytes()) is not None
        # our own file, unchanged since, is simply replaced
        await ledger.observe_balance(100, 100)
        await ledger.write_snapshot()
    [kept] = kept_beside(tmp_path, "foreign")
    assert kept.read_bytes() == seed_written


# -- positions.json is a cache: failing to write it never stops the ledger --------------------


def blocked_by_a_directory(tmp_path: Path) -> Path:
    """A directory where positions.json should be: no write can replace it, root or not."""
    path = tmp_path / "positions.json"
    path.mkdir()
    (path / "keep").write_text("not ours")
    return path


def blocked_by_a_file(tmp_path: Path) -> Path:
    """positions.json inside a folder that is a regular file: no one can create it."""
    (tmp_path / "state").write_text("a file, not a folder")
    return tmp_path / "state" / "positions.json"


BLOCKED = {"a directory in its place": blocked_by_a_directory, "no folder": blocked_by_a_file}


@pytest.mark.parametrize("block", list(BLOCKED))
async def test_an_unwritable_positions_json_never_stops_the_ledger(
    tmp_path: Path, block: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "ledger.db"
    snapshot = BLOCKED[block](tmp_path)
    caplog.set_level(logging.ERROR, logger="ledger")
    async with Ledger(db, snapshot_path=snapshot, settings=QUIET) as ledger:
        opened = await ledger.open_position(
            "SOL/USDT:USDT", "buy", entry_price=100, notional=500, leverage=5
        )
        with pytest.raises(SnapshotError, match=str(snapshot)):
            await ledger.write_snapshot()
        await ledger.close_position(opened.position_id, price=110, reason="tp")
        head = ledger.last_seq
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    if block == "a directory in its place":
        assert (snapshot / "keep").read_text() == "not ours"
    # every event is in the log, and it opens with a writable path
    async with Ledger(db, snapshot_path=tmp_path / "ok.json", settings=QUIET) as again:
        assert again.last_seq == head == event_count(db)
        [closed] = again.closed_positions()
        assert closed.realized_pnl == Decimal(500) / 100 * (110 - 100)


@pytest.mark.parametrize("block", list(BLOCKED))
def test_an_unwritable_positions_json_never_stops_the_manager(tmp_path: Path, block: str) -> None:
    snapshot = BLOCKED[block](tmp_path)
    manager = ThreadSafePositionManager(snapshot, db_path=tmp_path / "ledger.db", settings=QUIET)
    try:
        pid = manager.thread_safe_create_position(
            symbol="SOL/USDT:USDT", side="buy", entry_price=100.0, position_size=500.0, leverage=5
        )
        with pytest.raises(SnapshotError):
            manager.save()
        assert manager.register_partial_exit(pid, 150.0, 110.0, None, "tp1")
        assert manager.close_position(pid, "tp", 120.0)
    finally:
        manager.close()
    assert event_count(tmp_path / "ledger.db") == 3  # open, exit, close: nothing lost


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder no one can create, rename or delete in, root included (the immutable
    attribute: permission bits do not stop root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "positions.json").write_text(SEED_EXAMPLE)
    try:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a folder immutable here (chattr +i): {exc}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


async def test_a_read_only_folder_keeps_the_seed_file_and_the_ledger_working(
    tmp_path: Path, read_only_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = read_only_folder / "positions.json"
    db = tmp_path / "ledger.db"
    caplog.set_level(logging.ERROR, logger="ledger")
    for _ in range(2):  # the import, then a restart beside the log that holds it
        async with Ledger(db, snapshot_path=snapshot, settings=QUIET) as ledger:
            assert [p.position_id for p in ledger.active_positions()] == ["pos_abc123"]
            await ledger.mark("pos_abc123", 106)
            with pytest.raises(SnapshotError):
                await ledger.write_snapshot()
            head = ledger.last_seq
        assert snapshot.read_text() == SEED_EXAMPLE  # never overwritten, nor moved
        assert event_count(db) == head
    assert any("left alone" in r.getMessage() for r in caplog.records)
