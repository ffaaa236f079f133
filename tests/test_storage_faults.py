"""Storage faults give clear errors and keep the log usable: a file-size limit, a full disk,
a read-only folder, a folder the user may not write, and a writer killed mid-write.

Each case checks that the error names the cause, that nothing acknowledged is lost (the log
verifies and holds every acknowledged seq), and that the next append after the fault clears
works. Mounts need root (or CAP_SYS_ADMIN): where mounting is refused the case is skipped
and says why.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import StoreError, StoreUnavailable
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from tests._fault_workers import open_after_kill
from tests.unprivileged import open_this_project

ROOT = Path(__file__).resolve().parents[1]
QUIET = Settings(snapshot_every_events=10**9, snapshot_every_seconds=10**6)
WATCHDOG_SECONDS = 60.0
ROUNDS = 4
OPENERS = 3


def worker(case: str, db: Path, *prefix: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests._fault_workers", case, str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The worker's last JSON line (it must exit 0)."""
    out, err = proc.communicate(timeout=WATCHDOG_SECONDS)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines, err.decode()
    message: dict[str, Any] = json.loads(lines[-1])
    return message


async def log_seqs(db: Path) -> list[tuple[int, str]]:
    """(seq, hash) of every stored event, after checking the whole chain."""
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        report = await store.verify_chain()
        records = await store.read()
    finally:
        await store.close()
    assert report.events == len(records)
    return [(r.seq, r.hash) for r in records]


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """An empty folder to mount on; unmounted afterwards if something was mounted."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(args)}): {done.stderr.strip()}")


# -- file-size limit ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_file_size_limit_is_named_and_the_next_append_after_it_works(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    result = finish(worker("fsize", db))
    assert result["error"].startswith("StoreError"), result
    assert "file-size limit" in result["error"], result["error"]
    assert "RLIMIT_FSIZE" in result["error"]
    assert "no transaction is active" not in result["error"]
    acked: list[int] = result["acked"]
    assert len(acked) >= 2 and acked[-1] == result["refused_at"] + 1
    stored = [seq for seq, _ in await log_seqs(db)]
    assert stored == list(range(1, acked[-1] + 1))  # every acknowledged seq, nothing else
    assert set(acked) <= set(stored)


# -- disk full ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_full_disk_is_named_and_the_next_append_after_space_returns_works(
    mount_point: Path,
) -> None:
    mount("-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point))
    db = mount_point / "ledger.db"
    filler = mount_point / "filler"
    acked: list[int] = []
    async with Ledger(db, snapshot_path=mount_point / "positions.json", settings=QUIET) as led:
        position = await led.open_position("FULLUSDT", "long", entry_price=10, qty=1, leverage=2)
        acked.append(led.last_seq)
        stat = os.statvfs(mount_point)
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 48 * 1024))
        error: StoreError | None = None
        for i in range(200):
            try:
                await led.mark(position.position_id, 11 + i)
            except StoreError as exc:
                error = exc
                break
            acked.append(led.last_seq)
        assert error is not None, "the disk never filled"
        assert "disk full" in str(error), error
        assert "no transaction is active" not in str(error)
        assert led.last_seq == acked[-1]
        filler.unlink()  # the fault clears
        await led.mark(position.position_id, 500)
        acked.append(led.last_seq)
        assert led.get_position(position.position_id).current_price == 500  # type: ignore[union-attr]
    stored = [seq for seq, _ in await log_seqs(db)]
    assert stored == list(range(1, acked[-1] + 1))


# -- read-only folder -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_read_only_folder_is_named_and_the_ledger_works_once_it_is_writable(
    tmp_path: Path, mount_point: Path
) -> None:
    source = tmp_path / "data"
    async with Ledger(source / "ledger.db", settings=QUIET) as led:
        await led.open_position("ROUSDT", "long", entry_price=10, qty=1, leverage=2)
    before = await log_seqs(source / "ledger.db")
    mount("--bind", str(source), str(mount_point))
    mount("-o", "remount,bind,ro", str(mount_point))
    with pytest.raises(StoreUnavailable, match="read-only file system"):
        async with Ledger(mount_point / "ledger.db", settings=QUIET):
            pass
    mount("-o", "remount,bind,rw", str(mount_point))  # the fault clears
    async with Ledger(mount_point / "ledger.db", settings=QUIET) as led:
        await led.open_position("RWUSDT", "long", entry_price=10, qty=1, leverage=2)
        assert led.last_seq == 2
    after = await log_seqs(source / "ledger.db")
    assert after[:1] == before and len(after) == 2


def test_a_folder_the_user_may_not_write_is_named_and_nothing_is_created() -> None:
    """An unprivileged user (nobody, through setpriv) opens a ledger in root's folder."""
    # under /tmp itself: pytest's own temporary folders are closed to other users
    outer = Path(tempfile.mkdtemp(prefix="ledger-perm-", dir="/tmp"))
    try:
        outer.chmod(0o755)
        folder = outer / "root-owned"
        folder.mkdir(mode=0o755)
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        open_this_project(ROOT)
        probe = subprocess.run([*nobody, "touch", str(folder / "x")], capture_output=True)
        if probe.returncode == 0 or b"Permission denied" not in probe.stderr:
            why = probe.stderr.decode().strip() or "the unprivileged user could write"
            pytest.skip(f"cannot run as an unprivileged user here: {why}")
        result = finish(worker("append", folder / "ledger.db", *nobody))
        assert result["error"].startswith("StoreUnavailable"), result
        assert "permission denied" in result["error"], result["error"]
        assert str(folder) in result["error"]
        assert list(folder.iterdir()) == []
    finally:
        shutil.rmtree(outer)


# -- a writer killed mid-write ----------------------------------------------------------------


@pytest.mark.anyio
async def test_opening_after_a_writer_was_killed_mid_write_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    """A writer appending in a loop is killed with SIGKILL; three processes, started and
    waiting at a barrier meanwhile, then open the database at once (one recovers the WAL the
    dead writer left, the others must wait for it, not fail) and each appends."""
    db = tmp_path / "ledger.db"
    context = multiprocessing.get_context("spawn")
    for _ in range(ROUNDS):
        barrier = context.Barrier(OPENERS + 1, timeout=WATCHDOG_SECONDS)
        results: multiprocessing.Queue[str] = context.Queue()
        openers = [
            context.Process(target=open_after_kill, args=(str(db), barrier, results))
            for _ in range(OPENERS)
        ]
        for opener in openers:
            opener.start()
        writer = worker("write", db)
        watchdog = threading.Timer(WATCHDOG_SECONDS, writer.kill)
        watchdog.start()
        try:
            assert writer.stdout is not None
            ready = json.loads(writer.stdout.readline() or b"{}")
            assert "ready" in ready, writer.stderr.read() if writer.stderr else ""
            writer.stdout.readline()  # it is appending now
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            barrier.wait()  # the openers go, all at once
            outcomes = [results.get(timeout=WATCHDOG_SECONDS) for _ in openers]
        finally:
            watchdog.cancel()
            writer.kill()
            writer.communicate()
            for opener in openers:
                opener.join(WATCHDOG_SECONDS)
        assert outcomes == ["ok"] * OPENERS, outcomes
    stored = await log_seqs(db)
    assert len(stored) >= ROUNDS * (1 + OPENERS)  # each round: the writer's open + openers
