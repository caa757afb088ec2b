"""The job queue on PostgreSQL, for a bot whose GPUs sit in other machines.

The queue's rules are db.core's, as on SQLite; this module holds what is PostgreSQL's own. The
dispatch to GPU machines is procrastinate's: every attempt of a queued job is one procrastinate
job (a token) that a worker fetches with `FOR UPDATE SKIP LOCKED`, in the claim order of
db.fairness. A state change, its token and its outbox row are written in one transaction, so
the two never disagree after a crash.

A running job is interrupted when its lease ran out (renewed by the per-job heartbeat) or when
the procrastinate worker that fetched it stopped sending its own heartbeat (a killed or cut-off
machine): `requeue_expired_leases` puts it back with a fresh token, or fails it after three attempts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from procrastinate import exceptions as pexc
from procrastinate.jobs import Status
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from db import core, enqueue, flags, userdata
from db.models import RESUMED_WORKER_LOST, Enqueued, EnqueueLimits, Heartbeat, Job, QueueError, Requester
from db.postgres import dispatch
from db.postgres.inputs import DatabaseInputs
from db.postgres.results import DatabaseResults
from db.postgres.schema import ensure_schema
from db.workers import WorkerInfo
from jobrequest import JobRequest

log = logging.getLogger(__name__)

CHANNEL = "cogview_changes"
# Enqueues are serialised (caps, cooldown and fairness rounds read then write): a constant lock key.
ENQUEUE_LOCK = 0x636F67656E71
_TRANSIENT = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
T = TypeVar("T")


class DatabaseUnreachable(QueueError):
    """The database stayed out of reach through the retries; the user is asked to try again."""

    code = "queue.unreachable"


def _transient(exc: BaseException) -> bool:
    """A lost or refused connection (also when procrastinate wrapped it), not a failed statement."""
    return isinstance(exc, _TRANSIENT) or (
        isinstance(exc, pexc.ConnectorException) and isinstance(exc.__cause__, _TRANSIENT)
    )


def describe(conninfo: str) -> str:
    """DATABASE_URL without its password, for messages."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "DATABASE_URL (unparseable)"
    return (
        f"{parts.get('user', '?')}@{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
    )


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """db.core's `?` placeholders in psycopg's style."""
    return sql.replace("?", "%s")


class _Conn:
    """db.core.Conn on a psycopg connection."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(_pg(sql), params or None)
            return await cursor.fetchone()

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(_pg(sql), params or None)
            return await cursor.fetchall()

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.conn.cursor() as cursor:
            await cursor.execute(_pg(sql), params or None)
            return cursor.rowcount


def _raw(conn: core.Conn) -> psycopg.AsyncConnection:
    assert isinstance(conn, _Conn)
    return conn.conn


class PostgresJobQueue(core.QueueCore, userdata.UserData, flags.Flags):
    """`db.interface.JobQueue` on PostgreSQL, plus what GPU workers and /status need."""

    JOB_COLUMNS = "j.*, p.step AS progress_step, p.total AS progress_total"
    JOB_FROM = "jobs j LEFT JOIN job_progress p ON p.job_id = j.id"
    TURN = "token_id"  # procrastinate fetches tokens by priority (-round), then id
    FOR_UPDATE = " FOR UPDATE"

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = 4,
        stalled_after_s: float = 30.0,
        retry_for_s: float = 0.0,
        apply_schema: bool = True,
    ) -> None:
        """`retry_for_s`: how long worker-side writes keep retrying while the database is away."""
        super().__init__()
        self.conninfo = conninfo
        self.stalled_after_s = stalled_after_s
        self.retry_for_s = retry_for_s
        self.results = DatabaseResults(self._tx, self._read, self._retrying)
        self.inputs = DatabaseInputs(self._tx, self._read, self._retrying)
        self._apply_schema = apply_schema
        self._pool_size = pool_size
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._app = dispatch.make_app(self.is_paused)
        self._listener: asyncio.Task[None] | None = None
        self._pworkers: dict[str, int] = {}

    # --- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = psycopg_pool.AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=10.0,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
        )
        try:
            if self._apply_schema:
                await ensure_schema(self.conninfo)
            await pool.open(wait=True, timeout=15.0)
        except BaseException as exc:
            await pool.close()  # its reconnect tasks would otherwise keep trying in the background
            if isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout | OSError):
                raise QueueError(f"Could not open the queue database {describe(self.conninfo)}: {exc}") from exc
            raise
        self._pool = pool
        self._app = dispatch.make_app(self.is_paused)  # a closed app keeps its old pool: start afresh
        await self._app.open_async(pool)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._app.close_async()  # the pool was lent to procrastinate: it does not close it
            await pool.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool:
        if self._pool is None:
            raise QueueError("The queue database is not open.")
        return self._pool

    @property
    def procrastinate_app(self) -> Any:
        """The procrastinate app (open while the queue is), for the cluster worker."""
        return self._app

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[_Conn]:
        """One transaction; wakes local waiters after it committed."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield _Conn(conn)
        except Exception as exc:
            if _transient(exc):
                raise DatabaseUnreachable from exc
            raise
        self._wake_local()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_Conn]:
        try:
            async with self.pool.connection() as conn:
                yield _Conn(conn)
        except Exception as exc:
            if _transient(exc):
                raise DatabaseUnreachable from exc
            raise

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Worker-side writes: keep trying through a database restart (they are all idempotent)."""
        if self.retry_for_s <= 0:
            return await fn()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DatabaseUnreachable),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            stop=stop_after_delay(self.retry_for_s),
            reraise=True,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")

    # --- backend hooks of db.core ---------------------------------------------------------------------
    async def _announce(self, conn: core.Conn, what: str = "") -> None:
        """Wake other processes' wait_for_change (delivered when the transaction commits)."""
        await conn.run("SELECT pg_notify(?, ?)", (CHANNEL, what))

    async def _enter_queue(self, conn: core.Conn, job_id: int) -> None:
        await conn.run("UPDATE job_progress SET step = NULL WHERE job_id = ?", (job_id,))
        row = await conn.one("SELECT fair_round, width * height AS area FROM jobs WHERE id = ?", (job_id,))
        assert row is not None
        await self._new_token(conn, job_id, row["fair_round"], row["area"])

    async def _new_token(self, conn: core.Conn, job_id: int, fair_round: int, area: int) -> None:
        """procrastinate hands tokens out in claim order: priority = -round, then token id (db.fairness)."""
        token = await dispatch.defer_token(self._app, _raw(conn), job_id, fair_round, area)
        await conn.run("UPDATE jobs SET token_id = ? WHERE id = ?", (token, job_id))

    async def _withdraw(self, conn: core.Conn, job_id: int, *, running: bool) -> None:
        """Withdraw a waiting token, or have procrastinate notify the worker running it (abort)."""
        row = await conn.one("SELECT token_id FROM jobs WHERE id = ?", (job_id,))
        if row is not None and row["token_id"] is not None:
            await dispatch.cancel_token(self._app, _raw(conn), row["token_id"], abort=running)

    async def _progress_done(self, conn: core.Conn, job_id: int) -> None:
        await conn.run("UPDATE job_progress SET step = total WHERE job_id = ?", (job_id,))

    async def _on_resume(self, conn: core.Conn) -> None:
        queues = await conn.all("SELECT DISTINCT queue_name FROM procrastinate_jobs WHERE status = 'todo'")
        await dispatch.wake_workers(_raw(conn), [row["queue_name"] for row in queues])

    async def wait_for_change(self, max_wait: float) -> None:
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen(), name="queue-listener")
        await super().wait_for_change(max_wait)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnects after a database restart."""
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.2
                    while True:
                        async for _ in conn.notifies(timeout=30.0):
                            self._wake_local()
                        await conn.execute("SELECT 1")  # a quiet half-open connection fails here
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.debug("Queue listener lost its connection (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- recovery --------------------------------------------------------------------------------------
    async def recover_interrupted(self) -> tuple[list[int], list[int]]:
        """At the bot's start: only jobs of dead workers; the others run on in their machines."""
        return await self.requeue_expired_leases()

    async def requeue_expired_leases(self) -> tuple[list[int], list[int]]:
        return await self._retrying(self._reap)

    async def _reap(self) -> tuple[list[int], list[int]]:
        async with self._tx() as conn:
            rows = await conn.all(
                "SELECT j.id, j.attempts, j.max_attempts, j.cancel_requested, j.token_id, t.status::text AS token "
                "FROM jobs j LEFT JOIN procrastinate_jobs t ON t.id = j.token_id "
                "LEFT JOIN procrastinate_workers w ON w.id = t.worker_id "
                "WHERE j.state = 'running' AND (j.lease_until IS NULL OR j.lease_until < ? OR w.id IS NULL "
                "OR w.last_heartbeat < now() - make_interval(secs => ?)) "
                "ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
                (core.now(), self.stalled_after_s),
            )
            for row in rows:
                if row["token"] in ("todo", "doing"):
                    await dispatch.fail_token(self._app, _raw(conn), row["token_id"])
            requeued, failed = await self._settle_interrupted(conn, rows, RESUMED_WORKER_LOST)
            # Queued jobs whose token a dead worker fetched but never claimed: give them a fresh one.
            orphans = await conn.all(
                "SELECT j.id, j.token_id, t.status::text AS token FROM jobs j "
                "LEFT JOIN procrastinate_jobs t ON t.id = j.token_id "
                "LEFT JOIN procrastinate_workers w ON w.id = t.worker_id "
                "WHERE j.state = 'queued' AND (t.id IS NULL OR t.status NOT IN ('todo', 'doing') OR "
                "(t.status = 'doing' AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => ?)))) "
                "ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
                (self.stalled_after_s,),
            )
            for row in orphans:
                if row["token"] == "doing":
                    await dispatch.fail_token(self._app, _raw(conn), row["token_id"])
                await self._enter_queue(conn, row["id"])
            if rows or orphans:
                await self._announce(conn)
        if requeued or failed:
            log.warning("Recovered jobs of stopped workers: requeued %s, failed %s", requeued, failed)
        return requeued, failed

    # --- producers ---------------------------------------------------------------------------------------
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
        at = core.now()
        async with self._tx() as conn:
            await conn.run("SELECT pg_advisory_xact_lock(?)", (ENQUEUE_LOCK,))
            facts = await conn.one(
                enqueue.ENQUEUE_FACTS_SQL, enqueue.enqueue_facts_params(requester, parent_job_id, checked, at)
            )
            assert facts is not None
            fair_round = enqueue.plan_enqueue(facts, checked, parent_job_id, at, request.count)
            inserted = await conn.one(
                enqueue.INSERT_JOB_SQL, enqueue.insert_values(requester, request, kind, parent_job_id, at, fair_round)
            )
            assert inserted is not None
            await self._new_token(conn, inserted["id"], fair_round, request.width * request.height)
            position = await self._position(conn, inserted["id"])
            assert position is not None
            await self._announce(conn)
        return Enqueued(job_id=inserted["id"], position=position, paused=bool(facts["paused"]))

    # --- consumers ---------------------------------------------------------------------------------------
    async def claim_next(self, worker_id: str, lease_s: float) -> Job | None:
        """Fetch the next token as procrastinate's workers do, and claim its job (tests, benchmarks)."""
        while True:
            pworker = await self._procrastinate_worker(worker_id)
            try:
                token = await self._app.job_manager.fetch_job(queues=None, worker_id=pworker)
            except pexc.ConnectorException:  # our registration was pruned as stalled: register again
                self._pworkers.pop(worker_id, None)
                token = await self._app.job_manager.fetch_job(
                    queues=None, worker_id=await self._procrastinate_worker(worker_id)
                )
            if token is None:
                return None
            job = await self.claim_token(token.id, dispatch.token_job_id(token.task_kwargs), worker_id, lease_s)
            # No task runs for this token: it is done once handed out (its worker row still vouches for the job).
            await self._app.job_manager.finish_job_by_id_async(token.id, status=Status.SUCCEEDED, delete_job=False)
            if job is not None:
                return job

    async def _procrastinate_worker(self, name: str) -> int:
        if name not in self._pworkers:
            self._pworkers[name] = await self._app.job_manager.register_worker()
        return self._pworkers[name]

    async def claim_token(self, token_id: int, job_id: int, worker_id: str, lease_s: float) -> Job | None:
        """Claim the job a fetched token stands for; None if the token is stale (job cancelled meanwhile).

        Idempotent for the same worker, so it can be retried after a lost connection."""

        async def claim() -> Job | None:
            at = core.now()
            async with self._tx() as conn:
                fresh = "CASE WHEN state = 'queued' THEN"
                row = await conn.one(
                    f"UPDATE jobs SET state = 'running', worker_id = ?, lease_until = ?, "
                    f"attempts = attempts + {fresh} 1 ELSE 0 END, started_at = {fresh} ? ELSE started_at END, "
                    f"served_seq = {fresh} nextval('jobs_served_seq') ELSE served_seq END, "
                    f"cancel_requested = {fresh} false ELSE cancel_requested END "
                    "WHERE id = ? AND token_id = ? AND (state = 'queued' OR (state = 'running' AND worker_id = ?)) "
                    "RETURNING id, steps",
                    (worker_id, at + lease_s, at, job_id, token_id, worker_id),
                )
                if row is None:
                    return None
                await conn.run(
                    "INSERT INTO job_progress (job_id, step, total, worker_id, updated_at) VALUES (?, 0, ?, ?, ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET step = 0, total = excluded.total, "
                    "worker_id = excluded.worker_id, updated_at = excluded.updated_at",
                    (job_id, row["steps"], worker_id, at),
                )
                await self._announce(conn, f"claimed {job_id}")
                return await self._get(conn, job_id)

        return await self._retrying(claim)

    async def _beat(
        self, job_id: int, worker_id: str, lease_s: float, step: int | None, total: int | None, preview: bytes | None
    ) -> Heartbeat:
        at = core.now()
        async with self._tx() as conn:
            row = await conn.one(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' AND worker_id = ? "
                "RETURNING cancel_requested, token_id",
                (at + lease_s, job_id, worker_id),
            )
            if row is None:
                return Heartbeat(alive=False, cancel_requested=False)
            await conn.run(
                "UPDATE job_progress SET step = coalesce(?, step), total = coalesce(?, total), updated_at = ? "
                "WHERE job_id = ?",
                (step, total, at, job_id),
            )
            if preview is not None:
                await self._save_preview(conn, job_id, preview)
            # The job's heartbeat vouches for its procrastinate worker too (claim_next has no other).
            await conn.run(
                "SELECT procrastinate_update_heartbeat_v1(worker_id) FROM procrastinate_jobs "
                "WHERE id = ? AND worker_id IS NOT NULL",
                (row["token_id"],),
            )
            await self._announce(conn, f"progress {job_id}")
            return Heartbeat(alive=True, cancel_requested=bool(row["cancel_requested"]))

    # --- GPU workers (what /status lists) ---------------------------------------------------
    async def report_worker(self, name: str, **fields: Any) -> None:
        """Create or update a worker's row; `last_seen` is now."""
        allowed = {
            "host", "pid", "gpu", "plan", "state", "note", "max_area", "queues", "current_job", "jobs_done",
            "jobs_failed", "step_s", "model_loads", "procrastinate_worker_id", "started_at",
        }  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown worker fields {sorted(unknown)}")
        values = {**fields, "name": name, "last_seen": core.now()}
        values.setdefault("started_at", values["last_seen"])
        columns = list(values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "name" and (c in fields or c == "last_seen"))

        async def report() -> None:
            async with self._tx() as conn:
                await conn.run(
                    f"INSERT INTO gpu_workers ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                    f"ON CONFLICT (name) DO UPDATE SET {updates}",
                    tuple(values.values()),
                )

        await self._retrying(report)

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers as they reported themselves, except a job no longer running under a worker's
        name (taken back by the reaper, finished, cancelled) is not shown as its current job."""
        async with self._read() as conn:
            rows = await conn.all(
                "SELECT w.*, j.id AS live_job FROM gpu_workers w LEFT JOIN jobs j "
                "ON j.id = w.current_job AND j.state = 'running' AND j.worker_id = w.name ORDER BY w.name"
            )
        return [
            WorkerInfo(
                name=row["name"],
                host=row["host"],
                gpu=row["gpu"],
                state=row["state"],
                plan=row["plan"],
                max_area=row["max_area"],
                jobs_done=row["jobs_done"],
                jobs_failed=row["jobs_failed"],
                step_s=row["step_s"],
                model_loads=row["model_loads"],
                current_job=row["live_job"],
                started_at=row["started_at"],
                last_seen=row["last_seen"],
                pid=row["pid"],
                note=row["note"],
            )
            for row in rows
        ]
