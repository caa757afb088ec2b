"""The queue's dispatch to GPU machines on PostgreSQL: every attempt of a queued job is one procrastinate job
(a token, db.postgres.dispatch) that a worker fetches with `FOR UPDATE SKIP LOCKED`, in the claim order of
db.fairness. A state change, its token and its outbox row are written in one transaction, so the two never
disagree after a crash. A running job is interrupted when its lease ran out (renewed by the per-job
heartbeat) or when the procrastinate worker that fetched it stopped sending its own heartbeat (a killed or
cut-off machine): `requeue_expired_leases` puts it back with a fresh token, or fails it after three attempts.
"""

from __future__ import annotations

import logging
from typing import Any

from procrastinate import exceptions as pexc
from procrastinate.jobs import Status

from db import base, clock, enqueue
from db.models import RESUMED_WORKER_LOST, Enqueued, EnqueueLimits, Heartbeat, Job, Requester
from db.postgres import dispatch
from db.postgres.connection import PostgresConnection, raw
from jobrequest import JobRequest

log = logging.getLogger(__name__)

# Enqueues are serialised (caps, cooldown and fairness rounds read then write): a constant lock key.
ENQUEUE_LOCK = 0x636F67656E71


class JobDispatch(PostgresConnection):
    """Enqueue with a token, claims, heartbeats, and the recovery of jobs whose worker stopped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pworkers: dict[str, int] = {}  # procrastinate worker ids of claim_next's callers

    # --- the token of a queued job ------------------------------------------------------------------------
    async def _enter_queue(self, conn: base.Conn, job_id: int) -> None:
        await conn.run("UPDATE job_progress SET step = NULL WHERE job_id = ?", (job_id,))
        row = await conn.one("SELECT fair_round, width * height AS area FROM jobs WHERE id = ?", (job_id,))
        assert row is not None
        await self._new_token(conn, job_id, row["fair_round"], row["area"])

    async def _new_token(self, conn: base.Conn, job_id: int, fair_round: int, area: int) -> None:
        """procrastinate hands tokens out in claim order: priority = -round, then token id (db.fairness)."""
        token = await dispatch.defer_token(self._app, raw(conn), job_id, fair_round, area)
        await conn.run("UPDATE jobs SET token_id = ? WHERE id = ?", (token, job_id))

    async def _withdraw(self, conn: base.Conn, job_id: int, *, running: bool) -> None:
        """Withdraw a waiting token, or have procrastinate notify the worker running it (abort)."""
        row = await conn.one("SELECT token_id FROM jobs WHERE id = ?", (job_id,))
        if row is not None and row["token_id"] is not None:
            await dispatch.cancel_token(self._app, raw(conn), row["token_id"], abort=running)

    async def _progress_done(self, conn: base.Conn, job_id: int) -> None:
        await conn.run("UPDATE job_progress SET step = total WHERE job_id = ?", (job_id,))

    async def _on_resume(self, conn: base.Conn) -> None:
        queues = await conn.all("SELECT DISTINCT queue_name FROM procrastinate_jobs WHERE status = 'todo'")
        await dispatch.wake_workers(raw(conn), [row["queue_name"] for row in queues])

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
                (clock.now(), self.stalled_after_s),
            )
            for row in rows:
                if row["token"] in ("todo", "doing"):
                    await dispatch.fail_token(self._app, raw(conn), row["token_id"])
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
                    await dispatch.fail_token(self._app, raw(conn), row["token_id"])
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
        at = clock.now()
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
            at = clock.now()
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
        at = clock.now()
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
