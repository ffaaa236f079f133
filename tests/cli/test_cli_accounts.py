"""`--account` on plot, export and history, against the figures `stats --account` gives and
sums written in tests/test_equity.py from the events themselves."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from tests.cli.conftest import RunCli
from tests.test_equity import BOT_A, BOT_B, EVENTS, write_log


@pytest.fixture
def two_accounts(tmp_path: Path) -> Path:
    db = tmp_path / "fleet.db"
    anyio.run(write_log, db)
    return db


def _json(run: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert run.returncode == 0, run.stderr
    data: dict[str, object] = json.loads(run.stdout)
    return data


def test_plot_draws_one_account_or_the_whole_fleet(
    cli: RunCli, two_accounts: Path, tmp_path: Path
) -> None:
    fleet = _json(cli("plot", tmp_path / "fleet.png", "--db", two_accounts, "--json"))
    a = _json(cli("plot", tmp_path / "a.png", "--account", "botA", "--db", two_accounts, "--json"))
    b = _json(cli("plot", tmp_path / "b.png", "--account", "botB", "--db", two_accounts, "--json"))
    assert Decimal(str(fleet["realized_equity"])) == BOT_A + BOT_B
    assert Decimal(str(a["realized_equity"])) == BOT_A
    assert Decimal(str(b["realized_equity"])) == BOT_B
    assert (fleet["closes"], a["closes"], b["closes"]) == (2, 1, 1)
    assert a["account"] == "botA" and fleet["account"] is None
    # the same figure stats gives for the account
    stats = _json(cli("stats", "--account", "botA", "--db", two_accounts, "--json"))
    summary = stats["summary"]
    assert isinstance(summary, dict)
    assert Decimal(str(summary["total_realized_pnl"])) == BOT_A
    for name in ("fleet.png", "a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_export_keeps_one_accounts_events_and_trades(cli: RunCli, two_accounts: Path) -> None:
    def lines(*args: str) -> list[dict[str, object]]:
        run = cli("export", *args, "--format", "jsonl", "--db", two_accounts)
        assert run.returncode == 0, run.stderr
        return [json.loads(line) for line in run.stdout.splitlines()]

    # botA opened a1: every event of a1 is botA's, none of b1's
    a1_events = sum(1 for e in EVENTS if getattr(e, "position_id", None) == "a1")
    events = lines("--what", "events", "--account", "botA")
    assert len(events) == a1_events == 5
    assert {e["stream"] for e in events} == {"a1"}
    assert len(lines("--what", "events")) == len(EVENTS)
    assert lines("--what", "events", "--account", "nobody") == []
    trades = lines("--what", "trades", "--account", "botB")
    assert [t["position_id"] for t in trades] == ["b1"]
    assert [t["position_id"] for t in lines("--what", "trades")] == ["a1", "b1"]


def test_history_refuses_a_position_of_another_account(cli: RunCli, two_accounts: Path) -> None:
    mine = cli("history", "a1", "--account", "botA", "--db", two_accounts, "--json")
    assert _json(mine)["position"] is not None
    theirs = cli("history", "a1", "--account", "botB", "--db", two_accounts)
    assert theirs.returncode == 1
    assert "no position 'a1' in account 'botB'" in theirs.stderr
