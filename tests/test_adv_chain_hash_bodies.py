"""Adversary: the chain hash fed piece by piece to a copy of one fresh sha256 context
(FRESH_SHA256, eb96fa6) against the format's definition, sha256(prev_hash || header || "\\n"
|| body), computed here with hashlib over one joined buffer and the json module: empty and
tiny inputs, bodies around OpenSSL's and hashlib's buffer edges (64-byte blocks; 2,048 bytes,
past which hashlib releases the GIL while it hashes) and of a few MB, for `chain_digest`,
for both staging paths (one event, and a long batch) and for `verify_chain`; with several
threads hashing big bodies at once into stores of their own (each copy of the one shared
context must stay its own while another thread's update runs without the GIL)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import GENESIS_HASH, NewEvent, chain_digest
from ledger.events import PositionClosed
from ledger.store.base import STAGE_MANY_FROM
from ledger.store.sqlite import SQLiteEventStore

AT = datetime(2026, 1, 1, tzinfo=UTC)
SIZES = [0, 1, 55, 56, 63, 64, 65, 119, 2_047, 2_048, 2_049, 4_096, 65_537, 3_000_001]


def _reference(prev: str, header: bytes, body: bytes) -> str:
    return hashlib.sha256(b"".join([prev.encode("ascii"), header, b"\n", body])).hexdigest()


@pytest.mark.parametrize("size", SIZES)
def test_chain_digest_is_the_formats_hash_for_every_size(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for header in (b"", b"[1]", b"h" * size):
        for piece in (body, bytearray(body)):
            assert chain_digest(GENESIS_HASH, header, piece) == _reference(
                GENESIS_HASH, header, body
            )
    assert chain_digest("", b"", b"") == hashlib.sha256(b"\n").hexdigest()


def _closed(stream: str, n: int, reason_size: int) -> NewEvent:
    return NewEvent(
        stream=stream,
        event=PositionClosed(
            position_id=stream,
            qty=Decimal(1),
            price=Decimal("100.5"),
            realized_pnl=Decimal("-0.25"),
            reason="r" * reason_size,
        ),
        event_id=f"{stream}-{n}",
        occurred_at=AT,
    )


def _check_file(path: Path) -> int:
    """Each stored row's hash recomputed from its columns (the json module for the header)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT seq, stream, version, event_id, schema_version, occurred_us, recorded_us,"
            " body, hash FROM events ORDER BY seq"
        ).fetchall()
    conn.close()
    prev = GENESIS_HASH
    for seq, stream, version, event_id, schema, occurred_us, recorded_us, body, digest in rows:
        header = json.dumps(
            [seq, stream, version, event_id, occurred_us, recorded_us, schema],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        assert digest == _reference(prev, header, bytes(body)), seq
        prev = digest
    return len(rows)


def test_stored_chains_of_big_bodies_hashed_by_threads_at_once_verify(tmp_path: Path) -> None:
    sizes = [0, 1_900, 2_000, 2_100, 70_000, 1_500_000]
    threads = 4
    outcomes: list[object] = [None] * threads
    start = threading.Barrier(threads, timeout=60)

    def writer(i: int) -> None:
        async def main() -> None:
            store = SQLiteEventStore(tmp_path / f"l{i}.db", synchronous="NORMAL")
            await store.open()
            try:
                start.wait()
                for n, size in enumerate(sizes):  # one event each: the one-event path
                    await store.append([_closed(f"s{i}", n, size + i)])
                # a long batch: the column-by-column path
                await store.append(
                    [
                        _closed(f"b{i}-{k}", 0, sizes[k % len(sizes)])
                        for k in range(STAGE_MANY_FROM + 3)
                    ]
                )
                report = await store.verify_chain()
                assert report.events == len(sizes) + STAGE_MANY_FROM + 3
            finally:
                await store.close()

        try:
            anyio.run(main)
        except BaseException as exc:  # handed to the test
            outcomes[i] = exc

    running = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(120)
        assert not thread.is_alive()
    assert outcomes == [None] * threads
    for i in range(threads):
        assert _check_file(tmp_path / f"l{i}.db") == len(sizes) + STAGE_MANY_FROM + 3
