"""A local Bybit V5 emulator (HTTP and WebSocket) for testing exchange sync against real ccxt."""

from ledger.exchange.emulator._faults import FaultKind
from ledger.exchange.emulator._model import (
    INSTRUMENTS,
    ClosedPnl,
    CoinBalance,
    Execution,
    Instrument,
    NumberLike,
    Position,
)
from ledger.exchange.emulator._server import BybitEmulator, RequestRecord

__all__ = [
    "INSTRUMENTS",
    "BybitEmulator",
    "ClosedPnl",
    "CoinBalance",
    "Execution",
    "FaultKind",
    "Instrument",
    "NumberLike",
    "Position",
    "RequestRecord",
]
