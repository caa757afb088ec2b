"""The interfaces the cogs, the dispatcher and the cluster worker use to reach the queue.

`JobSource` is the small consumer half a dispatcher needs (on one machine, or as a cluster
worker); `JobQueue` is everything, for the bot. Both backends implement them (SQLite on one
machine, PostgreSQL for several GPU machines), so callers never see SQL or driver types.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from db.inputs import InputStore
from db.models import (
    AuditEntry,
    CancelOutcome,
    Enqueued,
    EnqueueLimits,
    Heartbeat,
    Job,
    JobState,
    Notice,
    QueueStats,
    Requester,
    UserSettings,
)
from db.results import ResultStore
from db.workers import WorkerInfo
from jobrequest import JobRequest


@runtime_checkable
class JobSource(Protocol):
    """The small consumer interface a dispatcher needs, on one machine or as a cluster worker."""

    results: ResultStore
    inputs: InputStore  # start images (img2img, Vary, Remix, Upscale), by sha256

    async def get_job(self, job_id: int) -> Job | None:
        """One job as stored (a Vary's parent, whose result it starts from); None if there is none."""

    async def claim_next(self, worker_id: str, lease_s: float) -> Job | None:
        """Atomically take the next job in claim order (db.fairness); None when empty or paused."""

    async def peek_next(self, n: int) -> list[Job]:
        """The next n queued jobs in the order claim_next would take them (for look-ahead work)."""

    async def heartbeat(
        self,
        job_id: int,
        worker_id: str,
        lease_s: float,
        *,
        step: int | None = None,
        total: int | None = None,
        preview: bytes | None = None,
    ) -> Heartbeat:
        """Renew the lease, record progress (and the newest live preview, if any); brings back a cancel."""

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
        """Mark done and queue the result post in one transaction. False if the lease was lost.

        `result_paths` is what `results.save` returned for the job's images."""

    async def mark_flagged(self, job_id: int, worker_id: str) -> bool:
        """The safety check flagged the running job's images: marked (and audited once) before `complete`.
        False if the lease was lost (db.flags)."""

    async def fail(self, job_id: int, worker_id: str, error: str, *, retry: bool = False) -> bool:
        """Mark failed (and tell the user), or with retry=True requeue while attempts remain."""

    async def mark_cancelled(self, job_id: int, worker_id: str) -> bool: ...

    async def release(self, job_id: int, worker_id: str) -> bool:
        """Hand a running job back to the queue without counting the attempt (clean shutdown)."""

    async def wait_for_change(self, max_wait: float) -> None:
        """Sleep until something was written (or the timeout), so loops need not spin."""


@runtime_checkable
class JobQueue(JobSource, Protocol):
    """Everything the bot does with the queue."""

    # --- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        """Connect and apply migrations."""

    async def close(self) -> None: ...

    async def recover_interrupted(self) -> tuple[list[int], list[int]]:
        """At start-up: requeue jobs a dead process left running (or fail them after max attempts).

        Returns (requeued ids, failed ids)."""

    async def requeue_expired_leases(self) -> tuple[list[int], list[int]]:
        """Same as recovery, for running jobs whose lease ran out (a hung or vanished worker)."""

    # --- producers (cogs) ------------------------------------------------------
    async def enqueue(
        self,
        requester: Requester,
        request: JobRequest,
        limits: EnqueueLimits | None = None,
        *,
        kind: str = "imagine",
        parent_job_id: int | None = None,
    ) -> Enqueued: ...

    async def cancel(self, job_id: int, *, by_user_id: int, is_admin: bool = False) -> CancelOutcome: ...

    async def purge(self, *, user_id: int | None = None) -> list[int]:
        """Cancel every queued job (of one user, if given). Returns the cancelled ids."""

    async def set_status_message(self, job_id: int, message_id: int) -> None: ...

    async def mark_result_deleted(self, job_id: int) -> None: ...

    async def delete_results(self, job_id: int) -> bool:
        """Retention: remove a finished job's images, and its start image if no other job needs it
        (db.retention). False if the job is not finished."""

    async def drop_start_image(self, digest: str, *, besides: int = 0) -> bool:
        """Remove a start image unless a job other than `besides` needs it. True if removed."""

    # --- reads -----------------------------------------------------------------
    async def list_user_jobs(
        self, user_id: int, *, states: Iterable[JobState | str] | None = None, limit: int = 20
    ) -> list[Job]:
        """A user's jobs, newest first; states defaults to queued and running."""

    async def preview(self, job_id: int) -> bytes | None:
        """The newest live preview of a running job (engine.preview), or None."""

    async def position(self, job_id: int) -> int | None:
        """1-based place among queued jobs in claim order, or None if not queued."""

    async def queue_length(self) -> int: ...

    async def pending_count(self, user_id: int) -> int:
        """Queued + running jobs of a user (what the per-user cap counts)."""

    async def active_jobs(self) -> list[Job]:
        """Queued and running jobs, in claim order (running first)."""

    async def stats(self) -> QueueStats: ...

    # --- outbox (delivery loop) ----------------------------------------------------
    async def pending_notices(self, limit: int = 20) -> list[Notice]:
        """Posts still owed, oldest first, whose retry time has come."""

    async def notice_sent(self, notice_id: int, message_id: int | None) -> None: ...

    async def notice_failed(self, notice_id: int, error: str, retry_in_s: float, *, give_up: bool = False) -> None:
        """Schedule another try, or with give_up=True close the notice unposted (channel gone)."""

    # --- runtime state and audit ------------------------------------------------------
    async def set_paused(self, paused: bool) -> None: ...

    async def is_paused(self) -> bool: ...

    async def kv_get(self, key: str) -> str | None: ...

    async def kv_set(self, key: str, value: str) -> None: ...

    async def audit(self, actor_id: int, action: str, detail: str = "", *, guild_id: int | None = None) -> None: ...

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]: ...

    # --- GPU workers (several machines) ------------------------------------------------
    async def list_workers(self) -> list[WorkerInfo]:
        """The GPU workers serving this queue as they last reported; none on a single machine."""

    # --- per user (db.per_user), retention (db.retention) --------------------------------------------------
    async def user_settings(self, user_id: int) -> UserSettings:
        """The user's saved /settings, or all defaults."""

    async def set_user_settings(self, user_id: int, settings: UserSettings) -> None: ...

    async def clear_user_settings(self, user_id: int) -> None: ...

    async def used_today(self, user_id: int) -> int:
        """Images the user asked for since the start of this UTC day (what DAILY_QUOTA counts)."""

    async def prune_results(self, before: float, *, limit: int = 200) -> list[int]:
        """Delete the images of jobs finished before `before`, store and rows together; returns their ids."""

    async def is_pruned(self, job_id: int) -> bool:
        """True once retention has started deleting the job's images."""
