"""The jobs table both backends create matches the one declaration in db/columns.py."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from db.columns import JOB_COLUMNS, POSTGRES_ONLY, SQLITE_ONLY, Column
from db.sqlite_queue import SqliteJobQueue

SQLITE_TYPES = {"int": "INTEGER", "text": "TEXT", "real": "REAL", "bool": "INTEGER"}
POSTGRES_TYPES = {"int": {"integer", "bigint"}, "text": {"text"}, "real": {"double precision"}, "bool": {"boolean"}}


def _declared(extra: tuple[Column, ...]) -> dict[str, Column]:
    return {column.name: column for column in (*JOB_COLUMNS, *extra)}


async def test_sqlite_jobs_table_matches_the_declaration(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with SqliteJobQueue(path):
        pass
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("PRAGMA table_info(jobs)").fetchall()
    created = {name: (kind, bool(notnull) or bool(pk)) for _, name, kind, notnull, _, pk in rows}
    declared = _declared(SQLITE_ONLY)
    assert set(created) == set(declared)
    for name, column in declared.items():
        assert created[name] == (SQLITE_TYPES[column.kind], not column.nullable), name


def test_postgres_jobs_table_matches_the_declaration(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 'jobs'"
        ).fetchall()
    created = {name: (kind, nullable == "NO") for name, kind, nullable in rows}
    declared = _declared(POSTGRES_ONLY)
    assert set(created) == set(declared)
    for name, column in declared.items():
        kind, not_null = created[name]
        assert kind in POSTGRES_TYPES[column.kind] and not_null == (not column.nullable), name
