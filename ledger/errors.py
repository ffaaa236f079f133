"""The one tree of errors the ledger raises.

LedgerError
├── CommandRejected            a command broke a rule; nothing was appended
│   ├── InvalidValue           zero / negative / NaN / infinite / malformed input
│   ├── UnknownPosition        no position with that id
│   ├── PositionAlreadyClosed  the position is closed
│   ├── ExitExceedsPosition    exit larger than what is left
│   ├── LeverageOutOfRange
│   ├── TooManyOpenPositions   MAX_CONCURRENT_POSITIONS reached
│   └── DuplicatePosition      same symbol and side already open
├── StoreError
│   ├── VersionConflict        stale expected stream version; nothing appended
│   ├── StoreUnavailable       missing, locked or unreadable database
│   │   └── BookOutOfStep      the live book cannot take committed events; reloading
│   └── IntegrityError         the log fails verification (hash chain, gaps, decoding)
├── SnapshotError              positions.json unusable (start-up rebuilds instead)
├── ExchangeError              the exchange failed or answered nonsense; ledger unchanged
│   ├── ExchangeUnavailable    may pass: retry with backoff (retry_after: the least wait)
│   │   ├── ExchangeClockSkew  Bybit refused the request timestamp (10002): fix the clock
│   │   └── ExchangeBanned     HTTP 403: IP ban (wait at least 10 minutes) or blocked region
│   ├── MalformedResponse      an answer that cannot be trusted
│   └── ExchangeAuthError      the keys were refused: retrying will not help
├── ImportRejected             a seed positions.json cannot be imported
├── OutputError                an output file could not be written; nothing was replaced
│   └── OutputRefused          the output would land on the ledger's own files
└── ConfigError                a bad setting in the TOML file or the environment
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error the ledger raises on purpose."""


class CommandRejected(LedgerError):
    """A command broke a rule and changed nothing."""


class InvalidValue(CommandRejected):
    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"invalid {field}={_shown(value)}: {why}")


def _shown(value: object) -> str:
    """repr(value), or its type where repr raises: an int over 4,300 digits (ValueError), a
    caller's object whose __repr__ raises. Refusing bad input must never raise in its place."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


class UnknownPosition(CommandRejected):
    def __init__(self, position_id: str) -> None:
        self.position_id = position_id
        super().__init__(f"unknown position {_shown(position_id)}")


class PositionAlreadyClosed(CommandRejected):
    def __init__(self, position_id: str) -> None:
        self.position_id = position_id
        super().__init__(f"position {_shown(position_id)} is already closed")


class ExitExceedsPosition(CommandRejected):
    def __init__(self, position_id: str, requested_qty: object, remaining_qty: object) -> None:
        self.position_id = position_id
        self.requested_qty = requested_qty
        self.remaining_qty = remaining_qty
        super().__init__(
            f"exit of qty {requested_qty} exceeds the {remaining_qty} left in {_shown(position_id)}"
        )


class LeverageOutOfRange(CommandRejected):
    def __init__(self, leverage: object, minimum: int, maximum: int) -> None:
        self.leverage = leverage
        self.minimum = minimum
        self.maximum = maximum
        super().__init__(f"leverage {_shown(leverage)} outside [{minimum}, {maximum}]")


class TooManyOpenPositions(CommandRejected):
    def __init__(self, limit: int, open_count: int) -> None:
        self.limit = limit
        self.open_count = open_count
        super().__init__(f"{open_count} positions open; the limit is {limit}")


class DuplicatePosition(CommandRejected):
    def __init__(self, symbol: str, side: str, existing_id: str) -> None:
        self.symbol = symbol
        self.side = side
        self.existing_id = existing_id
        super().__init__(f"a {side} position on {symbol} is already open: {existing_id!r}")


class StoreError(LedgerError):
    """The event store failed; the batch in flight was not appended."""


class OutcomeUnknown(LedgerError):
    """A write interrupted after it may have committed, and the store could not then be asked
    whether it did (another interrupt, the write lock held by another writer, a failing disk):
    it may be stored. Not a StoreError (whose batch was not appended): retrying it blindly may
    store it twice. The ledger's book shows it from the next write on, which reloads it from
    the log."""

    @classmethod
    def interrupted(cls, failure: BaseException, *, redo: str) -> OutcomeUnknown:
        """The error each caller of a write hears when failure (a KeyboardInterrupt or
        SystemExit) interrupted it after it may have committed and the log could not be
        asked: the Ledger's command groups and the store's append groups alike. redo names
        what not to do before reading the log ("writing it", "appending it")."""
        return cls(
            f"interrupted ({failure!r}) after it may have been stored, and the log could not"
            f" be read: read the log before {redo} again"
        )


class VersionConflict(StoreError):
    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream!r} is at version {actual}, expected {expected}")


class StoreUnavailable(StoreError):
    """The database is missing, locked, foreign or unreadable."""


class BookOutOfStep(StoreUnavailable):
    """The live book could not take events committed to the log: the ledger refuses
    commands with this error and reloads the book from the log before the next one."""


class IntegrityError(StoreError):
    def __init__(self, seq: int, why: str) -> None:
        self.seq = seq
        self.why = why
        super().__init__(f"log fails verification at seq {seq}: {why}")


class SnapshotError(LedgerError):
    """positions.json cannot be used as a starting point."""


class ExchangeError(LedgerError):
    """The exchange failed or answered something we cannot trust."""


class ExchangeUnavailable(ExchangeError):
    """A failure that may pass: network, timeout, rate limit, maintenance, a 5xx or Bybit's
    "system error, try again". Retry with backoff, waiting at least `retry_after` seconds."""

    retry_after: float = 0.0


class ExchangeClockSkew(ExchangeUnavailable):
    """Bybit refused the request's timestamp (retCode 10002): this machine's clock is off by
    more than Bybit allows, even after one correction through the server's time."""


class ExchangeBanned(ExchangeUnavailable):
    """HTTP 403 from Bybit: an IP ban (lifted after at least 10 minutes) or a region Bybit
    blocks (permanent). Retrying every few seconds prolongs a ban."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MalformedResponse(ExchangeError):
    def __init__(self, what: str, field: str, value: object, why: str) -> None:
        self.what = what
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"malformed {what}: field {field!r}={value!r}: {why}")


class ExchangeAuthError(ExchangeError):
    """The exchange refused the API keys."""


class ImportRejected(LedgerError):
    """A seed-format positions.json cannot be imported."""


class OutputError(LedgerError):
    """An output (export, plot, backup, snapshot) could not be written; nothing was replaced."""

    def __init__(self, path: object, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"cannot write {path}: {why}")


class OutputRefused(OutputError):
    """The output path resolves to one of the ledger's own files (database, -wal/-shm,
    positions.json, a backup): writing it would destroy the ledger's data."""

    def __init__(self, path: object, option: str, own: str) -> None:
        self.option = option
        self.own = own
        super().__init__(path, f"{option} resolves to {own}; choose another path")


class ConfigError(LedgerError):
    """A setting from the TOML file or the environment is invalid."""
