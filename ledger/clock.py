"""Where 'now' comes from, so tests and replays can set it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The current aware UTC time."""
    return datetime.now(UTC)
