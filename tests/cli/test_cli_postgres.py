"""The ledger on PostgreSQL through the same entries as on SQLite: `Ledger(url)`, the blocking
manager, `POSITION_LEDGER_DB_PATH`, `ledger --db URL`, `ledger copy` both ways (same head hash
at every end), `ledger backup` of a PostgreSQL ledger (a SQLite file), subscribers woken by
NOTIFY, and no password in what is printed or written."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings, load_settings
from ledger.store.postgres import PostgresEventStore
from tests.cli.conftest import Known, RunCli, child_env


def _head_hash(run: RunCli, db: str | Path) -> tuple[int, str]:
    result = run("--db", db, "verify", "--json", "--snapshot", "absent.json")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["ok"], report
    return int(report["last_seq"]), str(report["last_hash"])


def test_copy_sqlite_to_postgres_and_back_keeps_seq_ids_and_hashes(
    known: Known, pg_url: str, cli: RunCli, tmp_path: Path
) -> None:
    copied = cli("copy", known.db, pg_url)
    assert copied.returncode == 0, copied.stderr
    back = tmp_path / "back.db"
    again = cli("copy", pg_url, back)
    assert again.returncode == 0, again.stderr
    heads = {_head_hash(cli, where) for where in (known.db, pg_url, back)}
    assert len(heads) == 1
    ((events, _),) = heads
    assert events == known.head_seq
    rows = [
        sqlite3.connect(db)
        .execute("SELECT seq, event_id, hash FROM events ORDER BY seq")
        .fetchall()
        for db in (known.db, back)
    ]
    assert rows[0] == rows[1]
    # the figures read from PostgreSQL are the SQLite ledger's
    stats = [
        cli("--db", db, "stats", "--json", "--snapshot", "absent.json") for db in (known.db, pg_url)
    ]
    assert all(s.returncode == 0 for s in stats), [s.stderr for s in stats]
    figures = [json.loads(s.stdout) for s in stats]
    for figure in figures:  # where each started differs: a SQLite file keeps checkpoints beside it
        figure["as_of"].pop("origin")
    assert figures[0] == figures[1]
    # running the copy again brings nothing new and changes nothing
    twice = cli("copy", known.db, pg_url, "--json")
    assert twice.returncode == 0, twice.stderr
    assert json.loads(twice.stdout)["copied"] == 0


def test_copy_refuses_a_target_that_is_not_a_prefix(
    known: Known, pg_url: str, cli: RunCli, tmp_path: Path
) -> None:
    settings = Settings(positions_file=str(tmp_path / "other-positions.json"))

    async def other_history() -> None:
        async with Ledger(pg_url, settings=settings) as ledger:
            await ledger.observe_balance(5, 5)

    anyio.run(other_history)
    refused = cli("copy", known.db, pg_url)
    assert refused.returncode != 0
    assert "not a copy" in refused.stderr


def test_backup_of_a_postgres_ledger_is_a_sqlite_file_with_the_same_chain(
    known: Known, pg_url: str, cli: RunCli, tmp_path: Path
) -> None:
    assert cli("copy", known.db, pg_url).returncode == 0
    result = cli("--db", pg_url, "backup", "--to", tmp_path / "backups", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["chain_problem"] is None
    assert (report["events"], report["last_hash"]) == _head_hash(cli, known.db)
    assert _head_hash(cli, Path(report["path"])) == _head_hash(cli, pg_url)


def test_a_password_in_the_url_is_never_printed(cli: RunCli, pg_base_url: str) -> None:
    url = pg_base_url.replace("ledger@", "ledger:topsecret42@").replace(
        "127.0.0.1:",
        "127.0.0.1:1",  # a port nothing listens on
    )
    result = cli("--db", url, "stats")
    assert result.returncode != 0
    assert "topsecret42" not in result.stdout + result.stderr
    assert "***" in result.stderr


@pytest.mark.anyio
async def test_ledger_on_a_url_restarts_from_its_snapshot_and_subscribers_wake_on_notify(
    pg_url: str, tmp_path: Path
) -> None:
    settings = Settings(positions_file=str(tmp_path / "positions.json"))
    async with Ledger(pg_url, settings=settings) as ledger:
        assert ledger.snapshot_path == tmp_path / "positions.json"
        opened = await ledger.open_position(
            "SOL/USDT:USDT", "buy", entry_price=100, qty=2, leverage=5
        )
        await ledger.register_partial_exit(opened.position_id, price=110, qty="0.5")
    assert pg_url.split("?")[0] not in (tmp_path / "positions.json").read_text()
    async with (
        Ledger(pg_url, settings=settings) as again,
        Ledger(pg_url, settings=Settings(positions_file=str(tmp_path / "other.json"))) as other,
    ):
        assert not again.rebuilt_on_start
        position = again.get_position(opened.position_id)
        assert position is not None and position.qty == Decimal("1.5")
        received: list[int] = []

        async def follow() -> None:
            # a 1-hour poll interval: only a NOTIFY from the other connection can wake it
            async for record in again.subscribe(again.last_seq, poll_interval=3600):
                received.append(record.seq)
                return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(follow)
                await anyio.sleep(0)
                await other.close_position(opened.position_id, price=105)
        assert received == [other.last_seq]


def test_blocking_manager_and_the_db_path_setting_take_a_url(pg_url: str, tmp_path: Path) -> None:
    env = {
        "POSITION_LEDGER_DB_PATH": pg_url,
        "POSITION_LEDGER_POSITIONS_FILE": str(tmp_path / "positions.json"),
    }
    settings = load_settings(environ=env)
    manager = ThreadSafePositionManager(db_path=settings.db_path, settings=settings)
    try:
        manager.thread_safe_create_position(
            symbol="BTC/USDT:USDT", side="sell", entry_price=50_000, position_size=500, leverage=3
        )
        assert len(manager.get_active_positions()) == 1
    finally:
        manager.close()

    async def count() -> int:
        store = PostgresEventStore(pg_url, read_only=True)
        await store.open()
        try:
            return len(await store.read())
        finally:
            await store.close()

    assert anyio.run(count) == 1


def test_watch_on_a_postgres_ledger_is_woken_by_notify(
    known: Known, pg_url: str, cli: RunCli, tmp_path: Path
) -> None:
    """`ledger watch` polling once an hour still shows another writer's commit at once."""
    assert cli("copy", known.db, pg_url).returncode == 0
    command = [sys.executable, "-m", "ledger.cli", "--db", pg_url, "--snapshot", "absent.json"]
    command += ["watch", "--plain", "--interval", "3600", "--max-events", "1"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert f"from seq {known.head_seq}" in ready, ready

            async def mark() -> None:
                settings = Settings(positions_file=str(tmp_path / "writer.json"))
                async with Ledger(pg_url, settings=settings) as ledger:
                    await ledger.mark("pos_sol", 120)

            anyio.run(mark)
            line = proc.stdout.readline()
            assert line.startswith(f"{known.head_seq + 1} ") and "@ 120" in line, line
            assert proc.wait(timeout=30) == 0  # --max-events 1
        finally:
            if proc.poll() is None:
                proc.kill()
