"""Settings from defaults, then a TOML file, then POSITION_LEDGER_* environment variables."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ledger.commands import Limits
from ledger.errors import ConfigError
from ledger.store.sqlite import Synchronous, known_synchronous

ENV_PREFIX = "POSITION_LEDGER_"
# what `account=` takes to mean every account of the ledger (never an account's own name)
ALL_ACCOUNTS = "*"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_CONFIG_FILE = "position-ledger.toml"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob, with the seed's defaults where the seed had one."""

    db_path: str = "data/ledger.db"
    # the bot or exchange sub-account this process writes as (a fleet shares one ledger)
    account: str = "default"
    positions_file: str = "data/positions.json"
    position_sync_interval: float = 60.0
    max_concurrent_positions: int = 5
    min_leverage: int = 1
    max_leverage: int = 100
    auto_backup_enabled: bool = True
    backup_interval_hours: float = 24.0
    backup_dir: str = "data/backups"
    backup_retention: int = 7
    snapshot_every_events: int = 1000
    snapshot_every_seconds: float = 60.0
    # the audit commands keep a book every this many events beside the log (replay's start)
    checkpoint_every_events: int = 100_000
    synchronous: Synchronous = "FULL"
    busy_timeout_ms: int = 10_000
    absent_fetches_before_close: int = 2
    # ... and those fetches must span at least this long: a manual close gives several position
    # pushes within milliseconds, before Bybit writes its closed-PnL record
    absent_seconds_before_close: float = 60.0
    sync_settle_seconds: float = 30.0
    # the mark throttle: an unchanged-size position's mark is logged at most once per interval
    # unless the price moved more than mark_min_move_pct since the last logged one (the exit
    # rules see every mark regardless)
    mark_min_interval_seconds: float = 60.0
    mark_min_move_pct: float = 0.5
    # how far back a first sync (or one after an outage) walks Bybit's history, 7 days a query
    history_max_days: float = 30.0
    # the least wait after HTTP 403 (an IP ban lasts at least 10 minutes)
    ban_wait_seconds: float = 600.0
    live_updates: bool = False
    # name=roe_pct:fraction,... : the seed's partial_exit_50_roe and partial_exit_100_roe
    partial_exit_rules: str = "partial_exit_50_roe=50:0.5,partial_exit_100_roe=100:0.5"

    def __post_init__(self) -> None:
        checks = {
            "position_sync_interval": self.position_sync_interval > 0,
            "max_concurrent_positions": self.max_concurrent_positions >= 1,
            "min_leverage": 1 <= self.min_leverage <= self.max_leverage,
            "backup_interval_hours": self.backup_interval_hours > 0,
            "backup_retention": self.backup_retention >= 1,
            "snapshot_every_events": self.snapshot_every_events >= 1,
            "snapshot_every_seconds": self.snapshot_every_seconds > 0,
            "checkpoint_every_events": self.checkpoint_every_events >= 1,
            "busy_timeout_ms": self.busy_timeout_ms >= 0,
            # exactly one of the two (msgspec checks the Literal only when converting, not
            # here): any other text went into PRAGMA synchronous as given ("OFF": no fsync)
            "synchronous": known_synchronous(self.synchronous),
            "absent_fetches_before_close": self.absent_fetches_before_close >= 1,
            "sync_settle_seconds": self.sync_settle_seconds >= 0,
            "absent_seconds_before_close": self.absent_seconds_before_close >= 0,
            "mark_min_interval_seconds": self.mark_min_interval_seconds >= 0,
            "mark_min_move_pct": self.mark_min_move_pct >= 0,
            "history_max_days": self.history_max_days >= 1,
            "ban_wait_seconds": self.ban_wait_seconds >= 0,
            "account": bool(self.account.strip()) and self.account != ALL_ACCOUNTS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)}")

    @property
    def limits(self) -> Limits:
        return Limits(
            max_concurrent_positions=self.max_concurrent_positions,
            min_leverage=self.min_leverage,
            max_leverage=self.max_leverage,
        )


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then the TOML file (the given path, $POSITION_LEDGER_CONFIG, or
    ./position-ledger.toml if present), then environment variables, then overrides.

    Raises ConfigError naming the bad key.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = Path(path) if path is not None else None
    if file is None and env.get(CONFIG_ENV):
        file = Path(env[CONFIG_ENV])
    if file is None and Path(DEFAULT_CONFIG_FILE).exists():
        file = Path(DEFAULT_CONFIG_FILE)
    if file is not None:
        try:
            document = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read settings file {file}: {exc}") from None
        values.update(document.get("position_ledger", document))
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    for name in fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
