"""A user who can read the ledger's files but not write its folder (an auditor) runs every
read-only command, or gets one line saying exactly why not.

The files belong to root and the folder is 0755; each command runs as an unprivileged uid
(65534, no groups) in a child process, so SQLite really cannot create its -shm there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.errors import StoreUnavailable
from ledger.store.read_only import ReadOnlyOpen, file_identity
from tests.cli.conftest import ROOT, Known, build_known, child_env
from tests.unprivileged import open_this_project

NOBODY = 65534


def _nobody_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # the venv's packages by path: an interpreter other than the venv's may have to run them
    site = sysconfig.get_paths()["purelib"]
    env = child_env(extra)
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT), site))
    return env


def _interpreter() -> tuple[str | None, str]:
    """An interpreter the unprivileged uid can run with this project and its packages, or
    None and why not (the venv's may live under a folder only root may enter)."""
    if os.geteuid() != 0:
        return None, "the tests are not root, so they cannot start a child as another uid"
    open_this_project(ROOT)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    why = "no interpreter found"
    for exe in dict.fromkeys(
        (sys.executable, shutil.which(version) or version, f"/usr/bin/{version}")
    ):
        try:
            probe = subprocess.run(
                [exe, "-c", "import ledger.cli, msgspec, aiosqlite"],
                env=_nobody_env(),
                cwd="/",
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except OSError as exc:
            why = f"uid {NOBODY} cannot run {exe}: {exc.strerror}"
            continue
        if probe.returncode == 0:
            return exe, ""
        why = (
            f"uid {NOBODY} cannot import the project with {exe}: "
            + (probe.stderr.strip().splitlines() or ["?"])[-1]
        )
    return None, why


PYTHON, WHY_NOT = _interpreter()
pytestmark = pytest.mark.skipif(PYTHON is None, reason=WHY_NOT)


def shared_folder(prefix: str, mode: int) -> Path:
    """A folder outside pytest's 0700 tree, so another uid can reach it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(mode)
    return folder


@pytest.fixture
def audited() -> Iterator[tuple[Known, Path]]:
    """The known ledger in a root-owned 0755 folder, its files shared read-only (0644) by
    their owner; and a folder the auditor may write to."""
    home = shared_folder("ledger-ro-", 0o755)
    out = shared_folder("ledger-out-", 0o777)
    try:
        known = anyio.run(build_known, home)
        checkpoint(known.db)
        for path in (known.db, known.snapshot):
            path.chmod(0o644)
        assert sorted(p.name for p in home.iterdir()) == ["ledger.db", "positions.json"]
        yield known, out
    finally:
        shutil.rmtree(home)
        shutil.rmtree(out)


def checkpoint(db: Path) -> None:
    """As the owner, move every event into the database file: the last connection to close
    after a read checkpoints and removes -wal/-shm (as a ledger that stopped leaves it)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("SELECT count(*) FROM events").fetchone()


def as_auditor(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PYTHON is not None
    return subprocess.run(
        [PYTHON, "-m", "ledger.cli", *map(str, args)],
        cwd=cwd,
        env=_nobody_env({"MPLCONFIGDIR": str(cwd / ".mpl"), "HOME": str(cwd)}),
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def test_every_read_only_command_runs_for_a_user_who_cannot_write_the_folder(
    audited: tuple[Known, Path],
) -> None:
    known, out = audited
    before = listing(known.dir)
    db = ("--db", known.db)
    commands: list[tuple[str | Path, ...]] = [
        ("stats", *db),
        ("positions", *db),
        ("history", "pos_sol", *db),
        ("replay", "--seq", "5", *db),
        ("verify", *db),
        ("export", "--what", "events", *db),
        ("export", "--what", "trades", "--out", out / "trades.csv", *db),
        ("backup", "--to", out / "backups", *db),
        ("watch", "--once", *db),
    ]
    try:
        import matplotlib  # noqa: F401

        commands.append(("plot", out / "equity.png", *db))
    except ModuleNotFoundError:
        pass
    for command in commands:
        run = as_auditor(*command, cwd=out)
        assert run.returncode == 0, (command, run.stderr)
    stats = as_auditor("stats", "--json", *db, cwd=out)
    summary = json.loads(stats.stdout)["summary"]
    assert Decimal(summary["total_realized_pnl"]) == known.expected["total_realized"]
    assert Decimal(summary["unrealized_pnl"]) == known.expected["unrealized"]
    assert (out / "trades.csv").read_text().count("\n") == 3  # header + 2 trades
    assert listing(known.dir) == before  # nothing written, no -wal/-shm left


def test_a_live_writer_s_uncheckpointed_events_are_seen(audited: tuple[Known, Path]) -> None:
    """With the owner's process holding the ledger open, its latest events are only in the
    -wal; the auditor reads them through the owner's -shm."""
    known, out = audited
    with _owner_running(known.db):
        run = as_auditor("positions", "--json", "--open", "--db", known.db, cwd=out)
    assert run.returncode == 0, run.stderr
    marks = {p["position_id"]: p["current_price"] for p in json.loads(run.stdout)["open"]}
    assert Decimal(marks["pos_sol"]) == Decimal("123.5")


HOLDER = """
import sys
import anyio
from ledger.service import Ledger
from ledger.settings import Settings

async def main() -> None:
    async with Ledger(sys.argv[1], settings=Settings()) as ledger:
        await ledger.mark("pos_sol", "123.5")
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)

anyio.run(main)
"""


@contextlib.contextmanager
def _owner_running(db: Path) -> Iterator[None]:
    """The owner's process holding the ledger open (HOLDER), its latest events only in the
    -wal; on the way out it closes its ledger and must exit cleanly."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "ready"
            assert Path(f"{db}-wal").stat().st_size > 0
            yield
        finally:
            holder.stdin.close()  # the holder closes its ledger and exits
    assert holder.returncode == 0


def test_a_wal_without_its_shm_gets_one_line_saying_what_to_do(
    audited: tuple[Known, Path],
) -> None:
    known, out = audited
    wal = Path(f"{known.db}-wal")
    wal.write_bytes(b"\0" * 4096)
    wal.chmod(0o644)
    run = as_auditor("stats", "--db", known.db, cwd=out)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "ledger.db-wal holds events but ledger.db-shm is missing" in run.stderr
    assert "not writable for this user" in run.stderr


def test_an_unreadable_database_gets_one_line_naming_the_permission(
    audited: tuple[Known, Path],
) -> None:
    known, out = audited
    known.db.chmod(0o600)
    run = as_auditor("stats", "--db", known.db, cwd=out)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "cannot read" in run.stderr and "permission denied" in run.stderr
    assert "-rw-------" in run.stderr


def test_following_without_locks_is_refused_in_one_line(audited: tuple[Known, Path]) -> None:
    known, out = audited
    run = as_auditor("watch", "--plain", "--max-seconds", "5", "--db", known.db, cwd=out)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--once" in run.stderr


def test_writing_into_the_read_only_folder_is_one_line_and_leaves_nothing(
    audited: tuple[Known, Path],
) -> None:
    known, out = audited
    before = listing(known.dir)
    db = ("--db", known.db)
    for command in (
        ("export", "--what", "trades", "--out", known.dir / "trades.csv", *db),
        ("backup", "--to", known.dir / "backups", *db),
        ("snapshot", *db),
    ):
        run = as_auditor(*command, cwd=out)
        assert run.returncode == 2, (command, run.stdout)
        assert run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith("ledger: error: ") and "ermission denied" in run.stderr
    assert listing(known.dir) == before


def test_a_read_without_locks_notices_a_file_that_changed(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    db.write_bytes(b"x" * 100)
    opened = ReadOnlyOpen(db, "file:unused", file_identity(db))
    opened.check_unchanged()  # untouched
    with db.open("ab") as handle:
        handle.write(b"a checkpoint landed")
    with pytest.raises(StoreUnavailable, match="changed while it was read without locks"):
        opened.check_unchanged()


def test_an_unreadable_positions_json_is_left_out_not_fatal(
    audited: tuple[Known, Path],
) -> None:
    """positions.json is a cache: an auditor who may read the log but not it still verifies
    the log and watches, told that the snapshot was not checked."""
    known, out = audited
    known.snapshot.chmod(0o600)
    verify = as_auditor("verify", "--db", known.db, cwd=out)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith(f"OK: {known.head_seq} events")
    assert "cannot read" in verify.stdout and "positions.json not checked" in verify.stdout
    watch = as_auditor("watch", "--once", "--db", known.db, cwd=out)
    assert watch.returncode == 0, watch.stderr


def test_an_owner_only_shm_gets_one_line_naming_it(audited: tuple[Known, Path]) -> None:
    """The owner's running ledger holds events in its -wal, and its -wal/-shm are 0600 (the
    database was shared after they were created): the auditor may read the database but not
    the index SQLite must read the -wal with."""
    known, out = audited
    with _owner_running(known.db):
        for suffix in ("-wal", "-shm"):
            Path(f"{known.db}{suffix}").chmod(0o600)
        run = as_auditor("stats", "--db", known.db, cwd=out)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "cannot read" in run.stderr and "ledger.db-shm: permission denied" in run.stderr


def test_the_readme_s_chmod_is_all_an_auditor_needs_after_the_ledger_stopped() -> None:
    """The owner's ledger stopped as it does (no checkpoint by hand); the owner shares the
    database and positions.json with `chmod o+r`, as the README says: the auditor reads it."""
    home = shared_folder("ledger-stopped-", 0o755)
    out = shared_folder("ledger-out-", 0o777)
    try:
        known = anyio.run(build_known, home)
        for path in (known.db, known.snapshot):
            path.chmod(path.stat().st_mode | 0o004)
        run = as_auditor("stats", "--json", "--db", known.db, cwd=out)
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)["summary"]
        assert Decimal(summary["total_realized_pnl"]) == known.expected["total_realized"]
        verify = as_auditor("verify", "--db", known.db, cwd=out)
        assert verify.returncode == 0, verify.stderr
    finally:
        shutil.rmtree(home)
        shutil.rmtree(out)


def test_an_owner_s_own_read_only_command_does_not_lock_the_auditor_out(
    audited: tuple[Known, Path],
) -> None:
    """The owner runs `ledger verify` (as the migration steps say) before sharing the files:
    the -wal/-shm its read-only connection leaves behind are the owner's alone, but they hold
    nothing the database file does not, so the auditor still reads every event."""
    known, out = audited
    for path in (known.db, known.snapshot):
        path.chmod(0o600)  # shared only after the owner's own audit
    owner = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--db", str(known.db)],
        cwd=out,
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert owner.returncode == 0, owner.stderr
    for path in (known.db, known.snapshot):
        path.chmod(0o644)
    run = as_auditor("stats", "--json", "--db", known.db, cwd=out)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)["summary"]
    assert Decimal(summary["total_realized_pnl"]) == known.expected["total_realized"]
