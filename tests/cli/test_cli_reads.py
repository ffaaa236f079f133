"""stats, positions, history, replay: golden figures from the known history, as subprocesses."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import (
    BTC_ENTRY,
    BTC_FEE,
    BTC_QTY,
    SOL_ENTRY,
    SOL_EXIT,
    SOL_EXIT_PRICES,
    SOL_MARKS,
    SOL_NOTIONAL,
    Known,
    RunCli,
)


def as_json(run: Any) -> Any:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def dec(value: object) -> Decimal:
    return Decimal(str(value))


def test_stats_at_the_head_match_the_history(cli: RunCli, known: Known) -> None:
    data = as_json(cli("stats", "--db", known.db, "--json"))
    s = data["summary"]
    e = known.expected
    assert s["closed_trades"] == 2
    assert s["wins"] == e["wins"] and s["losses"] == e["losses"]
    assert dec(s["closed_realized_pnl"]) == e["closed_realized"]
    assert dec(s["open_realized_pnl"]) == e["sol_realized"]
    assert dec(s["total_realized_pnl"]) == e["total_realized"]
    assert dec(s["unrealized_pnl"]) == e["unrealized"]
    assert dec(s["total_pnl"]) == e["total_pnl"]
    assert dec(s["total_fees"]) == e["fees"]
    assert dec(s["total_funding"]) == e["funding"]
    assert dec(s["balance"]) == 1000
    assert data["as_of"]["seq"] == known.head_seq
    assert data["as_of"]["chain_checked"] is True
    assert data["as_of"]["time"] == "2025-01-07T18:50:00Z"
    # the exact figures are the live projection's, digit for digit
    assert s == known.live_summary
    symbols = {row["symbol"]: row for row in data["symbols"]}
    assert dec(symbols["BTC/USDT:USDT"]["realized_pnl"]) == e["btc_total"]
    assert dec(symbols["ETH/USDT:USDT"]["realized_pnl"]) == e["eth_total"]
    assert symbols["SOL/USDT:USDT"]["open"] == 1


def test_stats_table_prints_rounded_usd(cli: RunCli, known: Known) -> None:
    run = cli("stats", "--db", known.db)
    assert run.returncode == 0, run.stderr
    assert f"{known.expected['total_pnl']:,.2f}" in run.stdout
    assert "1,000.00" in run.stdout
    assert "as of seq 12 · 2025-01-07T18:50:00Z · from positions.json at seq 12" in run.stdout
    assert "chain checked seq 1..12" in run.stdout


def test_stats_as_of_a_time_and_a_seq_agree(cli: RunCli, known: Known) -> None:
    by_time = as_json(cli("stats", "--db", known.db, "--as-of", "2025-01-07T17:50:00", "--json"))
    by_seq = as_json(
        cli("stats", "--db", known.db, "--seq", str(known.seqs["exit_sol_2"]), "--json")
    )
    # the same instant written with a zone: 18:50+01:00 is 17:50 UTC
    zoned = as_json(
        cli("stats", "--db", known.db, "--as-of", "2025-01-07T18:50:00+01:00", "--json")
    )
    assert by_time["summary"] == by_seq["summary"] == zoned["summary"]
    s = by_time["summary"]
    sol_exits = sum(((SOL_EXIT / SOL_ENTRY) * (p - SOL_ENTRY) for p in SOL_EXIT_PRICES), Decimal(0))
    sol_left = SOL_NOTIONAL / SOL_ENTRY - 2 * SOL_EXIT / SOL_ENTRY
    assert s["closed_trades"] == 0
    assert dec(s["total_realized_pnl"]) == sol_exits - BTC_FEE
    assert dec(s["unrealized_pnl"]) == sol_left * (SOL_MARKS[0] - SOL_ENTRY) + BTC_QTY * (
        BTC_ENTRY - 49500
    )
    assert by_time["as_of"]["seq"] == known.seqs["exit_sol_2"]


def test_stats_for_one_symbol(cli: RunCli, known: Known) -> None:
    data = as_json(cli("stats", "--db", known.db, "--symbol", "SOL/USDT:USDT", "--json"))
    s = data["summary"]
    assert s["active_positions"] == 1 and s["closed_trades"] == 0
    assert dec(s["total_realized_pnl"]) == known.expected["sol_realized"]
    assert dec(s["unrealized_pnl"]) == known.expected["unrealized"]
    assert dec(s["balance"]) == 0  # the account's balance belongs to no symbol


def test_positions_filters(cli: RunCli, known: Known) -> None:
    both = as_json(cli("positions", "--db", known.db, "--json"))
    assert [p["position_id"] for p in both["open"]] == ["pos_sol"]
    assert [p["position_id"] for p in both["closed"]] == ["pos_eth", "pos_btc"]  # newest first
    sol = both["open"][0]
    assert dec(sol["qty"]) == known.expected["sol_left"]
    assert dec(sol["current_price"]) == SOL_MARKS[1]
    assert dec(sol["unrealized_pnl"]) == known.expected["unrealized"]
    assert len(sol["partial_exits"]) == 2
    closed = as_json(cli("positions", "--db", known.db, "--closed", "--limit", "1", "--json"))
    assert closed["open"] == [] and [p["position_id"] for p in closed["closed"]] == ["pos_eth"]
    btc = as_json(cli("positions", "--db", known.db, "--symbol", "BTC/USDT:USDT", "--json"))
    assert (
        btc["open"] == [] and dec(btc["closed"][0]["realized_pnl"]) == known.expected["btc_total"]
    )
    table = cli("positions", "--db", known.db, "--open")
    assert table.returncode == 0 and "pos_sol" in table.stdout and "pos_btc" not in table.stdout


def test_history_has_running_size_and_realized_so_far(cli: RunCli, known: Known) -> None:
    data = as_json(cli("history", "pos_sol", "--db", known.db, "--json"))
    rows = data["events"]
    e = known.expected
    initial = SOL_NOTIONAL / SOL_ENTRY
    one_exit = SOL_EXIT / SOL_ENTRY
    assert [r["kind"] for r in rows] == [
        "PositionOpened",
        "PositionMarked",
        "PartialExitRecorded",
        "PartialExitRecorded",
        "FundingRecorded",
        "PositionMarked",
    ]
    assert [dec(r["running_qty"]) for r in rows] == [
        initial,
        initial,
        initial - one_exit,
        initial - 2 * one_exit,
        e["sol_left"],
        e["sol_left"],
    ]
    so_far = [dec(r["realized_pnl"]) for r in rows]
    assert so_far == [
        0,
        0,
        e["sol_exit_1"],
        e["sol_exit_1"] + e["sol_exit_2"],
        e["sol_realized"],
        e["sol_realized"],
    ]
    assert [r["seq"] for r in rows] == [
        known.seqs[k]
        for k in ("open_sol", "mark_sol_1", "exit_sol_1", "exit_sol_2", "funding", "mark_sol_2")
    ]
    assert rows[2]["reason"] == "partial_exit_50_roe" and rows[4]["source"] == "exchange"
    assert rows[0]["occurred_at"] == "2025-01-07T16:45:00Z"
    table = cli("history", "pos_btc", "--db", known.db)
    assert table.returncode == 0
    assert "take profit" in table.stdout and "2025-01-07T18:00:00Z" in table.stdout


def test_history_of_an_unknown_position(cli: RunCli, known: Known) -> None:
    run = cli("history", "pos_nope", "--db", known.db)
    assert run.returncode == 1
    assert "pos_nope" in run.stderr and len(run.stderr.splitlines()) == 1


def test_replay_to_the_end_equals_stats_and_the_live_projection(cli: RunCli, known: Known) -> None:
    replay = as_json(cli("replay", "--db", known.db, "--seq", str(known.head_seq), "--json"))
    stats = as_json(cli("stats", "--db", known.db, "--json"))
    late = as_json(cli("replay", "--db", known.db, "--as-of", "2030-01-01", "--json"))
    assert replay["summary"] == stats["summary"] == late["summary"] == known.live_summary
    assert [p["position_id"] for p in replay["open"]] == ["pos_sol"]


def test_replay_at_a_past_instant(cli: RunCli, known: Known) -> None:
    data = as_json(cli("replay", "--db", known.db, "--as-of", "2025-01-07T17:50:00", "--json"))
    opened = {p["position_id"]: p for p in data["open"]}
    assert set(opened) == {"pos_sol", "pos_btc"} and data["closed"] == []
    assert dec(opened["pos_sol"]["current_price"]) == SOL_MARKS[0]
    assert opened["pos_sol"]["marked_at"] == "2025-01-07T17:00:00Z"
    assert dec(opened["pos_btc"]["current_price"]) == 49500
    before_anything = as_json(cli("replay", "--db", known.db, "--as-of", "2025-01-07", "--json"))
    assert before_anything["open"] == [] and before_anything["as_of"]["seq"] == 0
    table = cli("replay", "--db", known.db, "--as-of", "2025-01-07T18:35:00")
    assert table.returncode == 0
    assert "pos_eth" in table.stdout and "stop loss" in table.stdout
    assert "--as-of 2025-01-07T18:35:00Z" in table.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["replay"],  # one of --as-of / --seq is required
        ["replay", "--as-of", "yesterday"],
        ["replay", "--seq", "-1"],
        ["replay", "--seq", "2", "--as-of", "2025-01-07"],
        ["positions", "--open", "--closed"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(cli: RunCli, known: Known, args: list[str]) -> None:
    run = cli(*args, "--db", known.db)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr


def test_a_seq_past_the_head_is_refused(cli: RunCli, known: Known) -> None:
    run = cli("stats", "--db", known.db, "--seq", "999")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "past the end of the log (seq 12)" in run.stderr


def _fingerprint(paths: list[Path]) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "absent"
        for p in paths
    }


def test_read_only_commands_write_nothing(cli: RunCli, known: Known, tmp_path: Path) -> None:
    known.snapshot.unlink()  # no snapshot: a command that wrote one behind our back would show
    watched = [known.db, known.snapshot]
    before = _fingerprint(watched)
    mtime = known.db.stat().st_mtime_ns
    for args in (
        ["stats"],
        ["positions"],
        ["history", "pos_sol"],
        ["replay", "--seq", "3"],
        ["verify"],
        ["export", "--what", "trades", "--format", "csv"],
        ["watch", "--once"],
        ["stats", "--force"],
    ):
        run = cli(*args, "--db", known.db)
        assert run.returncode in (0, 1), (args, run.stderr)
    assert _fingerprint(watched) == before
    assert known.db.stat().st_mtime_ns == mtime
    assert not known.snapshot.exists()


def test_global_options_before_the_command(cli: RunCli, known: Known) -> None:
    run = cli("--db", known.db, "stats", "--json")
    assert as_json(run)["as_of"]["seq"] == known.head_seq


def test_db_from_the_environment_and_a_config_file(
    cli: RunCli, known: Known, tmp_path: Path
) -> None:
    by_env = cli("stats", "--json", env={"POSITION_LEDGER_DB_PATH": str(known.db)})
    assert as_json(by_env)["as_of"]["seq"] == known.head_seq
    config = tmp_path / "custom.toml"
    config.write_text(f'db_path = "{known.db}"\npositions_file = "{known.snapshot}"\n')
    by_file = cli("verify", "--config", config)
    assert by_file.returncode == 0, by_file.stderr
    assert f"{known.snapshot.name} matches the log at seq 12" in by_file.stdout


COMMANDS = "stats positions history replay verify export import snapshot backup plot watch"


@pytest.mark.parametrize("command", COMMANDS.split())
def test_every_command_has_help_with_an_example(cli: RunCli, command: str) -> None:
    run = cli(command, "--help")
    assert run.returncode == 0
    assert "examples:" in run.stdout and f"ledger {command}" in run.stdout
    assert "--db" in run.stdout
