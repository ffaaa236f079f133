"""position-ledger: an event-sourced position ledger for crypto trading bots.

Names are re-exported lazily, so importing a low layer (say `projections.book`) first never
drags in the service through this package and into an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledger.blocking import (
        ThreadSafePositionManager,
    )
    from ledger.envelope import (
        Recorded,
    )
    from ledger.errors import (
        CommandRejected,
        ConfigError,
        DuplicatePosition,
        ExchangeAuthError,
        ExchangeError,
        ExitExceedsPosition,
        ImportRejected,
        IntegrityError,
        InvalidValue,
        LedgerError,
        LeverageOutOfRange,
        PositionAlreadyClosed,
        SnapshotError,
        StoreError,
        StoreUnavailable,
        TooManyOpenPositions,
        UnknownPosition,
        VersionConflict,
    )
    from ledger.service import (
        Ledger,
        Plan,
    )
    from ledger.settings import (
        Settings,
        load_settings,
    )
    from ledger.values import (
        Side,
        Source,
    )
    from projections.positions import (
        PartialExit,
        Position,
    )
    from projections.stats import (
        SessionSummary,
    )

_WHERE = {
    "ThreadSafePositionManager": "ledger.blocking",
    "Recorded": "ledger.envelope",
    "CommandRejected": "ledger.errors",
    "ConfigError": "ledger.errors",
    "DuplicatePosition": "ledger.errors",
    "ExchangeAuthError": "ledger.errors",
    "ExchangeError": "ledger.errors",
    "ExitExceedsPosition": "ledger.errors",
    "ImportRejected": "ledger.errors",
    "IntegrityError": "ledger.errors",
    "InvalidValue": "ledger.errors",
    "LedgerError": "ledger.errors",
    "LeverageOutOfRange": "ledger.errors",
    "PositionAlreadyClosed": "ledger.errors",
    "SnapshotError": "ledger.errors",
    "StoreError": "ledger.errors",
    "StoreUnavailable": "ledger.errors",
    "TooManyOpenPositions": "ledger.errors",
    "UnknownPosition": "ledger.errors",
    "VersionConflict": "ledger.errors",
    "Ledger": "ledger.service",
    "Plan": "ledger.service",
    "Settings": "ledger.settings",
    "load_settings": "ledger.settings",
    "Side": "ledger.values",
    "Source": "ledger.values",
    "PartialExit": "projections.positions",
    "Position": "projections.positions",
    "SessionSummary": "projections.stats",
}
__all__ = [
    "CommandRejected",
    "ConfigError",
    "DuplicatePosition",
    "ExchangeAuthError",
    "ExchangeError",
    "ExitExceedsPosition",
    "ImportRejected",
    "IntegrityError",
    "InvalidValue",
    "Ledger",
    "LedgerError",
    "LeverageOutOfRange",
    "PartialExit",
    "Plan",
    "Position",
    "PositionAlreadyClosed",
    "Recorded",
    "SessionSummary",
    "Settings",
    "Side",
    "SnapshotError",
    "Source",
    "StoreError",
    "StoreUnavailable",
    "ThreadSafePositionManager",
    "TooManyOpenPositions",
    "UnknownPosition",
    "VersionConflict",
    "load_settings",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
