"""No command writes over the ledger's own files, and outputs appear whole or not at all.

Every output a command writes (export --out, plot, snapshot --snapshot, the positions.json of
import, backup) is aimed at each of the ledger's files (database, -wal, -shm, positions.json,
a backup in the backup folder), named directly, through a symlink and through a `..` path: each
is refused with exit 2 and one line, and no file in the folder changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.cli import main
from ledger.errors import OutputError, OutputRefused
from ledger.output_paths import check_output, ledger_files
from ledger.private_files import written_aside
from tests.cli.conftest import Known, RunCli

COMMANDS = ("export", "plot", "snapshot", "import")
TARGETS = ("db", "wal", "shm", "snapshot", "backup")
SPELLINGS = ("direct", "symlink", "dotdot")


def tree(root: Path) -> dict[str, str]:
    """Every file under root (symlinks as their target's name) -> sha256 of its bytes."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def in_ledger_dir(known: Known, monkeypatch: pytest.MonkeyPatch) -> Iterator[Known]:
    """cwd is the ledger's folder, no stray settings; a backup exists in the default backup
    folder (data/backups), and a reader holds the database open so -wal and -shm exist."""
    for name in list(os.environ):
        if name.startswith("POSITION_LEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(known.dir)
    assert main(["backup", "--db", str(known.db)]) == 0
    reader = sqlite3.connect(known.db)
    try:
        reader.execute("SELECT count(*) FROM events").fetchone()
        assert Path(f"{known.db}-wal").exists() and Path(f"{known.db}-shm").exists()
        yield known
    finally:
        reader.close()


def aim(known: Known, target: str, spelling: str) -> str:
    """A path for one of the ledger's files, spelled one of three ways."""
    backups = sorted((known.dir / "data" / "backups").glob("ledger-*.db"))
    assert backups, "the fixture made a backup"
    real = {
        "db": known.db,
        "wal": Path(f"{known.db}-wal"),
        "shm": Path(f"{known.db}-shm"),
        "snapshot": known.snapshot,
        "backup": backups[0],
    }[target]
    if spelling == "direct":
        return str(real)
    if spelling == "symlink":
        link = known.dir / "elsewhere" / f"link-to-{target}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(real)
        return str(link)
    (known.dir / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    return str(known.dir / "sub" / "deeper" / ".." / ".." / real.relative_to(known.dir))


def argv(command: str, known: Known, path: str) -> list[str]:
    db = ["--db", str(known.db)]
    if command == "export":
        return ["export", *db, "--what", "trades", "--out", path]
    if command == "plot":
        return ["plot", *db, path]
    if command == "snapshot":
        return ["snapshot", *db, "--snapshot", path]
    seed = known.dir / "seed-positions.json"
    seed.write_text("{}")
    return ["import", *db, str(seed), "--snapshot", path]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_aimed_at_a_ledger_file_is_refused_and_nothing_changes(
    in_ledger_dir: Known,
    command: str,
    target: str,
    spelling: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    known = in_ledger_dir
    if command in ("snapshot", "import") and target == "snapshot":
        pytest.skip("positions.json is what these commands write")
    if command == "plot":
        pytest.importorskip("matplotlib")
    path = aim(known, target, spelling)
    args = argv(command, known, path)
    before = tree(known.dir)
    capsys.readouterr()

    code = main(args)

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("ledger: error: cannot write "), err
    assert "resolves to" in err and "choose another path" in err
    assert tree(known.dir) == before


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_import_into_a_database_that_is_a_backup_is_refused(
    in_ledger_dir: Known, spelling: str, capsys: pytest.CaptureFixture[str]
) -> None:
    known = in_ledger_dir
    seed = known.dir / "seed-positions.json"
    seed.write_text("{}")
    db = aim(known, "backup", spelling)
    # the snapshot goes elsewhere, so only the database itself lands on a ledger file
    other = known.dir / "other" / "positions.json"
    before = tree(known.dir)
    capsys.readouterr()

    code = main(["import", "--db", db, "--snapshot", str(other), str(seed)])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "--db resolves to" in err and err.count("\n") == 1
    assert tree(known.dir) == before


def test_a_hard_link_to_the_database_is_refused(known: Known) -> None:
    alias = known.dir / "alias.csv"
    os.link(known.db, alias)
    with pytest.raises(OutputRefused) as refused:
        check_output(alias, ledger_files(known.db), option="--out")
    assert refused.value.option == "--out" and "ledger database" in refused.value.own


def test_folders_and_devices_are_not_outputs(known: Known) -> None:
    with pytest.raises(OutputError, match="folder"):
        check_output(known.dir, [], option="--out")
    with pytest.raises(OutputError, match="not a regular file"):
        check_output(Path(os.devnull), [], option="--out")
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()


def test_export_through_a_symlink_replaces_the_file_it_points_to(cli: RunCli, known: Known) -> None:
    real = known.dir / "exports" / "trades.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = known.dir / "trades-link.csv"
    link.symlink_to(real)
    run = cli("export", "--db", known.db, "--what", "trades", "--out", link)
    assert run.returncode == 0, run.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("position_id,") and real.read_text().count("\n") == 3
    assert sorted(p.name for p in real.parent.iterdir()) == ["trades.csv"]


def test_a_failed_write_leaves_the_target_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "trades.csv"
    target.write_text("the previous export\n")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), written_aside(target) as temp:
        temp.write_text("half of a new exp")
        raise Boom
    assert target.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trades.csv"]


# -- backups -------------------------------------------------------------------------------


def test_backup_retention_never_deletes_a_live_database_named_like_a_backup(
    cli: RunCli, known: Known
) -> None:
    folder = known.dir / "bk"
    folder.mkdir()
    live = folder / "ledger-live.db"
    for suffix in ("", "-wal", "-shm"):  # the database with whatever SQLite keeps beside it
        if Path(f"{known.db}{suffix}").exists():
            os.replace(f"{known.db}{suffix}", f"{live}{suffix}")
    config = known.dir / "settings.toml"
    config.write_text("backup_retention = 1\n")
    digest = hashlib.sha256(live.read_bytes()).hexdigest()
    for _ in range(3):
        run = cli("backup", "--db", live, "--to", folder, "--config", config)
        assert run.returncode == 0, run.stderr
    backups = sorted(p.name for p in folder.glob("ledger-2*.db"))
    assert len(backups) == 1  # retention still works on the real backups
    assert live.exists() and hashlib.sha256(live.read_bytes()).hexdigest() == digest


def test_backup_to_the_database_file_is_refused(cli: RunCli, known: Known) -> None:
    before = tree(known.dir)
    run = cli("backup", "--db", known.db, "--to", known.db)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--to resolves to the ledger database" in run.stderr
    assert tree(known.dir) == before


def test_a_refusal_comes_before_the_database_is_opened(known: Known) -> None:
    # the last connection to close after a read checkpoints and removes -wal/-shm
    with contextlib.closing(sqlite3.connect(known.db)) as conn:
        conn.execute("SELECT count(*) FROM events").fetchone()
    assert not Path(f"{known.db}-wal").exists()
    args = ["export", "--db", str(known.db), "--what", "events", "--out", str(known.db)]
    assert main(args) == 2
    assert not Path(f"{known.db}-wal").exists() and not Path(f"{known.db}-shm").exists()


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("target", TARGETS)
def test_backup_to_a_ledger_file_is_refused_and_nothing_changes(
    in_ledger_dir: Known, target: str, spelling: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`backup --to` takes a folder; one of the ledger's files given there is refused."""
    known = in_ledger_dir
    path = aim(known, target, spelling)
    before = tree(known.dir)
    capsys.readouterr()

    code = main(["backup", "--db", str(known.db), "--to", path])

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "--to resolves to" in err
    assert tree(known.dir) == before
