"""Throwaway PostgreSQL servers for the tests: initdb in a temp folder, listen on 127.0.0.1.

The server refuses to run as root, so as root (CI) every server command runs as an
unprivileged user (`nobody` by default) that owns the data folder. When the machine has no
initdb, Debian's postgresql-15 is installed with apt-get (root only). A server's folder is
stopped and removed when the process that made it dies, however it dies (tests/pg_reaper.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.pg_reaper import server_folder

SUPERUSER = "ledger"


def _bindir() -> Path:
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    if os.geteuid() != 0:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl); install postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "postgresql-15"],
        check=True,
        env=env,
        capture_output=True,
    )
    return Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """One PostgreSQL cluster; `url(db)` connects as the superuser over TCP (trust auth)."""

    def __init__(self, root: Path, *, port: int | None = None) -> None:
        self.bindir = _bindir()
        self.root = root
        self.data = root / "data"
        self.port = port or _free_port()
        self.log = root / "server.log"
        self._user = os.environ.get("POSITION_LEDGER_TEST_PG_USER", "nobody")
        self._as_root = os.geteuid() == 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A server program, as the unprivileged owner when we are root."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["setpriv", f"--reuid={self._user}", f"--regid={self._group()}",
                       "--clear-groups", *command]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {result.stderr}\n{result.stdout}\n{log}")
        return result

    def _group(self) -> int:
        return pwd.getpwnam(self._user).pw_gid

    def own(self, path: Path) -> None:
        if self._as_root:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.own(self.root)
        self.run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                # a test server: durability is not what is under test here
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nwal_level = replica\nmax_wal_senders = 4\n"
                "hot_standby = on\n"
            )
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server now if it runs (immediate shutdown): for one no reaper stops."""
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        self.run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
                 "-d", "postgres", "-c", f'CREATE DATABASE "{name}"')  # fmt: skip
        return self.url(name)


@contextlib.contextmanager
def running_server(parent: Path | None = None) -> Iterator[Server]:
    """A started server in a fresh temp folder, stopped and removed on exit, or when this
    process dies, killed or not (tests/pg_reaper.py)."""
    with server_folder(parent=parent) as root:
        server = Server(root / "cluster")
        server.init()
        server.start()
        yield server
