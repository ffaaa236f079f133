"""Adversary: a long batch's one-time shortcut (550ba67) against times that compare equal
but are not the same instant.

`_stage_many` converted one time for a whole batch when its first and last event shared one
object and every other time compared equal to it (now: only when every event holds that one
object). Equality is not "the same instant": two
aware datetimes with the *same* tzinfo compare their wall clocks and ignore `fold`, so in a
zone's repeated hour (the autumn DST change) 02:30 fold=0 and 02:30 fold=1 compare equal and
are an hour apart. Each event must be stored at its own instant, as the per-event path does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.base import STAGE_MANY_FROM
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio

BERLIN = ZoneInfo("Europe/Berlin")
# 2024-10-27 02:30 happens twice in Berlin: 00:30 UTC (fold=0, CEST) and 01:30 UTC (fold=1, CET)
FIRST = datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN)
SECOND = FIRST.replace(fold=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _instant_us(moment: datetime) -> int:
    """The instant in microseconds, through astimezone (which honours fold): a reference
    written here, not the store's conversion."""
    return (moment.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _marks(times: list[datetime]) -> list[NewEvent]:
    return [
        NewEvent(
            stream="p1",
            event=PositionMarked(position_id="p1", mark_price=Decimal(i + 1)),
            event_id=f"m{i}",
            occurred_at=at,
        )
        for i, at in enumerate(times)
    ]


def test_the_two_times_compare_equal_and_are_an_hour_apart() -> None:
    """The premise: equal as datetimes, an hour apart as instants."""
    assert FIRST == SECOND
    assert _instant_us(SECOND) - _instant_us(FIRST) == 3_600_000_000


@pytest.mark.parametrize("length", [STAGE_MANY_FROM - 1, STAGE_MANY_FROM, 100])
async def test_a_long_batch_stores_each_event_at_its_own_instant_across_a_dst_fold(
    db_path: Path, length: int
) -> None:
    times = [FIRST] + [SECOND] * (length - 2) + [FIRST]
    batch = _marks(times)
    store = SQLiteEventStore(db_path)
    await store.open()
    try:
        returned = await store.append(batch)
        stored = [record async for page in store.iterate() for record in page]
    finally:
        await store.close()
    expected = [_instant_us(at) for at in times]
    assert [_instant_us(r.occurred_at) for r in returned] == expected
    assert [_instant_us(r.occurred_at) for r in stored] == expected
    assert [r.hash for r in stored] == [r.hash for r in returned]


class _EqualToAll(datetime):
    """A datetime subclass whose equality says yes to every datetime (a buggy or hostile
    library's type): equality cannot tell the store that two times are one instant."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = datetime.__hash__


async def test_times_equal_only_by_their_own_eq_are_stored_at_their_own_instants(
    db_path: Path,
) -> None:
    shared = datetime(2024, 1, 1, tzinfo=UTC)
    own = [
        _EqualToAll(2024, 1, 2, tzinfo=UTC) + timedelta(minutes=i) for i in range(STAGE_MANY_FROM)
    ]
    times = [shared, *own, shared]
    assert all(at == shared for at in times)  # the premise: each says it equals the first
    store = SQLiteEventStore(db_path)
    await store.open()
    try:
        returned = await store.append(_marks(times))
        stored = [record async for page in store.iterate() for record in page]
    finally:
        await store.close()
    expected = [_instant_us(at) for at in times]
    assert [_instant_us(r.occurred_at) for r in returned] == expected
    assert [_instant_us(r.occurred_at) for r in stored] == expected
