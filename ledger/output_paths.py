"""No output lands on the ledger's own files: the database, its -wal/-shm/-journal, positions.json
or a backup. A target is compared after resolving symlinks and `..`, and by inode when both
exist (a hard link, a bind mount), so no spelling of a path gets past the check."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import OutputError, OutputRefused

SQLITE_SIDE_FILES = (("-wal", "write-ahead log"), ("-shm", "shared-memory index"))
SQLITE_JOURNAL = ("-journal", "rollback journal")
BACKUP_GLOB = "ledger-*.db"


@dataclass(frozen=True)
class OwnFile:
    """One of the ledger's files, and what to call it in a refusal."""

    path: Path
    what: str


def database_files(db: Path, what: str = "the ledger database") -> list[OwnFile]:
    """The database and the files SQLite keeps beside it, under the name given and the name
    it resolves to (SQLite puts -wal/-shm beside the symlink's target)."""
    files: list[OwnFile] = []
    for name in dict.fromkeys((db, db.resolve())):
        files.append(OwnFile(name, f"{what} {db}"))
        for suffix, side in (*SQLITE_SIDE_FILES, SQLITE_JOURNAL):
            side_file = name.with_name(name.name + suffix)
            files.append(OwnFile(side_file, f"{what}'s {side} {db}{suffix}"))
    return files


def backup_files(backup_dir: Path) -> list[OwnFile]:
    """Each backup (ledger-*.db) in backup_dir, with its side files."""
    try:
        backups = sorted(backup_dir.glob(BACKUP_GLOB))
    except OSError:  # an unreadable backup folder holds nothing we could overwrite by name
        return []
    return [file for backup in backups for file in database_files(backup, "the backup")]


def ledger_files(
    db: Path | None,
    *,
    snapshot: Path | None = None,
    backup_dir: Path | None = None,
) -> list[OwnFile]:
    """Every file an output must not replace: the database's, the audit's checkpoints,
    positions.json, and each backup in backup_dir."""
    files = database_files(db) if db is not None else []  # None: a server's ledger
    if db is not None:  # the audit's checkpoints (ledger.audit.checkpoints.sidecar_path)
        files.extend(
            database_files(db.with_name(db.name + ".checkpoints"), "the audit's checkpoints")
        )
    if snapshot is not None:
        files.append(snapshot_file(snapshot))
    if backup_dir is not None:
        files.extend(backup_files(backup_dir))
    return files


def snapshot_file(snapshot: Path) -> OwnFile:
    return OwnFile(snapshot, f"the ledger's snapshot {snapshot}")


def _same(a: Path, b: Path) -> bool:
    if a == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: only a name could match, and it did not
        return False


def is_one_of(path: Path, own: Iterable[OwnFile]) -> bool:
    """Whether path (symlinks and `..` resolved) is one of own."""
    resolved = path.resolve()
    return any(_same(resolved, file.path) for file in own)


def refuse_own(target: Path, own: Iterable[OwnFile], *, option: str) -> Path:
    """target with symlinks and `..` resolved; raises OutputRefused when it is one of own."""
    resolved = target.resolve()
    for file in own:
        if _same(resolved, file.path):
            raise OutputRefused(target, option, file.what)
    return resolved


def check_output(target: Path, own: Iterable[OwnFile], *, option: str) -> Path:
    """target with symlinks and `..` resolved, where the output is to be written (through a
    symlink to a file, the file is replaced and the link kept).

    Raises OutputRefused when it is one of own, OutputError when it is a folder or another
    kind of file that renaming over would destroy (a device, a FIFO, a socket)."""
    resolved = refuse_own(target, own, option=option)
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        return resolved
    except OSError as exc:
        raise OutputError(target, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(mode):
        raise OutputError(target, "it is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise OutputError(target, "it is not a regular file, and replacing it would destroy it")
    return resolved


@contextlib.contextmanager
def output_errors(target: Path) -> Iterator[None]:
    """Turn an OSError met while writing target (disk full, read-only folder, permission
    denied, file-size limit) into one OutputError that names the cause."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        name = os.fsdecode(exc.filename) if exc.filename is not None else ""
        if name and not Path(name).name.startswith(f".{target.name}."):  # not our temp file
            why = f"{why} ({name})"
        raise OutputError(target, f"{why}; nothing was replaced") from exc
