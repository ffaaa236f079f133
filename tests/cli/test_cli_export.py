"""export: golden rows from the known history, time windows, and memory that does not grow."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from tests.cli.conftest import (
    BTC_ENTRY,
    BTC_EXIT,
    BTC_FEE,
    BTC_QTY,
    EVENTS_PER_POSITION,
    Known,
    RunCli,
    build_large_log,
    child_env,
)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_events_csv_has_every_event_with_exact_values(cli: RunCli, known: Known) -> None:
    run = cli("export", "--what", "events", "--format", "csv", "--db", known.db)
    assert run.returncode == 0, run.stderr
    rows = csv_rows(run.stdout)
    assert [int(r["seq"]) for r in rows] == list(range(1, known.head_seq + 1))
    exit_1 = rows[known.seqs["exit_sol_1"] - 1]
    assert exit_1["type"] == "PartialExitRecorded" and exit_1["stream"] == "pos_sol"
    assert Decimal(exit_1["price"]) == 110
    assert Decimal(exit_1["realized_pnl"]) == known.expected["sol_exit_1"]
    assert exit_1["occurred_at"] == "2025-01-07T17:15:00Z"
    assert exit_1["mark_price"] == "" and exit_1["reason"] == "partial_exit_50_roe"
    balance = rows[known.seqs["balance"] - 1]
    assert balance["stream"] == "account" and Decimal(balance["total"]) == 1000
    assert all(len(r["hash"]) == 64 for r in rows)


def test_trades_csv_one_row_per_closed_position(cli: RunCli, known: Known) -> None:
    run = cli("export", "--what", "trades", "--db", known.db)
    assert run.returncode == 0, run.stderr
    rows = {r["position_id"]: r for r in csv_rows(run.stdout)}
    assert list(rows) == ["pos_btc", "pos_eth"]  # in the order they closed
    btc = rows["pos_btc"]
    assert btc["side"] == "sell" and btc["close_reason"] == "take profit"
    assert Decimal(btc["entry_price"]) == BTC_ENTRY and Decimal(btc["exit_price"]) == BTC_EXIT
    assert Decimal(btc["qty"]) == BTC_QTY
    assert Decimal(btc["close_pnl"]) == known.expected["btc_close"]
    assert Decimal(btc["realized_pnl"]) == known.expected["btc_total"]
    assert Decimal(btc["fees"]) == 2 * BTC_FEE
    seconds = (known.times["close_btc"] - known.times["open_btc"]).total_seconds()
    assert Decimal(btc["duration_s"]) == Decimal(int(seconds))
    assert int(btc["partial_exits"]) == 0
    assert Decimal(rows["pos_eth"]["realized_pnl"]) == known.expected["eth_total"]


def test_time_windows(cli: RunCli, known: Known) -> None:
    window = ("--from", "2025-01-07T18:00:00", "--to", "2025-01-07T18:10:00")
    events = cli("export", "--what", "events", "--format", "jsonl", *window, "--db", known.db)
    assert events.returncode == 0, events.stderr
    seqs = [json.loads(line)["seq"] for line in events.stdout.splitlines()]
    inside = [name for name, t in known.times.items() if "18:00" <= f"{t:%H:%M}" <= "18:10"]
    assert seqs == sorted(known.seqs[name] for name in inside)
    trades = cli("export", "--what", "trades", "--format", "jsonl", *window, "--db", known.db)
    lines = [json.loads(line) for line in trades.stdout.splitlines()]
    assert [t["position_id"] for t in lines] == ["pos_btc"]  # pos_eth closed at 18:30
    assert lines[0]["realized_pnl"] == str(known.expected["btc_total"])  # exact, as a string


def test_out_file(cli: RunCli, known: Known, tmp_path: Path) -> None:
    out = tmp_path / "trades.jsonl"
    run = cli("export", "--what", "trades", "--format", "jsonl", "--out", out, "--db", known.db)
    assert run.returncode == 0 and run.stdout == ""
    assert "wrote 2 trades" in run.stderr
    assert len(out.read_text().splitlines()) == 2


# -- memory -------------------------------------------------------------------------------

LARGE_POSITIONS = 40_000  # 200,000 events
SMALL_POSITIONS = LARGE_POSITIONS // 4


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("large")
    made = {}
    for name, positions in (("small", SMALL_POSITIONS), ("large", LARGE_POSITIONS)):
        db = folder / f"{name}.db"
        events = anyio.run(build_large_log, db, positions)
        assert events == positions * EVENTS_PER_POSITION
        made[name] = db
    return made


def peak_rss_kb(args: list[str], cwd: Path) -> int:
    """Run `ledger ARGS` under a small parent that reports its child's peak RSS."""
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-m', 'ledger.cli', *sys.argv[1:]])\n"
        "assert done.returncode == 0, done.returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1])


@pytest.mark.parametrize(("what", "fmt"), [("events", "csv"), ("trades", "jsonl")])
def test_export_memory_does_not_grow_with_the_log(
    logs: dict[str, Path], tmp_path: Path, what: str, fmt: str
) -> None:
    peaks = {}
    for name, db in logs.items():
        out = tmp_path / f"{name}.{fmt}"
        args = ["export", "--what", what, "--format", fmt, "--out", str(out), "--db", str(db)]
        peaks[name] = peak_rss_kb(args, tmp_path)
        with out.open() as written:
            lines = sum(1 for _ in written)
        positions = SMALL_POSITIONS if name == "small" else LARGE_POSITIONS
        per_position = EVENTS_PER_POSITION if what == "events" else 1
        assert lines == positions * per_position + (fmt == "csv")
    # four times the log, and the peak stays within a few MB (a log held in memory, or even
    # one entry per position, would add tens of MB here)
    print(f"peak RSS of export --what {what}: {peaks} KB")
    assert peaks["large"] - peaks["small"] < 4 * 1024, peaks
