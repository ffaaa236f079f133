"""position-ledger: an event-sourced position ledger for crypto trading bots."""

from ledger.blocking import ThreadSafePositionManager
from ledger.envelope import Recorded
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
from ledger.service import Ledger
from ledger.settings import Settings, load_settings
from ledger.values import Side, Source
from projections.positions import PartialExit, Position
from projections.stats import SessionSummary

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
