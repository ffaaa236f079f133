"""The seed's persistence, re-implemented faithfully as the baseline for create-close.

As in /work/shared/seed/08-position-management.md: positions are mutable dataclasses of floats
held in memory (open ones in a dict, closed ones in a list) under one threading.Lock, and every
change rewrites the whole positions.json with `json.dump(..., indent=2, default=str)` into a
temp file that then replaces the old one (no fsync, as in the seed: the rename survives a
process crash, not a power loss). `durable=True` adds what power-loss durability takes, the
same guarantee as the ledger's synchronous=FULL commit: fsync the temp file before the rename
and the folder after it.

Two departures, both so it can be measured: `_save_to_file` computes the session summary
without taking the lock again (the seed's `get_session_summary` takes the non-reentrant lock
that the saving caller already holds: a deadlock on the first save), and a failed save raises
instead of being logged and swallowed.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass
class ThreadSafePosition:
    """The seed's position record."""

    position_id: str
    symbol: str
    side: str
    entry_price: float
    current_price: float
    position_size: float
    leverage: int
    unrealized_pnl: float
    roe_percentage: float
    open_time: str
    close_time: str | None
    confidence: float
    open_reason: str
    close_reason: str | None
    atr: float | None = 0.0
    adx: float | None = 0.0
    volatility: float | None = 0.0
    real_initial_margin: float | None = None
    partial_exits: list[dict[str, Any]] = field(default_factory=list)


class SeedPositionManager:
    """The seed's ThreadSafePositionManager: every change rewrites the whole JSON file."""

    def __init__(
        self, file_path: Path, *, balance: float = 10_000.0, durable: bool = False
    ) -> None:
        self._lock = threading.Lock()
        self._durable = durable
        self._open_positions: dict[str, ThreadSafePosition] = {}
        self._closed_positions: list[ThreadSafePosition] = []
        self._current_balance = balance
        self.file_path = file_path

    def restore(self, closed: list[ThreadSafePosition]) -> None:
        """Start with this history of closed positions (as after a restart), saved once."""
        with self._lock:
            self._closed_positions = list(closed)
            self._save_to_file()

    def _generate_id(self) -> str:
        return f"pos_{uuid.uuid4().hex[:12]}"

    def thread_safe_create_position(self, **kwargs: Any) -> str:
        with self._lock:
            position_id = self._generate_id()
            position = ThreadSafePosition(position_id=position_id, **kwargs)
            self._open_positions[position_id] = position
            self._save_to_file()
            return position_id

    def close_position(self, position_id: str, reason: str) -> bool:
        with self._lock:
            if position_id not in self._open_positions:
                return False
            position = self._open_positions.pop(position_id)
            position.close_time = datetime.now().isoformat()
            position.close_reason = reason
            self._closed_positions.append(position)
            self._save_to_file()
            return True

    def register_partial_exit(
        self,
        position_id: str,
        exit_size: float,
        exit_price: float,
        realized_pnl: float,
        reason: str,
    ) -> bool:
        with self._lock:
            if position_id not in self._open_positions:
                return False
            position = self._open_positions[position_id]
            position.partial_exits.append(
                {
                    "timestamp": datetime.now().isoformat(),
                    "size": exit_size,
                    "price": exit_price,
                    "realized_pnl": realized_pnl,
                    "reason": reason,
                }
            )
            position.position_size -= exit_size
            self._save_to_file()
            return True

    def get_active_positions(self) -> list[ThreadSafePosition]:
        with self._lock:
            return list(self._open_positions.values())

    def get_session_summary(self) -> dict[str, Any]:
        with self._lock:
            return self._session_summary()

    def _session_summary(self) -> dict[str, Any]:
        """The seed's get_session_summary body; the caller holds the lock."""
        active = list(self._open_positions.values())
        closed = self._closed_positions
        used_margin = sum(p.real_initial_margin or 0 for p in active)
        unrealized_pnl = sum(p.unrealized_pnl for p in active)
        closed_wins = [p for p in closed if p.unrealized_pnl > 0]
        closed_losses = [p for p in closed if p.unrealized_pnl <= 0]
        total_realized_pnl = sum(p.unrealized_pnl for p in closed)
        total_closed = len(closed)
        return {
            "active_positions": len(active),
            "used_margin": used_margin,
            "unrealized_pnl": unrealized_pnl,
            "closed_trades": total_closed,
            "wins": len(closed_wins),
            "losses": len(closed_losses),
            "win_rate": len(closed_wins) / total_closed if total_closed > 0 else 0,
            "total_realized_pnl": total_realized_pnl,
            "total_pnl": unrealized_pnl + total_realized_pnl,
            "balance": self._current_balance,
            "available_balance": self._current_balance - used_margin,
        }

    def _save_to_file(self) -> None:
        """Rewrite the whole file: temp file, then an atomic replace; the caller holds the lock."""
        data = {
            "open_positions": {pid: asdict(pos) for pid, pos in self._open_positions.items()},
            "closed_positions": [asdict(pos) for pos in self._closed_positions],
            "session_stats": self._session_summary(),
            "last_saved": datetime.now().isoformat(),
        }
        temp_file = self.file_path.with_suffix(".tmp")
        with open(temp_file, "w") as f:
            json.dump(data, f, indent=2, default=str)
            if self._durable:
                f.flush()
                os.fsync(f.fileno())
        temp_file.replace(self.file_path)
        if self._durable:  # the rename itself is durable once the folder is
            folder = os.open(self.file_path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def _load_from_file(self) -> None:
        if not self.file_path.exists():
            return
        with open(self.file_path) as f:
            data = json.load(f)
        for pid, pos_dict in data.get("open_positions", {}).items():
            self._open_positions[pid] = ThreadSafePosition(**pos_dict)
        for pos_dict in data.get("closed_positions", []):
            self._closed_positions.append(ThreadSafePosition(**pos_dict))
