"""The seed, as its documentation (08-position-management.md) shows it: its example
positions.json verbatim, and a faithful copy of the code path that wrote the file.

Used by the migration tests as the files a real seed bot leaves behind: floats everywhere,
naive ISO times, partial exits as dicts, `asdict` of the dataclass, `json.dump(default=str)`.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

SEED_DOC = (
    Path(__file__).resolve().parents[1].parent / "shared" / "seed" / ("08-position-management.md")
)

# The "File Persistence (positions.json)" example of the seed's documentation, verbatim.
SEED_EXAMPLE = """{
  "open_positions": {
    "pos_abc123": {
      "position_id": "pos_abc123",
      "symbol": "SOL/USDT:USDT",
      "side": "buy",
      "entry_price": 100.50,
      "current_price": 105.20,
      "position_size": 500.0,
      "leverage": 5,
      "unrealized_pnl": 23.50,
      "roe_percentage": 23.5,
      "open_time": "2025-01-07T16:45:00",
      "confidence": 0.77,
      "open_reason": "ML BUY 77% | TF[15m:\u219172% 30m:\u219178% 1h:\u219181%]",
      "atr": 2.3,
      "adx": 28.5,
      "volatility": 0.028
    }
  },
  "closed_positions": [],
  "session_stats": {
    "total_trades": 45,
    "wins": 27,
    "losses": 18,
    "total_pnl": 385.50,
    "win_rate": 0.60
  }
}
"""


def doc_example() -> str | None:
    """The first JSON block of the seed's documentation, when the document is here."""
    if not SEED_DOC.exists():
        return None
    blocks = re.findall(r"```json\n(.*?)```", SEED_DOC.read_text(encoding="utf-8"), re.S)
    return str(blocks[0])


@dataclass
class ThreadSafePosition:
    """The seed's dataclass, field for field."""

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
    """The seed's ThreadSafePositionManager, as documented (create, partial exit, close,
    summary, _save_to_file)."""

    def __init__(self, file_path: Path, balance: float = 500.0) -> None:
        self._lock = threading.RLock()
        self._open_positions: dict[str, ThreadSafePosition] = {}
        self._closed_positions: list[ThreadSafePosition] = []
        self._current_balance = balance
        self.file_path = file_path

    def thread_safe_create_position(self, **kwargs: Any) -> str:
        with self._lock:
            position_id = f"pos_{uuid.uuid4().hex[:8]}"
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
            partial_exit = {
                "timestamp": datetime.now().isoformat(),
                "size": exit_size,
                "price": exit_price,
                "realized_pnl": realized_pnl,
                "reason": reason,
            }
            position.partial_exits.append(partial_exit)
            position.position_size -= exit_size
            self._save_to_file()
            return True

    def get_session_summary(self) -> dict[str, Any]:
        with self._lock:
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
        data = {
            "open_positions": {pid: asdict(pos) for pid, pos in self._open_positions.items()},
            "closed_positions": [asdict(pos) for pos in self._closed_positions],
            "session_stats": self.get_session_summary(),
            "last_saved": datetime.now().isoformat(),
        }
        temp_file = self.file_path.with_suffix(".tmp")
        with open(temp_file, "w") as f:
            json.dump(data, f, indent=2, default=str)
        temp_file.replace(self.file_path)


def seed_bot_session(file_path: Path) -> SeedPositionManager:
    """A short seed bot session: a long with two partial exits still open, a short closed at a
    loss, a long closed at a profit. Sizes are the floats a bot computes (size / 3, size * 0.5)."""
    seed = SeedPositionManager(file_path)

    def create(symbol: str, side: str, entry: float, size: float, **extra: Any) -> str:
        fields: dict[str, Any] = {
            "symbol": symbol,
            "side": side,
            "entry_price": entry,
            "current_price": entry,
            "position_size": size,
            "leverage": 5,
            "unrealized_pnl": 0.0,
            "roe_percentage": 0.0,
            "open_time": datetime.now().isoformat(),
            "close_time": None,
            "confidence": 0.77,
            "open_reason": f"ML {side.upper()} 77%",
            "close_reason": None,
            "atr": 2.3,
            "adx": 28.5,
            "volatility": 0.028,
        }
        fields.update(extra)
        return seed.thread_safe_create_position(**fields)

    sol = create("SOL/USDT:USDT", "buy", 100.5, 500.0, real_initial_margin=100.0)
    third = 500.0 / 3
    seed.register_partial_exit(sol, third, 110.0, third * (110.0 - 100.5) / 100.5, "tp1")
    half = seed._open_positions[sol].position_size * 0.5
    seed.register_partial_exit(sol, half, 120.0, half * (120.0 - 100.5) / 100.5, "tp2")
    mark = seed._open_positions[sol]
    mark.current_price = 115.3
    mark.unrealized_pnl = mark.position_size * (115.3 - 100.5) / 100.5

    eth = create("ETH/USDT:USDT", "sell", 3000.0, 300.0)
    loss = seed._open_positions[eth]
    loss.current_price = 3100.0
    loss.unrealized_pnl = -10.0
    seed.close_position(eth, "stop_loss")

    btc = create("BTC/USDT:USDT", "buy", 50000.0, 1000.0)
    win = seed._open_positions[btc]
    win.current_price = 50500.0
    win.unrealized_pnl = 10.0
    seed.close_position(btc, "take_profit")
    return seed
