"""Adversary: stream versions read by one seek a stream (`_versions_sql`: a correlated MAX over
a VALUES list, e36375f), for streams named oddly (quotes, LIKE wildcards, case and number
look-alikes, unicode, spaces, a long name), more of them than one read asks for, and with
another writer of the file (stores opened in between: other connections, as other processes
would be, which know no stream's version and read them) appending to some of them, so the
first store's known versions go stale. Every append (some made with the versions an
independent model here expects, which the store proves by its insert) succeeds; each stream's
versions run 1, 2, 3... in the log, which verifies."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio
AT = datetime(2026, 1, 1, tzinfo=UTC)

ODD = [
    "a'b", 'q"q', "x%", "_", "%_%", "A", "a", "1", "01", "1.0", "1e3", "-0", " ", "  lead",
    "trail ", "é", "e\u0301", "日本", "emoji\U0001f600", "tab\tname", "new\nline",
    "semi;colon", "(?)", "NULL", "null", "back\\slash", "L" * 1_000,
]  # fmt: skip
STREAMS = ODD + [f"s{n}" for n in range(600)]  # more than one read's 500


def mark(stream: str, event_id: str) -> NewEvent:
    return NewEvent(
        stream=stream,
        event=PositionMarked(position_id="p", mark_price=Decimal(101)),
        event_id=event_id,
        occurred_at=AT,
    )


async def test_odd_streams_written_by_two_writers_in_turn_keep_their_versions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    one = SQLiteEventStore(path, synchronous="NORMAL")  # open throughout: goes stale
    await one.open()
    model: dict[str, int] = {}
    rounds: list[tuple[str, list[str], bool]] = [  # who, streams, with expected versions
        ("one", STREAMS, False),
        ("fresh", STREAMS[::3], False),  # knows no version: reads them (_versions_sql)
        ("one", STREAMS[::2], False),  # its versions stale: the tail moves them
        ("fresh", ODD, True),  # proven by the insert
        ("fresh", list(reversed(STREAMS)), False),
        ("one", STREAMS[1::5], True),
        ("fresh", STREAMS[::-7], False),
    ]
    try:
        for round_, (who, streams, with_expected) in enumerate(rounds):
            store = one
            if who == "fresh":  # another writer of the file, opened now (its head current)
                store = SQLiteEventStore(path, synchronous="NORMAL")
                await store.open()
            try:
                batch = [mark(s, f"r{round_}-{n}") for n, s in enumerate(streams)]
                expected = {s: model.get(s, 0) for s in streams} if with_expected else None
                records = await store.append(batch, expected_versions=expected)
                for stream, record in zip(streams, records, strict=True):
                    model[stream] = model.get(stream, 0) + 1
                    assert (record.stream, record.version) == (stream, model[stream])
                # and a lone append to one of them (one seek, one stream)
                lone = streams[len(streams) // 2]
                (record,) = await store.append([mark(lone, f"r{round_}-lone")])
                model[lone] += 1
                assert (record.stream, record.version) == (lone, model[lone])
            finally:
                if store is not one:
                    await store.close()
        report = await one.verify_chain()
        stored = await one.read()
    finally:
        await one.close()
    assert report.events == len(stored)
    versions: dict[str, list[int]] = {}
    for record in stored:
        versions.setdefault(record.stream, []).append(record.version)
    assert versions == {s: list(range(1, model[s] + 1)) for s in model}
