"""Shared fixtures: an anyio backend, a fresh ledger directory per test, and PostgreSQL.

A throwaway PostgreSQL server is started for the session the first time a test asks for one
(and stopped at the end, whatever the tests did); POSITION_LEDGER_TEST_PG_URL names an existing
server instead. Each test gets a schema of its own in it: a fresh, empty ledger.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.pg_server import Server, running_server

PG_URL_ENV = "POSITION_LEDGER_TEST_PG_URL"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server | None]:
    """The session's server, or None when POSITION_LEDGER_TEST_PG_URL names one already."""
    if os.environ.get(PG_URL_ENV):
        yield None
        return
    with running_server() as server:
        os.environ[PG_URL_ENV] = server.url()
        try:
            yield server
        finally:
            os.environ.pop(PG_URL_ENV, None)


@pytest.fixture(scope="session")
def pg_base_url(pg_server: Server | None) -> str:
    return os.environ[PG_URL_ENV]


def with_schema(url: str, schema: str) -> str:
    """The URL with search_path set to schema (where the store keeps its table)."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A URL to an empty ledger of this test's own (a fresh schema), dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(pg_base_url, schema)
    finally:
        with psycopg.connect(pg_base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
