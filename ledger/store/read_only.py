"""How to open a SQLite ledger read-only when the folder may not be writable.

SQLite in WAL mode keeps a shared-memory index (-shm) beside the database, and a read-only
connection must find it or create it. A user who can read the files but not write the folder
(an auditor) therefore needs, by case:

- the folder writable (by this user): `mode=ro`; SQLite creates -shm as needed.
- -shm present and readable: `mode=ro`; SQLite (3.22+) reads through a private copy of it.
- no -wal, or an empty one (and no readable -shm): every committed event is in the main
  file. It is read with `immutable=1` (no locks, no -shm); a writer that
  starts meanwhile appends to a new -wal and leaves the main file alone until it checkpoints,
  so the file's identity, size and mtime are noted and checked again when the read ends:
  a change means the read may be torn, and it is refused (`check_unchanged`).
- a -wal present without its -shm: committed events may live only in the -wal, which only a
  connection that can create -shm may read: refused with one line saying what to do.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.request import pathname2url

from ledger.errors import StoreUnavailable


@dataclass(frozen=True)
class ReadOnlyOpen:
    """The URI to open, and when it reads without locks, the file's state it relies on."""

    path: Path
    uri: str
    unlocked: tuple[int, int, int, int] | None = None

    def check_unchanged(self) -> None:
        """Raises StoreUnavailable when a read without locks may have seen a torn file."""
        if self.unlocked is not None and file_identity(self.path) != self.unlocked:
            raise StoreUnavailable(
                f"{self.path} changed while it was read without locks (its folder is not "
                "writable for this user, so SQLite cannot share its lock index): run the "
                "command again"
            )


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _uri(path: Path, query: str) -> str:
    # quoted, so a path holding '?', '#' or '%' names the file it says
    return f"file:{pathname2url(str(path))}?{query}"


def _readable(path: Path) -> None:
    if not os.access(path, os.R_OK):
        st = path.stat()
        raise StoreUnavailable(
            f"cannot read {path}: permission denied (mode {stat.filemode(st.st_mode)}, owner "
            f"uid {st.st_uid}); its owner can grant read access (chmod g+r or o+r)"
        )


def read_only_open(path: Path) -> ReadOnlyOpen:
    """How to open path read-only as this user; raises StoreUnavailable with one line when it
    cannot be read (see the module docstring)."""
    real = path.resolve()  # SQLite keeps -wal/-shm beside the file a symlink points to
    _readable(real)
    folder = real.parent
    wal = real.with_name(real.name + "-wal")
    shm = real.with_name(real.name + "-shm")
    if os.access(folder, os.W_OK | os.X_OK):
        return ReadOnlyOpen(path, _uri(path, "mode=ro"))
    wal_holds_events = wal.exists() and wal.stat().st_size > 0
    # an empty -wal holds nothing the main file does not: its -shm is not needed (the owner's
    # own read-only command leaves both behind, with the owner's mode, before sharing the file)
    if shm.exists() and (wal_holds_events or os.access(shm, os.R_OK)):
        _readable(shm)
        if wal.exists():
            _readable(wal)
        return ReadOnlyOpen(path, _uri(path, "mode=ro"))
    if wal_holds_events:
        raise StoreUnavailable(
            f"cannot read {path} read-only: {wal.name} holds events but {shm.name} is missing "
            f"and {folder} is not writable for this user; opening the ledger once as a user "
            "who can write the folder (e.g. its owner running `ledger verify`) fixes it"
        )
    return ReadOnlyOpen(path, _uri(path, "mode=ro&immutable=1"), file_identity(path))
