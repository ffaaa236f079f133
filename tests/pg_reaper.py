"""Test servers die with the process that started them, however it dies.

`pg_ctl start` puts the postmaster in a session of its own: a SIGKILL of the test process (or of
its process group) leaves it running, with its /tmp/ledger-pg-* folder. So every server folder
gets a reaper: a small process in a session of its own (a kill of the test's process group spares
it) that holds a pidfd of its owner and the read end of a pipe the owner holds. When the owner
closes the pipe, or exits however it dies (the pidfd wakes even when a forked child of the owner
still holds the pipe), the reaper stops every server under the folder with SIGQUIT (postgres's
immediate shutdown, what `pg_ctl stop -m immediate` sends) and removes the folder. A normal exit
takes the same path, so every test run exercises it.

Folders of runs that lost their reaper too (or ran before reapers existed) are swept when the
next server folder is made, never one whose owner may be alive:
- a folder with an owner record (OWNER_FILE) is left while its owner or its reaper runs (pid
  and start time, so a reused pid does not count);
- a folder without one (made by older code, or just made) is left while any Python process
  that started before the folder was last changed runs: its owner, a Python process that made
  it, would be one of them.
A server is only signalled when its pid file names a process whose working directory is that
data folder (the postmaster chdirs there), so a reused pid is never hit.

Run as a script (`python -I pg_reaper.py FOLDER OWNER_PID`) it is the reaper: stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREFIX = "ledger-pg-"
OWNER_FILE = "owner.json"
STOP_TIMEOUT_S = 10.0
# a process start time is known to a clock tick; a folder's mtime to the nanosecond
START_SLACK_S = 2.0


def _stat_start(pid: int) -> int | None:
    """The start time of process pid in clock ticks after boot (None: no such process, or a
    dead one its parent has not waited for yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the fields after the command name (which may hold spaces and parentheses): the state is
    # field 3 of the whole line, the start time field 22
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    return start is not None and _stat_start(pid) == start


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def _python_started_before(moment: float) -> bool:
    """Whether a Python process that started at or before moment (epoch seconds) runs."""
    boot, tick = _boot_time(), os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        start = _stat_start(int(entry.name))
        if start is None or boot + start / tick > moment + START_SLACK_S:
            continue
        names: list[str] = []
        with contextlib.suppress(OSError):
            names.append(os.readlink(entry / "exe"))
        with contextlib.suppress(OSError):
            names += (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        if any(Path(name).name.startswith("python") for name in names if name):
            return True
    return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process pid has exited within timeout (a pidfd wakes on its exit)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfds (Linux before 5.3): polled, bounded
        deadline = time.monotonic() + timeout
        while _stat_start(pid) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def postmasters(folder: Path) -> list[int]:
    """The running servers whose data folders are under folder (at most two levels down)."""
    found = []
    for pid_file in [*folder.glob("*/postmaster.pid"), *folder.glob("*/*/postmaster.pid")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            if os.readlink(f"/proc/{pid}/cwd") == str(pid_file.parent.resolve()):
                found.append(pid)
    return found


def starting(folder: Path) -> list[int]:
    """The processes that may yet start a server under folder: those working under it whose
    command line names it (`Server.run` runs every server program in its cluster's folder:
    pg_ctl, the shell it starts the postmaster with, the postmaster before it has written its
    postmaster.pid, initdb, pg_basebackup), and any postgres working there. A shell someone
    opened there names no folder: it is spared."""
    inside = str(folder.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(entry / "cwd")
            if cwd != inside and not cwd.startswith(inside + "/"):
                continue
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            if inside in command or Path(os.readlink(entry / "exe")).name == "postgres":
                found.append(int(entry.name))
    return found


def _stop(pid: int) -> None:
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, STOP_TIMEOUT_S):
            return


def reap(folder: Path) -> None:
    """Stop every server under folder (immediate shutdown, then SIGKILL), and every process
    that may yet start one (`starting`), then remove folder.

    A server being started when its owner died (pg_ctl start running) has no postmaster.pid
    yet, or writes it after `postmasters` looked: stopped with what starts it. Every such
    process was started by one that works there (the working directory is inherited), so once
    a round finds none, none can start afterwards."""
    for pid in postmasters(folder):
        _stop(pid)
    for _ in range(10):  # bounded: a process it may not signal must not hang the reaper
        left = starting(folder)
        if not left:
            break
        for pid in left:
            _stop(pid)
    shutil.rmtree(folder, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    try:
        owners = json.loads((folder / OWNER_FILE).read_text())
    except FileNotFoundError:
        return not _python_started_before(folder.stat().st_mtime)
    return not any(_alive(pid, start) for pid, start in owners)


def sweep(parent: Path) -> None:
    """Reap the server folders under parent that no live process owns."""
    for folder in parent.glob(f"{PREFIX}*"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            if folder.is_dir() and _abandoned(folder):
                reap(folder)


def _record_owners(folder: Path, pids: list[int]) -> None:
    owners = [[pid, _stat_start(pid)] for pid in pids]
    scratch = folder / f"{OWNER_FILE}.tmp"
    scratch.write_text(json.dumps(owners))
    scratch.replace(folder / OWNER_FILE)


@contextlib.contextmanager
def server_folder(prefix: str = PREFIX, parent: Path | None = None) -> Iterator[Path]:
    """A fresh folder for servers, reaped (servers stopped, folder removed) when this exits or
    when this process dies; abandoned folders under parent are reaped first."""
    parent = Path(parent or tempfile.gettempdir())
    sweep(parent)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o755)  # the servers' unprivileged user reaches its own subfolder
    _record_owners(folder, [os.getpid()])
    reaper = subprocess.Popen(
        [sys.executable, "-I", __file__, str(folder), str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _record_owners(folder, [os.getpid(), reaper.pid])
        yield folder
    finally:
        assert reaper.stdin is not None
        reaper.stdin.close()  # the reaper's signal to reap now
        try:
            reaper.wait(timeout=2 * STOP_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.wait()
        if folder.exists():  # the reaper failed or hung: reaped here
            reap(folder)


def _supervise(folder: Path, owner: int) -> None:
    """The reaper: wait for the owner to close our stdin or to exit, then reap folder."""
    watched: list[Any] = [sys.stdin]
    try:
        watched.append(os.pidfd_open(owner))
    except ProcessLookupError:  # gone already
        watched = []
    except OSError:  # no pidfds (Linux before 5.3): the pipe alone, whose end the owner holds
        pass
    # the owner is our parent: if it is not any more, it died before the pidfd was opened
    # (and the pidfd may name another process that took its pid)
    if watched and os.getppid() == owner:
        select.select(watched, [], [])
    reap(folder)


if __name__ == "__main__":
    _supervise(Path(sys.argv[1]), int(sys.argv[2]))
