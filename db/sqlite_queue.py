"""The embedded job queue: one SQLite file, WAL, one writer connection per process.

Why it is shaped like this (see shared notes on durable queues):
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
import json
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite

from db.fairness import fair_order
from db.migrate import migrate
from db.models import (
    AuditEntry,
    CancelOutcome,
    CooldownActive,
    Enqueued,
    EnqueueLimits,
    Heartbeat,
    InvalidJob,
    Job,
    JobNotFound,
    JobRequest,
    JobState,
    NotAllowed,
    Notice,
    NoticeKind,
    QueueError,
    QueueFull,
    QueueStats,
    Requester,
    StorageFull,
    UserQueueFull,
)
from db.rows import ADMIN_CANCEL, CRASH_ERROR, job_from_row, parse_states

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SQLITE = (3, 35, 0)

# Fair claim order in SQL, for the per-write paths (enqueue, claim). It must agree with
# db.fairness.fair_order, which peek_next/active_jobs use and the tests compare against:
# users ordered by (last serve number, 0 if never served; then their oldest queued id),
# one job per user per round, each user's jobs oldest first.
_QUEUED_USERS = (
    "queued_users AS ("
    " SELECT user_id, count(*) AS n, min(id) AS first,"
    " coalesce((SELECT max(s.served_seq) FROM jobs s WHERE s.user_id = q.user_id), 0) AS seq"
    " FROM jobs q WHERE q.state = 'queued' GROUP BY q.user_id)"
)
# Place of a queued job: its round r is its rank among its user's queued jobs; before it come
# min(n, r - 1) jobs of every user, and the round-r job of each user ahead in the rotation.
# One pass over the queued users (an index scan), instead of loading every queued row into Python.
_POSITION_SQL = (
    f"WITH {_QUEUED_USERS}, me AS MATERIALIZED ("
    " SELECT j.user_id, u.seq, u.first,"
    " (SELECT count(*) FROM jobs x WHERE x.state = 'queued' AND x.user_id = j.user_id AND x.id <= j.id) AS r"
    " FROM jobs j JOIN queued_users u ON u.user_id = j.user_id WHERE j.id = ? AND j.state = 'queued')"
    " SELECT 1 + sum(min(u.n, me.r - 1))"
    " + sum(u.user_id <> me.user_id AND u.n >= me.r AND (u.seq < me.seq OR (u.seq = me.seq AND u.first < me.first)))"
    " AS position FROM me, queued_users u GROUP BY me.user_id"
)
# Take the first job of the user whose turn it is, unless paused, in one statement.
_INSERT_JOB = (
    "INSERT INTO jobs (kind, parent_job_id, user_id, user_name, guild_id, channel_id, interaction_id, prompt, "
    "negative_prompt, width, height, steps, guidance, seed, count, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_CLAIM_SQL = (
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, lease_until = ?,"
    " started_at = ?, served_seq = (SELECT coalesce(max(served_seq), 0) + 1 FROM jobs), progress_step = 0,"
    " progress_total = steps, cancel_requested = 0"
    f" WHERE id = (WITH {_QUEUED_USERS} SELECT first FROM queued_users ORDER BY seq, first LIMIT 1)"
    " AND state = 'queued' AND NOT EXISTS (SELECT 1 FROM kv WHERE key = 'paused' AND value = '1')"
    " RETURNING *"
)


def _now() -> float:
    return time.time()


class SqliteJobQueue:
    """`db.interface.JobQueue` on a local SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise QueueError(
                f"The queue needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer (RETURNING, MATERIALIZED); "
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

    async def __aenter__(self) -> SqliteJobQueue:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise QueueError("The queue database is not open.")
        return self._conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One short write transaction; retried with jitter if another process holds the lock.

        Whatever ends the block early (an error, or the caller being cancelled while a statement
        was queued on aiosqlite's thread, which still runs it) rolls back, so the connection is
        never left inside a transaction that the next BEGIN would trip over.
        """
        async with self._lock:
            conn = self._db
            await self._begin(conn)
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback_quietly(conn)
                if _disk_full(exc):  # say so plainly, to the user and in the log, instead of a generic error
                    log.error("The disk holding the queue database %s is full: nothing can be saved", self.path)
                    raise StorageFull from exc
                raise
        self._notify()

    async def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` as one write transaction on the connection's own thread: one trip there and back.

        The hot paths (enqueue) use this instead of ``_write``: under a burst of hundreds of requests
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
        self._notify()
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
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            yield self._db

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, max_wait: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), max_wait)
        except TimeoutError:
            pass

    # --- recovery ----------------------------------------------------------------------
    async def recover_interrupted(self) -> tuple[list[int], list[int]]:
        async with self._write() as conn:
            return await self._requeue_where(conn, "state = 'running'", ())

    async def requeue_expired_leases(self) -> tuple[list[int], list[int]]:
        async with self._write() as conn:
            return await self._requeue_where(conn, "state = 'running' AND lease_until < ?", (_now(),))

    async def _requeue_where(
        self, conn: aiosqlite.Connection, where: str, params: tuple
    ) -> tuple[list[int], list[int]]:
        rows = await conn.execute_fetchall(
            f"SELECT id, attempts, max_attempts, cancel_requested FROM jobs WHERE {where} ORDER BY id", params
        )
        requeued, failed = [], []
        now = _now()
        for row in rows:
            if row["cancel_requested"]:
                await self._end_cancelled(conn, row["id"])
            elif row["attempts"] >= row["max_attempts"]:
                error = CRASH_ERROR.format(n=row["attempts"])
                await self._finish(conn, row["id"], JobState.FAILED, error)
                await self._add_notice(conn, row["id"], NoticeKind.FAILED, error)
                failed.append(row["id"])
            else:
                await conn.execute(
                    "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_until = NULL, "
                    "progress_step = NULL, started_at = NULL WHERE id = ?",
                    (row["id"],),
                )
                await self._add_notice(conn, row["id"], NoticeKind.RESUMED, "")
                requeued.append(row["id"])
        if requeued or failed:
            log.warning("Recovered interrupted jobs: requeued %s, failed %s at %.0f", requeued, failed, now)
        return requeued, failed

    # --- producers -------------------------------------------------------------------
    async def enqueue(
        self,
        requester: Requester,
        request: JobRequest,
        limits: EnqueueLimits | None = None,
        *,
        kind: str = "imagine",
        parent_job_id: int | None = None,
    ) -> Enqueued:
        if not isinstance(requester, Requester):
            raise InvalidJob(f"enqueue needs a Requester (who asked, where to answer), got {type(requester).__name__}.")
        if not isinstance(request, JobRequest):
            raise InvalidJob(f"enqueue needs a JobRequest (the generation parameters), got {type(request).__name__}.")
        requester.validate()  # again: a caller may have bypassed __init__ (object.__setattr__, copy tricks)
        request.validate()
        if not isinstance(kind, str) or not kind.strip() or len(kind) > 32:
            raise InvalidJob(f"kind must be a short name such as 'imagine' (got {kind!r}).")
        if parent_job_id is not None and (
            not isinstance(parent_job_id, int) or isinstance(parent_job_id, bool) or parent_job_id <= 0
        ):
            raise InvalidJob(f"parent_job_id must be a job number (got {parent_job_id!r}).")
        if limits is None:
            limits = EnqueueLimits()
        elif not isinstance(limits, EnqueueLimits):
            raise InvalidJob(f"limits must be an EnqueueLimits, got {type(limits).__name__}.")
        now = _now()
        values = (
            kind,
            parent_job_id,
            requester.user_id,
            requester.user_name,
            requester.guild_id,
            requester.channel_id,
            requester.interaction_id,
            request.prompt,
            request.negative_prompt,
            request.width,
            request.height,
            request.steps,
            float(request.guidance),
            request.seed,
            request.count,
            now,
        )

        def insert(db: sqlite3.Connection) -> Enqueued:
            if parent_job_id is not None:
                if db.execute("SELECT 1 FROM jobs WHERE id = ?", (parent_job_id,)).fetchone() is None:
                    raise InvalidJob(f"There is no job #{parent_job_id} to start from.")
            _check_limits(db, requester.user_id, limits, now)
            job_id = db.execute(_INSERT_JOB, values).lastrowid
            assert job_id is not None
            (position,) = db.execute(_POSITION_SQL, (job_id,)).fetchone()
            paused = db.execute("SELECT 1 FROM kv WHERE key = 'paused' AND value = '1'").fetchone() is not None
            return Enqueued(job_id=job_id, position=int(position), paused=paused)

        return await self._transaction(insert)

    async def cancel(self, job_id: int, *, by_user_id: int, is_admin: bool = False) -> CancelOutcome:
        async with self._write() as conn:
            job = await self._get(conn, job_id)
            if job is None:
                raise JobNotFound(f"There is no job #{job_id}.")
            own = job.requester.user_id == by_user_id
            if not own and not is_admin:
                raise NotAllowed(f"Job #{job_id} isn't yours: you can only cancel your own jobs.")
            if job.state.finished:
                raise QueueError(f"Job #{job_id} has already finished ({job.state.value}).")
            if job.state is JobState.QUEUED:
                await self._finish(conn, job_id, JobState.CANCELLED, None if own else ADMIN_CANCEL)
                if not own:
                    await self._add_notice(conn, job_id, NoticeKind.CANCELLED, ADMIN_CANCEL)
                return CancelOutcome(job_id, JobState.CANCELLED, immediate=True)
            # The worker sees the flag at its next heartbeat and calls mark_cancelled. An admin's
            # cancel is announced to the owner then, once the job really stopped.
            await conn.execute(
                "UPDATE jobs SET cancel_requested = 1, error = CASE WHEN ? THEN ? ELSE error END WHERE id = ?",
                (int(not own), ADMIN_CANCEL, job_id),
            )
            return CancelOutcome(job_id, JobState.RUNNING, immediate=False)

    async def purge(self, *, user_id: int | None = None) -> list[int]:
        async with self._write() as conn:
            where, params = ("state = 'queued'", ())
            if user_id is not None:
                where, params = ("state = 'queued' AND user_id = ?", (user_id,))
            rows = await conn.execute_fetchall(f"SELECT id FROM jobs WHERE {where} ORDER BY id", params)
            ids = [row["id"] for row in rows]
            for job_id in ids:
                await self._finish(conn, job_id, JobState.CANCELLED, "removed from the queue by an admin")
                await self._add_notice(conn, job_id, NoticeKind.CANCELLED, "removed from the queue by an admin")
            return ids

    async def set_status_message(self, job_id: int, message_id: int) -> None:
        await self._transaction(
            lambda db: db.execute("UPDATE jobs SET status_message_id = ? WHERE id = ?", (message_id, job_id))
        )

    async def mark_result_deleted(self, job_id: int) -> None:
        async with self._write() as conn:
            await conn.execute("UPDATE jobs SET result_deleted = 1 WHERE id = ?", (job_id,))

    # --- reads -------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        async with self._read() as conn:
            return await self._get(conn, job_id)

    async def _get(self, conn: aiosqlite.Connection, job_id: int) -> Job | None:
        row = await (await conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))).fetchone()
        return job_from_row(row) if row else None

    async def list_user_jobs(
        self, user_id: int, *, states: Iterable[JobState | str] | None = None, limit: int = 20
    ) -> list[Job]:
        wanted = parse_states(states)
        marks = ",".join("?" for _ in wanted)
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT * FROM jobs WHERE user_id = ? AND state IN ({marks}) ORDER BY id DESC LIMIT ?",
                (user_id, *[s.value for s in wanted], max(0, int(limit))),
            )
        return [job_from_row(row) for row in rows]

    async def _fair_order(self, conn: aiosqlite.Connection) -> list[int]:
        """The whole claim order (O(queued jobs)); the write paths use the SQL forms above instead."""
        queued = await conn.execute_fetchall("SELECT id, user_id FROM jobs WHERE state = 'queued'")
        if not queued:
            return []
        served = await conn.execute_fetchall(
            "SELECT user_id, (SELECT max(s.served_seq) FROM jobs s WHERE s.user_id = q.user_id) AS seq "
            "FROM (SELECT DISTINCT user_id FROM jobs WHERE state = 'queued') q"
        )
        return fair_order(
            [(row["id"], row["user_id"]) for row in queued],
            {row["user_id"]: row["seq"] for row in served if row["seq"] is not None},
        )

    async def _position(self, conn: aiosqlite.Connection, job_id: int) -> int | None:
        row = await (await conn.execute(_POSITION_SQL, (job_id,))).fetchone()
        return None if row is None else int(row["position"])

    async def position(self, job_id: int) -> int | None:
        async with self._read() as conn:
            return await self._position(conn, job_id)

    async def queue_length(self) -> int:
        async with self._read() as conn:
            (count,) = await (await conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'")).fetchone()  # type: ignore[misc]
        return int(count)

    async def pending_count(self, user_id: int) -> int:
        async with self._read() as conn:
            (count,) = await (
                await conn.execute(
                    "SELECT count(*) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')", (user_id,)
                )
            ).fetchone()  # type: ignore[misc]
        return int(count)

    async def _jobs_by_ids(self, conn: aiosqlite.Connection, ids: Sequence[int]) -> list[Job]:
        if not ids:
            return []
        marks = ",".join("?" for _ in ids)
        rows = await conn.execute_fetchall(f"SELECT * FROM jobs WHERE id IN ({marks})", tuple(ids))
        by_id = {row["id"]: job_from_row(row) for row in rows}
        return [by_id[i] for i in ids if i in by_id]

    async def peek_next(self, n: int) -> list[Job]:
        async with self._read() as conn:
            order = await self._fair_order(conn)
            return await self._jobs_by_ids(conn, order[: max(0, n)])

    async def active_jobs(self) -> list[Job]:
        async with self._read() as conn:
            running = await conn.execute_fetchall("SELECT * FROM jobs WHERE state = 'running' ORDER BY started_at, id")
            queued = await self._jobs_by_ids(conn, await self._fair_order(conn))
        return [job_from_row(row) for row in running] + queued

    async def stats(self) -> QueueStats:
        async with self._read() as conn:
            rows = await conn.execute_fetchall("SELECT state, count(*) AS n FROM jobs GROUP BY state")
            paused = await self._kv_get(conn, "paused") == "1"
        counts = {row["state"]: row["n"] for row in rows}
        return QueueStats(
            queued=counts.get("queued", 0),
            running=counts.get("running", 0),
            done=counts.get("done", 0),
            failed=counts.get("failed", 0),
            cancelled=counts.get("cancelled", 0),
            paused=paused,
        )

    # --- consumers ---------------------------------------------------------------------
    async def claim_next(self, worker_id: str, lease_s: float) -> Job | None:
        now = _now()
        async with self._write() as conn:
            row = await (await conn.execute(_CLAIM_SQL, (worker_id, now + lease_s, now))).fetchone()
            return job_from_row(row) if row else None

    async def heartbeat(
        self, job_id: int, worker_id: str, lease_s: float, *, step: int | None = None, total: int | None = None
    ) -> Heartbeat:
        async with self._write() as conn:
            row = await (
                await conn.execute(
                    "UPDATE jobs SET lease_until = ?, progress_step = coalesce(?, progress_step), "
                    "progress_total = coalesce(?, progress_total) "
                    "WHERE id = ? AND state = 'running' AND worker_id = ? RETURNING cancel_requested",
                    (_now() + lease_s, step, total, job_id, worker_id),
                )
            ).fetchone()
        if row is None:
            return Heartbeat(alive=False, cancel_requested=False)
        return Heartbeat(alive=True, cancel_requested=bool(row["cancel_requested"]))

    async def complete(
        self,
        job_id: int,
        worker_id: str,
        *,
        result_paths: Sequence[str],
        seed_used: int,
        plan: str,
        timings: dict[str, float] | None = None,
    ) -> bool:
        async with self._write() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, result_paths = ?, seed_used = ?, plan = ?, "
                "timings_json = ?, lease_until = NULL, progress_step = progress_total "
                "WHERE id = ? AND state = 'running' AND worker_id = ?",
                (
                    _now(),
                    json.dumps(list(result_paths)),
                    seed_used,
                    plan,
                    json.dumps(timings or {}),
                    job_id,
                    worker_id,
                ),
            )
            if cursor.rowcount != 1:
                return False
            await self._add_notice(conn, job_id, NoticeKind.RESULT, "")
            return True

    async def fail(self, job_id: int, worker_id: str, error: str, *, retry: bool = False) -> bool:
        async with self._write() as conn:
            row = await (
                await conn.execute(
                    "SELECT attempts, max_attempts, cancel_requested FROM jobs "
                    "WHERE id = ? AND state = 'running' AND worker_id = ?",
                    (job_id, worker_id),
                )
            ).fetchone()
            if row is None:
                return False
            if retry and row["cancel_requested"]:
                await self._end_cancelled(conn, job_id)  # requeueing would lose the cancel request
                return True
            if retry and row["attempts"] < row["max_attempts"]:
                await conn.execute(
                    "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_until = NULL, "
                    "progress_step = NULL, started_at = NULL, error = ? WHERE id = ?",
                    (error, job_id),
                )
                return True
            await self._finish(conn, job_id, JobState.FAILED, error)
            await self._add_notice(conn, job_id, NoticeKind.FAILED, error)
            return True

    async def mark_cancelled(self, job_id: int, worker_id: str) -> bool:
        async with self._write() as conn:
            if not await self._owns(conn, job_id, worker_id):
                return False
            await self._end_cancelled(conn, job_id)
            return True

    async def release(self, job_id: int, worker_id: str) -> bool:
        async with self._write() as conn:
            row = await (
                await conn.execute(
                    "SELECT cancel_requested FROM jobs WHERE id = ? AND state = 'running' AND worker_id = ?",
                    (job_id, worker_id),
                )
            ).fetchone()
            if row is None:
                return False
            if row["cancel_requested"]:
                await self._end_cancelled(conn, job_id)  # back in the queue it would run again
                return True
            await conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), worker_id = NULL, "
                "lease_until = NULL, progress_step = NULL, started_at = NULL WHERE id = ?",
                (job_id,),
            )
            return True

    async def _owns(self, conn: aiosqlite.Connection, job_id: int, worker_id: str) -> bool:
        row = await (
            await conn.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND worker_id = ?", (job_id, worker_id)
            )
        ).fetchone()
        return row is not None

    async def _end_cancelled(self, conn: aiosqlite.Connection, job_id: int) -> None:
        """A running job whose cancel was requested has stopped; tell the owner if an admin did it."""
        row = await (await conn.execute("SELECT error FROM jobs WHERE id = ?", (job_id,))).fetchone()
        await self._finish(conn, job_id, JobState.CANCELLED, None)
        if row is not None and row["error"] == ADMIN_CANCEL:
            await self._add_notice(conn, job_id, NoticeKind.CANCELLED, ADMIN_CANCEL)

    async def _finish(self, conn: aiosqlite.Connection, job_id: int, state: JobState, error: str | None) -> None:
        await conn.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, error = coalesce(?, error), worker_id = NULL, "
            "lease_until = NULL WHERE id = ?",
            (state.value, _now(), error, job_id),
        )

    # --- outbox ------------------------------------------------------------------------
    async def _add_notice(self, conn: aiosqlite.Connection, job_id: int, kind: NoticeKind, body: str) -> None:
        now = _now()
        await conn.execute(
            "INSERT INTO notices (job_id, kind, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            (job_id, kind.value, body, now, now),
        )

    async def pending_notices(self, limit: int = 20) -> list[Notice]:
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT n.id AS notice_id, n.kind AS notice_kind, n.body AS notice_body, "
                "n.attempts AS notice_attempts, j.* FROM notices n JOIN jobs j ON j.id = n.job_id "
                "WHERE n.delivered_at IS NULL AND n.next_attempt_at <= ? ORDER BY n.id LIMIT ?",
                (_now(), int(limit)),
            )
        return [
            Notice(
                id=row["notice_id"],
                kind=NoticeKind(row["notice_kind"]),
                job=job_from_row(row),
                attempts=row["notice_attempts"],
                body=row["notice_body"],
            )
            for row in rows
        ]

    async def notice_sent(self, notice_id: int, message_id: int | None) -> None:
        now = _now()
        async with self._write() as conn:
            row = await (
                await conn.execute(
                    "UPDATE notices SET delivered_at = ?, message_id = ?, attempts = attempts + 1 "
                    "WHERE id = ? AND delivered_at IS NULL RETURNING job_id, kind",
                    (now, message_id, notice_id),
                )
            ).fetchone()
            if row is not None and row["kind"] == NoticeKind.RESULT.value:
                await conn.execute(
                    "UPDATE jobs SET result_message_id = ?, delivered_at = ? WHERE id = ?",
                    (message_id, now, row["job_id"]),
                )

    async def notice_failed(self, notice_id: int, error: str, retry_in_s: float, *, give_up: bool = False) -> None:
        now = _now()
        async with self._write() as conn:
            await conn.execute(
                "UPDATE notices SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                "delivered_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ? AND delivered_at IS NULL",
                (error[:1000], now + retry_in_s, int(give_up), now, notice_id),
            )

    # --- runtime state and audit -----------------------------------------------------------
    async def _kv_get(self, conn: aiosqlite.Connection, key: str) -> str | None:
        row = await (await conn.execute("SELECT value FROM kv WHERE key = ?", (key,))).fetchone()
        return row["value"] if row else None

    async def kv_get(self, key: str) -> str | None:
        async with self._read() as conn:
            return await self._kv_get(conn, key)

    async def kv_set(self, key: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, value, _now()),
            )

    async def set_paused(self, paused: bool) -> None:
        await self.kv_set("paused", "1" if paused else "0")

    async def is_paused(self) -> bool:
        return await self.kv_get("paused") == "1"

    async def audit(self, actor_id: int, action: str, detail: str = "", *, guild_id: int | None = None) -> None:
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO audit (at, actor_id, guild_id, action, detail) VALUES (?, ?, ?, ?, ?)",
                (_now(), actor_id, guild_id, action, detail[:2000]),
            )

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        async with self._read() as conn:
            rows = await conn.execute_fetchall("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (int(limit),))
        return [
            AuditEntry(
                at=row["at"],
                actor_id=row["actor_id"],
                action=row["action"],
                detail=row["detail"],
                guild_id=row["guild_id"],
            )
            for row in rows
        ]


def _check_limits(db: sqlite3.Connection, user_id: int, limits: EnqueueLimits, now: float) -> None:
    if limits.max_total is not None:
        (queued,) = db.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()
        if queued >= limits.max_total:
            raise QueueFull(f"The queue is full ({limits.max_total} jobs waiting). Try again in a few minutes.")
    if limits.max_per_user is None and limits.cooldown_s <= 0:
        return
    pending, last_at = db.execute(
        "SELECT count(*), (SELECT max(created_at) FROM jobs WHERE user_id = ?) "
        "FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')",
        (user_id, user_id),
    ).fetchone()
    if limits.max_per_user is not None and pending >= limits.max_per_user:
        raise UserQueueFull(
            f"You already have {pending} job(s) waiting (the limit is {limits.max_per_user}). "
            "Wait for one to finish, or /cancel one."
        )
    if limits.cooldown_s > 0 and last_at is not None:
        wait = last_at + limits.cooldown_s - now
        if wait > 0:
            raise CooldownActive(wait)


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
