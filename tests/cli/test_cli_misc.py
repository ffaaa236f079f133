"""snapshot, backup, plot, watch and demo, as subprocesses."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.cli.conftest import Known, RunCli, child_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def python_c(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- snapshot, backup ------------------------------------------------------------------------


def test_snapshot_writes_positions_json_that_verify_accepts(cli: RunCli, known: Known) -> None:
    known.snapshot.unlink()
    run = cli("snapshot", "--db", known.db, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["last_seq"] == known.head_seq and Path(data["path"]) == known.snapshot
    document = json.loads(known.snapshot.read_text())
    assert document["last_seq"] == known.head_seq and "pos_sol" in document["open_positions"]
    verify = cli("verify", "--db", known.db)
    assert verify.returncode == 0 and "matches the log at seq 12" in verify.stdout


def test_snapshot_to_another_path(cli: RunCli, known: Known, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "positions.json"
    assert cli("snapshot", "--db", known.db, "--snapshot", target).returncode == 0
    assert (
        json.loads(target.read_text())["last_hash"]
        == json.loads(known.snapshot.read_text())["last_hash"]
    )


def test_backup_is_a_consistent_single_file_copy(cli: RunCli, known: Known, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    run = cli("backup", "--db", known.db, "--to", folder, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    copy = Path(data["path"])
    assert copy.parent == folder and data["events"] == known.head_seq
    assert sorted(p.name for p in folder.iterdir()) == [copy.name]  # no -wal / -shm beside it
    original = json.loads(cli("verify", "--db", known.db, "--json").stdout)
    copied = json.loads(
        cli("verify", "--db", copy, "--snapshot", tmp_path / "none", "--json").stdout
    )
    assert (
        copied["ok"] is True and copied["last_hash"] == original["last_hash"] == data["last_hash"]
    )
    assert json.loads(cli("stats", "--db", copy, "--json").stdout)["summary"] == known.live_summary


# -- plot ----------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_writes_a_png(cli: RunCli, known: Known, tmp_path: Path) -> None:
    out = tmp_path / "equity.png"
    run = cli("plot", out, "--db", known.db, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["closes"] == 2
    assert Decimal(data["realized_equity"]) == known.expected["total_realized"]
    png = out.read_bytes()
    assert png_size(png) == (1200, 600)
    assert 10_000 < len(png) < 2_000_000
    early = tmp_path / "early.png"
    assert cli("plot", early, "--as-of", "2025-01-07T17:50", "--db", known.db).returncode == 0
    assert png_size(early.read_bytes()) == (1200, 600)
    assert early.read_bytes() != png


def test_plot_without_matplotlib_says_how_to_get_it(known: Known, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from ledger.cli import main\n"
        f"raise SystemExit(main(['plot', 'x.png', '--db', {str(known.db)!r}]))\n"
    )
    run = python_c(code, tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "pip install 'position-ledger[plot]'" in run.stderr
    assert not (tmp_path / "x.png").exists()


# -- watch ---------------------------------------------------------------------------------

APPEND = """
import sys, time, anyio
from ledger.service import Ledger

async def main() -> None:
    async with Ledger(sys.argv[1]) as ledger:
        await ledger.mark("pos_sol", 120)
        print(time.time(), ledger.last_seq, flush=True)

anyio.run(main)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch_process(known: Known, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "watch", "--db", str(known.db), *extra],
        cwd=known.dir,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_once_draws_the_dashboard(cli: RunCli, known: Known) -> None:
    run = cli("watch", "--once", "--db", known.db)
    assert run.returncode == 0, run.stderr
    for text in ("Open positions", "pos_sol", "Latest events", "closed ETH/USDT:USDT @ 2900"):
        assert text in run.stdout
    assert f"{known.expected['total_pnl']:,.2f}" in run.stdout
    assert "balance 1,000.00 (available 800.00)" in run.stdout


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_watch_follows_appends_by_another_process(known: Known) -> None:
    # --max-seconds only ends a watcher that never shows the append (the test then fails on
    # an empty line instead of hanging); how soon it shows is not asserted: a loaded machine
    # decides that
    watching = ("--plain", "--interval", "0.2", "--max-events", "1", "--max-seconds", "60")
    with watch_process(known, *watching) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            ready = proc.stdout.readline()
            assert f"from seq {known.head_seq}" in ready, ready
            # idle: one indexed query per interval, nothing else
            before = cpu_seconds(proc.pid)
            time.sleep(1.0)
            idle = cpu_seconds(proc.pid) - before
            assert idle < 0.15, f"{idle:.2f} s of CPU in 1 s idle"

            with subprocess.Popen(
                [sys.executable, "-c", APPEND, str(known.db)],
                cwd=known.dir,
                env=child_env(),
                stdout=subprocess.PIPE,
                text=True,
            ) as appender:
                assert appender.stdout is not None
                _, seq = appender.stdout.readline().split()
                line = proc.stdout.readline()
                assert appender.wait(timeout=30) == 0
            assert line.startswith(f"{seq} ") and "marked SOL/USDT:USDT @ 120" in line, line
            assert "uPnL 40.00" in line  # 2 left x (120 - 100)
            assert proc.wait(timeout=10) == 0  # --max-events 1
        finally:
            if proc.poll() is None:
                proc.kill()


def test_watch_stops_cleanly_on_ctrl_c(known: Known) -> None:
    with watch_process(known, "--plain", "--max-seconds", "30") as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert "watching" in proc.stdout.readline()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_watch_live_dashboard_on_a_terminal(known: Known) -> None:
    """On a terminal it is a rich Live display, redrawn when an event comes in."""
    import pty

    master, slave = pty.openpty()
    env = child_env({"COLUMNS": "160", "LINES": "60", "TERM": "xterm"})
    command = ["watch", "--db", str(known.db), "--interval", "0.2", "--max-events", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", *command, "--max-seconds", "30"],
        cwd=known.dir,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    screen = b""

    def read_until(needle: bytes, deadline: float) -> bool:
        nonlocal screen
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    return needle in screen
                if not chunk:
                    return needle in screen
                screen += chunk
                if needle in screen:
                    return True
        return needle in screen

    try:
        assert read_until(b"Latest events", time.monotonic() + 30), screen[-2000:]
        appended = subprocess.run(
            [sys.executable, "-c", APPEND, str(known.db)],
            cwd=known.dir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert appended.returncode == 0, appended.stderr
        assert read_until(b"@ 120, uPnL 40.00", time.monotonic() + 10), screen[-3000:]
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


# -- demo ----------------------------------------------------------------------------------


def test_demo_hands_its_arguments_to_ledger_demo(tmp_path: Path) -> None:
    code = (
        "import sys, types\n"
        "stub = types.ModuleType('ledger.demo')\n"
        "stub.main = lambda argv: print('demo got', argv) or 3\n"
        "sys.modules['ledger.demo'] = stub\n"
        "from ledger.cli import main\n"
        "raise SystemExit(main(['demo', '--steps', '5', '--help']))\n"
    )
    run = python_c(code, tmp_path)
    assert run.returncode == 3
    assert run.stdout.strip() == "demo got ['--steps', '5', '--help']"


def test_demo_missing_is_one_line(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['ledger.demo'] = None  # as if ledger/demo.py were not there\n"
        "from ledger.cli import main\n"
        "raise SystemExit(main(['demo']))\n"
    )
    run = python_c(code, tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "not available" in run.stderr


def test_thinning_a_long_curve_keeps_its_extremes() -> None:
    """Large logs are drawn from a few thousand points that keep every bucket's trough."""
    from datetime import UTC, datetime, timedelta

    from ledger.audit.equity import EquityPoint
    from ledger.plot import MAX_POINTS, thin

    start = datetime(2025, 1, 1, tzinfo=UTC)
    equity = [Decimal((n * 7919) % 1000) - 500 for n in range(100_000)]
    equity[31_337] = Decimal(-5000)  # one deep trough
    peak, points = Decimal(0), []
    for n, value in enumerate(equity):
        peak = max(peak, value)
        points.append(EquityPoint(start + timedelta(seconds=n), value, peak))
    kept = thin(points)
    assert len(kept) <= MAX_POINTS + 5
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert min(p.equity for p in kept) == -5000
    assert max(p.equity for p in kept) == max(equity)
    assert [p.at for p in kept] == sorted(p.at for p in kept)
    assert thin(points[:10]) == points[:10]
