"""Create or upgrade the cluster schema: procrastinate's tables, then ours (numbered .sql files).

Several processes may start at once on a new database (the bot and three workers), so
the whole check-and-apply runs under one PostgreSQL advisory lock. A database that is
already current needs no DDL rights, so a GPU worker can log in with a role that may
only read and write rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from procrastinate.schema import SchemaManager

from db.migrate import Migration
from db.migrate import available_migrations as numbered_migrations
from db.models import QueueError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# An arbitrary constant shared by every process of this bot (pg_advisory_lock takes a bigint).
SCHEMA_LOCK = 0x636F67766965


def available_migrations(folder: Path | None = None) -> list[Migration]:
    """PostgreSQL's own numbered files, with the same naming rules as SQLite's."""
    return numbered_migrations(MIGRATIONS_DIR if folder is None else folder)


async def ensure_schema(conninfo: str) -> int:
    """Bring the database up to date; returns our schema version."""
    migrations = available_migrations()
    latest = migrations[-1].version
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            if not await _exists(conn, "procrastinate_jobs"):
                log.info("Creating procrastinate's tables")
                await _apply_script(conn, SchemaManager.get_schema(), "procrastinate's schema")
            current = await _version(conn)
            if current > latest:
                raise QueueError(
                    f"The database was written by a newer version of the bot (schema {current}, this code knows "
                    f"{latest}). Update this machine's copy of the bot."
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                script = migration.path.read_text(encoding="utf-8")
                script += f"\nUPDATE cogview_schema SET version = {migration.version};"
                await _apply_script(conn, script, migration.path.name)
                log.info("Applied migration %s", migration.path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
    return latest


async def _exists(conn: psycopg.AsyncConnection, table: str) -> bool:
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cursor.fetchone()
    return bool(row and row[0])


async def _version(conn: psycopg.AsyncConnection) -> int:
    if not await _exists(conn, "cogview_schema"):
        await _apply_script(
            conn, "CREATE TABLE cogview_schema (version INTEGER NOT NULL); INSERT INTO cogview_schema VALUES (0);", ""
        )
    cursor = await conn.execute("SELECT version FROM cogview_schema")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _apply_script(conn: psycopg.AsyncConnection, script: str, name: str) -> None:
    """Run a multi-statement script in one transaction; a failure leaves the database as it was."""
    try:
        async with conn.transaction():
            await conn.execute(script.encode())  # bytes: no parameter parsing of '%' in the script
    except psycopg.errors.InsufficientPrivilege as exc:
        raise QueueError(
            f"This database role may not create tables ({exc.diag.message_primary}). Start the bot (or one worker) "
            "once with the owner's DATABASE_URL so it creates them; see README, 'Add a second GPU PC'."
        ) from exc
    except psycopg.Error as exc:
        raise QueueError(f"Applying {name or 'the schema'} failed and was rolled back: {exc}") from exc
