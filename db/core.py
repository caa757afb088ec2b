"""The queue's rules, written once for every backend: checks, caps, cancel, crashes, the outbox.

A backend (db.sqlite_queue, db.postgres.queue) supplies its transactions and the few statements
only it can run (claiming, heartbeats, which running jobs are lost); everything else is here, in
SQL both SQLite and PostgreSQL accept. Statements use `?` placeholders; a backend whose driver
wants another style converts them (no statement here contains a literal `?` or `%`).

Rules kept here (enqueue's checks, caps and cooldown are in db.enqueue, the claim order in db.fairness):
- cancel: owners cancel their jobs, admins anyone's; a queued job ends at once, a running one is
  flagged and ends when its worker stops (an admin's cancel is announced to the owner then);
- crashes: a running job that was interrupted goes back to the queue (a RESUMED notice says why)
  until it has used `max_attempts`, then it fails with CRASH_ERROR;
- a state change and the notice announcing it are written in one transaction (outbox).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol, Self, TypeVar

from db import fairness
from db.heartbeats import Heartbeats
from db.models import (
    ADMIN_CANCEL,
    CRASH_ERROR,
    PURGED,
    RESUMED_RESTART,
    AuditEntry,
    CancelOutcome,
    Job,
    JobNotFound,
    JobState,
    NotAllowed,
    Notice,
    NoticeKind,
    QueueError,
    QueueStats,
)
from db.results import ResultStore
from db.retention import Retention
from db.rows import audit_from_row, job_from_row, parse_states

T = TypeVar("T")
Row = Mapping[str, Any]


def now() -> float:
    """Unix seconds; every stored time comes from here (tests replace it to move time)."""
    return time.time()


# --- the shared backend ------------------------------------------------------------------------------------


class Conn(Protocol):
    """One connection inside a backend's transaction (or read), with `?` placeholders."""

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; returns the number of rows changed."""
        ...


class QueueCore(Retention, Heartbeats):
    """`db.interface.JobQueue` minus what needs a backend's own SQL; subclasses add that."""

    results: ResultStore
    # SQL pieces that differ: the job row (PostgreSQL keeps progress in a table of its own), the
    # column holding a queued job's turn (db.fairness), and row locks (SQLite locks the whole file).
    JOB_COLUMNS: ClassVar[str] = "j.*"
    JOB_FROM: ClassVar[str] = "jobs j"
    TURN: ClassVar[str] = "queue_seq"
    FOR_UPDATE: ClassVar[str] = ""

    def __init__(self) -> None:
        self._changed_event = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what a backend provides ---------------------------------------------------------------------
    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _tx(self) -> AbstractAsyncContextManager[Conn]:
        """One write transaction; local waiters are woken after it committed."""
        raise NotImplementedError

    def _read(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Worker-side writes; a backend whose database can restart under a worker retries them."""
        return await fn()

    async def _enter_queue(self, conn: Conn, job_id: int) -> None:
        """The job (new or handed back) takes its turn in the queue; its progress is cleared."""
        raise NotImplementedError

    async def _withdraw(self, conn: Conn, job_id: int, *, running: bool) -> None:
        """A queued job was cancelled, or a running one asked to stop (PostgreSQL: its token)."""

    async def _progress_done(self, conn: Conn, job_id: int) -> None:
        raise NotImplementedError

    async def _announce(self, conn: Conn, what: str = "") -> None:
        """Tell other processes that something changed (delivered on commit)."""

    async def _on_resume(self, conn: Conn) -> None:
        """The queue was resumed (PostgreSQL: wake the workers)."""

    # --- change notification -------------------------------------------------------------------------
    def _wake_local(self) -> None:
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    async def wait_for_change(self, max_wait: float) -> None:
        event = self._changed_event
        try:
            await asyncio.wait_for(event.wait(), max_wait)
        except TimeoutError:
            pass

    # --- crashes -------------------------------------------------------------------------------------
    async def _settle_interrupted(self, conn: Conn, rows: Iterable[Row], reason: str) -> tuple[list[int], list[int]]:
        """Jobs whose worker is gone: requeue (RESUMED, with `reason`), or fail after max attempts."""
        requeued: list[int] = []
        failed: list[int] = []
        for row in rows:
            job_id = row["id"]
            if row["cancel_requested"]:
                await self._end_cancelled(conn, job_id)
            elif row["attempts"] >= row["max_attempts"]:
                error = CRASH_ERROR.format(n=row["attempts"])
                await self._finish(conn, job_id, JobState.FAILED, error)
                await self._add_notice(conn, job_id, NoticeKind.FAILED, error)
                failed.append(job_id)
            else:
                await self._requeue(conn, job_id)
                await self._add_notice(conn, job_id, NoticeKind.RESUMED, reason or RESUMED_RESTART)
                requeued.append(job_id)
        return requeued, failed

    async def _requeue(self, conn: Conn, job_id: int, *, error: str | None = None, uncount: bool = False) -> None:
        """Back to the queue; it keeps its fair round. `uncount`: the attempt does not count (clean hand-back)."""
        await conn.run(
            "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_until = NULL, started_at = NULL, "
            "error = coalesce(?, error), "
            "attempts = CASE WHEN ? AND attempts > 0 THEN attempts - 1 ELSE attempts END WHERE id = ?",
            (error, uncount, job_id),
        )
        await conn.run("DELETE FROM job_previews WHERE job_id = ?", (job_id,))  # previews are for running jobs
        await self._enter_queue(conn, job_id)

    # --- producers -----------------------------------------------------------------------------------
    async def cancel(self, job_id: int, *, by_user_id: int, is_admin: bool = False) -> CancelOutcome:
        async with self._tx() as conn:
            job = await self._get(conn, job_id, lock=True)
            if job is None:
                raise JobNotFound(job=job_id)
            own = job.requester.user_id == by_user_id
            if not own and not is_admin:
                raise NotAllowed(code="job.not_yours", job=job_id)
            if job.state.finished:
                raise QueueError(code="job.finished", job=job_id, state=job.state)
            if job.state is JobState.QUEUED:
                await self._finish(conn, job_id, JobState.CANCELLED, None if own else ADMIN_CANCEL)
                if not own:
                    await self._add_notice(conn, job_id, NoticeKind.CANCELLED, ADMIN_CANCEL)
                await self._withdraw(conn, job_id, running=False)
                await self._announce(conn)
                return CancelOutcome(job_id, JobState.CANCELLED, immediate=True)
            # The worker sees the flag at its next heartbeat and calls mark_cancelled. An admin's
            # cancel is announced to the owner then, once the job really stopped.
            await conn.run(
                "UPDATE jobs SET cancel_requested = ?, error = CASE WHEN ? THEN ? ELSE error END WHERE id = ?",
                (True, not own, ADMIN_CANCEL, job_id),
            )
            await self._withdraw(conn, job_id, running=True)
            await self._announce(conn)
            return CancelOutcome(job_id, JobState.RUNNING, immediate=False)

    async def purge(self, *, user_id: int | None = None) -> list[int]:
        async with self._tx() as conn:
            where, params = ("", ()) if user_id is None else (" AND user_id = ?", (user_id,))
            rows = await conn.all(
                f"SELECT id FROM jobs WHERE state = 'queued'{where} ORDER BY id{self.FOR_UPDATE}", params
            )
            ids = [row["id"] for row in rows]
            for job_id in ids:
                await self._finish(conn, job_id, JobState.CANCELLED, PURGED)
                await self._add_notice(conn, job_id, NoticeKind.CANCELLED, PURGED)
                await self._withdraw(conn, job_id, running=False)
            if ids:
                await self._announce(conn)
            return ids

    async def set_status_message(self, job_id: int, message_id: int) -> None:
        async with self._tx() as conn:
            await conn.run("UPDATE jobs SET status_message_id = ? WHERE id = ?", (message_id, job_id))

    async def mark_result_deleted(self, job_id: int) -> None:
        async with self._tx() as conn:
            await conn.run("UPDATE jobs SET result_deleted = ? WHERE id = ?", (True, job_id))

    # --- reads ---------------------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        async with self._read() as conn:
            return await self._get(conn, job_id)

    async def _get(self, conn: Conn, job_id: int, *, lock: bool = False) -> Job | None:
        lock_sql = f"{self.FOR_UPDATE} OF j" if lock and self.FOR_UPDATE else ""
        row = await conn.one(f"SELECT {self.JOB_COLUMNS} FROM {self.JOB_FROM} WHERE j.id = ?{lock_sql}", (job_id,))
        return job_from_row(row) if row else None

    async def _jobs(self, conn: Conn, where: str, params: Sequence[Any] = ()) -> list[Job]:
        rows = await conn.all(f"SELECT {self.JOB_COLUMNS} FROM {self.JOB_FROM} WHERE {where}", params)
        return [job_from_row(row) for row in rows]

    async def list_user_jobs(
        self, user_id: int, *, states: Iterable[JobState | str] | None = None, limit: int = 20
    ) -> list[Job]:
        wanted = [state.value for state in parse_states(states)]
        marks = ", ".join("?" for _ in wanted)
        async with self._read() as conn:
            return await self._jobs(
                conn,
                f"j.user_id = ? AND j.state IN ({marks}) ORDER BY j.id DESC LIMIT ?",
                (user_id, *wanted, max(0, int(limit))),
            )

    @property
    def _claim_order(self) -> str:
        return fairness.CLAIM_ORDER.format(turn=self.TURN)

    async def _position(self, conn: Conn, job_id: int) -> int | None:
        row = await conn.one(fairness.POSITION_SQL.format(turn=self.TURN), (job_id,))
        return int(row["position"]) if row else None

    async def position(self, job_id: int) -> int | None:
        async with self._read() as conn:
            return await self._position(conn, job_id)

    async def _count(self, where: str, params: Sequence[Any] = ()) -> int:
        async with self._read() as conn:
            row = await conn.one(f"SELECT count(*) AS n FROM jobs WHERE {where}", params)
        return int(row["n"]) if row else 0

    async def queue_length(self) -> int:
        return await self._count("state = 'queued'")

    async def pending_count(self, user_id: int) -> int:
        return await self._count("user_id = ? AND state IN ('queued', 'running')", (user_id,))

    async def peek_next(self, n: int) -> list[Job]:
        async with self._read() as conn:
            return await self._jobs(conn, f"j.state = 'queued' ORDER BY {self._claim_order} LIMIT ?", (max(0, n),))

    async def active_jobs(self) -> list[Job]:
        async with self._read() as conn:
            running = await self._jobs(conn, "j.state = 'running' ORDER BY j.started_at, j.id")
            queued = await self._jobs(conn, f"j.state = 'queued' ORDER BY {self._claim_order}")
        return running + queued

    async def stats(self) -> QueueStats:
        async with self._read() as conn:
            rows = await conn.all("SELECT state, count(*) AS n FROM jobs GROUP BY state")
            paused = await self._kv_get(conn, "paused") == "1"
        counts = {row["state"]: int(row["n"]) for row in rows}
        return QueueStats(
            queued=counts.get("queued", 0),
            running=counts.get("running", 0),
            done=counts.get("done", 0),
            failed=counts.get("failed", 0),
            cancelled=counts.get("cancelled", 0),
            paused=paused,
        )

    # --- consumers -----------------------------------------------------------------------------------
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
        """Mark done with what `results.save` returned, and queue the result post, in one transaction."""
        values = (now(), json.dumps(list(result_paths)), seed_used, plan, json.dumps(timings or {}), job_id, worker_id)

        async def done() -> bool:
            async with self._tx() as conn:
                changed = await conn.run(
                    "UPDATE jobs SET state = 'done', finished_at = ?, result_paths = ?, seed_used = ?, plan = ?, "
                    "timings_json = ?, lease_until = NULL WHERE id = ? AND state = 'running' AND worker_id = ?",
                    values,
                )
                if changed != 1:
                    return False
                await self._progress_done(conn, job_id)
                await conn.run("DELETE FROM job_previews WHERE job_id = ?", (job_id,))
                await self._add_notice(conn, job_id, NoticeKind.RESULT, "")
                await self._announce(conn, f"done {job_id}")
                return True

        return await self._retrying(done)

    async def _save_preview(self, conn: Conn, job_id: int, preview: bytes) -> None:
        """Keep the newest preview of a running job (its heartbeat checked that it is still running)."""
        await conn.run(
            "INSERT INTO job_previews (job_id, image, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET image = excluded.image, updated_at = excluded.updated_at",
            (job_id, preview, now()),
        )

    async def preview(self, job_id: int) -> bytes | None:
        """The newest preview of a running job; None when there is none or the job is no longer running."""
        async with self._read() as conn:
            row = await conn.one(
                "SELECT p.image FROM job_previews p JOIN jobs j ON j.id = p.job_id "
                "WHERE p.job_id = ? AND j.state = 'running'",
                (job_id,),
            )
        return bytes(row["image"]) if row is not None else None

    async def _running_row(self, conn: Conn, job_id: int, worker_id: str) -> Row | None:
        return await conn.one(
            "SELECT attempts, max_attempts, cancel_requested FROM jobs "
            f"WHERE id = ? AND state = 'running' AND worker_id = ?{self.FOR_UPDATE}",
            (job_id, worker_id),
        )

    async def fail(self, job_id: int, worker_id: str, error: str, *, retry: bool = False) -> bool:
        async def failed() -> bool:
            async with self._tx() as conn:
                row = await self._running_row(conn, job_id, worker_id)
                if row is None:
                    return False
                if retry and row["cancel_requested"]:
                    await self._end_cancelled(conn, job_id)  # requeueing would lose the cancel request
                elif retry and row["attempts"] < row["max_attempts"]:
                    await self._requeue(conn, job_id, error=error)
                else:
                    await self._finish(conn, job_id, JobState.FAILED, error)
                    await self._add_notice(conn, job_id, NoticeKind.FAILED, error)
                await self._announce(conn)
                return True

        return await self._retrying(failed)

    async def mark_cancelled(self, job_id: int, worker_id: str) -> bool:
        async def cancelled() -> bool:
            async with self._tx() as conn:
                if await self._running_row(conn, job_id, worker_id) is None:
                    return False
                await self._end_cancelled(conn, job_id)
                await self._announce(conn)
                return True

        return await self._retrying(cancelled)

    async def release(self, job_id: int, worker_id: str) -> bool:
        async def released() -> bool:
            async with self._tx() as conn:
                row = await self._running_row(conn, job_id, worker_id)
                if row is None:
                    return False
                if row["cancel_requested"]:
                    await self._end_cancelled(conn, job_id)  # back in the queue it would run again
                else:
                    await self._requeue(conn, job_id, uncount=True)
                await self._announce(conn)
                return True

        return await self._retrying(released)

    async def _end_cancelled(self, conn: Conn, job_id: int) -> None:
        """A running job whose cancel was requested has stopped; tell the owner if an admin did it."""
        row = await conn.one("SELECT error FROM jobs WHERE id = ?", (job_id,))
        await self._finish(conn, job_id, JobState.CANCELLED, None)
        if row is not None and row["error"] == ADMIN_CANCEL:
            await self._add_notice(conn, job_id, NoticeKind.CANCELLED, ADMIN_CANCEL)

    async def _finish(self, conn: Conn, job_id: int, state: JobState, error: str | None) -> None:
        await conn.run(
            "UPDATE jobs SET state = ?, finished_at = ?, error = coalesce(?, error), worker_id = NULL, "
            "lease_until = NULL WHERE id = ?",
            (state.value, now(), error, job_id),
        )
        await conn.run("DELETE FROM job_previews WHERE job_id = ?", (job_id,))  # previews are for running jobs

    # --- outbox --------------------------------------------------------------------------------------
    async def _add_notice(self, conn: Conn, job_id: int, kind: NoticeKind, body: str) -> None:
        at = now()
        await conn.run(
            "INSERT INTO notices (job_id, kind, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            (job_id, kind.value, body, at, at),
        )

    async def pending_notices(self, limit: int = 20) -> list[Notice]:
        async with self._read() as conn:
            rows = await conn.all(
                "SELECT n.id AS notice_id, n.kind AS notice_kind, n.body AS notice_body, "
                f"n.attempts AS notice_attempts, {self.JOB_COLUMNS} FROM {self.JOB_FROM} "
                "JOIN notices n ON n.job_id = j.id "
                "WHERE n.delivered_at IS NULL AND n.next_attempt_at <= ? ORDER BY n.id LIMIT ?",
                (now(), int(limit)),
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
        at = now()
        async with self._tx() as conn:
            row = await conn.one(
                "UPDATE notices SET delivered_at = ?, message_id = ?, attempts = attempts + 1 "
                "WHERE id = ? AND delivered_at IS NULL RETURNING job_id, kind",
                (at, message_id, notice_id),
            )
            if row is not None and row["kind"] == NoticeKind.RESULT.value:
                await conn.run(
                    "UPDATE jobs SET result_message_id = ?, delivered_at = ? WHERE id = ?",
                    (message_id, at, row["job_id"]),
                )

    async def notice_failed(self, notice_id: int, error: str, retry_in_s: float, *, give_up: bool = False) -> None:
        at = now()
        async with self._tx() as conn:
            await conn.run(
                "UPDATE notices SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                "delivered_at = CASE WHEN ? THEN CAST(? AS DOUBLE PRECISION) ELSE NULL END "
                "WHERE id = ? AND delivered_at IS NULL",
                (error[:1000], at + retry_in_s, give_up, at, notice_id),
            )

    # --- runtime state and audit ---------------------------------------------------------------------
    async def _kv_get(self, conn: Conn, key: str) -> str | None:
        row = await conn.one("SELECT value FROM kv WHERE key = ?", (key,))
        return row["value"] if row else None

    async def kv_get(self, key: str) -> str | None:
        async with self._read() as conn:
            return await self._kv_get(conn, key)

    async def kv_set(self, key: str, value: str) -> None:
        async with self._tx() as conn:
            await self._kv_set(conn, key, value)

    async def _kv_set(self, conn: Conn, key: str, value: str) -> None:
        await conn.run(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, value, now()),
        )

    async def set_paused(self, paused: bool) -> None:
        async with self._tx() as conn:
            await self._kv_set(conn, "paused", "1" if paused else "0")
            if not paused:
                await self._on_resume(conn)
            await self._announce(conn)

    async def is_paused(self) -> bool:
        return await self.kv_get("paused") == "1"

    async def audit(self, actor_id: int, action: str, detail: str = "", *, guild_id: int | None = None) -> None:
        async with self._tx() as conn:
            await conn.run(
                "INSERT INTO audit (at, actor_id, guild_id, action, detail) VALUES (?, ?, ?, ?, ?)",
                (now(), actor_id, guild_id, action, detail[:2000]),
            )

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        async with self._read() as conn:
            rows = await conn.all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (int(limit),))
        return [audit_from_row(row) for row in rows]
