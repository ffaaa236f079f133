"""Auditors on a streaming replica: a primary and a hot standby (`pg_basebackup -R`), writers
appending on the primary, while `ledger verify`, `stats` and `replay` run against the standby,
read-only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.errors import StoreError, StoreUnavailable
from ledger.events import PositionMarked, PositionOpened, stream_of
from ledger.store.postgres import PostgresEventStore
from ledger.values import Side
from tests.cli.conftest import run_ledger
from tests.pg_reaper import server_folder
from tests.pg_server import Server
from tests.strategies import T0

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[Server, Server]]:
    with server_folder(prefix="ledger-pg-replica-") as root:
        primary = Server(root / "primary")
        standby = Server(root / "standby")
        primary.init()
        primary.start()
        yield primary, standby


def start_standby(primary: Server, standby: Server) -> None:
    standby.root.mkdir(parents=True)
    standby.own(standby.root)
    standby.run(
        "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "ledger",
        "-D", str(standby.data), "-R", "-X", "stream", "--no-sync",
    )  # fmt: skip
    with (standby.data / "postgresql.conf").open("a") as conf:
        conf.write(f"\nport = {standby.port}\nunix_socket_directories = '{standby.root}'\n")
    standby.start()


def opened(i: int) -> NewEvent:
    event = PositionOpened(
        position_id=f"p{i}",
        symbol=f"C{i}/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal("10.5"),
        leverage=2,
    )
    return NewEvent(stream=stream_of(event), event=event, event_id=f"o{i}", occurred_at=T0)


def marked(i: int, n: int) -> NewEvent:
    event = PositionMarked(position_id=f"p{i}", mark_price=Decimal(n))
    return NewEvent(stream=stream_of(event), event=event, event_id=f"m{i}-{n}", occurred_at=T0)


def _acks(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def _standby_seq(url: str) -> int:
    store = PostgresEventStore(url, read_only=True)
    try:
        await store.open()
        return (await store.head()).seq
    except StoreUnavailable:
        return 0  # the table has not been replayed yet
    finally:
        await store.close()


async def _hash_at(url: str, seq: int) -> str | None:
    store = PostgresEventStore(url, read_only=True)
    await store.open()
    try:
        return await store.hash_at(seq)
    finally:
        await store.close()


async def _append_to(url: str) -> None:
    store = PostgresEventStore(url)
    await store.open()
    try:
        await store.append([opened(1)])
    finally:
        await store.close()


def test_auditors_verify_stats_and_replay_on_a_hot_standby_while_writers_append(
    primary_and_standby: tuple[Server, Server], tmp_path: Path
) -> None:
    primary, standby = primary_and_standby
    primary_url, standby_url = primary.url(), standby.url()
    acks = tmp_path / "acks.txt"
    with (tmp_path / "writer.err").open("wb") as err:
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests._pg_fleet", "bot", primary_url, "w", "100000",
             str(acks), str(tmp_path)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        _wait_for(lambda: _acks(acks) >= 10, "the writer's first commands")
        start_standby(primary, standby)
        _wait_for(lambda: anyio.run(_standby_seq, standby_url) >= 10, "the standby to replay")
        before = _acks(acks)
        results = {
            name: run_ledger("--db", standby_url, *args, "--json", cwd=tmp_path)
            for name, args in {
                "verify": ("verify", "--snapshot", "absent.json"),
                "stats": ("stats", "--snapshot", "absent.json"),
                "replay": ("replay", "--seq", "9"),
            }.items()
        }
        for name, result in results.items():
            assert result.returncode == 0, f"{name}: {result.stderr}{result.stdout}"
        report = json.loads(results["verify"].stdout)
        assert report["ok"] and report["last_seq"] >= 10
        # the standby's chain is the primary's, hash for hash
        assert anyio.run(_hash_at, primary_url, report["last_seq"]) == report["last_hash"]
        on_primary = run_ledger("--db", primary_url, "replay", "--seq", "9", "--json", cwd=tmp_path)
        replays = [json.loads(on_primary.stdout), json.loads(results["replay"].stdout)]
        for replay in replays:  # where the head is differs: the writer goes on
            replay["as_of"].pop("head_seq")
            replay["as_of"].pop("origin")  # it names the head its chain check reached
        assert replays[0] == replays[1]
        assert replays[0]["as_of"]["seq"] == 9
        # the writers never waited for the auditors
        _wait_for(lambda: _acks(acks) > before + 10, "the writer to go on appending")
        with pytest.raises(StoreError):
            anyio.run(_append_to, standby_url)  # read-only: refused, nothing changes
        assert writer.poll() is None, (tmp_path / "writer.err").read_text()
    finally:
        writer.terminate()
        writer.wait(timeout=30)
