"""Settings: the seed's defaults, a TOML file, POSITION_LEDGER_* overrides, named errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger.commands import Limits
from ledger.errors import ConfigError
from ledger.settings import CONFIG_ENV, DEFAULT_CONFIG_FILE, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./position-ledger.toml and no POSITION_LEDGER_* variables leak in from outside."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("POSITION_LEDGER_"):
            monkeypatch.delenv(name)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_seeds() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.position_sync_interval == 60  # POSITION_SYNC_INTERVAL
    assert settings.max_concurrent_positions == 5  # MAX_CONCURRENT_POSITIONS
    assert settings.auto_backup_enabled is True  # AUTO_BACKUP_ENABLED
    assert settings.backup_interval_hours == 24  # BACKUP_INTERVAL_HOURS
    assert Path(settings.positions_file).name == "positions.json"  # POSITIONS_FILE
    assert settings.synchronous == "FULL"
    assert settings.limits == Limits(max_concurrent_positions=5, min_leverage=1, max_leverage=100)


def test_toml_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "custom.toml",
        """
[position_ledger]
max_concurrent_positions = 3
position_sync_interval = 15
auto_backup_enabled = false
positions_file = "state/positions.json"
synchronous = "NORMAL"
""",
    )
    settings = load_settings(path, environ={})
    assert settings.max_concurrent_positions == 3
    assert settings.position_sync_interval == 15
    assert settings.auto_backup_enabled is False
    assert settings.positions_file == "state/positions.json"
    assert settings.synchronous == "NORMAL"
    assert settings.backup_interval_hours == 24  # untouched keys keep their defaults
    assert settings.limits.max_concurrent_positions == 3


def test_toml_keys_at_the_top_level(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "flat.toml", "max_leverage = 20\n")
    assert load_settings(path, environ={}).max_leverage == 20


def test_toml_found_in_the_working_folder_or_through_the_environment(tmp_path: Path) -> None:
    write_toml(tmp_path / DEFAULT_CONFIG_FILE, "max_concurrent_positions = 4\n")
    assert load_settings(environ={}).max_concurrent_positions == 4
    elsewhere = write_toml(tmp_path / "elsewhere.toml", "max_concurrent_positions = 9\n")
    assert load_settings(environ={CONFIG_ENV: str(elsewhere)}).max_concurrent_positions == 9


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "POSITION_LEDGER_MAX_CONCURRENT_POSITIONS": "7",
        "POSITION_LEDGER_POSITION_SYNC_INTERVAL": "30.5",
        "POSITION_LEDGER_AUTO_BACKUP_ENABLED": "false",
        "POSITION_LEDGER_DB_PATH": "/var/lib/bot/ledger.db",
    }
    settings = load_settings(environ=env)
    assert settings.max_concurrent_positions == 7
    assert settings.position_sync_interval == 30.5
    assert settings.auto_backup_enabled is False
    assert settings.db_path == "/var/lib/bot/ledger.db"
    # the real process environment is read when none is given
    monkeypatch.setenv("POSITION_LEDGER_MAX_CONCURRENT_POSITIONS", "7")
    assert load_settings().max_concurrent_positions == 7


def test_environment_wins_over_the_file_and_overrides_win_over_both(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "c.toml", "max_concurrent_positions = 3\nmax_leverage = 50\n")
    env = {"POSITION_LEDGER_MAX_CONCURRENT_POSITIONS": "7"}
    settings = load_settings(path, environ=env)
    assert (settings.max_concurrent_positions, settings.max_leverage) == (7, 50)
    assert (
        load_settings(path, environ=env, max_concurrent_positions=2).max_concurrent_positions == 2
    )


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"POSITION_LEDGER_MAX_CONCURRENT_POSITIONS": "seven"}, "max_concurrent_positions"),
        ({"POSITION_LEDGER_MAX_CONCURRENT_POSITIONS": "0"}, "max_concurrent_positions"),
        ({"POSITION_LEDGER_POSITION_SYNC_INTERVAL": "-5"}, "position_sync_interval"),
        ({"POSITION_LEDGER_BACKUP_INTERVAL_HOURS": "0"}, "backup_interval_hours"),
        ({"POSITION_LEDGER_AUTO_BACKUP_ENABLED": "maybe"}, "auto_backup_enabled"),
        ({"POSITION_LEDGER_SYNCHRONOUS": "OFF"}, "synchronous"),
        ({"POSITION_LEDGER_MIN_LEVERAGE": "0"}, "min_leverage"),
        ({"POSITION_LEDGER_SNAPSHOT_EVERY_EVENTS": "0"}, "snapshot_every_events"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else str(v),
)
def test_bad_environment_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env)
    assert key in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_concurrent_positions = -1\n", "max_concurrent_positions"),
        ('max_concurrent_positions = "many"\n', "max_concurrent_positions"),
        ("max_leverage_typo = 10\n", "max_leverage_typo"),
        ("[position_ledger]\nbackup_retention = 0\n", "backup_retention"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_toml(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert key in str(caught.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = write_toml(tmp_path / "broken.toml", "max_concurrent_positions = = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(broken, environ={})
    assert "broken.toml" in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.max_concurrent_positions = 9  # type: ignore[misc]
