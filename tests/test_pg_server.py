"""The throwaway PostgreSQL server the tests start: reachable, not root, local only."""

from __future__ import annotations

import os

import psycopg


def test_the_session_server_answers_runs_unprivileged_and_listens_locally(
    pg_base_url: str,
) -> None:
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
        data = conn.execute("SHOW data_directory").fetchone()
    assert version is not None and int(version[0]) >= 150000
    assert listen == ("127.0.0.1",)
    assert data is not None
    # the server refuses to run as root; on a root CI machine it runs as an unprivileged user
    assert os.stat(data[0]).st_uid != 0 or os.geteuid() != 0
