"""Reads from a state the log vouches for: checkpoints, the verified point, the tail.

The known history (12 events) with a checkpoint every 4 events; `verify` records the point the
chain is checked to, then the log grows by two events as a bot would keep appending.
Every figure is compared with `--force`, which folds the whole log from the start on its own.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.audit.checkpoints import sidecar_path
from ledger.service import Ledger
from ledger.settings import Settings
from tests.cli.conftest import Known, RunCli

EVERY = {"POSITION_LEDGER_CHECKPOINT_EVERY_EVENTS": "4"}


def as_json(run: Any) -> Any:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def ledger(cli: RunCli, known: Known, *args: str) -> Any:
    return cli(*args, "--db", known.db, env=EVERY)


def book_of(document: dict[str, Any]) -> tuple[object, ...]:
    return (document["open"], document["closed"], document["summary"])


async def _grow(db: Path) -> None:
    async with Ledger(db, settings=Settings()) as grown:
        await grown.mark("pos_sol", Decimal(116))
        await grown.observe_balance(1001, 801)


@pytest.fixture
def verified(cli: RunCli, known: Known) -> Known:
    """verify run at seq 12 (checkpoints at 4, 8, 12), then two more events; no positions.json."""
    run = ledger(cli, known, "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "recorded seq 12 as the point the chain is verified to" in run.stdout
    anyio.run(_grow, known.db)
    known.snapshot.unlink()
    return known


def stored_checkpoints(known: Known) -> dict[int, str]:
    with sqlite3.connect(sidecar_path(known.db)) as conn:
        return dict(conn.execute("SELECT seq, hash FROM checkpoints").fetchall())


def log_hash(known: Known, seq: int) -> str:
    with sqlite3.connect(known.db) as conn:
        return str(conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()[0])


def test_verify_leaves_checkpoints_every_k_events(cli: RunCli, verified: Known) -> None:
    assert stored_checkpoints(verified) == {s: log_hash(verified, s) for s in (4, 8, 12)}


def test_stats_start_from_the_checkpoint_and_check_only_the_tail(
    cli: RunCli, verified: Known
) -> None:
    stats = as_json(ledger(cli, verified, "stats", "--json"))
    origin = stats["as_of"]["origin"]
    assert (origin["state"], origin["state_seq"], origin["folded"]) == ("checkpoint", 12, 2)
    assert (origin["checked_from"], origin["checked_to"]) == (13, 14)
    assert origin["verified"]["seq"] == 12
    full = as_json(ledger(cli, verified, "stats", "--json", "--force"))
    assert full["as_of"]["origin"] is None
    assert stats["summary"] == full["summary"] and stats["symbols"] == full["symbols"]
    assert stats["summary"]["balance"] == "1001"
    header = ledger(cli, verified, "stats").stdout.splitlines()[0]
    assert "from checkpoint at seq 12" in header and "+ 2 events folded" in header
    assert "chain checked seq 13..14 (seq 1..12 by `ledger verify`" in header


@pytest.mark.parametrize("seq", [3, 9, 13])
def test_replay_from_a_checkpoint_equals_the_full_fold(
    cli: RunCli, verified: Known, seq: int
) -> None:
    replayed = as_json(ledger(cli, verified, "replay", "--seq", str(seq), "--json"))
    full = as_json(ledger(cli, verified, "replay", "--seq", str(seq), "--json", "--force"))
    assert book_of(replayed) == book_of(full)
    origin = replayed["as_of"]["origin"]
    below = max((k for k in (4, 8, 12) if k <= seq), default=0)
    assert origin["state_seq"] == below and origin["folded"] == seq - below


@pytest.mark.parametrize(("step", "checkpoint"), [("mark_btc", 4), ("open_eth", 8)])
def test_replay_as_of_a_time_equals_the_full_fold(
    cli: RunCli, verified: Known, step: str, checkpoint: int
) -> None:
    moment = verified.times[step].isoformat()
    replayed = as_json(ledger(cli, verified, "replay", "--as-of", moment, "--json"))
    full = as_json(ledger(cli, verified, "replay", "--as-of", moment, "--json", "--force"))
    assert book_of(replayed) == book_of(full)
    assert replayed["as_of"]["seq"] == verified.seqs[step]
    # the latest checkpoint whose events all occurred by then
    assert replayed["as_of"]["origin"]["state_seq"] == checkpoint


def test_a_row_altered_after_the_verified_point_fails_every_read(
    cli: RunCli, verified: Known
) -> None:
    with sqlite3.connect(verified.db) as conn:
        conn.execute(
            "UPDATE events SET body = CAST(replace(body, '116', '117') AS BLOB) WHERE seq = 13"
        )
    for args in (["stats"], ["positions"], ["replay", "--seq", "5"], ["history", "pos_sol"]):
        run = ledger(cli, verified, *args)
        assert run.returncode != 0, args
        assert "seq 13" in run.stderr, (args, run.stderr)


def test_a_checkpoint_not_matching_the_log_is_not_used_and_is_rebuilt(
    cli: RunCli, verified: Known
) -> None:
    with sqlite3.connect(sidecar_path(verified.db)) as conn:
        conn.execute("UPDATE checkpoints SET hash = ? WHERE seq = 8", ("f" * 64,))
    run = ledger(cli, verified, "replay", "--seq", "10", "--json")
    replayed = as_json(run)
    assert replayed["as_of"]["origin"]["state_seq"] == 4
    assert "checkpoint at seq 8 does not match the log's hash there" in run.stderr
    full = as_json(ledger(cli, verified, "replay", "--seq", "10", "--json", "--force"))
    assert book_of(replayed) == book_of(full)
    assert stored_checkpoints(verified)[8] == log_hash(verified, 8)  # rebuilt on the way


def test_verify_rewrites_a_checkpoint_edited_to_keep_its_seq_and_hash(
    cli: RunCli, verified: Known
) -> None:
    sidecar = sidecar_path(verified.db)
    with sqlite3.connect(sidecar) as conn:
        before = conn.execute("SELECT book FROM checkpoints WHERE seq = 8").fetchone()[0]
        conn.execute("UPDATE checkpoints SET book = ? WHERE seq = 8", (b"forged",))
    ledger(cli, verified, "verify")
    with sqlite3.connect(sidecar) as conn:
        after = conn.execute("SELECT book FROM checkpoints WHERE seq = 8").fetchone()[0]
    assert after != b"forged"
    assert (
        zlib.decompress(after).split(b'"last_saved"')[0]
        == zlib.decompress(before).split(b'"last_saved"')[0]
    )


def test_a_damaged_checkpoint_is_not_used(cli: RunCli, verified: Known) -> None:
    with sqlite3.connect(sidecar_path(verified.db)) as conn:
        book = zlib.decompress(
            conn.execute("SELECT book FROM checkpoints WHERE seq = 12").fetchone()[0]
        )
        edited = book.replace(b"SOL/USDT:USDT", b"XRP/USDT:USDT", 1)
        assert edited != book
        conn.execute("UPDATE checkpoints SET book = ? WHERE seq = 12", (zlib.compress(edited),))
    run = ledger(cli, verified, "stats", "--json")
    stats = as_json(run)
    assert stats["as_of"]["origin"]["state_seq"] == 8
    assert "checkpoint at seq 12" in run.stderr
    full = as_json(ledger(cli, verified, "stats", "--json", "--force"))
    assert stats["summary"] == full["summary"]


def test_without_verify_the_whole_chain_is_checked_from_positions_json(
    cli: RunCli, known: Known
) -> None:
    stats = as_json(ledger(cli, known, "stats", "--json"))
    origin = stats["as_of"]["origin"]
    assert (origin["state"], origin["state_seq"]) == ("positions.json", known.head_seq)
    assert (origin["checked_from"], origin["checked_to"], origin["verified"]) == (1, 12, None)
    header = ledger(cli, known, "stats").stdout.splitlines()[0]
    assert "no `ledger verify` recorded: the whole chain" in header


def test_history_and_watch_say_what_they_checked(cli: RunCli, verified: Known) -> None:
    history = ledger(cli, verified, "history", "pos_sol")
    assert history.returncode == 0, history.stderr
    assert "chain checked seq 13..14 (seq 1..12 by `ledger verify`" in history.stdout
    watch = ledger(cli, verified, "watch", "--once")
    assert watch.returncode == 0, watch.stderr
    assert "started from checkpoint at seq 12" in " ".join(watch.stdout.split())


def test_reads_work_where_the_checkpoints_cannot_be_written(
    cli: RunCli, known: Known, tmp_path: Path
) -> None:
    blocker = sidecar_path(known.db)
    blocker.mkdir()  # a folder where the sidecar file would go: it cannot be opened
    stats = as_json(ledger(cli, known, "stats", "--json"))
    assert stats["as_of"]["seq"] == known.head_seq
