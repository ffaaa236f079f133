"""Attacks on the PostgreSQL test servers' reaper (tests/pg_reaper.py).

A stand-in server is used: a process whose working directory is a data folder and whose pid
is in that folder's postmaster.pid, which is all the reaper looks at (`postmasters`); it dies
of SIGQUIT as a postmaster does (default action, no core file: RLIMIT_CORE is 0). Every
folder lives in a private parent, so no sweep here sees another run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_reaper import OWNER_FILE, server_folder, sweep, wait_gone

DEADLINE_S = 60.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def parent() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ledger-reaper-adv-"))
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@contextlib.contextmanager
def _stand_in(data: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process posing as a postmaster of data (its cwd, its pid in postmaster.pid)."""
    data.mkdir(parents=True)

    def no_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # SIGQUIT ends it as it ends a postmaster (which sets its own handler), whatever this
        # process inherited: a background job's shell ignores SIGQUIT, and the reaper's
        # SIGKILL came only after its whole STOP_TIMEOUT_S
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)

    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        cwd=data,
        preexec_fn=no_core,
        start_new_session=True,
    )
    try:
        (data / "postmaster.pid").write_text(f"{server.pid}\n{data}\n")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        server.wait()
        assert server.stdin is not None
        server.stdin.close()


def test_a_normal_exit_stops_the_servers_even_when_the_reaper_was_killed(parent: Path) -> None:
    """The reaper killed (an OOM kill, a stray kill -9) while its owner runs: the owner's
    normal exit must still stop its servers and remove its folder, not leave them for
    whichever run starts next."""
    folder_made = server_folder(parent=parent)
    folder = folder_made.__enter__()
    with _stand_in(folder / "cluster" / "data") as server:
        _, reaper = (pid for pid, _ in json.loads((folder / OWNER_FILE).read_text()))
        os.kill(reaper, signal.SIGKILL)
        assert wait_gone(reaper, DEADLINE_S)
        folder_made.__exit__(None, None, None)  # the owner's normal exit
        assert wait_gone(server.pid, DEADLINE_S), (
            "the server outlived the normal exit of the process that started it"
        )
        assert not folder.exists()


# posing as a server still starting (`pg_ctl start` running): working in its data folder,
# its command line naming that folder (as pg_ctl's and the postmaster's do), no
# postmaster.pid written yet; it lives on whoever dies, until a signal ends it
STARTING = (
    "import resource, signal; resource.setrlimit(resource.RLIMIT_CORE, (0, 0));"
    " signal.signal(signal.SIGQUIT, signal.SIG_DFL); signal.pause()"
)
# an owner: a server folder (and its reaper), a server starting in it; prints the server's
# pid and the folder, then blocks until killed
OWNER = """
import subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.pg_reaper import server_folder
with server_folder(parent=Path(sys.argv[2])) as folder:
    data = folder / "cluster" / "data"
    data.mkdir(parents=True)
    server = subprocess.Popen(
        [sys.executable, "-c", sys.argv[3], "-D", str(data)], cwd=data, start_new_session=True
    )
    print(server.pid, folder, flush=True)
    sys.stdin.read()
"""


def test_a_server_still_starting_when_its_owner_is_killed_is_stopped_before_its_folder_goes(
    parent: Path,
) -> None:
    """A real kill -9 of the owner while its server starts: no postmaster.pid names the
    server yet (or it is written after the reaper looked), so the reaper must stop it as what
    may yet start one; left running, it went on with its folder removed, a server no reaper
    would ever stop."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(ROOT), str(parent), STARTING],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server = 0
    try:
        assert owner.stdout is not None
        said = owner.stdout.readline().split()
        assert len(said) == 2, f"the owner started no server (exit {owner.wait()})"
        server, folder = int(said[0]), Path(said[1])
        _, reaper = (pid for pid, _ in json.loads((folder / OWNER_FILE).read_text()))
        assert not wait_gone(server, 0)
        os.kill(owner.pid, signal.SIGKILL)
        assert owner.wait() == -signal.SIGKILL
        assert wait_gone(reaper, DEADLINE_S), "the reaper hung"
        assert wait_gone(server, 0), "the starting server outlived its owner and its reaper"
        assert not folder.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(owner.pid, signal.SIGKILL)
        owner.wait()
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()
        if server and not wait_gone(server, 0):  # leaked: stopped here
            os.kill(server, signal.SIGKILL)
            wait_gone(server, DEADLINE_S)


def test_an_owner_record_without_a_start_time_does_not_make_a_folder_immortal(
    parent: Path,
) -> None:
    """A record whose reaper had already died when it was written (its start time unknown,
    null): once the owner is gone, the next sweep must reap the folder."""
    folder = parent / "ledger-pg-dead"
    folder.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait()
    reaper = subprocess.Popen([sys.executable, "-c", "pass"])
    reaper.wait()
    (folder / OWNER_FILE).write_text(json.dumps([[owner.pid, 1], [reaper.pid, None]]))
    with _stand_in(folder / "cluster" / "data") as server:
        sweep(parent)
        assert wait_gone(server.pid, DEADLINE_S), "the dead run's server was spared"
        assert not folder.exists()
