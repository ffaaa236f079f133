"""Adversary: the long batch's column-by-column staging (550ba67, e18a64d) against the per-event
loop, on hostile input drawn by hypothesis: times from a small pool of objects (so a batch
often shares one, or its first and last only) mixing UTC, fixed offsets, naive times and a DST
zone's repeated hour (fold 0 and 1, equal as datetimes, an hour apart), streams and ids with
quotes, backslashes and non-ASCII text. Whatever the batch, the long path stages exactly the
rows, records and chain the per-event path stages, each event at its own instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.base import STAGE_MANY_FROM, Head
from tests.test_staged_hashes import RECORDED_AT, _expected_hash, _Staging

BERLIN = ZoneInfo("Europe/Berlin")
_FOLD = datetime(2024, 10, 27, 2, 30, 0, 5, tzinfo=BERLIN)
TIMES = [
    datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    datetime(2024, 3, 1, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),  # same instant
    datetime(2024, 3, 1, 12, 0, 0, 123456),  # naive: taken as UTC
    _FOLD,
    _FOLD.replace(fold=1),  # == _FOLD, an hour later
    datetime(2024, 10, 27, 1, 30, 0, 5, tzinfo=UTC),  # the same instant as fold=1
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
]
STREAMS = ['p"1', "pö\\2", "p3", "\u2603"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _instant_us(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _head() -> Head:
    return Head(5, "cd" * 32, {stream: 0 for stream in STREAMS})


@st.composite
def batches(draw: st.DrawFn) -> list[NewEvent]:
    length = draw(st.integers(STAGE_MANY_FROM, STAGE_MANY_FROM + 40))
    shared = draw(st.sampled_from(TIMES))
    twins = [at for at in TIMES if at == shared]  # equal as datetimes (shared among them)
    mode = draw(st.sampled_from(["one object", "equal objects", "any"]))
    pick = {
        "one object": st.just(shared),
        "equal objects": st.sampled_from(twins),
        "any": st.one_of(st.just(shared), st.sampled_from(TIMES)),
    }[mode]
    times = draw(st.lists(pick, min_size=length, max_size=length))
    if draw(st.booleans()):
        times[-1] = times[0]  # first and last one object: the shortcut's first test passes
    batch = []
    for index, at in enumerate(times):
        stream = draw(st.sampled_from(STREAMS))
        event = PositionMarked(position_id=stream, mark_price=Decimal(f"10.{index}"))
        batch.append(NewEvent(stream=stream, event=event, event_id=f"é-{index}", occurred_at=at))
    return batch


@settings(max_examples=100, deadline=None)
@given(batches())
def test_a_long_batch_stages_exactly_what_the_per_event_path_stages(batch: list[NewEvent]) -> None:
    whole = _Staging(_head(), [], RECORDED_AT)
    records = whole.stage(batch)
    single = _Staging(_head(), [], RECORDED_AT)
    singles = [single.stage([new])[0] for new in batch]
    assert whole.rows == single.rows
    assert [r.hash for r in records] == [r.hash for r in singles]
    assert (whole.head.seq, whole.head.hash) == (single.head.seq, single.head.hash)
    assert [row[6] for row in whole.rows] == [_instant_us(new.occurred_at) for new in batch]
    prev = "cd" * 32
    for row in whole.rows:
        assert row[-1] == _expected_hash(prev, row)
        prev = row[-1]
