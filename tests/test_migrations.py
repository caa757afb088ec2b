"""Schema migrations on real SQLite files: fresh, repeated, too new, failing, concurrent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

import db.migrate
from db.migrate import DatabaseTooNew, MigrationError, available_migrations, split_statements
from db.models import QueueError, Requester
from db.sqlite_queue import SqliteJobQueue
from jobrequest import JobRequest

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "queue_crash_child.py"
REAL_MIGRATIONS = REPO / "db" / "migrations"
TABLES = {"jobs", "notices", "kv", "audit"}


def _user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return {row[0] for row in rows}


def _job_count(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def _backups(folder: Path) -> list[Path]:
    return list(folder.glob("*.bak"))


async def _enqueue_one(queue: SqliteJobQueue) -> int:
    enqueued = await queue.enqueue(
        Requester(user_id=1, channel_id=2),
        JobRequest(prompt="a lighthouse", width=512, height=512, steps=4, guidance=2),
    )
    return enqueued.job_id


@pytest.fixture
def migrations_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the real migrations that a test may add files to."""
    folder = tmp_path / "migrations"
    shutil.copytree(REAL_MIGRATIONS, folder)
    monkeypatch.setattr(db.migrate, "MIGRATIONS_DIR", folder)
    return folder


async def test_fresh_file_is_migrated_with_durable_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "queue.db"  # the folder does not exist yet either
    queue = SqliteJobQueue(path)
    await queue.open()
    try:
        conn = queue._db
        pragmas = {}
        for name in ("user_version", "journal_mode", "foreign_keys", "synchronous", "busy_timeout"):
            row = await (await conn.execute(f"PRAGMA {name}")).fetchone()
            assert row is not None
            pragmas[name] = row[0]
    finally:
        await queue.close()
    n_files = len(list(REAL_MIGRATIONS.glob("*.sql")))
    assert n_files >= 1
    assert pragmas == {
        "user_version": n_files,
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 2,  # FULL
        "busy_timeout": 10_000,
    }
    assert TABLES <= _tables(path)
    assert _user_version(path) == n_files
    with closing(sqlite3.connect(path)) as conn:  # WAL is a property of the file, not just of that connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not _backups(path.parent), "a brand new file needs no backup"


async def test_second_start_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SqliteJobQueue(path) as queue:
        job_id = await _enqueue_one(queue)
    version = _user_version(path)
    for _ in range(2):
        async with SqliteJobQueue(path) as queue:
            job = await queue.get_job(job_id)
            assert job is not None and job.request.prompt == "a lighthouse"
    assert _user_version(path) == version == len(available_migrations())
    assert _job_count(path) == 1
    assert not _backups(tmp_path), "nothing was pending, so nothing was backed up"


async def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SqliteJobQueue(path) as queue:
        await _enqueue_one(queue)
    latest = len(available_migrations())
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {latest + 5}")
    queue = SqliteJobQueue(path)
    with pytest.raises(DatabaseTooNew, match=r"newer version of the bot") as info:
        await queue.open()
    message = str(info.value)
    assert f"schema {latest + 5}" in message and f"knows {latest}" in message and str(path) in message
    assert queue._conn is None, "a refused database must not be left open"
    assert _user_version(path) == latest + 5
    assert _job_count(path) == 1


async def test_failing_migration_rolls_back_and_keeps_version(tmp_path: Path, migrations_dir: Path) -> None:
    path = tmp_path / "queue.db"
    async with SqliteJobQueue(path) as queue:
        job_id = await _enqueue_one(queue)
    before = _user_version(path)
    assert before == len(available_migrations())
    bad = migrations_dir / f"{before + 1:03d}_broken.sql"
    bad.write_text(
        "CREATE TABLE extra (a INTEGER);\n"
        "INSERT INTO kv (key, value, updated_at) VALUES ('half', 'done', 0);\n"
        "UPDATE jobs SET prompt = 'rewritten';\n"
        "SELECT * FROM no_such_table;  -- fails here, after three statements changed things\n"
    )
    queue = SqliteJobQueue(path)
    with pytest.raises(MigrationError, match=rf"{bad.name} failed and was rolled back.*no_such_table") as info:
        await queue.open()
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert f"still at schema {before}" in str(info.value)
    assert _user_version(path) == before
    assert "extra" not in _tables(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 0
        assert conn.execute("SELECT prompt FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "a lighthouse"
    # the pre-migration backup exists and is a readable copy at the old version
    backup = path.with_name(f"{path.name}.v{before}.bak")
    assert backup.exists() and _user_version(backup) == before and _job_count(backup) == 1

    # fix the migration: the next start applies it
    bad.write_text("CREATE TABLE extra (a INTEGER);\nINSERT INTO extra VALUES (1); -- a ; in a comment\n")
    async with SqliteJobQueue(path) as queue:
        assert await queue.get_job(job_id) is not None
    assert _user_version(path) == before + 1
    assert "extra" in _tables(path)


async def test_failing_first_migration_leaves_empty_file_at_zero(tmp_path: Path, migrations_dir: Path) -> None:
    (migrations_dir / "001_jobs.sql").write_text("CREATE TABLE jobs (id INTEGER);\nCREATE TABLE jobs (id INTEGER);\n")
    path = tmp_path / "queue.db"
    with pytest.raises(MigrationError, match=r"001_jobs\.sql"):
        await SqliteJobQueue(path).open()
    assert _user_version(path) == 0
    assert _tables(path) == set()


async def test_unusable_file_is_refused_without_leaking_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"this is not a database, just text " * 200)
    threads_before = threading.active_count()
    queue = SqliteJobQueue(path)
    with pytest.raises(QueueError, match=r"Could not open the queue database .*queue\.db: file is not a database"):
        await queue.open()
    assert queue._conn is None
    # aiosqlite's worker thread is not a daemon: a leaked connection keeps the process from exiting
    for _ in range(100):
        if threading.active_count() <= threads_before:
            break
        await asyncio.sleep(0.01)
    assert threading.active_count() <= threads_before


def test_migration_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "003_c.sql").write_text("SELECT 1;")
    with pytest.raises(RuntimeError, match="without gaps"):
        available_migrations(tmp_path)
    (tmp_path / "002-Bad Name.sql").write_text("SELECT 1;")
    with pytest.raises(RuntimeError, match=r"NNN_description\.sql"):
        available_migrations(tmp_path)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("", []),
        ("-- just a comment\n", []),
        ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
        ("SELECT 1", ["SELECT 1;"]),
        ("INSERT INTO t VALUES ('a;b'); -- x;y\n", ["INSERT INTO t VALUES ('a;b');"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON x BEGIN DELETE FROM y; DELETE FROM z; END;\nSELECT 3;",
            ["CREATE TRIGGER t AFTER INSERT ON x BEGIN DELETE FROM y; DELETE FROM z; END;", "SELECT 3;"],
        ),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert split_statements(script) == expected


def test_real_migrations_split_into_runnable_statements() -> None:
    conn = sqlite3.connect(":memory:")
    for migration in available_migrations():
        for statement in split_statements(migration.path.read_text()):
            conn.execute(statement)  # one statement each, or sqlite3 would refuse
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= TABLES


def test_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Four processes start on a file that does not exist yet, at the same instant."""
    path = tmp_path / "race.db"
    env = {**os.environ, "QUEUE_CHILD_START_AT": str(time.time() + 1.5)}
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(path), "enqueue", "1", "3", str(100 + i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    ids = [job_id for out, _ in outputs for job_id, _ in json.loads(out)]
    assert len(ids) == len(set(ids)) == 12
    assert _user_version(path) == len(available_migrations())
    assert _job_count(path) == 12


def _write_db_before_image_input(path: Path, migrations_dir: Path) -> None:
    """A queue file as the bot before issue 13 left it: one job, the migrations before 004 only."""
    earlier = [m for m in sorted(migrations_dir.glob("*.sql")) if int(m.name.split("_")[0]) < 4]
    with closing(sqlite3.connect(path)) as conn:
        for migration in earlier:
            conn.executescript(migration.read_text(encoding="utf-8"))
        conn.execute(
            "INSERT INTO jobs (kind, user_id, user_name, channel_id, prompt, width, height, steps, guidance, count, "
            "created_at) VALUES ('imagine', 1, 'ana', 2, 'a lighthouse', 512, 512, 4, 2.0, 1, 0)"
        )
        conn.execute(f"PRAGMA user_version = {len(earlier)}")
        conn.commit()


async def test_jobs_queued_before_image_input_read_as_text_to_image(tmp_path: Path, migrations_dir: Path) -> None:
    path = tmp_path / "queue.db"
    _write_db_before_image_input(path, migrations_dir)
    async with SqliteJobQueue(path) as queue:
        job = await queue.get_job(1)
    assert job is not None
    assert (job.request.start_image, job.request.strength, job.request.upscale) == (None, 1.0, 0)
