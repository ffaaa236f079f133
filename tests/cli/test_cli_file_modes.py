"""Files the ledger creates are readable by their owner only (0600), whatever the umask.

Each file is created by a child process started with umask 000, so a file left to the umask
would come out 0666 (or 0644 under the usual 022) and fail.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.cli.conftest import child_env

LEDGER_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import anyio
    from ledger.service import Ledger
    from ledger.settings import Settings

    folder = Path(sys.argv[1])

    async def main() -> None:
        async with Ledger(folder / "ledger.db", settings=Settings()) as ledger:
            await ledger.open_position(
                "SOL/USDT:USDT", "buy", entry_price=100, leverage=5, notional=500,
                position_id="pos_1",
            )
            await ledger.close_position("pos_1", price=110)
            await ledger.write_snapshot()
            modes = {}
            for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "positions.json"):
                modes[name] = oct(os.stat(folder / name).st_mode & 0o777)
            print(json.dumps(modes))

    anyio.run(main)
    """
)


def run_umask0(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120, umask=0
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_everything_the_ledger_creates_is_0600_under_umask_000(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    run = run_umask0([sys.executable, "-c", LEDGER_CHILD, str(folder)], tmp_path)
    assert run.returncode == 0, run.stderr
    # the database, its -wal and -shm while the ledger has them open, and positions.json
    assert json.loads(run.stdout) == dict.fromkeys(
        ("ledger.db", "ledger.db-wal", "ledger.db-shm", "positions.json"), "0o600"
    )

    def ledger(*args: str | Path) -> None:
        cli = [sys.executable, "-m", "ledger.cli", "--db", str(folder / "ledger.db")]
        done = run_umask0([*cli, *map(str, args)], tmp_path)
        assert done.returncode == 0, done.stderr

    ledger("export", "--what", "events", "--out", tmp_path / "events.csv")
    ledger("export", "--what", "trades", "--format", "jsonl", "--out", tmp_path / "t.jsonl")
    ledger("backup", "--to", tmp_path / "backups")
    ledger("snapshot", "--snapshot", tmp_path / "snap" / "positions.json")
    created = [
        tmp_path / "events.csv",
        tmp_path / "t.jsonl",
        *sorted((tmp_path / "backups").iterdir()),
        tmp_path / "snap" / "positions.json",
    ]
    if _has_matplotlib():
        ledger("plot", tmp_path / "equity.png")
        created.append(tmp_path / "equity.png")
    assert len(list((tmp_path / "backups").iterdir())) == 1  # one file, no -wal/-shm
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in created} == {
        str(p.relative_to(tmp_path)): "0o600" for p in created
    }


def test_an_existing_database_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    """Sharing with an auditor is the owner's chmod, and the ledger does not undo it."""
    folder = tmp_path / "data"
    assert run_umask0([sys.executable, "-c", LEDGER_CHILD, str(folder)], tmp_path).returncode == 0
    (folder / "ledger.db").chmod(0o640)
    cli = [sys.executable, "-m", "ledger.cli", "--db", str(folder / "ledger.db"), "snapshot"]
    run = run_umask0(cli, tmp_path)
    assert run.returncode == 0, run.stderr
    assert mode(folder / "ledger.db") == 0o640


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True
