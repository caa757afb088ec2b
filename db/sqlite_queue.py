"""The embedded job queue: one SQLite file, WAL, one writer connection per process.

The queue's rules are in db.core; this module holds what is SQLite's own. Why it is shaped like this:
- every write is a short `BEGIN IMMEDIATE` transaction, so a read-then-write never
  fails with SQLITE_BUSY halfway, and `synchronous=FULL` so an acknowledged job
  survives a power cut;
- one aiosqlite connection serialised by an asyncio lock: coroutines never
  interleave statements of two transactions;
- a state change and the channel post announcing it are written together (outbox),
  so a crash can neither lose a result nor post it twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from db import base, clock, core, enqueue, fairness
from db.inputs import FolderInputs
from db.migrate import migrate
from db.models import (
    RESUMED_RESTART,
    RESUMED_WORKER_LOST,
    Enqueued,
    EnqueueLimits,
    Heartbeat,
    Job,
    QueueError,
    Requester,
    StorageFull,
)
from db.results import FolderResults, ResultStore
from db.rows import job_from_row
from db.workers import WorkerInfo
from jobrequest import JobRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SQLITE = (3, 35, 0)

# A job entering the queue takes the next turn (db.fairness); its progress is cleared.
_ENTER_QUEUE = (
    "UPDATE jobs SET progress_step = NULL, queue_seq = (SELECT coalesce(max(queue_seq), 0) + 1 FROM jobs) WHERE id = ?"
)
# Take the first queued job in claim order, unless paused, in one statement.
_CLAIM_SQL = (
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, lease_until = ?,"
    " started_at = ?, served_seq = (SELECT coalesce(max(served_seq), 0) + 1 FROM jobs), progress_step = 0,"
    " progress_total = steps, cancel_requested = 0"
    " WHERE id = (SELECT j.id FROM jobs j WHERE j.state = 'queued'"
    f" ORDER BY {fairness.CLAIM_ORDER.format(turn='queue_seq')} LIMIT 1)"
    " AND NOT EXISTS (SELECT 1 FROM kv WHERE key = 'paused' AND value = '1')"
    " RETURNING *"
)


class _Conn:
    """db.base.Conn on the aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await (await self.conn.execute(sql, params)).fetchone()

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.conn.execute_fetchall(sql, params))

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return (await self.conn.execute(sql, params)).rowcount


class SqliteJobQueue(core.QueueCore):
    """`db.interface.JobQueue` on a local SQLite file.

    `results`: where result images are kept (default: an `outputs` folder next to the file); start images
    are kept in an `inputs` folder next to the file."""

    def __init__(self, path: str | Path, *, results: ResultStore | None = None, busy_timeout_ms: int = 10_000) -> None:
        super().__init__()
        self.path = Path(path)
        self.results = results if results is not None else FolderResults(self.path.parent / "outputs")
        self.inputs = FolderInputs(self.path.parent / "inputs")
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # --- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise QueueError(
                f"The queue needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer (RETURNING); "
                f"this Python is linked with {sqlite3.sqlite_version}."
            )
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:  # whatever fails, close it: aiosqlite's thread would otherwise keep the process alive
            conn.row_factory = aiosqlite.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await self._enable_wal(conn)
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await migrate(conn, self.path)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise QueueError(f"Could not open the queue database {self.path}: {exc}.") from exc
            raise
        self._conn = conn

    async def _enable_wal(self, conn: aiosqlite.Connection) -> None:
        """Switch the file to WAL. Several processes converting a new file at once can get
        "database is locked" straight away (this pragma does not always wait for busy_timeout)."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                row = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(random.uniform(0.005, 0.05))
        mode = row[0] if row else None
        if mode != "wal":
            log.warning(
                "SQLite kept journal_mode=%s for %s (WAL unsupported here, e.g. a network filesystem?); "
                "the queue stays durable but other processes will see 'database is locked' more often.",
                mode,
                self.path,
            )

    async def close(self) -> None:
        if self._conn is not None:
            async with self._lock:
                await self._conn.close()
                self._conn = None

    async def list_workers(self) -> list[WorkerInfo]:
        """One machine: the bot's own engine does the work, so there are no remote workers."""
        return []

    @property
    def _db(self) -> aiosqlite.Connection:
        return base.opened(self._conn)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[_Conn]:
        """One short write transaction; retried with jitter if another process holds the lock.

        Whatever ends the block early (an error, or the caller being cancelled while a statement
        was queued on aiosqlite's thread, which still runs it) rolls back, so the connection is
        never left inside a transaction that the next BEGIN would trip over.
        """
        async with self._lock:
            conn = self._db
            await self._begin(conn)
            try:
                yield _Conn(conn)
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback_quietly(conn)
                if _disk_full(exc):  # say so plainly, to the user and in the log, instead of a generic error
                    log.error("The disk holding the queue database %s is full: nothing can be saved", self.path)
                    raise StorageFull from exc
                raise
        self._wake_local()

    async def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` as one write transaction on the connection's own thread: one trip there and back.

        The hot paths (enqueue) use this instead of ``_tx``: under a burst of hundreds of requests
        every await inside a transaction waits a full turn of the busy event loop while the lock is held,
        so a transaction of eight statements took eight turns. Here the whole transaction (BEGIN IMMEDIATE
        to COMMIT, or ROLLBACK on any error) runs in one call, and being cancelled cannot cut it in half.
        """
        async with self._lock:
            conn = self._db
            try:
                result = await conn._execute(_run_transaction, conn, body, self._busy_timeout_ms / 1000)
            except Exception as exc:
                if _disk_full(exc):
                    log.error("The disk holding the queue database %s is full: nothing can be saved", self.path)
                    raise StorageFull from exc
                raise
        self._wake_local()
        return result

    async def _begin(self, conn: aiosqlite.Connection) -> None:
        for attempt in range(8):
            try:
                await conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == 7:
                    raise
                await asyncio.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
            except BaseException:
                # Cancelled while BEGIN was queued on the worker thread: it still runs, so undo it.
                await _rollback_quietly(conn)
                raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_Conn]:
        async with self._lock:
            yield _Conn(self._db)

    # --- backend hooks of db.core ------------------------------------------------------------------
    async def _enter_queue(self, conn: base.Conn, job_id: int) -> None:
        await conn.run(_ENTER_QUEUE, (job_id,))

    async def _progress_done(self, conn: base.Conn, job_id: int) -> None:
        await conn.run("UPDATE jobs SET progress_step = progress_total WHERE id = ?", (job_id,))

    # --- recovery ----------------------------------------------------------------------------------
    async def recover_interrupted(self) -> tuple[list[int], list[int]]:
        """At start-up every running job was left by this bot's previous process: it restarted."""
        return await self._requeue_where("", (), RESUMED_RESTART)

    async def requeue_expired_leases(self) -> tuple[list[int], list[int]]:
        return await self._requeue_where(" AND lease_until < ?", (clock.now(),), RESUMED_WORKER_LOST)

    async def _requeue_where(self, where: str, params: tuple[Any, ...], reason: str) -> tuple[list[int], list[int]]:
        async with self._tx() as conn:
            rows = await conn.all(
                f"SELECT id, attempts, max_attempts, cancel_requested FROM jobs WHERE state = 'running'{where} "
                "ORDER BY id",
                params,
            )
            requeued, failed = await self._settle_interrupted(conn, rows, reason)
        if requeued or failed:
            log.warning("Recovered interrupted jobs: requeued %s, failed %s", requeued, failed)
        return requeued, failed

    # --- producers ---------------------------------------------------------------------------------
    async def enqueue(
        self,
        requester: Requester,
        request: JobRequest,
        limits: EnqueueLimits | None = None,
        *,
        kind: str = "imagine",
        parent_job_id: int | None = None,
    ) -> Enqueued:
        checked = enqueue.check_enqueue(requester, request, limits, kind, parent_job_id)
        at = clock.now()
        position_sql = fairness.POSITION_SQL.format(turn=self.TURN)

        def insert(db: sqlite3.Connection) -> Enqueued:
            facts = db.execute(
                enqueue.ENQUEUE_FACTS_SQL, enqueue.enqueue_facts_params(requester, parent_job_id, checked, at)
            ).fetchone()
            fair_round = enqueue.plan_enqueue(facts, checked, parent_job_id, at, request.count)
            values = enqueue.insert_values(requester, request, kind, parent_job_id, at, fair_round)
            (job_id,) = db.execute(enqueue.INSERT_JOB_SQL, values).fetchone()
            db.execute(_ENTER_QUEUE, (job_id,))
            (position,) = db.execute(position_sql, (job_id,)).fetchone()
            return Enqueued(job_id=job_id, position=int(position), paused=bool(facts["paused"]))

        return await self._transaction(insert)

    # --- consumers ---------------------------------------------------------------------------------
    async def claim_next(self, worker_id: str, lease_s: float) -> Job | None:
        at = clock.now()
        async with self._tx() as conn:
            row = await conn.one(_CLAIM_SQL, (worker_id, at + lease_s, at))
            return job_from_row(row) if row else None

    async def _beat(
        self, job_id: int, worker_id: str, lease_s: float, step: int | None, total: int | None, preview: bytes | None
    ) -> Heartbeat:
        async with self._tx() as conn:
            row = await conn.one(
                "UPDATE jobs SET lease_until = ?, progress_step = coalesce(?, progress_step), "
                "progress_total = coalesce(?, progress_total) "
                "WHERE id = ? AND state = 'running' AND worker_id = ? RETURNING cancel_requested",
                (clock.now() + lease_s, step, total, job_id, worker_id),
            )
            if row is not None and preview is not None:
                await self._save_preview(conn, job_id, preview)
        if row is None:
            return Heartbeat(alive=False, cancel_requested=False)
        return Heartbeat(alive=True, cancel_requested=bool(row["cancel_requested"]))


def _run_transaction(conn: aiosqlite.Connection, body: Callable[[sqlite3.Connection], T], busy_s: float) -> T:
    """On the connection's thread: BEGIN IMMEDIATE (waiting out another process's lock), body, COMMIT."""
    db = conn._conn  # the sqlite3 connection; only ever touched from aiosqlite's own thread, as here
    deadline = time.monotonic() + busy_s
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))
    try:
        result = body(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def _disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL ("database or disk is full"), whether the INSERT or the COMMIT ran out of space."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    )


async def _rollback_quietly(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # no transaction was open: BEGIN failed, or SQLite already rolled back after an error
