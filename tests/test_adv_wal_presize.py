"""Adversary: the WAL sized before a FULL connection's first commit (8d28b13, ledger.store.wal),
attacked as a hostile user and an unlucky operator would:

- an interrupt (KeyboardInterrupt) injected before every opcode of the sizing, in a lone
  append (the inline lane) and in a group (`run_transaction`): the caller hears it, nothing of
  the append is stored, the write lock and the role are free, the same store appends again,
  and no descriptor of the WAL is left open (a signal's handler runs right after a call
  returns: after `os.open` returned, before its result was bound, the descriptor was lost);
- the POSIX locks SQLite holds (on the database file and -shm) are the same after the sizing
  opened and closed its own descriptor on the -wal, and another process still cannot write;
- a symlinked database path whose target's name holds '?', '#', '%', a newline and non-ASCII:
  the WAL SQLite uses is sized, nothing is created beside the link;
- a reader's snapshot, another store's frames already in the WAL, TRUNCATE checkpoints and
  other connections closing around the sizing: nothing stored changes, the snapshot holds;
- kill -9 of the sizing process while the zeros are written, once they are, and right after
  its commit: recovery by another process holds every acknowledged event, on a chain that
  verifies, and nothing else;
- a nearly full disk, where the zeros fit but then fill it: the sizing took the space the
  close's checkpoint and positions.json needed (the snapshot failed, the WAL stayed behind
  with every event in it); it must leave at least what it would take;
- page sizes other than 4096: each is sized to its own cycle and never grows within it;
- the benchmark's raw baseline: its WAL is sized as the store sizes its own (so the baseline
  pays no growing-file fdatasyncs the store does not pay: the comparison stays honest).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import ledger.store.sqlite as sqlite_store
from benchmarks._data import EventMix, create_empty_log, raw_connection, take
from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.wal import _is_wal, presize_wal, wal_target_bytes
from tests._tmpfs import mounted_tmpfs

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
WATCHDOG = 60.0


def _wal(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def _open_descriptors(target: Path) -> int:
    """How many of this process's descriptors are open on target."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(target):
                count += 1
        except OSError:  # the listing's own descriptor, gone already
            pass
    return count


def _lock_is_free(db: Path) -> bool:
    """Whether another connection takes the write lock at once."""
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


async def _stored(db: Path) -> list[tuple[int, str]]:
    """(seq, event_id) of every stored event, read by a fresh store whose chain verifies."""
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        stored = [(r.seq, r.event_id) async for page in store.iterate() for r in page]
        report = await store.verify_chain()  # raises on a broken chain
        assert report.events == len(stored)
        return stored
    finally:
        await store.close()


# -- an interrupt before every opcode of the sizing -------------------------------------------

_SIZING = {presize_wal.__code__, _is_wal.__code__}


class _InterruptAt:
    """A trace that raises KeyboardInterrupt before the `at`-th opcode run in the sizing's
    frames (ledger.store.wal), once; `seen` counts the opcodes it ran past."""

    def __init__(self, at: int) -> None:
        self.at, self.seen, self.fired = at, 0, False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code not in _SIZING:
            return None
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and not self.fired:
            self.seen += 1
            if self.seen == self.at:
                self.fired = True
                raise KeyboardInterrupt("injected")
        return self._opcode


async def _interrupt_sizing_at(db: Path, at: int, batch: list[NewEvent]) -> bool:
    """A FULL store's first append (batch: one event, the inline lane; two, a group through
    run_transaction) with an interrupt before the at-th opcode of the sizing; asserts what
    must hold after it. False once the sizing ran whole (at is past its last opcode)."""
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    wal = _wal(db)
    ours = _open_descriptors(wal)  # SQLite's own
    trace = _InterruptAt(at)
    try:
        with warnings.catch_warnings():
            # a file object dropped by the interrupt, closed by its finalizer, may say so
            warnings.simplefilter("ignore", ResourceWarning)
            sys.settrace(trace)
            try:
                await store.append(batch)
            except KeyboardInterrupt as exc:
                assert trace.fired and str(exc) == "injected"
            else:
                assert not trace.fired
            finally:
                sys.settrace(None)
            gc.collect()  # what the interrupt's traceback held
        assert _open_descriptors(wal) == ours, f"a descriptor of the WAL left open ({at})"
        assert store._writer is not None and store._writer._holder is None
        assert _lock_is_free(db), f"the write lock still held ({at})"
        if trace.fired:
            assert [r.seq for r in await store.append(batch)]  # the same events, once
    finally:
        await store.close()
    ids = [event_id for _, event_id in await _stored(db)]
    assert ids[-len(batch) :] == [new.event_id for new in batch]
    assert len(ids) == len(set(ids)) == 3 + len(batch)
    return trace.fired


@pytest.mark.parametrize("lane", ["lone", "group"])
async def test_an_interrupt_before_any_opcode_of_the_sizing_leaves_no_descriptor_open(
    tmp_path: Path, lane: str
) -> None:
    first = take(EventMix(seed=11), 3)
    batch = take(EventMix(seed=12), 1 if lane == "lone" else 2)
    fired = 0
    for at in range(1, 400):
        db = tmp_path / f"{at}.db"
        store = SQLiteEventStore(db, synchronous="NORMAL")  # a log, its WAL gone on close
        await store.open()
        await store.append(first)
        await store.close()
        assert not _wal(db).exists()
        if not await _interrupt_sizing_at(db, at, batch):
            break
        fired += 1
        for side in (db, _wal(db), db.with_name(db.name + "-shm")):
            side.unlink(missing_ok=True)
    else:
        pytest.fail("the sizing never ran whole")
    assert fired > 50  # every opcode of the sizing was a landing place


# -- the locks SQLite holds, the paths it resolves --------------------------------------------


def _inode(path: Path | str) -> str:
    """path's file as /proc/locks names it: major:minor:inode (device numbers in hex)."""
    st = os.stat(path)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def _posix_locks(pid: int, files: set[str]) -> list[tuple[str, ...]]:
    """This pid's POSIX locks in /proc/locks on files (their `_inode`s): (kind, type,
    device:inode, start, end). Only these files': the process's other threads (one an
    earlier test left closing its own connections, late on a busy machine) take and drop
    locks on their files at any moment."""
    locks = []
    with open("/proc/locks") as listing:
        for line in listing:
            fields = line.split()
            if fields[1] == "->":  # a waiter, not a holder
                continue
            if fields[1] == "POSIX" and fields[4] == str(pid) and fields[5] in files:
                locks.append((fields[1], fields[3], fields[5], fields[6], fields[7]))
    return sorted(locks)


_TRY_WRITE = (
    "import sqlite3, sys\n"
    "c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
    "try:\n"
    "    c.execute('BEGIN IMMEDIATE')\n"
    "    print('took the lock')\n"
    "except sqlite3.OperationalError as exc:\n"
    "    print(exc)\n"
)


def _other_process_writes(db: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _TRY_WRITE, str(db)],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        check=True,
    )
    return done.stdout.strip()


async def test_the_sizing_keeps_every_lock_sqlite_holds_and_other_processes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POSIX locks belong to a process and an inode: closing any descriptor of a file drops
    every lock the process holds on it. SQLite (os_unix.c) locks the database file and -shm,
    never -wal, so the sizing's own open and close of -wal must leave them all held."""
    db = tmp_path / "ledger.db"
    seen: list[tuple[list[tuple[str, ...]], list[tuple[str, ...]], set[str], str]] = []
    real = presize_wal

    def watched(wal_path: str, target: int) -> bool:
        locked = {_inode(db), _inode(f"{db}-shm")}  # what SQLite locks
        before = _posix_locks(os.getpid(), {*locked, _inode(wal_path)})
        sized = real(wal_path, target)
        after = _posix_locks(os.getpid(), {*locked, _inode(wal_path)})
        seen.append((before, after, locked, _other_process_writes(db)))
        return sized

    monkeypatch.setattr(sqlite_store, "presize_wal", watched)
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    try:
        [record] = await store.append(take(EventMix(seed=13), 1))
    finally:
        await store.close()
    [(before, after, locked, other)] = seen
    assert before == after
    assert any(lock[1] == "WRITE" for lock in after)  # the WAL write lock, on -shm
    assert {lock[2] for lock in after} == locked  # both held, and none on -wal
    assert other == "database is locked"
    assert _other_process_writes(db) == "took the lock"
    assert await _stored(db) == [(record.seq, record.event_id)]


async def test_a_symlinked_path_to_a_name_with_odd_characters_sizes_the_wal_sqlite_uses(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real dir"
    real.mkdir()
    target = real / "odd ?#%&=\n name é.db"
    link = tmp_path / "link.db"
    link.symlink_to(target)
    store = SQLiteEventStore(link, synchronous="FULL")
    await store.open()
    ids: list[tuple[int, str]] = []
    try:
        for event in take(EventMix(seed=14), 20):
            [record] = await store.append([event])
            ids.append((record.seq, record.event_id))
            assert _wal(target).stat().st_size == wal_target_bytes(4096, 1000)
    finally:
        await store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.db", "real dir"]
    assert await _stored(link) == ids


# -- readers, other writers, checkpoints around the sizing --------------------------------------


async def test_a_snapshot_other_writers_checkpoints_and_closes_around_the_sizing_change_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    wal, target = _wal(db), wal_target_bytes(4096, 1000)
    events = iter(take(EventMix(seed=15), 200))
    acked: list[tuple[int, str]] = []

    async def append(store: SQLiteEventStore) -> None:
        [record] = await store.append([next(events)])
        acked.append((record.seq, record.event_id))

    normal = SQLiteEventStore(db, synchronous="NORMAL")  # never sizes: its frames come first
    await normal.open()
    for _ in range(5):
        await append(normal)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone() == (5,)
    full = SQLiteEventStore(db, synchronous="FULL")
    await full.open()
    try:
        passer_by = sqlite3.connect(db)  # opens, reads, closes: never the last connection
        passer_by.execute("SELECT COUNT(*) FROM events").fetchone()
        passer_by.close()
        frames_then = wal.stat().st_size
        assert 0 < frames_then < target
        await append(full)  # sizes past the other store's frames
        assert wal.stat().st_size == target
        for i in range(30):
            await append(full if i % 2 else normal)
        blocked = sqlite3.connect(db, timeout=0, isolation_level=None)
        busy, _, _ = blocked.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 1  # the reader's snapshot holds the WAL
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone() == (5,)
        reader.execute("COMMIT")
        assert blocked.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
        blocked.close()
        assert wal.stat().st_size == 0
        await append(normal)  # the WAL restarts from its header, grows
        late = SQLiteEventStore(db, synchronous="FULL")
        await late.open()
        try:
            await append(late)  # a new connection sizes it again, past those frames
            assert wal.stat().st_size == target
            for i in range(30):
                await append((late, full, normal)[i % 3])
        finally:
            await late.close()
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone() == (len(acked),)
    finally:
        reader.close()
        await full.close()
        await normal.close()
    assert not wal.exists()
    assert await _stored(db) == acked


# -- kill -9 around the sizing ------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["written", "synced", "committed"])
async def test_a_kill_while_or_right_after_sizing_loses_nothing_acknowledged_adds_nothing(
    tmp_path: Path, stage: str
) -> None:
    db = tmp_path / "ledger.db"
    acked: list[tuple[int, str]] = []
    tried: list[str] = []
    stopped = None
    with subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_adv_wal_kill_worker.py"), str(db), stage],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as worker:
        watchdog = threading.Timer(WATCHDOG, worker.kill)  # a hung worker fails the test
        watchdog.start()
        try:
            assert worker.stdout is not None
            for line in worker.stdout:
                said = json.loads(line)
                if "ack" in said:
                    acked.append((said["ack"][0], said["ack"][1]))
                elif "try" in said:
                    tried.append(said["try"])
                else:
                    stopped = said["stop"]
                    break
            os.kill(worker.pid, signal.SIGKILL)
            assert worker.wait(WATCHDOG) == -signal.SIGKILL
        finally:
            watchdog.cancel()
            worker.kill()
    assert stopped == stage
    assert len(acked) == (6 if stage == "committed" else 5)
    wal = _wal(db)
    assert wal.stat().st_size == wal_target_bytes(4096, 1000)  # the zeros are there
    # recovery by another process (this one), which appends and sizes in its turn
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    try:
        [after] = await store.append(take(EventMix(seed=23), 1))
    finally:
        await store.close()
    stored = await _stored(db)
    assert stored == [*acked, (len(acked) + 1, after.event_id)]  # nothing lost, nothing extra


# -- a nearly full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "8m") as point:
        yield point


async def test_on_a_nearly_full_disk_the_sizing_leaves_the_space_the_ledger_needs(
    small_disk: Path,
) -> None:
    """Room for the zeros and a little more: sized, the disk is full and the close's
    checkpoint cannot copy the WAL into the database file, nor positions.json be written.
    Unsized, the WAL takes only what the commands write and all of it fits."""
    db, snapshot = small_disk / "ledger.db", small_disk / "positions.json"
    settings = Settings(
        snapshot_every_events=10**9, snapshot_every_seconds=10**6, max_concurrent_positions=1000
    )
    stat = os.statvfs(small_disk)
    free = wal_target_bytes(4096, 1000) + 64 * 1024
    (small_disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - free))
    async with Ledger(db, snapshot_path=snapshot, settings=settings) as ledger:
        for i in range(100):
            await ledger.open_position(f"F{i}USDT", "long", entry_price=10, qty=1, leverage=2)
        await ledger.write_snapshot()  # raises SnapshotError when it cannot be written
        last = ledger.last_seq
    assert not _wal(db).exists()  # the close's checkpoint copied everything into the file
    assert [seq for seq, _ in await _stored(db)] == list(range(1, last + 1))
    assert json.loads(snapshot.read_bytes())["last_seq"] == last


# -- page sizes, the benchmark's baseline --------------------------------------------------------


@pytest.mark.parametrize("page_size", [1024, 8192])
async def test_another_page_size_is_sized_to_its_own_cycle_and_never_grows_in_it(
    tmp_path: Path, page_size: int
) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteEventStore(db, synchronous="NORMAL")
    await store.open()
    ids = [(r.seq, r.event_id) for r in await store.append(take(EventMix(seed=16), 10))]
    await store.close()
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode = WAL")
        assert conn.execute("PRAGMA page_size").fetchone() == (page_size,)
    conn.close()
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    sizes: set[int] = set()
    try:
        for event in take(EventMix(seed=17), 300):
            [record] = await store.append([event])
            ids.append((record.seq, record.event_id))
            sizes.add(_wal(db).stat().st_size)
    finally:
        await store.close()
    assert sizes == {wal_target_bytes(page_size, 1000)}
    assert await _stored(db) == ids


async def test_the_raw_baseline_wal_is_sized_as_the_store_sizes_its_own(tmp_path: Path) -> None:
    """If the baseline's sizing silently did nothing, raw sqlite3 would pay the growing
    file's fdatasyncs that the store does not: a kinder yardstick for the store."""
    ours = tmp_path / "ours.db"
    store = SQLiteEventStore(ours, synchronous="FULL")
    await store.open()
    try:
        await store.append(take(EventMix(seed=18), 1))
        sized = _wal(ours).stat().st_size
    finally:
        await store.close()
    raw = {}
    for synchronous in ("FULL", "NORMAL"):
        path = tmp_path / f"raw-{synchronous}.db"
        await create_empty_log(path)
        conn = raw_connection(path, synchronous)
        try:
            raw[synchronous] = _wal(path).stat().st_size
        finally:
            conn.close()
    assert raw["FULL"] == sized == wal_target_bytes(4096, 1000)
    assert raw["NORMAL"] < sized


def test_a_link_put_in_place_after_the_path_was_looked_at_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is a plain file when the sizing looks at it and a symbolic link when it
    opens it (another user's swap in between): the file opened is not the one looked at,
    nothing is written. A FIFO (or anything but a plain file) is not even opened."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    link = tmp_path / "swapped.db-wal"
    link.symlink_to(elsewhere)
    looked_at = os.lstat(plain)
    monkeypatch.setattr(os, "lstat", lambda path: looked_at)
    assert not presize_wal(str(link), 1 << 20)
    monkeypatch.undo()
    assert elsewhere.stat().st_size == 0 and plain.stat().st_size == 0
    fifo = tmp_path / "fifo.db-wal"
    os.mkfifo(fifo)
    assert not presize_wal(str(fifo), 1 << 20)


async def test_a_reconnect_after_a_failed_write_sizes_nothing_twice_and_stores_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver's error fails a write after its transaction sized the WAL: the next write
    opens a new connection, whose first transaction asks again and writes nothing."""
    db = tmp_path / "ledger.db"
    calls: list[tuple[bool, int]] = []

    def watched(wal_path: str, target: int) -> bool:
        sized = presize_wal(wal_path, target)
        calls.append((sized, os.path.getsize(wal_path)))
        return sized

    monkeypatch.setattr(sqlite_store, "presize_wal", watched)
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    events = take(EventMix(seed=19), 2)
    try:
        # the reader has read: it keeps the WAL (else the old write connection, the last to
        # use it, removes it on its way out and the new one sizes the new WAL: also right)
        assert await store.read() == []

        def fail(_: object) -> None:
            raise sqlite3.OperationalError("disk I/O error (injected)")

        with pytest.raises(StoreError, match="injected"):
            await store.transact(fail)
        assert store._reconnect
        first = await store.append(events[:1])
        second = await store.append(events[1:])
    finally:
        await store.close()
    target = wal_target_bytes(4096, 1000)
    assert calls == [(True, target), (False, target)]
    assert await _stored(db) == [(r.seq, r.event_id) for r in (*first, *second)]
