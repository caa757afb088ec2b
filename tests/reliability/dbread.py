"""Read the bot's SQLite file from outside the bot, without writing to it.

The reliability tests time their kills and check their invariants on what the
database really holds, the way an operator would look at it, so they open the file
read-only (``mode=ro``) and never go through the queue's own code.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

TABLES = ("jobs", "notices", "kv", "audit")


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection (WAL readers still need the -shm file; SQLite creates it if missing)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM sqlite_master").fetchall()
    except sqlite3.OperationalError:
        # A cleanly closed WAL database has no -shm: read-only opening needs it, so open normally and only read.
        conn = sqlite3.connect(path, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with closing(connect_ro(path)) as conn:
        return [dict(row) for row in conn.execute(sql, params).fetchall()]


def jobs(path: Path) -> list[dict[str, Any]]:
    return rows(path, "SELECT * FROM jobs ORDER BY id")


def notices(path: Path) -> list[dict[str, Any]]:
    return rows(path, "SELECT * FROM notices ORDER BY id")


def dump(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table the bot keeps (jobs, outbox, runtime state, audit), for before/after diffs."""
    with closing(connect_ro(path)) as conn:
        return {table: [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")] for table in TABLES}
