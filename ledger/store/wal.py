"""The WAL file sized ahead of the commits that will fill it, at synchronous=FULL.

DESIGN: why a FULL store writes zeros into its WAL before its first commit
--------------------------------------------------------------------------
At FULL every commit ends in an fdatasync of the WAL. While the commits append to the file
(it grows) that fdatasync must also commit the file's new size and blocks to the file
system's journal; once they overwrite blocks the file already has, it flushes data alone.
Here (ext4): 12 KiB written and fdatasynced 300 times, median 280 us appending against 125 us
overwriting (`/tmp/s17/fs.py`). SQLite itself reuses its WAL from the start after each
checkpoint and never truncates it (journal_size_limit -1), so a long-running ledger overwrites
in the steady state; but the WAL is new after each open (SQLite removes it when the last
connection closes), and the first wal_autocheckpoint pages of commits (about 300 commands)
all appended: a create+close at 10k closed took 1.16-1.23 ms (median) there against
0.68-0.70 ms once the WAL had been through one checkpoint (`/tmp/s17/cc.py`). PostgreSQL does
the same for the same reason (WAL segments zero-filled before use, then recycled).

So the first write transaction of a FULL connection writes zeros from the WAL's end to the
size SQLite's own cycle reaches (wal_autocheckpoint frames and a margin) and fdatasyncs them,
once (about 8 ms for 4 MiB here, paid by that first commit, not by opening: start-up stays
what it was). It runs holding the write lock (after BEGIN IMMEDIATE), so no other writer, in
this process or another, is appending frames meanwhile, and it only writes past the file's
end. SQLite reads a WAL frame by frame and stops at the first whose salts and checksum do not
continue the header's, so zeros past the last frame are never read as frames (the state of any
WAL after a checkpoint restarted it). It is best-effort: a full disk, a file-size limit, a
file that is not a WAL (its magic checked) leave the file as it was and the commit goes on.
And it sizes only where the disk keeps as much free again as the zeros take: on a nearly full
disk they would take the space the ledger needs next, which a WAL growing with its commits
leaves (the close's checkpoint copying the WAL into the database file, positions.json:
tests/test_adv_wal_presize.py); the checkpoint of a whole cycle needs at most what it sized.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat

WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # little- / big-endian checksums: both are WALs
_MARGIN_FRAMES = 64  # a checkpoint runs after the commit that passes the threshold
MAX_SIZED_BYTES = 16 << 20  # the default cycle (4 KiB pages, 1,000 of them) is 4.3 MB


def wal_target_bytes(page_size: int, autocheckpoint_pages: int) -> int:
    """The size SQLite's own cycle takes a WAL to (0: no automatic checkpoint, no cycle), at
    most MAX_SIZED_BYTES: a database made with 64 KiB pages or a large wal_autocheckpoint
    would have every start write and fsync tens of MB first; past that size its commits grow
    the file, as all did before."""
    if autocheckpoint_pages <= 0 or page_size <= 0:
        return 0
    frames = autocheckpoint_pages + _MARGIN_FRAMES
    return min(WAL_HEADER_BYTES + frames * (WAL_FRAME_HEADER_BYTES + page_size), MAX_SIZED_BYTES)


def presize_wal(wal_path: str, target_bytes: int) -> bool:
    """Write zeros from the end of the WAL at wal_path to target_bytes and fdatasync them;
    True when it did. The caller holds the database's write lock. Never creates a file nor
    follows a symbolic link; leaves a file that is not a WAL, or that it could not extend, as
    it was."""
    try:
        # Never through a symbolic link (SQLite's own -wal is never one: it resolves the
        # database's path itself): the path is looked at first, so nothing but a plain file
        # is opened, and the file opened must be that very one (a link put there meanwhile
        # names another). A file object, not a bare descriptor: made whole by one C call, so
        # an interrupt can never find the descriptor unowned (a signal's handler runs right
        # after a call returns: after os.open, before its result was bound, the descriptor
        # was lost for the process's life, and with it the deleted WAL's blocks); however
        # this function is left, the object closes it. "r+": read-write, close-on-exec,
        # never created.
        seen = os.lstat(wal_path)
        if not stat.S_ISREG(seen.st_mode):
            return False
        wal = io.FileIO(wal_path, "r+")
    except OSError:
        return False
    with wal:
        fd = wal.fileno()
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            return False
        size = opened.st_size
        if size >= target_bytes or not _is_wal(fd, size):
            return False
        missing = target_bytes - size
        disk = os.fstatvfs(fd)
        if disk.f_bavail * disk.f_frsize < 2 * missing:
            return False  # a nearly full disk: the space is the ledger's (see above)
        try:
            if os.pwrite(fd, bytes(missing), size) != missing:
                raise OSError("short write")
            os.fdatasync(fd)
        except OSError:  # a full disk, a file-size limit: give the space back
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            return False
        return True


def _is_wal(fd: int, size: int) -> bool:
    if size == 0:  # SQLite writes the header with the first frame
        return True
    head = os.pread(fd, 4, 0)
    return len(head) == 4 and int.from_bytes(head, "big") in _WAL_MAGIC
