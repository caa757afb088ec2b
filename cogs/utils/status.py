"""The text of a job's status message: the /imagine reply that is edited as the job moves on.

Pure functions of the job and a few numbers, so the first reply and every later edit
read the same and tests can check them without Discord.
"""

from __future__ import annotations

from dataclasses import dataclass

from cogs.utils.text import bar, clip, minutes, params_line, quote, relative, seconds_text
from db.models import Job, JobState
from engine.types import EngineState, EngineStatus


@dataclass(frozen=True)
class Snapshot:
    """What the status line of one job depends on; the loop edits when this changes."""

    state: JobState
    position: int | None = None
    step: int = 0
    total: int = 0
    note: str | None = None


def engine_note(status: EngineStatus) -> str | None:
    """Why jobs are not moving, if the engine is the reason."""
    if status.state in (EngineState.STARTING, EngineState.LOADING):
        return (
            f"The image engine is warming up ({status.load_message}, {status.load_fraction:.0%}); "
            "your job will start when it's ready."
        )
    if status.state is EngineState.SWITCHING:
        return "The image engine is switching memory plans; your job starts right after."
    if status.state is EngineState.FAILED:
        return f"The image engine could not start: {status.error or 'unknown error'}. An admin can check /status."
    return None


def snapshot(job: Job, *, position: int | None, note: str | None, paused: bool) -> Snapshot:
    if job.state is JobState.QUEUED:
        waiting = "The queue is paused by an admin; your job stays in line." if paused else note
        return Snapshot(job.state, position=position, note=waiting)
    if job.state is JobState.RUNNING:
        return Snapshot(job.state, step=job.progress_step or 0, total=job.progress_total or job.request.steps)
    return Snapshot(job.state)


def queued_line(job_id: int, position: int, eta_s: float, now: float) -> str:
    return f"Queued as #{job_id} — position {position}, {minutes(eta_s)} ({relative(now + eta_s)})"


def status_text(job: Job, snap: Snapshot, *, eta_s: float | None, now: float) -> str:
    """The whole status message for the job's current state."""
    first = _first_line(job, snap, eta_s, now)
    lines = [first]
    if snap.note and snap.state is JobState.QUEUED:
        lines.append(snap.note)
    lines.append(f"> {quote(job.request.prompt, 300)}")
    lines.append(f"-# {params_line(job.request, job.seed_used if job.seed_used is not None else job.request.seed)}")
    return clip("\n".join(lines))


def _first_line(job: Job, snap: Snapshot, eta_s: float | None, now: float) -> str:
    if snap.state is JobState.QUEUED:
        return queued_line(job.id, snap.position or 1, eta_s or 0.0, now)
    if snap.state is JobState.RUNNING:
        left = f", about {seconds_text(eta_s)} left ({relative(now + eta_s)})" if eta_s is not None else ""
        return f"#{job.id} — making it: `{bar(snap.step, snap.total)}` {snap.step}/{snap.total} steps{left}"
    if snap.state is JobState.DONE:
        return f"#{job.id} — Done — see below."
    if snap.state is JobState.FAILED:
        return f"#{job.id} — Failed: {quote(job.error or 'unknown error', 400)}"
    reason = job.error if job.error and "admin" in job.error else None
    return f"#{job.id} — Cancelled{f' ({quote(reason, 100)})' if reason else ''}."
