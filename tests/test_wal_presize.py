"""A FULL store's WAL is sized before its first commit, so its commits overwrite blocks the file
already has instead of growing it (ledger.store.wal); that never changes what is stored, read
or recovered, and a WAL that cannot be sized is left as it was."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks._data import EventMix, take
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.wal import MAX_SIZED_BYTES, presize_wal, wal_target_bytes


def _cycle_bytes(db: Path) -> int:
    """What one checkpoint cycle of SQLite's own writes into a WAL: its header and
    wal_autocheckpoint frames (a 24-byte header and a page each)."""
    with sqlite3.connect(db) as conn:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    conn.close()
    return 32 + pages * (24 + page)


def _wal(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


async def _stored(db: Path) -> list[tuple[int, str]]:
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        stored = [(r.seq, r.event_id) async for page in store.iterate() for r in page]
        report = await store.verify_chain()  # raises on a broken chain
        assert (report.events, report.last_seq) == (len(stored), stored[-1][0])
        return stored
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_full_store_commits_a_whole_checkpoint_cycle_without_growing_its_wal(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    events = take(EventMix(seed=3), 400)
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    ids: list[tuple[int, str]] = []
    sizes: set[int] = set()
    try:
        for event in events:  # one commit each: about 3 frames, past one checkpoint cycle
            [record] = await store.append([event])
            ids.append((record.seq, record.event_id))
            sizes.add(_wal(db).stat().st_size)
    finally:
        await store.close()
    cycle = _cycle_bytes(db)
    assert len(sizes) == 1, sorted(sizes)  # sized by the first commit, never grown after
    assert sizes.pop() > cycle
    assert await _stored(db) == ids


@pytest.mark.anyio
async def test_a_normal_store_leaves_its_wal_to_grow(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteEventStore(db, synchronous="NORMAL")
    await store.open()
    try:
        await store.append(take(EventMix(seed=4), 1))
        assert _wal(db).stat().st_size < _cycle_bytes(db)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_two_stores_on_one_file_size_it_once_and_store_what_both_append(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    first, second = SQLiteEventStore(db), SQLiteEventStore(db)
    await first.open()
    await second.open()
    ids: list[tuple[int, str]] = []
    try:
        events = take(EventMix(seed=5), 60)
        [record] = await first.append(events[:1])
        ids.append((record.seq, record.event_id))
        sized = _wal(db).stat().st_size
        for i, event in enumerate(events[1:]):
            [record] = await (second if i % 2 == 0 else first).append([event])
            ids.append((record.seq, record.event_id))
            assert _wal(db).stat().st_size == sized
    finally:
        await second.close()
        await first.close()
    assert await _stored(db) == ids


def test_sizing_creates_no_file_follows_no_link_and_leaves_a_file_that_is_not_a_wal_as_it_was(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "none.db-wal"
    assert not presize_wal(str(missing), 1 << 20)
    assert not missing.exists()
    foreign = tmp_path / "notes.db-wal"
    foreign.write_bytes(b"not a WAL: somebody's notes")
    assert not presize_wal(str(foreign), 1 << 20)
    assert foreign.read_bytes() == b"not a WAL: somebody's notes"
    empty = tmp_path / "elsewhere"
    empty.write_bytes(b"")
    link = tmp_path / "linked.db-wal"
    link.symlink_to(empty)
    assert not presize_wal(str(link), 1 << 20)
    assert empty.stat().st_size == 0


@pytest.mark.anyio
async def test_a_wal_that_cannot_be_sized_is_left_as_it_was_and_the_commit_goes_on(
    tmp_path: Path,
) -> None:
    """A file-size limit below the size the WAL is given: the sizing is refused (EFBIG), the
    WAL keeps only what SQLite wrote, and every append is stored."""
    db = tmp_path / "ledger.db"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_WRITER, str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert 0 < out["wal"] < 1 << 20  # what 20 commits wrote, not the size it was refused
    assert [list(pair) for pair in await _stored(db)] == out["ids"]


_LIMITED_WRITER = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    import anyio
    from benchmarks._data import EventMix, take
    from ledger.store.sqlite import SQLiteEventStore

    async def main(db):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the kernel's kill
        store = SQLiteEventStore(db, synchronous="FULL")
        await store.open()
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        ids = []
        for event in take(EventMix(seed=6), 20):
            [record] = await store.append([event])
            ids.append([record.seq, record.event_id])
        wal = os.path.getsize(db + "-wal")
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        await store.close()
        print(json.dumps({"ids": ids, "wal": wal}))

    anyio.run(main, sys.argv[1])
    """
)


def test_the_size_written_ahead_is_one_cycle_and_at_most_16_mib() -> None:
    assert wal_target_bytes(4096, 1000) == 32 + (1000 + 64) * (24 + 4096)
    assert wal_target_bytes(65536, 1000) == MAX_SIZED_BYTES == 16 * 1024 * 1024
    assert wal_target_bytes(4096, 100_000) == MAX_SIZED_BYTES
    assert wal_target_bytes(4096, 0) == 0 and wal_target_bytes(4096, -1) == 0
