"""import: the seed's own example, a large generated seed file, and the refusals."""

from __future__ import annotations

import json
import random
import re
import subprocess
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import ROOT, Known, RunCli

SEED_DOC = ROOT.parent / "shared" / "seed" / "08-position-management.md"


def seed_examples() -> tuple[dict[str, Any], dict[str, Any]]:
    """The two JSON examples of the seed's position-management chapter."""
    if not SEED_DOC.exists():
        pytest.skip(f"the seed's documentation is not at {SEED_DOC}")
    blocks = re.findall(r"```json\n(.*?)```", SEED_DOC.read_text(encoding="utf-8"), re.S)
    positions_file, tracking = (json.loads(b) for b in blocks[:2])
    assert "open_positions" in positions_file and "partial_exits" in tracking
    return positions_file, tracking


def ok(run: subprocess.CompletedProcess[str]) -> Any:
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def test_the_seeds_example_file(cli: RunCli, tmp_path: Path) -> None:
    document, tracking = seed_examples()
    document["open_positions"][tracking["position_id"]] = tracking  # as the seed wrote it
    source = tmp_path / "seed-positions.json"
    source.write_text(json.dumps(document, indent=2))
    db = tmp_path / "imported" / "ledger.db"

    report = ok(cli("import", source, "--db", db, "--json"))
    assert report["open_positions"] == 1 and report["closed_positions"] == 0
    # the tracking example alone lacks what a position needs: reported, not guessed
    [bad] = report["unreadable"]
    assert bad["position_id"] == "pos_xyz789"
    assert bad["reason"] == "missing side, entry_price, leverage, open_time"
    # session_stats claim 45 trades that closed_positions ([]) does not hold
    figures = {f["name"]: f for f in report["figures"]}
    stats = document["session_stats"]
    assert figures["closed_trades"]["file"] == str(stats["total_trades"])
    assert figures["closed_trades"]["records"] == "0"
    assert figures["closed_trades"]["consistent"] is False
    assert report["self_consistent"] is False

    example = document["open_positions"]["pos_abc123"]
    positions = ok(cli("positions", "--db", db, "--json"))
    [sol] = positions["open"]
    entry = Decimal(str(example["entry_price"]))
    assert sol["position_id"] == "pos_abc123" and sol["source"] == "import"
    assert Decimal(sol["qty"]) == Decimal(str(example["position_size"])) / entry
    assert Decimal(sol["current_price"]) == Decimal(str(example["current_price"]))
    assert Decimal(sol["unrealized_pnl"]) == Decimal(str(example["unrealized_pnl"]))
    assert sol["open_time"] == example["open_time"] + "Z"  # naive in the file: UTC
    assert sol["open_reason"] == example["open_reason"]
    assert cli("verify", "--db", db).returncode == 0

    text = cli("import", source, "--db", db)
    assert text.returncode == 1
    assert "already imported" in text.stderr and text.stderr.count("\n") == 1


def test_the_partial_exit_example_completed(cli: RunCli, tmp_path: Path) -> None:
    """The tracking example with the fields it leaves out (entry 100, as the design notes say)."""
    _, tracking = seed_examples()
    tracking.update(side="buy", entry_price=100.0, leverage=5, open_time="2025-01-07T16:45:00")
    source = tmp_path / "positions.json"
    source.write_text(json.dumps({"open_positions": {tracking["position_id"]: tracking}}))
    db = tmp_path / "ledger.db"
    report = ok(cli("import", source, "--db", db, "--snapshot", tmp_path / "snap.json", "--json"))
    assert report["unreadable"] == [] and report["partial_exits"] == 2

    exits = tracking["partial_exits"]
    left = Decimal(str(tracking["position_size"]))
    entry = Decimal(100)
    history = ok(cli("history", "pos_xyz789", "--db", db, "--json"))["events"]
    assert [r["kind"] for r in history] == ["PositionOpened", *["PartialExitRecorded"] * 2]
    sizes = [Decimal(str(e["size"])) for e in exits]
    assert Decimal(history[0]["qty"]) == (left + sum(sizes)) / entry  # 500 at 100: qty 5
    assert [Decimal(r["running_qty"]) for r in history] == [
        (left + sizes[0] + sizes[1]) / entry,
        (left + sizes[1]) / entry,
        left / entry,
    ]
    realized = [Decimal(str(e["realized_pnl"])) for e in exits]
    assert Decimal(history[-1]["realized_pnl"]) == sum(realized)
    assert [r["occurred_at"] for r in history[1:]] == [e["timestamp"] + "Z" for e in exits]


# -- a large generated seed file -------------------------------------------------------------

CLOSED = 2000
SYMBOLS = ["SOL/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT:USDT", "DOGE/USDT:USDT"]


def seed_position(rng: random.Random, n: int, start: datetime, closed: bool) -> dict[str, Any]:
    """One position as the seed's bot would have saved it (floats, naive ISO times)."""
    entry = round(rng.uniform(10, 200), 2)
    side = rng.choice(["buy", "sell"])
    opened = start + timedelta(minutes=10 * n)
    exits = []
    for k in range(n % 3):  # 0, 1 or 2 partial exits
        price = round(entry * rng.uniform(0.95, 1.1), 4)
        size = 100.0
        sign = 1 if side == "buy" else -1
        exits.append(
            {
                "timestamp": (opened + timedelta(minutes=2 * (k + 1))).isoformat(),
                "size": size,
                "price": price,
                "realized_pnl": round(sign * size / entry * (price - entry), 4),
                "reason": f"partial_exit_{k}",
            }
        )
    record: dict[str, Any] = {
        "position_id": f"pos_{n:05d}",
        "symbol": SYMBOLS[n % len(SYMBOLS)],
        "side": side,
        "entry_price": entry,
        "current_price": round(entry * rng.uniform(0.9, 1.1), 4),
        "position_size": 200.0,
        "leverage": rng.choice([3, 5, 10]),
        "unrealized_pnl": round(rng.uniform(-20, 25), 2),
        "roe_percentage": 0.0,
        "open_time": opened.isoformat(),
        "close_time": (opened + timedelta(minutes=9)).isoformat() if closed else None,
        "confidence": 0.7,
        "open_reason": "ML",
        "close_reason": "tp" if closed else None,
        "atr": 1.5,
        "adx": 20.0,
        "volatility": 0.02,
        "real_initial_margin": None,
        "partial_exits": exits,
    }
    return record


def seed_file(closed_count: int, open_count: int) -> dict[str, Any]:
    rng = random.Random(7)
    start = datetime(2024, 11, 1)
    closed = [seed_position(rng, n, start, True) for n in range(closed_count)]
    opened = [seed_position(rng, closed_count + n, start, False) for n in range(open_count)]
    # session_stats by the seed's get_session_summary: its last unrealized PnL only
    wins = sum(1 for p in closed if p["unrealized_pnl"] > 0)
    realized = sum(p["unrealized_pnl"] for p in closed)
    unrealized = sum(p["unrealized_pnl"] for p in opened)
    return {
        "open_positions": {p["position_id"]: p for p in opened},
        "closed_positions": closed,
        "session_stats": {
            "active_positions": len(opened),
            "unrealized_pnl": unrealized,
            "closed_trades": len(closed),
            "wins": wins,
            "losses": len(closed) - wins,
            "win_rate": wins / len(closed),
            "total_realized_pnl": realized,
            "total_pnl": unrealized + realized,
            "balance": 1234.5,
            "available_balance": 1000.0,
        },
        "last_saved": (start + timedelta(days=30)).isoformat(),
    }


def test_a_large_seed_file(cli: RunCli, tmp_path: Path) -> None:
    document = seed_file(CLOSED, 3)
    source = tmp_path / "big-positions.json"
    source.write_text(json.dumps(document, indent=2))
    exact = json.loads(source.read_text(), parse_float=Decimal)  # what the file says, exactly
    db = tmp_path / "ledger.db"

    report = ok(cli("import", source, "--db", db, "--json"))
    closed = exact["closed_positions"]
    opened = list(exact["open_positions"].values())
    exits = [e for p in closed + opened for e in p["partial_exits"]]
    assert report["unreadable"] == []
    assert report["closed_positions"] == CLOSED and report["open_positions"] == 3
    assert report["partial_exits"] == len(exits)
    marks, balance, history_imported = len(opened), 1, 1
    assert report["events"] == 2 * CLOSED + len(opened) + len(exits) + marks + balance + (
        history_imported
    )
    assert report["first_seq"] == 1 and report["last_seq"] == report["events"]

    # the ledger's figures, by hand from the file: partial exits count
    totals = [
        p["unrealized_pnl"] + sum(e["realized_pnl"] for e in p["partial_exits"]) for p in closed
    ]
    open_realized = sum(e["realized_pnl"] for p in opened for e in p["partial_exits"])
    summary = ok(cli("stats", "--db", db, "--json"))["summary"]
    assert summary["closed_trades"] == CLOSED
    assert summary["wins"] == sum(1 for t in totals if t > 0)
    assert Decimal(summary["closed_realized_pnl"]) == sum(totals)
    assert Decimal(summary["total_realized_pnl"]) == sum(totals) + open_realized
    assert Decimal(summary["unrealized_pnl"]) == sum(p["unrealized_pnl"] for p in opened)
    assert Decimal(summary["balance"]) == exact["session_stats"]["balance"]

    # the file is self-consistent by the seed's rule; the ledger differs only through exits
    figures = {f["name"]: f for f in report["figures"]}
    assert report["self_consistent"] is True
    for name in ("closed_trades", "wins", "losses", "total_realized_pnl", "total_pnl"):
        assert figures[name]["consistent"] is True, figures[name]
    assert Decimal(figures["wins"]["records"]) == exact["session_stats"]["wins"]
    assert "partial exits" in figures["total_realized_pnl"]["note"]
    assert figures["closed_trades"]["note"] == ""

    trades = cli("export", "--what", "trades", "--format", "jsonl", "--db", db)
    rows = [json.loads(line) for line in trades.stdout.splitlines()]
    assert len(rows) == CLOSED
    assert sum(r["partial_exits"] for r in rows) == sum(len(p["partial_exits"]) for p in closed)
    assert cli("verify", "--db", db).returncode == 0

    again = cli("import", source, "--db", db)
    assert again.returncode == 1 and "already imported" in again.stderr


def test_refusals_and_dry_run(cli: RunCli, known: Known, tmp_path: Path) -> None:
    source = tmp_path / "seed.json"
    source.write_text(json.dumps(seed_file(5, 1)))
    # a log that already has history
    into_known = cli("import", source, "--db", known.db)
    assert into_known.returncode == 1 and "new or empty log" in into_known.stderr
    # a dry run reports and creates nothing
    fresh = tmp_path / "fresh" / "ledger.db"
    dry = ok(cli("import", source, "--db", fresh, "--dry-run", "--json"))
    assert dry["dry_run"] is True and dry["closed_positions"] == 5
    assert not fresh.exists()
    # not JSON; not a seed file; the ledger's own snapshot
    (tmp_path / "bad.json").write_text("{not json")
    assert cli("import", tmp_path / "bad.json", "--db", fresh).returncode == 1
    own = cli("import", known.snapshot, "--db", tmp_path / "x.db", "--snapshot", tmp_path / "s")
    assert own.returncode == 1 and "position-ledger snapshot" in own.stderr
    overwrite = cli("import", source, "--db", tmp_path / "y.db", "--snapshot", source)
    assert overwrite.returncode == 1 and "snapshot path" in overwrite.stderr
    assert not fresh.exists()


def test_records_it_cannot_interpret_are_reported(cli: RunCli, tmp_path: Path) -> None:
    document = seed_file(4, 0)
    closed = document["closed_positions"]
    closed[0]["entry_price"] = -5
    closed[1]["partial_exits"] = [{"timestamp": "2024-11-01T00:11:00", "size": -3.0, "price": 1}]
    del closed[2]["close_time"]
    source = tmp_path / "seed.json"
    source.write_text(json.dumps(document))
    strict = cli("import", source, "--db", tmp_path / "strict.db", "--strict")
    assert strict.returncode == 1 and "3 records cannot be interpreted" in strict.stderr
    assert not (tmp_path / "strict.db").exists()

    run = cli("import", source, "--db", tmp_path / "ledger.db")
    assert run.returncode == 0, run.stderr
    assert "1 open" not in run.stdout and "0 open and 1 closed positions" in run.stdout
    assert "Could not interpret 3 records:" in run.stdout
    assert "closed_positions[0] (pos_00000): invalid entry_price=-5" in run.stdout
    assert "closed_positions[1] (pos_00001): partial_exits[0]: invalid size=-3.0" in run.stdout
    assert "closed_positions[2] (pos_00002): missing close_time" in run.stdout
