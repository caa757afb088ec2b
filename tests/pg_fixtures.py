"""pytest fixtures for a PostgreSQL server shared by the session; each test gets a fresh database.

Imported into tests/conftest.py. Without PostgreSQL (or the cluster extra) the tests that
use them skip, saying how to install it; with CI_REQUIRE_POSTGRES=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator

import pytest

from tests.pgserver import PgServer, admin_sql, missing_reason

TEMPLATE = "cogview_template"
_names = itertools.count(1)


def require_postgres() -> None:
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"CI requires the PostgreSQL tests to run, but {reason}")
    pytest.skip(reason)


def require_cluster_extra() -> None:
    """At the top of a test module that imports the PostgreSQL code: skip it (fail in CI) without the extra."""
    try:
        import procrastinate  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        reason = f"the cluster extra is not installed ({exc.name} is missing): pip install -e '.[test]'"
        if os.environ.get("CI_REQUIRE_POSTGRES") == "1":
            raise RuntimeError(f"CI requires the PostgreSQL tests to run, but {reason}") from exc
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server on 127.0.0.1 for the whole run (started on first use)."""
    require_postgres()
    server = PgServer().init().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """A database with the cluster schema applied once; tests copy it (CREATE DATABASE … TEMPLATE)."""
    from db.postgres.schema import ensure_schema

    admin_sql(pg_server.url(), f"CREATE DATABASE {TEMPLATE}")
    asyncio.run(ensure_schema(pg_server.url(TEMPLATE)))
    return TEMPLATE


@pytest.fixture
def pg_url(pg_server: PgServer, pg_template: str) -> str:
    """A fresh database with the schema, for this test only."""
    name = f"test_{os.getpid()}_{next(_names)}"
    admin_sql(pg_server.url(), f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    return pg_server.url(name)
