"""How long until a job is done: one GPU runs the active jobs in claim order, one after another."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from db.models import Job, JobState
from jobrequest import JobRequest

Estimate = Callable[[JobRequest], float]


def remaining_s(job: Job, estimate: Estimate, now: float | None = None) -> float:
    """Seconds a job still needs: all of it while queued; while running, the rest at its observed
    pace (or the estimate's unfinished share before the first step is reported)."""
    full = estimate(job.request)
    if job.state is not JobState.RUNNING or not job.progress_total:
        return full
    done = min(job.progress_step or 0, job.progress_total)
    if done and now is not None and job.started_at is not None and now > job.started_at:
        return (now - job.started_at) / done * (job.progress_total - done)
    return full * (1 - done / job.progress_total)


def finish_times(active: Sequence[Job], estimate: Estimate, now: float | None = None) -> dict[int, float]:
    """Seconds from now until each active job is done (jobs ahead, the running one's rest, itself)."""
    total = 0.0
    result = {}
    for job in active:
        total += remaining_s(job, estimate, now)
        result[job.id] = total
    return result


def queue_positions(active: Sequence[Job]) -> dict[int, int]:
    """1-based place of each queued job, in the order ``active_jobs`` lists them (claim order)."""
    queued = [job.id for job in active if job.state is JobState.QUEUED]
    return {job_id: index + 1 for index, job_id in enumerate(queued)}
