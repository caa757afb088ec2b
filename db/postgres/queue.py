"""The job queue on PostgreSQL, for a bot whose GPUs sit in other machines.

The same job model as `db.sqlite_queue` (states, attempts, outbox, fairness, cancel),
on tables of our own; the dispatch to GPU machines is procrastinate's: every attempt
of a queued job is one procrastinate job (a token) that a worker fetches with
`FOR UPDATE SKIP LOCKED`. A state change, its token and its outbox row are written in
one transaction, so the two never disagree after a crash.

A running job is interrupted when its lease ran out (renewed by the per-job heartbeat,
as in SQLite) or when the procrastinate worker that fetched it stopped sending its own
heartbeat (a killed or cut-off machine): `requeue_expired_leases` puts it back with a
fresh token, or fails it after three attempts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from procrastinate import exceptions as pexc
from procrastinate.jobs import Status
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

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
    UserQueueFull,
)
from db.postgres import dispatch, files
from db.postgres.schema import ensure_schema
from db.rows import ADMIN_CANCEL, CRASH_ERROR, job_from_row, parse_states
from db.workers import WorkerInfo

log = logging.getLogger(__name__)

CHANNEL = "cogview_changes"
# Enqueues are serialised (caps, cooldown and fairness rounds read then write): a constant lock key.
ENQUEUE_LOCK = 0x636F67656E71
_TRANSIENT = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
_JOB = (
    "SELECT j.*, p.step AS progress_step, p.total AS progress_total "
    "FROM jobs j LEFT JOIN job_progress p ON p.job_id = j.id"
)
T = TypeVar("T")


def _now() -> float:
    return time.time()


class DatabaseUnreachable(QueueError):
    def __init__(self) -> None:
        super().__init__("The queue database is not reachable right now; try again in a minute.")


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


class PostgresJobQueue:
    """`db.interface.JobQueue` on PostgreSQL, plus what GPU workers and /status need."""

    def __init__(
        self,
        conninfo: str,
        *,
        output_dir: Path | None = None,
        pool_size: int = 4,
        stalled_after_s: float = 30.0,
        retry_for_s: float = 0.0,
        apply_schema: bool = True,
    ) -> None:
        """`output_dir`: where the bot materialises result images (None on a worker).
        `retry_for_s`: how long worker-side writes keep retrying while the database is away."""
        self.conninfo = conninfo
        self.output_dir = output_dir
        self.stalled_after_s = stalled_after_s
        self.retry_for_s = retry_for_s
        self._apply_schema = apply_schema
        self._pool_size = pool_size
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._app = dispatch.make_app(self.is_paused)
        self._cluster_id = "0"
        self._changed = asyncio.Event()
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
        self._cluster_id = await self.kv_get("cluster_id") or "0"

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._app.close_async()  # the pool was lent to procrastinate: it does not close it
            await pool.close()

    async def __aenter__(self) -> PostgresJobQueue:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool:
        if self._pool is None:
            raise QueueError("The queue database is not open.")
        return self._pool

    @property
    def procrastinate_app(self) -> Any:
        """The procrastinate app (open while the queue is), for `python -m engine worker`."""
        return self._app

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """One transaction; wakes local waiters after it committed."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield conn
        except Exception as exc:
            if _transient(exc):
                raise DatabaseUnreachable from exc
            raise
        self._notify_local()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with self.pool.connection() as conn:
                yield conn
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

    async def _notify(self, conn: psycopg.AsyncConnection, what: str = "") -> None:
        """Wake other processes' wait_for_change (delivered when the transaction commits)."""
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, what))

    def _notify_local(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, max_wait: float) -> None:
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen(), name="queue-listener")
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), max_wait)
        except TimeoutError:
            pass

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
                            self._notify_local()
                        await conn.execute("SELECT 1")  # a quiet half-open connection fails here
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.debug("Queue listener lost its connection (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- recovery ------------------------------------------------------------------------
    async def recover_interrupted(self) -> tuple[list[int], list[int]]:
        """At the bot's start: only jobs of dead workers; the others run on in their machines."""
        return await self.requeue_expired_leases()

    async def requeue_expired_leases(self) -> tuple[list[int], list[int]]:
        return await self._retrying(self._reap)

    async def _reap(self) -> tuple[list[int], list[int]]:
        requeued: list[int] = []
        failed: list[int] = []
        async with self._tx() as conn:
            rows = await _all(
                conn,
                "SELECT j.id, j.attempts, j.max_attempts, j.cancel_requested, j.token_id, t.status::text AS token "
                "FROM jobs j LEFT JOIN procrastinate_jobs t ON t.id = j.token_id "
                "LEFT JOIN procrastinate_workers w ON w.id = t.worker_id "
                "WHERE j.state = 'running' AND (j.lease_until IS NULL OR j.lease_until < %(now)s OR w.id IS NULL "
                "OR w.last_heartbeat < now() - make_interval(secs => %(stalled)s)) "
                "ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
                {"now": _now(), "stalled": self.stalled_after_s},
            )
            for row in rows:
                if row["token"] in ("todo", "doing"):
                    await dispatch.fail_token(self._app, conn, row["token_id"])
                if row["cancel_requested"]:
                    await self._end_cancelled(conn, row["id"])
                elif row["attempts"] >= row["max_attempts"]:
                    error = CRASH_ERROR.format(n=row["attempts"])
                    await self._finish(conn, row["id"], JobState.FAILED, error)
                    await self._add_notice(conn, row["id"], NoticeKind.FAILED, error)
                    failed.append(row["id"])
                else:
                    await self._requeue(conn, row["id"])
                    await self._add_notice(conn, row["id"], NoticeKind.RESUMED, "")
                    requeued.append(row["id"])
            # Queued jobs whose token a dead worker fetched but never claimed: give them a fresh one.
            orphans = await _all(
                conn,
                "SELECT j.id, j.token_id, t.status::text AS token FROM jobs j "
                "LEFT JOIN procrastinate_jobs t ON t.id = j.token_id "
                "LEFT JOIN procrastinate_workers w ON w.id = t.worker_id "
                "WHERE j.state = 'queued' AND (t.id IS NULL OR t.status NOT IN ('todo', 'doing') OR "
                "(t.status = 'doing' AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => %s)))) "
                "ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
                (self.stalled_after_s,),
            )
            for row in orphans:
                if row["token"] == "doing":
                    await dispatch.fail_token(self._app, conn, row["token_id"])
                await self._new_token(conn, row["id"])
            if rows or orphans:
                await self._notify(conn)
        if requeued or failed:
            log.warning("Recovered jobs of stopped workers: requeued %s, failed %s", requeued, failed)
        return requeued, failed

    async def _requeue(
        self, conn: psycopg.AsyncConnection, job_id: int, *, error: str | None = None, uncount: bool = False
    ) -> None:
        """Back to the queue with a fresh token (same fairness round: it keeps its place)."""
        await conn.execute(
            "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_until = NULL, started_at = NULL, "
            "error = coalesce(%s, error), attempts = CASE WHEN %s THEN greatest(attempts - 1, 0) ELSE attempts END "
            "WHERE id = %s",
            (error, uncount, job_id),
        )
        await conn.execute("UPDATE job_progress SET step = NULL WHERE job_id = %s", (job_id,))
        await self._new_token(conn, job_id)

    async def _new_token(self, conn: psycopg.AsyncConnection, job_id: int) -> None:
        row = await _one(conn, "SELECT fair_round, width, height FROM jobs WHERE id = %s", (job_id,))
        assert row is not None
        token = await dispatch.defer_token(self._app, conn, job_id, row["fair_round"], row["width"] * row["height"])
        await conn.execute("UPDATE jobs SET token_id = %s WHERE id = %s", (token, job_id))

    # --- producers -----------------------------------------------------------------------
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
        requester.validate()
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
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ENQUEUE_LOCK,))
            if (
                parent_job_id is not None
                and await _one(conn, "SELECT 1 FROM jobs WHERE id = %s", (parent_job_id,)) is None
            ):
                raise InvalidJob(f"There is no job #{parent_job_id} to start from.")
            await self._check_limits(conn, requester.user_id, limits, now)
            fair_round = await self._next_round(conn, requester.user_id)
            row = await _one(
                conn,
                "INSERT INTO jobs (kind, parent_job_id, user_id, user_name, guild_id, channel_id, interaction_id, "
                "prompt, negative_prompt, width, height, steps, guidance, seed, count, created_at, fair_round) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
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
                    fair_round,
                ),
            )
            assert row is not None
            job_id = row["id"]
            await self._new_token(conn, job_id)
            position = await self._position(conn, job_id)
            assert position is not None
            await self._notify(conn)
        return Enqueued(job_id=job_id, position=position)

    async def _next_round(self, conn: psycopg.AsyncConnection, user_id: int) -> int:
        """Start-time fair queueing: one round per job of a user, never below the round now served.

        A user's next job goes one round after their last waiting or running job; a user with
        none starts in the current round. Tokens are fetched by round, then age: round-robin.
        """
        row = await _one(
            conn,
            "SELECT greatest("
            " coalesce((SELECT fair_round FROM jobs WHERE served_seq IS NOT NULL ORDER BY served_seq DESC LIMIT 1), 0),"
            " coalesce((SELECT max(fair_round) + 1 FROM jobs WHERE user_id = %s AND state IN ('queued', 'running')), 0)"
            ") AS r",
            (user_id,),
        )
        assert row is not None
        return int(row["r"])

    async def _check_limits(
        self, conn: psycopg.AsyncConnection, user_id: int, limits: EnqueueLimits, now: float
    ) -> None:
        if limits.max_total is not None:
            row = await _one(conn, "SELECT count(*) AS n FROM jobs WHERE state = 'queued'")
            if row is not None and row["n"] >= limits.max_total:
                raise QueueFull(f"The queue is full ({limits.max_total} jobs waiting). Try again in a few minutes.")
        if limits.max_per_user is None and limits.cooldown_s <= 0:
            return
        row = await _one(
            conn,
            "SELECT (SELECT count(*) FROM jobs WHERE user_id = %s AND state IN ('queued', 'running')) AS pending, "
            "(SELECT max(created_at) FROM jobs WHERE user_id = %s) AS last_at",
            (user_id, user_id),
        )
        assert row is not None
        if limits.max_per_user is not None and row["pending"] >= limits.max_per_user:
            raise UserQueueFull(
                f"You already have {row['pending']} job(s) waiting (the limit is {limits.max_per_user}). "
                "Wait for one to finish, or /cancel one."
            )
        if limits.cooldown_s > 0 and row["last_at"] is not None:
            wait = row["last_at"] + limits.cooldown_s - now
            if wait > 0:
                raise CooldownActive(wait)

    async def cancel(self, job_id: int, *, by_user_id: int, is_admin: bool = False) -> CancelOutcome:
        async with self._tx() as conn:
            job = await self._get(conn, job_id, lock=True)
            if job is None:
                raise JobNotFound(f"There is no job #{job_id}.")
            own = job.requester.user_id == by_user_id
            if not own and not is_admin:
                raise NotAllowed(f"Job #{job_id} isn't yours: you can only cancel your own jobs.")
            if job.state.finished:
                raise QueueError(f"Job #{job_id} has already finished ({job.state.value}).")
            token = await _one(conn, "SELECT token_id FROM jobs WHERE id = %s", (job_id,))
            token_id = token["token_id"] if token else None
            if job.state is JobState.QUEUED:
                await self._finish(conn, job_id, JobState.CANCELLED, None if own else ADMIN_CANCEL)
                if not own:
                    await self._add_notice(conn, job_id, NoticeKind.CANCELLED, ADMIN_CANCEL)
                if token_id is not None:
                    await dispatch.cancel_token(self._app, conn, token_id, abort=False)
                await self._notify(conn)
                return CancelOutcome(job_id, JobState.CANCELLED, immediate=True)
            # The worker hears procrastinate's abort notification (or sees the flag at its next
            # heartbeat) and stops at the next step; an admin's cancel is announced once it stopped.
            await conn.execute(
                "UPDATE jobs SET cancel_requested = true, error = CASE WHEN %s THEN %s ELSE error END WHERE id = %s",
                (not own, ADMIN_CANCEL, job_id),
            )
            if token_id is not None:
                await dispatch.cancel_token(self._app, conn, token_id, abort=True)
            await self._notify(conn)
            return CancelOutcome(job_id, JobState.RUNNING, immediate=False)

    async def purge(self, *, user_id: int | None = None) -> list[int]:
        async with self._tx() as conn:
            rows = await _all(
                conn,
                "SELECT id, token_id FROM jobs WHERE state = 'queued' AND (%(u)s::bigint IS NULL OR user_id = %(u)s) "
                "ORDER BY id FOR UPDATE",
                {"u": user_id},
            )
            for row in rows:
                await self._finish(conn, row["id"], JobState.CANCELLED, "removed from the queue by an admin")
                await self._add_notice(conn, row["id"], NoticeKind.CANCELLED, "removed from the queue by an admin")
                if row["token_id"] is not None:
                    await dispatch.cancel_token(self._app, conn, row["token_id"], abort=False)
            if rows:
                await self._notify(conn)
            return [row["id"] for row in rows]

    async def set_status_message(self, job_id: int, message_id: int) -> None:
        async with self._tx() as conn:
            await conn.execute("UPDATE jobs SET status_message_id = %s WHERE id = %s", (message_id, job_id))

    async def mark_result_deleted(self, job_id: int) -> None:
        async with self._tx() as conn:
            await conn.execute("UPDATE jobs SET result_deleted = true WHERE id = %s", (job_id,))

    # --- reads ---------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        async with self._read() as conn:
            job = await self._get(conn, job_id)
        if job is not None:
            await self._localise([job])
        return job

    async def _get(self, conn: psycopg.AsyncConnection, job_id: int, *, lock: bool = False) -> Job | None:
        suffix = " FOR UPDATE OF j" if lock else ""
        row = await _one(conn, f"{_JOB} WHERE j.id = %s{suffix}", (job_id,))
        return job_from_row(row) if row else None

    async def list_user_jobs(
        self, user_id: int, *, states: Iterable[JobState | str] | None = None, limit: int = 20
    ) -> list[Job]:
        wanted = [s.value for s in parse_states(states)]
        async with self._read() as conn:
            rows = await _all(
                conn,
                f"{_JOB} WHERE j.user_id = %s AND j.state = ANY(%s) ORDER BY j.id DESC LIMIT %s",
                (user_id, wanted, max(0, int(limit))),
            )
        return await self._localise([job_from_row(row) for row in rows])

    async def _position(self, conn: psycopg.AsyncConnection, job_id: int) -> int | None:
        row = await _one(
            conn,
            "WITH me AS (SELECT fair_round, token_id FROM jobs WHERE id = %s AND state = 'queued') "
            "SELECT 1 + (SELECT count(*) FROM jobs q WHERE q.state = 'queued' "
            "AND (q.fair_round, q.token_id) < (me.fair_round, me.token_id)) AS position FROM me",
            (job_id,),
        )
        return None if row is None else int(row["position"])

    async def position(self, job_id: int) -> int | None:
        async with self._read() as conn:
            return await self._position(conn, job_id)

    async def queue_length(self) -> int:
        async with self._read() as conn:
            row = await _one(conn, "SELECT count(*) AS n FROM jobs WHERE state = 'queued'")
        return int(row["n"]) if row else 0

    async def pending_count(self, user_id: int) -> int:
        async with self._read() as conn:
            row = await _one(
                conn, "SELECT count(*) AS n FROM jobs WHERE user_id = %s AND state IN ('queued', 'running')", (user_id,)
            )
        return int(row["n"]) if row else 0

    async def peek_next(self, n: int) -> list[Job]:
        async with self._read() as conn:
            rows = await _all(
                conn, f"{_JOB} WHERE j.state = 'queued' ORDER BY j.fair_round, j.token_id LIMIT %s", (max(0, n),)
            )
        return [job_from_row(row) for row in rows]

    async def active_jobs(self) -> list[Job]:
        async with self._read() as conn:
            running = await _all(conn, f"{_JOB} WHERE j.state = 'running' ORDER BY j.started_at, j.id")
            queued = await _all(conn, f"{_JOB} WHERE j.state = 'queued' ORDER BY j.fair_round, j.token_id")
        return [job_from_row(row) for row in running + queued]

    async def stats(self) -> QueueStats:
        async with self._read() as conn:
            rows = await _all(conn, "SELECT state, count(*) AS n FROM jobs GROUP BY state")
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

    # --- consumers -----------------------------------------------------------------------
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
            now = _now()
            async with self._tx() as conn:
                row = await _one(
                    conn,
                    "UPDATE jobs SET state = 'running', worker_id = %(w)s, lease_until = %(lease)s, "
                    "attempts = attempts + CASE WHEN state = 'queued' THEN 1 ELSE 0 END, "
                    "started_at = CASE WHEN state = 'queued' THEN %(now)s ELSE started_at END, "
                    "served_seq = CASE WHEN state = 'queued' THEN nextval('jobs_served_seq') ELSE served_seq END, "
                    "cancel_requested = CASE WHEN state = 'queued' THEN false ELSE cancel_requested END "
                    "WHERE id = %(job)s AND token_id = %(token)s "
                    "AND (state = 'queued' OR (state = 'running' AND worker_id = %(w)s)) RETURNING id, steps",
                    {"w": worker_id, "lease": now + lease_s, "now": now, "job": job_id, "token": token_id},
                )
                if row is None:
                    return None
                await conn.execute(
                    "INSERT INTO job_progress (job_id, step, total, worker_id, updated_at) VALUES (%s, 0, %s, %s, %s) "
                    "ON CONFLICT (job_id) DO UPDATE SET step = 0, total = excluded.total, "
                    "worker_id = excluded.worker_id, updated_at = excluded.updated_at",
                    (job_id, row["steps"], worker_id, now),
                )
                await self._notify(conn, f"claimed {job_id}")
                return await self._get(conn, job_id)

        return await self._retrying(claim)

    async def heartbeat(
        self, job_id: int, worker_id: str, lease_s: float, *, step: int | None = None, total: int | None = None
    ) -> Heartbeat:
        async def beat() -> Heartbeat:
            now = _now()
            async with self._tx() as conn:
                row = await _one(
                    conn,
                    "UPDATE jobs SET lease_until = %s WHERE id = %s AND state = 'running' AND worker_id = %s "
                    "RETURNING cancel_requested, token_id",
                    (now + lease_s, job_id, worker_id),
                )
                if row is None:
                    return Heartbeat(alive=False, cancel_requested=False)
                await conn.execute(
                    "UPDATE job_progress SET step = coalesce(%s, step), total = coalesce(%s, total), updated_at = %s "
                    "WHERE job_id = %s",
                    (step, total, now, job_id),
                )
                # The job's heartbeat vouches for its procrastinate worker too (claim_next has no other).
                await conn.execute(
                    "SELECT procrastinate_update_heartbeat_v1(worker_id) FROM procrastinate_jobs "
                    "WHERE id = %s AND worker_id IS NOT NULL",
                    (row["token_id"],),
                )
                await self._notify(conn, f"progress {job_id}")
                return Heartbeat(alive=True, cancel_requested=bool(row["cancel_requested"]))

        return await self._retrying(beat)

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
        """Mark done; the files at `result_paths` (on the worker's disk) are stored in the database."""
        try:
            images = await asyncio.to_thread(files.read_all, list(result_paths))
        except OSError as exc:
            raise QueueError(f"Could not read the result file to store it: {exc}") from exc

        async def done() -> bool:
            async with self._tx() as conn:
                row = await _one(
                    conn,
                    "UPDATE jobs SET state = 'done', finished_at = %s, seed_used = %s, plan = %s, timings_json = %s, "
                    "lease_until = NULL, image_count = %s WHERE id = %s AND state = 'running' AND worker_id = %s "
                    "RETURNING id",
                    (_now(), seed_used, plan, json.dumps(timings or {}), len(images), job_id, worker_id),
                )
                if row is None:
                    return False
                async with conn.cursor() as cursor:
                    await cursor.executemany(
                        "INSERT INTO job_images (job_id, idx, png) VALUES (%s, %s, %s) "
                        "ON CONFLICT (job_id, idx) DO UPDATE SET png = excluded.png",
                        [(job_id, index, data) for index, data in enumerate(images)],
                    )
                await conn.execute("UPDATE job_progress SET step = total WHERE job_id = %s", (job_id,))
                await self._add_notice(conn, job_id, NoticeKind.RESULT, "")
                await self._notify(conn, f"done {job_id}")
                return True

        return await self._retrying(done)

    async def fail(self, job_id: int, worker_id: str, error: str, *, retry: bool = False) -> bool:
        async def failed() -> bool:
            async with self._tx() as conn:
                row = await _one(
                    conn,
                    "SELECT attempts, max_attempts, cancel_requested FROM jobs "
                    "WHERE id = %s AND state = 'running' AND worker_id = %s FOR UPDATE",
                    (job_id, worker_id),
                )
                if row is None:
                    return False
                if retry and row["cancel_requested"]:
                    await self._end_cancelled(conn, job_id)
                elif retry and row["attempts"] < row["max_attempts"]:
                    await self._requeue(conn, job_id, error=error)
                else:
                    await self._finish(conn, job_id, JobState.FAILED, error)
                    await self._add_notice(conn, job_id, NoticeKind.FAILED, error)
                await self._notify(conn)
                return True

        return await self._retrying(failed)

    async def mark_cancelled(self, job_id: int, worker_id: str) -> bool:
        async def cancelled() -> bool:
            async with self._tx() as conn:
                if not await self._owns(conn, job_id, worker_id):
                    return False
                await self._end_cancelled(conn, job_id)
                await self._notify(conn)
                return True

        return await self._retrying(cancelled)

    async def release(self, job_id: int, worker_id: str) -> bool:
        async def released() -> bool:
            async with self._tx() as conn:
                row = await _one(
                    conn,
                    "SELECT cancel_requested FROM jobs WHERE id = %s AND state = 'running' AND worker_id = %s "
                    "FOR UPDATE",
                    (job_id, worker_id),
                )
                if row is None:
                    return False
                if row["cancel_requested"]:
                    await self._end_cancelled(conn, job_id)
                else:
                    await self._requeue(conn, job_id, uncount=True)
                await self._notify(conn)
                return True

        return await self._retrying(released)

    async def _owns(self, conn: psycopg.AsyncConnection, job_id: int, worker_id: str) -> bool:
        row = await _one(
            conn,
            "SELECT 1 FROM jobs WHERE id = %s AND state = 'running' AND worker_id = %s FOR UPDATE",
            (job_id, worker_id),
        )
        return row is not None

    async def _end_cancelled(self, conn: psycopg.AsyncConnection, job_id: int) -> None:
        row = await _one(conn, "SELECT error FROM jobs WHERE id = %s", (job_id,))
        await self._finish(conn, job_id, JobState.CANCELLED, None)
        if row is not None and row["error"] == ADMIN_CANCEL:
            await self._add_notice(conn, job_id, NoticeKind.CANCELLED, ADMIN_CANCEL)

    async def _finish(self, conn: psycopg.AsyncConnection, job_id: int, state: JobState, error: str | None) -> None:
        await conn.execute(
            "UPDATE jobs SET state = %s, finished_at = %s, error = coalesce(%s, error), worker_id = NULL, "
            "lease_until = NULL WHERE id = %s",
            (state.value, _now(), error, job_id),
        )

    # --- outbox --------------------------------------------------------------------------
    async def _add_notice(self, conn: psycopg.AsyncConnection, job_id: int, kind: NoticeKind, body: str) -> None:
        now = _now()
        await conn.execute(
            "INSERT INTO notices (job_id, kind, body, created_at, next_attempt_at) VALUES (%s, %s, %s, %s, %s)",
            (job_id, kind.value, body, now, now),
        )

    async def pending_notices(self, limit: int = 20) -> list[Notice]:
        async with self._read() as conn:
            rows = await _all(
                conn,
                "SELECT n.id AS notice_id, n.kind AS notice_kind, n.body AS notice_body, "
                "n.attempts AS notice_attempts, j.*, p.step AS progress_step, p.total AS progress_total "
                "FROM notices n JOIN jobs j ON j.id = n.job_id LEFT JOIN job_progress p ON p.job_id = j.id "
                "WHERE n.delivered_at IS NULL AND n.next_attempt_at <= %s ORDER BY n.id LIMIT %s",
                (_now(), int(limit)),
            )
        jobs = await self._localise([job_from_row(row) for row in rows])
        return [
            Notice(
                id=row["notice_id"],
                kind=NoticeKind(row["notice_kind"]),
                job=job,
                attempts=row["notice_attempts"],
                body=row["notice_body"],
            )
            for row, job in zip(rows, jobs, strict=True)
        ]

    async def notice_sent(self, notice_id: int, message_id: int | None) -> None:
        now = _now()
        async with self._tx() as conn:
            row = await _one(
                conn,
                "UPDATE notices SET delivered_at = %s, message_id = %s, attempts = attempts + 1 "
                "WHERE id = %s AND delivered_at IS NULL RETURNING job_id, kind",
                (now, message_id, notice_id),
            )
            if row is not None and row["kind"] == NoticeKind.RESULT.value:
                await conn.execute(
                    "UPDATE jobs SET result_message_id = %s, delivered_at = %s WHERE id = %s",
                    (message_id, now, row["job_id"]),
                )

    async def notice_failed(self, notice_id: int, error: str, retry_in_s: float, *, give_up: bool = False) -> None:
        now = _now()
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE notices SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s, "
                "delivered_at = CASE WHEN %s THEN %s::double precision ELSE NULL END "
                "WHERE id = %s AND delivered_at IS NULL",
                (error[:1000], now + retry_in_s, give_up, now, notice_id),
            )

    async def _localise(self, jobs: list[Job]) -> list[Job]:
        """Point finished jobs at their images in OUTPUT_DIR, writing the ones not there yet."""
        if self.output_dir is None:
            return jobs
        done = [job for job in jobs if job.state is JobState.DONE]
        if not done:
            return jobs
        async with self._read() as conn:
            rows = await _all(conn, "SELECT id, image_count FROM jobs WHERE id = ANY(%s)", ([job.id for job in done],))
        counts = {row["id"]: row["image_count"] for row in rows}
        wanted = {
            (job.id, index): files.result_file(self.output_dir, self._cluster_id, job.id, index)
            for job in done
            for index in range(counts.get(job.id, 0))
        }
        absent = set(await asyncio.to_thread(files.missing, list(wanted.values())))
        keys = [key for key, path in wanted.items() if path in absent]
        if keys:
            async with self._read() as conn:
                images = await _all(
                    conn,
                    "SELECT job_id, idx, png FROM job_images WHERE (job_id, idx) IN "
                    "(SELECT * FROM unnest(%s::bigint[], %s::int[]))",
                    ([k[0] for k in keys], [k[1] for k in keys]),
                )
            for image in images:
                path = wanted[(image["job_id"], image["idx"])]
                await asyncio.to_thread(files.write_atomic, path, bytes(image["png"]))
        for job in done:
            job.result_paths = [str(wanted[(job.id, i)]) for i in range(counts.get(job.id, 0))]
        return jobs

    # --- runtime state and audit -----------------------------------------------------------
    async def _kv_get(self, conn: psycopg.AsyncConnection, key: str) -> str | None:
        row = await _one(conn, "SELECT value FROM kv WHERE key = %s", (key,))
        return row["value"] if row else None

    async def kv_get(self, key: str) -> str | None:
        async with self._read() as conn:
            return await self._kv_get(conn, key)

    async def kv_set(self, key: str, value: str) -> None:
        async with self._tx() as conn:
            await self._kv_set(conn, key, value)

    async def _kv_set(self, conn: psycopg.AsyncConnection, key: str, value: str) -> None:
        await conn.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, value, _now()),
        )

    async def set_paused(self, paused: bool) -> None:
        async with self._tx() as conn:
            await self._kv_set(conn, "paused", "1" if paused else "0")
            if not paused:
                queues = await _all(conn, "SELECT DISTINCT queue_name FROM procrastinate_jobs WHERE status = 'todo'")
                await dispatch.wake_workers(conn, [row["queue_name"] for row in queues])
            await self._notify(conn)

    async def is_paused(self) -> bool:
        return await self.kv_get("paused") == "1"

    async def audit(self, actor_id: int, action: str, detail: str = "", *, guild_id: int | None = None) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO audit (at, actor_id, guild_id, action, detail) VALUES (%s, %s, %s, %s, %s)",
                (_now(), actor_id, guild_id, action, detail[:2000]),
            )

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        async with self._read() as conn:
            rows = await _all(conn, "SELECT * FROM audit ORDER BY id DESC LIMIT %s", (int(limit),))
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
        values = {**fields, "name": name, "last_seen": _now()}
        values.setdefault("started_at", values["last_seen"])
        columns = list(values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "name" and (c in fields or c == "last_seen"))

        async def report() -> None:
            async with self._tx() as conn:
                await conn.execute(
                    f"INSERT INTO gpu_workers ({', '.join(columns)}) VALUES ({', '.join('%s' for _ in columns)}) "
                    f"ON CONFLICT (name) DO UPDATE SET {updates}",
                    tuple(values.values()),
                )

        await self._retrying(report)

    async def list_workers(self) -> list[WorkerInfo]:
        async with self._read() as conn:
            rows = await _all(conn, "SELECT * FROM gpu_workers ORDER BY name")
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
                current_job=row["current_job"],
                started_at=row["started_at"],
                last_seen=row["last_seen"],
                pid=row["pid"],
                note=row["note"],
            )
            for row in rows
        ]


async def _one(conn: psycopg.AsyncConnection, query: str, params: Any = None) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)  # type: ignore[arg-type]
        return await cursor.fetchone()


async def _all(conn: psycopg.AsyncConnection, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)  # type: ignore[arg-type]
        return await cursor.fetchall()
