"""Let an unprivileged uid run this project's interpreter, venv and sources.

Tests that play "a user who may read but not write" start children as uid 65534. Those
children must reach the interpreter (pyenv's lives under /root, 0700), the venv and the
checkout (a fresh clone may sit in a 0700 temporary folder). Reading is already allowed
by the files' own modes; what is missing is the right to pass through the folders above
them. So each folder above those paths gets the search bit for others (o+x: pass through,
not list), and gets its own mode back when the test process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import stat
import sys
from pathlib import Path

_restored: dict[Path, int] = {}


def _restore() -> None:
    for folder, mode in _restored.items():
        with contextlib.suppress(OSError):
            folder.chmod(mode)
    _restored.clear()


def open_the_way(*paths: Path) -> None:
    """Give o+x to every folder above each path (and to the path, if a folder) that lacks it;
    restored at exit. Only root may do this; elsewhere it does nothing."""
    if os.geteuid() != 0:
        return
    if not _restored:
        atexit.register(_restore)
    for path in paths:
        real = path.resolve()
        chain = [*reversed(real.parents), real] if real.is_dir() else list(reversed(real.parents))
        for folder in chain:
            mode = stat.S_IMODE(folder.stat().st_mode)
            if not mode & stat.S_IXOTH and folder not in _restored:
                _restored[folder] = mode
                folder.chmod(mode | stat.S_IXOTH)


def open_this_project(root: Path) -> None:
    """The interpreter (through its symlinks), its standard library, the venv and root."""
    open_the_way(
        Path(sys.executable),
        Path(os.path.realpath(sys.executable)),
        Path(sys.prefix),
        Path(sys.base_prefix),
        root,
    )
