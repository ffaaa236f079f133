"""A database the command cannot use: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.cli.conftest import Known, RunCli

# every command, with what it needs besides --db
COMMANDS: list[list[str]] = [
    ["stats"],
    ["positions"],
    ["history", "pos_sol"],
    ["replay", "--seq", "1"],
    ["verify"],
    ["export", "--what", "events"],
    ["plot", "equity.png"],
    ["watch", "--once"],
    ["snapshot"],
    ["backup"],
]


def missing(tmp: Path) -> Path:
    return tmp / "nowhere" / "ledger.db"


def garbage(tmp: Path) -> Path:
    path = tmp / "garbage.db"
    path.write_bytes(os.urandom(8192))
    return path


def foreign(tmp: Path) -> Path:
    path = tmp / "other.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, price REAL)")
    return path


def empty(tmp: Path) -> Path:
    path = tmp / "empty.db"
    path.write_bytes(b"")
    return path


def directory(tmp: Path) -> Path:
    path = tmp / "a-folder.db"
    path.mkdir()
    return path


BAD: dict[str, Callable[[Path], Path]] = {
    "missing": missing,
    "garbage": garbage,
    "foreign": foreign,
    "empty": empty,
    "directory": directory,
}
EXPECTED = {
    "missing": "no ledger database",
    "garbage": "not a database",
    "foreign": "not a position-ledger database",
    "empty": "not a position-ledger database",
    "directory": "is a directory",
}


def assert_one_line_exit_2(run: object, needle: str) -> None:
    import subprocess

    assert isinstance(run, subprocess.CompletedProcess)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("ledger: error: ") and needle in lines[0]
    assert run.stdout == ""


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_garbage_bytes_for_every_command(cli: RunCli, tmp_path: Path, args: list[str]) -> None:
    run = cli(*args, "--db", garbage(tmp_path))
    assert_one_line_exit_2(run, "not a database")


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("args", [["stats"], ["verify"], ["backup"]], ids=lambda a: a[0])
def test_unusable_databases(cli: RunCli, tmp_path: Path, kind: str, args: list[str]) -> None:
    run = cli(*args, "--db", BAD[kind](tmp_path))
    assert_one_line_exit_2(run, EXPECTED[kind])


def test_a_foreign_database_is_left_as_it_was(cli: RunCli, tmp_path: Path) -> None:
    path = foreign(tmp_path)
    before = path.read_bytes()
    for args in (["stats"], ["snapshot"], ["import", str(tmp_path / "x.json")]):
        cli(*args, "--db", path)
    assert path.read_bytes() == before


def test_a_locked_database(cli: RunCli, known: Known) -> None:
    """Another connection holds an exclusive lock: give up after the busy timeout."""
    with closing(sqlite3.connect(known.db, isolation_level=None)) as holder:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            for args in (["stats"], ["verify"], ["history", "pos_sol"]):
                run = cli(*args, "--db", known.db, env={"POSITION_LEDGER_BUSY_TIMEOUT_MS": "100"})
                assert_one_line_exit_2(run, "database is locked")
        finally:
            holder.execute("COMMIT")


def test_a_bad_setting_is_one_line_too(cli: RunCli, known: Known) -> None:
    run = cli("stats", "--db", known.db, env={"POSITION_LEDGER_BUSY_TIMEOUT_MS": "soon"})
    assert_one_line_exit_2(run, "invalid setting")


def test_a_missing_database_is_not_created(cli: RunCli, tmp_path: Path) -> None:
    path = missing(tmp_path)
    for args in (["snapshot"], ["backup"], ["watch", "--once"], ["verify"]):
        cli(*args, "--db", path)
    assert not path.exists() and not path.parent.exists()
