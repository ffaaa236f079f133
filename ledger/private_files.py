"""Files the ledger creates are its owner's alone (mode 0600) and appear whole or not at all.

Every file the ledger creates (the database, and through it SQLite's -wal/-shm, which SQLite
gives the database's own mode; backups; exports; plots; positions.json) is created 0600 here,
whatever the process umask: a trading history is nobody else's business. Sharing it with an
auditor is a deliberate `chmod` by its owner. Files that already exist keep their mode.

Outputs are written aside (a 0600 temp file in the target's folder), fsynced, renamed over the
target and the folder fsynced: a reader, or a crash, sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PRIVATE_MODE = 0o600


def create_private(path: Path) -> bool:
    """Create path empty with mode 0600 unless something is already there; True when this call
    created it. SQLite then opens the existing empty file as a new database, and creates its
    -wal/-shm with the same mode. Raises OSError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_MODE)  # the umask may have taken bits from the owner too
    finally:
        os.close(fd)
    return True


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def written_aside(target: Path) -> Iterator[Path]:
    """Yield an empty 0600 temp file beside target for the caller to fill; when the block ends
    normally the temp file is fsynced and renamed over target, and the folder fsynced. When it
    raises, the temp file is removed and target is untouched. Raises OSError."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    temp = Path(name)
    try:
        try:
            os.fchmod(fd, PRIVATE_MODE)
        finally:
            os.close(fd)
        yield temp
        fsync_path(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_path(target.parent)
