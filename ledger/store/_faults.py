"""Name the cause of a storage failure: disk full, file-size limit, read-only, permissions.

SQLite reports most of these as a bare "disk I/O error" or "database or disk is full" (an
EFBIG from a file-size limit arrives as an I/O error, a remount as "readonly database"), so
the cause is asked of the system where the database lives.
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
from pathlib import Path

_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_FULL = 13
_IOERR = 10
_READONLY = 8
_PERM = 3
_CANTOPEN = 14
_ST_RDONLY = getattr(os, "ST_RDONLY", 1)


def primary_code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    return -1 if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock (or is recovering the WAL of a killed writer)."""
    return primary_code(exc) in _BUSY or "locked" in str(exc)


def _files(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def _size_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _free_bytes(folder: Path) -> int | None:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & _ST_RDONLY)
    except OSError:
        return False


def _unwritable(path: Path) -> list[str]:
    folder = path.parent
    blocked = [str(folder)] if folder.exists() and not os.access(folder, os.W_OK) else []
    blocked += [str(f) for f in _files(path) if f.exists() and not os.access(f, os.W_OK)]
    return blocked


def describe(path: Path, exc: BaseException) -> str:
    """One line naming why a write to the database at `path` failed."""
    code = primary_code(exc) if isinstance(exc, sqlite3.Error) else -1
    err = exc.errno if isinstance(exc, OSError) else None
    folder = path.parent
    if isinstance(exc, sqlite3.Error) and is_busy(exc):
        return "the database is locked by another writer for longer than the busy timeout"
    if code in (_FULL, _IOERR, -1) or err in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        limit = _size_limit()
        if err == errno.EFBIG or (
            limit is not None
            and any(f.exists() and f.stat().st_size >= limit - 65536 for f in _files(path))
        ):
            return f"file-size limit reached (RLIMIT_FSIZE is {limit} bytes)"
        free = _free_bytes(folder)
        if (
            err in (errno.ENOSPC, errno.EDQUOT)
            or code == _FULL
            or (free is not None and free < 1 << 20)
        ):
            return f"disk full ({free if free is not None else '?'} bytes free in {folder})"
    if code in (_READONLY, _IOERR, _CANTOPEN, _PERM, -1) or err in (
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
    ):
        if _read_only_fs(folder) or err == errno.EROFS:
            return f"read-only file system at {folder}"
        blocked = _unwritable(path)
        if blocked or err in (errno.EACCES, errno.EPERM) or code == _PERM:
            return f"permission denied: cannot write {', '.join(blocked) or folder}"
        if code == _READONLY:
            return "the database is read-only"
    if code == _IOERR:
        return "disk I/O error"
    return str(exc) or type(exc).__name__


def unwritable_reason(path: Path) -> str | None:
    """Why the database at `path` (and its -wal/-shm beside it) cannot be written, or None.

    SQLite opens a file it cannot write read-only without a word, and says so only at the
    first write; asking the system first names the cause up front."""
    folder = path.parent
    if _read_only_fs(folder):
        return f"read-only file system at {folder}"
    blocked = _unwritable(path)
    if blocked:
        return f"permission denied: cannot write {', '.join(blocked)}"
    return None
