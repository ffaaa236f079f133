"""Storage faults on the CLI's outputs: export, plot, backup and snapshot aimed at a full place
(a small tmpfs, RLIMIT_FSIZE) fail with exit 2 and one typed line, leave the previous file
whole and no partial file behind. (A read-only place, as an unprivileged user, is in
test_cli_read_only_user.py.)"""

from __future__ import annotations

import contextlib
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Known, child_env

PREVIOUS = b"the previous file, which must survive\n"


def outputs(place: Path) -> dict[str, list[str | Path]]:
    """Each output command, aimed at a file in place."""
    return {
        "export": ["export", "--what", "events", "--out", place / "events.csv"],
        "plot": ["plot", place / "equity.png"],
        "backup": ["backup", "--to", place / "backups"],
        "snapshot": ["snapshot", "--snapshot", place / "positions.json"],
    }


def previous(place: Path, known: Known) -> dict[Path, bytes]:
    """What is at each output before the command runs: a file from an earlier run, which must
    survive (positions.json a real snapshot of this ledger, so start-up keeps it)."""
    return {
        place / "events.csv": PREVIOUS,
        place / "equity.png": PREVIOUS,
        place / "positions.json": known.snapshot.read_bytes(),
    }


def run_ledger(
    args: list[str | Path], cwd: Path, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *map(str, args)],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=preexec,
    )


@contextlib.contextmanager
def held_open(db: Path) -> Iterator[None]:
    """A reader keeps the database open so its -wal/-shm already exist: under a file-size
    limit, only the output is left to grow."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("SELECT count(*) FROM events").fetchone()
        yield
    finally:
        conn.close()


def assert_failed_cleanly(
    run: subprocess.CompletedProcess[str], place: Path, known: Known, why: str
) -> None:
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("ledger: error: cannot write "), run.stderr
    assert why in run.stderr, run.stderr
    for target, data in previous(place, known).items():
        assert target.read_bytes() == data, target
    assert [p.name for p in place.rglob(".*")] == []  # no temp file left behind
    assert list((place / "backups").iterdir()) == []


def prepare(place: Path, known: Known) -> None:
    for target, data in previous(place, known).items():
        target.write_bytes(data)
    (place / "backups").mkdir(exist_ok=True)


@pytest.mark.parametrize("command", ["export", "plot", "backup", "snapshot"])
def test_an_output_over_the_file_size_limit(known: Known, tmp_path: Path, command: str) -> None:
    if command == "plot":
        pytest.importorskip("matplotlib")
    place = tmp_path / "out"
    place.mkdir()
    prepare(place, known)
    limit = 2048  # below every output's size, above nothing the command needs otherwise

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with held_open(known.db):
        run = run_ledger([*outputs(place)[command], "--db", known.db], tmp_path, cap)
    assert_failed_cleanly(run, place, known, "ile too large" if command != "backup" else "copy")


@pytest.fixture
def full_tmpfs(known: Known, tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs holding the previous outputs, then filled to the last byte."""
    place = tmp_path / "full"
    place.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(place)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip() or mount.returncode}")
    try:
        prepare(place, known)
        # until the tmpfs has no page left
        with (place / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield place
    finally:
        subprocess.run(["umount", str(place)], check=True)


@pytest.mark.parametrize("command", ["export", "plot", "backup", "snapshot"])
def test_an_output_to_a_full_disk(known: Known, full_tmpfs: Path, command: str) -> None:
    if command == "plot":
        pytest.importorskip("matplotlib")
    run = run_ledger([*outputs(full_tmpfs)[command], "--db", known.db], known.dir)
    why = "No space left on device" if command != "backup" else "disk is full"
    assert_failed_cleanly(run, full_tmpfs, known, why)
