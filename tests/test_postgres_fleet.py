"""A fleet on one PostgreSQL ledger: 4 bot processes (2 accounts each) doing open / partial
exit / close cycles while a subscriber in another process follows the log. It must receive
every event exactly once, in seq order, with no gap; at the end the chain verifies and every
acknowledged event is in the log. Then the same with one bot killed by SIGKILL mid-run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.store.postgres import PostgresEventStore
from projections.book import Book, fold_records

ROOT = Path(__file__).resolve().parent.parent
BOTS = 4
CYCLES = 4
COMMANDS_PER_BOT = CYCLES * 2 * 3


def _spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tests._pg_fleet", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    out: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        seq, event_id = line.split(" ", 1)
        out.append((int(seq), event_id))
    return out


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def _log(url: str) -> list[tuple[int, str]]:
    store = PostgresEventStore(url, read_only=True)
    await store.open()
    try:
        report = await store.verify_chain()
        records = await store.read()
        assert report.last_seq == len(records)
        return [(r.seq, r.event_id) for r in records]
    finally:
        await store.close()


def _run_fleet(url: str, folder: Path, *, kill_one: bool) -> None:
    # the table exists before anyone follows it
    async def create() -> None:
        store = PostgresEventStore(url)
        await store.open()
        await store.close()

    anyio.run(create)
    delivered = folder / "delivered.txt"
    follower = _spawn(folder / "follow.err", "follow", url, str(delivered), str(folder))
    bots: dict[str, subprocess.Popen[bytes]] = {}
    acks = {f"bot{i}": folder / f"acks-bot{i}.txt" for i in range(BOTS)}
    try:
        for name, path in acks.items():
            # the victim would run for minutes: it is surely mid-run when it is killed
            cycles = 100_000 if kill_one and name == "bot0" else CYCLES
            bots[name] = _spawn(
                folder / f"{name}.err", "bot", url, name, str(cycles), str(path), str(folder)
            )
        if kill_one:
            victim = bots["bot0"]
            # mid-run: some of its commands acknowledged, most not yet
            _wait_for(lambda: len(_lines(acks["bot0"])) >= 4, "bot0's first commands")
            victim.send_signal(signal.SIGKILL)
            assert victim.wait() == -signal.SIGKILL
        for name, proc in bots.items():
            proc.wait(timeout=300)
            if not (kill_one and name == "bot0"):
                assert proc.returncode == 0, (folder / f"{name}.err").read_text()
        log = anyio.run(_log, url)
        _wait_for(lambda: len(_lines(delivered)) >= len(log), "the subscriber to reach the head")
    finally:
        for proc in [follower, *bots.values()]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    # every event exactly once, in seq order, no gap: exactly the log, in the log's order
    assert _lines(delivered) == log
    assert [seq for seq, _ in log] == list(range(1, len(log) + 1))
    stored = dict(log)
    for name, path in acks.items():
        acked = _lines(path)
        for seq, event_id in acked:
            assert stored.get(seq) == event_id, f"{name}: acknowledged {seq} {event_id} lost"
        if not (kill_one and name == "bot0"):
            assert len(acked) >= COMMANDS_PER_BOT  # every command acknowledged
    # each surviving bot's positions all went open -> partial exit -> closed
    book = anyio.run(_book, url)
    for index in range(1 if kill_one else 0, BOTS):  # the victim's last cycle may be open
        for account in (f"bot{index}-a", f"bot{index}-b"):
            summary = book.summary(account)
            assert (summary.closed_trades, summary.active_positions) == (CYCLES, 0)
            # each cycle: 0.5 exited at +1 and 1.5 closed at -0.5 (buy) or the reverse (sell)
            by_hand = sum(
                (
                    Decimal("0.5") * 1 + Decimal("1.5") * Decimal("-0.5")
                    if cycle % 2
                    else Decimal("0.5") * -1 + Decimal("1.5") * Decimal("0.5")
                    for cycle in range(CYCLES)
                ),
                Decimal(0),
            )
            assert summary.total_realized_pnl == by_hand


async def _book(url: str) -> Book:
    store = PostgresEventStore(url, read_only=True)
    await store.open()
    try:
        return fold_records(await store.read())
    finally:
        await store.close()


@pytest.mark.parametrize("kill_one", [False, True], ids=["clean", "one-bot-sigkilled"])
def test_fleet_of_bots_and_a_subscriber_on_one_postgres_ledger(
    pg_url: str, tmp_path: Path, kill_one: bool
) -> None:
    _run_fleet(pg_url, tmp_path, kill_one=kill_one)
