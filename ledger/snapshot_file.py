"""Atomic file writes (temp file, fsync, rename, fsync the folder) and reads of positions.json."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace path with data so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_file(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_identified(path: Path) -> tuple[bytes, tuple[int, int, int, int]] | None:
    """The file's bytes and its identity (see file_identity) taken from the very file read,
    before reading it; None when there is none."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return None
    return data, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime in ns) of the file at path, None when there is none: what
    tells the ledger that the file is still the one it wrote last."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def move_aside(path: Path, kind: str, at: datetime) -> Path:
    """Rename path to `<stem>.<kind>-<UTC stamp><suffix>` beside it, never replacing a file
    already there; returns the new path. Raises OSError (the file is then where it was)."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        extra = "" if n == 1 else f"-{n}"
        target = path.with_name(f"{path.stem}.{kind}-{stamp}{extra}{path.suffix}")
        try:
            # a hard link fails if the name is taken, where a rename would replace it
            os.link(path, target)
        except FileExistsError:
            continue
        except OSError:
            if target.exists():
                continue
            os.rename(path, target)  # no hard links on this filesystem
            return target
        os.unlink(path)
        return target
    raise FileExistsError(f"no free name beside {path} to move it aside")
