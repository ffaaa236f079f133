"""A test run killed from outside takes its PostgreSQL server and folder with it.

A child process starts a server the way the tests do (`running_server`) and is then killed
with a real SIGKILL, alone or with its whole process group: the server must stop and its
ledger-pg-* folder go, with nothing left to clean by hand. What runs killed before reapers
existed (or with their reaper) left is swept at the next start, but never a live run's server.
Every server here lives in a private parent folder, so the sweeps never see another run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_reaper import OWNER_FILE, server_folder, wait_gone
from tests.pg_server import Server

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 60.0

# Starts a server in a folder under the parent folder given, prints the postmaster's pid and
# the server folder, then blocks until killed.
STARTER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.pg_server import running_server
with running_server(parent=Path(sys.argv[2])) as server:
    pid = (server.data / "postmaster.pid").read_text().split()[0]
    print(pid, server.root.parent, flush=True)
    sys.stdin.read()
"""


def _removed(folder: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while folder.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def parent() -> Iterator[Path]:
    """A private parent folder for server folders (world-readable: the server's user enters it)."""
    folder = Path(tempfile.mkdtemp(prefix="ledger-reaper-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def _postmaster(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def _starter(parent: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """A child (in a process group of its own) that started a server: (child, postmaster, folder).
    Whatever the test did, nothing of it is left afterwards."""
    child = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(ROOT), str(parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    postmaster = 0
    folder: Path | None = None
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert len(line) == 2, f"the child did not start a server (exit {child.wait()})"
        postmaster, folder = int(line[0]), Path(line[1])
        yield child, postmaster, folder
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        if postmaster and not wait_gone(postmaster, 0):  # a leaked server: stop it (immediate mode)
            os.kill(postmaster, signal.SIGQUIT)
            wait_gone(postmaster, DEADLINE_S)
        if folder is not None:
            subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.mark.parametrize("kill", ["process", "process-group"])
def test_a_killed_starter_takes_its_server_and_folder_with_it(kill: str, parent: Path) -> None:
    with _starter(parent) as (child, postmaster, folder):
        assert not wait_gone(postmaster, 0) and folder.is_dir()
        if kill == "process":
            os.kill(child.pid, signal.SIGKILL)
        else:
            os.killpg(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        assert wait_gone(postmaster, DEADLINE_S), "the server outlived the process that started it"
        assert _removed(folder, DEADLINE_S), f"{folder} outlived the process that started it"


def test_the_next_start_reaps_dead_runs_leftovers_and_spares_live_ones(parent: Path) -> None:
    # a run of the code before reapers, killed: a running server, no owner record, a folder
    # older than every Python process
    legacy = Server(parent / "ledger-pg-legacy" / "cluster")
    legacy.root.parent.mkdir(mode=0o755)
    legacy.init()
    legacy.start()
    legacy_pid = _postmaster(legacy.data)
    try:
        os.utime(legacy.root.parent, (0, 0))
        # a folder an older run has just made (no record yet): its owner may be this very process
        fresh = parent / "ledger-pg-fresh"
        (fresh / "cluster").mkdir(parents=True)
        with _starter(parent) as (_live, live_pid, live_folder), _starter(parent) as started:
            dead, dead_pid, dead_folder = started
            # a run killed together with its reaper (its owner and reaper are both gone)
            owner_pid, reaper_pid = (
                pid for pid, _ in json.loads((dead_folder / OWNER_FILE).read_text())
            )
            assert owner_pid == dead.pid
            os.kill(reaper_pid, signal.SIGKILL)
            assert wait_gone(reaper_pid, DEADLINE_S)
            os.kill(dead.pid, signal.SIGKILL)
            dead.wait()
            assert not wait_gone(dead_pid, 0) and dead_folder.is_dir()

            with server_folder(parent=parent) as next_start:  # the next start sweeps
                assert wait_gone(legacy_pid, 0) and not legacy.root.parent.exists()
                assert wait_gone(dead_pid, 0) and not dead_folder.exists()
                assert not wait_gone(live_pid, 0) and live_folder.is_dir()
                assert fresh.is_dir()
            assert not next_start.exists()
            assert not wait_gone(live_pid, 0) and live_folder.is_dir()
    finally:  # nothing reaps it if the test failed before the sweep: no reaper, by design
        legacy.stop()
