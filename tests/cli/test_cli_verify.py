"""verify, tampering, and the refusal of a log that fails by the commands that trust it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.events import PartialExitRecorded
from ledger.store.sqlite import SQLiteEventStore
from tests.cli.conftest import Known, RunCli, at


def rows(db: Path) -> dict[int, tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        found = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    return {int(r[0]): tuple(r) for r in found}


def edit(db: Path, sql: str, *params: object) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)


def body(db: Path, seq: int) -> bytes:
    value = rows(db)[seq][8]
    assert isinstance(value, bytes)
    return value


def change_a_price(known: Known) -> int:
    seq = known.seqs["exit_sol_1"]
    old = body(known.db, seq)
    assert b'"price":"110"' in old
    edit(known.db, "UPDATE events SET body = ? WHERE seq = ?", old.replace(b'"110"', b'"111"'), seq)
    return seq


def delete_a_row(known: Known) -> int:
    seq = known.seqs["mark_btc"]
    edit(known.db, "DELETE FROM events WHERE seq = ?", seq)
    return seq


def insert_a_row(known: Known) -> int:
    """Shift every row after seq k up by one and put a forged row at k + 1."""
    k = known.seqs["exit_sol_1"]
    victim = rows(known.db)[k + 1]
    with closing(sqlite3.connect(known.db)) as conn, conn:
        conn.execute("UPDATE events SET seq = -(seq + 1) WHERE seq > ?", (k,))
        conn.execute("UPDATE events SET seq = -seq WHERE seq < 0")
        forged = b'{"type":"PositionMarked","position_id":"pos_sol","mark_price":"150"}'
        conn.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                k + 1,
                "pos_forged",
                1,
                "forged-1",
                "PositionMarked",
                1,
                *victim[6:8],
                forged,
                victim[9],
            ),
        )
    return k + 1


def swap_two_rows(known: Known) -> int:
    """Reorder two rows by swapping their bodies (and type columns)."""
    first, second = known.seqs["exit_sol_1"], known.seqs["exit_sol_2"]
    a, b = rows(known.db)[first], rows(known.db)[second]
    with closing(sqlite3.connect(known.db)) as conn, conn:
        conn.execute("UPDATE events SET type = ?, body = ? WHERE seq = ?", (b[4], b[8], first))
        conn.execute("UPDATE events SET type = ?, body = ? WHERE seq = ?", (a[4], a[8], second))
    return first


def edit_the_snapshot(known: Known) -> int:
    text = known.snapshot.read_text()
    assert '"current_price": 115' in text
    known.snapshot.write_text(text.replace('"current_price": 115', '"current_price": 116', 1))
    return known.head_seq


Tamper = Callable[[Known], int]
TAMPERING: dict[str, tuple[Tamper, str]] = {
    "changed value": (change_a_price, "hash mismatch"),
    "deleted row": (delete_a_row, "is missing (the next row is seq"),
    "inserted row": (insert_a_row, "hash mismatch"),
    "reordered rows": (swap_two_rows, "hash mismatch"),
    "edited positions.json": (edit_the_snapshot, "current_price: file 116 != log 115"),
}


def test_verify_ok_on_an_untouched_ledger(cli: RunCli, known: Known) -> None:
    run = cli("verify", "--db", known.db)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"OK: {known.head_seq} events in 4 streams")
    assert f"positions.json matches the log at seq {known.head_seq}" in run.stdout
    report = json.loads(cli("verify", "--db", known.db, "--json").stdout)
    assert report["ok"] is True and report["rules_checked"] == known.head_seq
    assert report["snapshot"]["status"] == "matches"


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_the_first_bad_seq(cli: RunCli, known: Known, case: str) -> None:
    tamper, why = TAMPERING[case]
    bad_seq = tamper(known)
    run = cli("verify", "--db", known.db)
    assert run.returncode == 1, run.stdout
    first = run.stdout.splitlines()[0]
    assert first.startswith(f"FAIL at seq {bad_seq}: "), first
    assert why in first
    report = json.loads(cli("verify", "--db", known.db, "--json").stdout)
    assert report["ok"] is False and report["problems"][0]["seq"] == bad_seq


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["positions"],
        ["replay", "--seq", "2"],  # a replay before the damage still needs a sound log
        ["export", "--what", "events"],
        ["plot", "equity.png"],
        ["snapshot"],
    ],
)
def test_commands_that_trust_the_log_refuse_a_tampered_one(
    cli: RunCli, known: Known, args: list[str], tmp_path: Path
) -> None:
    bad_seq = change_a_price(known)
    snapshot_before = known.snapshot.read_bytes()
    run = cli(*args, "--db", known.db)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1, run.stderr
    assert f"seq {bad_seq}" in run.stderr and "--force" in run.stderr
    assert not (tmp_path / "equity.png").exists()
    assert known.snapshot.read_bytes() == snapshot_before


def test_force_uses_a_tampered_log_and_says_so(cli: RunCli, known: Known) -> None:
    change_a_price(known)
    run = cli("positions", "--db", known.db, "--force", "--json")
    assert run.returncode == 0
    assert "not checked" in run.stderr
    data = json.loads(run.stdout)
    assert data["as_of"]["chain_checked"] is False
    assert Decimal(data["open"][0]["partial_exits"][0]["price"]) == 111  # the forged price
    replay = cli("replay", "--db", known.db, "--force", "--seq", "4", "--json")
    assert replay.returncode == 0 and json.loads(replay.stdout)["as_of"]["seq"] == 4


def test_history_refuses_a_tampered_log_unless_forced(cli: RunCli, known: Known) -> None:
    change_a_price(known)
    refused = cli("history", "pos_sol", "--db", known.db)
    assert refused.returncode == 1 and "hash" in refused.stderr, refused.stderr
    forced = cli("history", "pos_sol", "--db", known.db, "--force")
    assert forced.returncode == 0
    assert "--force: the log's chain was not checked" in forced.stderr
    assert "chain NOT checked (--force)" in forced.stdout


def test_export_to_a_file_leaves_nothing_when_refused(
    cli: RunCli, known: Known, tmp_path: Path
) -> None:
    delete_a_row(known)
    out = tmp_path / "events.csv"
    run = cli("export", "--what", "events", "--out", out, "--db", known.db)
    assert run.returncode == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "events" in p.name] == []


def test_a_log_truncated_behind_its_snapshot_is_caught(cli: RunCli, known: Known) -> None:
    edit(known.db, "DELETE FROM events WHERE seq > ?", known.head_seq - 2)
    run = cli("verify", "--db", known.db)
    assert run.returncode == 1
    first = run.stdout.splitlines()[0]
    assert first.startswith(f"FAIL at seq {known.head_seq - 1}: positions.json is at seq 12")


def test_an_event_written_around_the_rules_is_caught(cli: RunCli, known: Known) -> None:
    """A sound chain, but an exit larger than what is left: appended straight to the store."""

    async def append() -> int:
        store = SQLiteEventStore(known.db)
        await store.open()
        try:
            exit_ = PartialExitRecorded(
                position_id="pos_sol",
                qty=Decimal(3),
                price=Decimal(120),
                realized_pnl=Decimal(60),
            )
            new = NewEvent(stream="pos_sol", event=exit_, event_id="rogue", occurred_at=at("19:00"))
            return (await store.append([new]))[0].seq

        finally:
            await store.close()

    seq = anyio.run(append)
    run = cli("verify", "--db", known.db)
    assert run.returncode == 1
    assert run.stdout.splitlines()[0] == (
        f"FAIL at seq {seq}: exit of qty 3 exceeds the {known.expected['sol_left']} left"
    )
    # the chain itself is sound, so the commands that only check the chain still answer
    assert cli("stats", "--db", known.db).returncode == 0


def test_snapshot_is_optional_for_verify(cli: RunCli, known: Known) -> None:
    known.snapshot.unlink()
    run = cli("verify", "--db", known.db)
    assert run.returncode == 0
    assert "note: no snapshot at" in run.stdout


def test_an_empty_log_verifies(cli: RunCli, tmp_path: Path) -> None:
    async def create() -> None:
        from ledger.service import Ledger

        async with Ledger(tmp_path / "empty.db"):
            pass

    anyio.run(create)
    run = cli("verify", "--db", tmp_path / "empty.db")
    assert run.returncode == 0
    assert run.stdout.splitlines() == [
        "OK: the log is empty (0 events)",
        f"OK: {tmp_path / 'positions.json'} matches the log at seq 0 (0 events behind the head)",
    ]


def test_a_body_stored_as_text_is_named_not_a_traceback(cli: RunCli, known: Known) -> None:
    """SQLite keeps a hand edit's TEXT in the BLOB column; verify names the row."""
    seq = known.seqs["exit_sol_1"]
    edit(known.db, "UPDATE events SET body = ? WHERE seq = ?", body(known.db, seq).decode(), seq)
    result = cli("verify", "--db", known.db)
    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    assert f"seq {seq}" in said and "body is str" in said, said
    assert "Traceback" not in said
