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

import json
from collections.abc import Iterable, Sequence
from typing import Any

from db import clock, fairness
from db.base import Conn, Row
from db.flags import Flags
from db.heartbeats import Heartbeats
from db.models import (
    ADMIN_CANCEL,
    CRASH_ERROR,
    PURGED,
    RESUMED_RESTART,
    CancelOutcome,
    Job,
    JobNotFound,
    JobState,
    NotAllowed,
    NoticeKind,
    QueueError,
    QueueStats,
)
from db.outbox import Outbox
from db.per_user import PerUser
from db.retention import Retention
from db.rows import parse_states
from db.runtime import RuntimeState


class QueueCore(Outbox, RuntimeState, Retention, PerUser, Heartbeats, Flags):
    """`db.interface.JobQueue` minus what needs a backend's own SQL; subclasses add that. The parts it is
    made of each subclass `db.base.QueueBase`: the outbox, the runtime state and audit, retention, what is
    kept per user, heartbeats."""

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
        paths, timed = json.dumps(list(result_paths)), json.dumps(timings or {})
        values = (clock.now(), paths, seed_used, plan, timed, job_id, worker_id)

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
            (job_id, preview, clock.now()),
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
            (state.value, clock.now(), error, job_id),
        )
        await conn.run("DELETE FROM job_previews WHERE job_id = ?", (job_id,))  # previews are for running jobs
