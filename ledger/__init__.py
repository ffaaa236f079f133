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
        BookOutOfStep,
        CommandRejected,
        ConfigError,
        DuplicatePosition,
        ExchangeAuthError,
        ExchangeError,
        ExchangeUnavailable,
        ExitExceedsPosition,
        ImportRejected,
        IntegrityError,
        InvalidValue,
        LedgerError,
        LeverageOutOfRange,
        MalformedResponse,
        OutcomeUnknown,
        PositionAlreadyClosed,
        SnapshotError,
        StoreError,
        StoreUnavailable,
        TooManyOpenPositions,
        UnknownPosition,
        VersionConflict,
    )
    from ledger.exchange.ccxt_client import (
        ExchangeGateway,
        bybit_from_env,
    )
    from ledger.exchange.emulator import (
        BybitEmulator,
    )
    from ledger.exchange.exit_rules import (
        ExitRule,
    )
    from ledger.exchange.service import (
        BotService,
        ExitFill,
    )
    from ledger.exchange.sync import (
        ExchangeSync,
    )
    from ledger.seed_edge import (
        SeedPosition,
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

# name -> defining module; ccxt and aiohttp load only when an exchange name is used
_WHERE = {
    "BotService": "ledger.exchange.service",
    "BybitEmulator": "ledger.exchange.emulator",
    "BookOutOfStep": "ledger.errors",
    "CommandRejected": "ledger.errors",
    "ConfigError": "ledger.errors",
    "DuplicatePosition": "ledger.errors",
    "ExchangeAuthError": "ledger.errors",
    "ExchangeError": "ledger.errors",
    "ExchangeGateway": "ledger.exchange.ccxt_client",
    "ExchangeSync": "ledger.exchange.sync",
    "ExchangeUnavailable": "ledger.errors",
    "ExitExceedsPosition": "ledger.errors",
    "ExitFill": "ledger.exchange.service",
    "ExitRule": "ledger.exchange.exit_rules",
    "ImportRejected": "ledger.errors",
    "IntegrityError": "ledger.errors",
    "InvalidValue": "ledger.errors",
    "Ledger": "ledger.service",
    "LedgerError": "ledger.errors",
    "LeverageOutOfRange": "ledger.errors",
    "MalformedResponse": "ledger.errors",
    "OutcomeUnknown": "ledger.errors",
    "PartialExit": "projections.positions",
    "Plan": "ledger.service",
    "Position": "projections.positions",
    "PositionAlreadyClosed": "ledger.errors",
    "Recorded": "ledger.envelope",
    "SeedPosition": "ledger.seed_edge",
    "SessionSummary": "projections.stats",
    "Settings": "ledger.settings",
    "Side": "ledger.values",
    "SnapshotError": "ledger.errors",
    "Source": "ledger.values",
    "StoreError": "ledger.errors",
    "StoreUnavailable": "ledger.errors",
    "ThreadSafePositionManager": "ledger.blocking",
    "TooManyOpenPositions": "ledger.errors",
    "UnknownPosition": "ledger.errors",
    "VersionConflict": "ledger.errors",
    "bybit_from_env": "ledger.exchange.ccxt_client",
    "load_settings": "ledger.settings",
}
__all__ = [
    "BookOutOfStep",
    "BotService",
    "BybitEmulator",
    "CommandRejected",
    "ConfigError",
    "DuplicatePosition",
    "ExchangeAuthError",
    "ExchangeError",
    "ExchangeGateway",
    "ExchangeSync",
    "ExchangeUnavailable",
    "ExitExceedsPosition",
    "ExitFill",
    "ExitRule",
    "ImportRejected",
    "IntegrityError",
    "InvalidValue",
    "Ledger",
    "LedgerError",
    "LeverageOutOfRange",
    "MalformedResponse",
    "OutcomeUnknown",
    "PartialExit",
    "Plan",
    "Position",
    "PositionAlreadyClosed",
    "Recorded",
    "SeedPosition",
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
    "bybit_from_env",
    "load_settings",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
