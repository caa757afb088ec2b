"""Numbered SQL migrations, applied in order and tracked with PRAGMA user_version."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class DatabaseTooNew(RuntimeError):
    """The file was written by a newer version of the bot; opening it could corrupt it."""


class MigrationError(RuntimeError):
    """A migration failed; it was rolled back and the file is still at the previous version."""


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path


def available_migrations(folder: Path | None = None) -> list[Migration]:
    # Resolved at call time (not as a default argument) so MIGRATIONS_DIR can be pointed elsewhere.
    folder = MIGRATIONS_DIR if folder is None else folder
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise RuntimeError(f"Migration file {path.name} must be named NNN_description.sql")
        found.append(Migration(int(match.group(1)), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"Migrations must be numbered 001, 002, … without gaps; found {versions}")
    return found


def split_statements(script: str) -> list[str]:
    """Cut a SQL script into single statements (triggers, strings and comments with ';' stay whole).

    `executescript` cannot be used: it commits any open transaction first, so the version check
    and the migration could not share one BEGIN IMMEDIATE.
    """
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if _has_code(buffer):
                statements.append(buffer.strip())
            buffer = ""
    if _has_code(buffer[:-1]):
        raise RuntimeError(f"Migration script ends with an incomplete statement: {buffer[:-1].strip()[:80]!r}")
    return statements


def _has_code(sql: str) -> bool:
    lines = (line.split("--", 1)[0] for line in sql.splitlines())
    return any(line.strip(" \t;") for line in lines)


async def _user_version(conn: aiosqlite.Connection) -> int:
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    assert row is not None
    return int(row[0])


def _too_new(db_path: Path | None, current: int, latest: int) -> DatabaseTooNew:
    return DatabaseTooNew(
        f"The database {db_path or ''} was written by a newer version of the bot "
        f"(schema {current}, this code knows {latest}). Update the bot, or point DATABASE_PATH elsewhere."
    )


async def migrate(conn: aiosqlite.Connection, db_path: Path | None = None) -> int:
    """Bring the schema up to date; returns the version now in the file.

    `conn` must be in autocommit mode (isolation_level=None). Each migration runs in its own
    BEGIN IMMEDIATE transaction together with its user_version bump, and the version is read
    again inside that transaction, so several processes opening a new file at once apply each
    migration exactly once.
    """
    migrations = available_migrations()
    current = await _user_version(conn)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise _too_new(db_path, current, latest)
    pending = [m for m in migrations if m.version > current]
    backed_up = False
    for migration in pending:
        statements = split_statements(migration.path.read_text(encoding="utf-8"))
        version = current
        await conn.execute("BEGIN IMMEDIATE")
        try:
            version = await _user_version(conn)
            if version > latest:
                raise _too_new(db_path, version, latest)
            if version >= migration.version:
                await conn.execute("ROLLBACK")  # another process applied it meanwhile
                continue
            if current > 0 and db_path is not None and not backed_up:  # a fresh file needs none
                # Under the write lock: only the process that migrates backs up, and the copy is
                # exactly the version it names (nobody can commit in between).
                backup = db_path.with_name(f"{db_path.name}.v{version}.bak")
                await asyncio.to_thread(_backup, db_path, backup)
                backed_up = True
                log.info("Backed up the database to %s before migrating", backup)
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {migration.version}")
            await conn.execute("COMMIT")
        except BaseException as exc:
            await _rollback_quietly(conn)
            if isinstance(exc, sqlite3.Error):
                raise MigrationError(
                    f"Migration {migration.path.name} failed and was rolled back ({exc}); "
                    f"the database is still at schema {version}."
                ) from exc
            raise
        log.info("Applied migration %s", migration.path.name)
    return latest


async def _rollback_quietly(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # no transaction was open (BEGIN itself failed, or it was already rolled back)


def _backup(db_path: Path, target: Path) -> None:
    """Copy the committed database through a separate read connection.

    The migrating connection holds BEGIN IMMEDIATE, and SQLite's backup from a connection inside
    its own write transaction never finishes; a second reader is not blocked by that lock.
    """
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    source = sqlite3.connect(db_path)
    try:
        dest = sqlite3.connect(tmp)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    os.replace(tmp, target)
