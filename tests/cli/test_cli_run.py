"""`ledger run`: the background service against Bybit, keyed from the environment only."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import RunCli


def test_run_without_keys_says_which_variable_is_missing(cli: RunCli, tmp_path: Path) -> None:
    done = cli("--db", tmp_path / "ledger.db", "run", "--testnet", env={"BYBIT_API_KEY": ""})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "BYBIT_API_KEY" in lines[0] and "BYBIT_API_SECRET" in lines[0]
    assert "Traceback" not in done.stderr


def test_run_never_prints_a_key_it_was_given_half_of(cli: RunCli, tmp_path: Path) -> None:
    secret = "FAKE-SECRET-6c1f9e"
    done = cli(
        "--db", tmp_path / "ledger.db", "run",
        env={"BYBIT_API_KEY": "", "BYBIT_API_SECRET": secret},
    )  # fmt: skip
    assert done.returncode == 2
    assert "BYBIT_API_KEY" in done.stderr
    assert secret not in done.stdout + done.stderr


def test_run_help_has_an_example(cli: RunCli) -> None:
    done = cli("run", "--help")
    assert done.returncode == 0
    assert "ledger run --testnet" in done.stdout
