"""The text of a job's status message: the /imagine reply that is edited as the job moves on.

Pure functions of the job and a few numbers, so the first reply and every later edit
read the same and tests can check them without Discord. The message is public but addressed to the
person who asked, so it is written in the locale the job stores (cogs.utils.i18n); a note about the engine
or the queue is kept as a catalogue text and said in each job's language.
"""

from __future__ import annotations

from dataclasses import dataclass

from cogs.utils.i18n import EngineSaid, Locale, localize, msg, stored_text, t
from cogs.utils.text import bar, clip, params_line, quote, relative, seconds_text, whole_minutes
from db.models import ADMIN_CANCEL, CRASH_ERROR, PURGED, Job, JobState
from engine.types import EngineState, EngineStatus


@dataclass(frozen=True)
class StatusLine:
    """What the status line of one job depends on; the loop edits when this changes."""

    state: JobState
    position: int | None = None
    step: int = 0
    total: int = 0
    note: str | None = None  # a catalogue text (msg): each job's message says it in its own language


def engine_note(status: EngineStatus) -> str | None:
    """Why jobs are not moving, if the engine is the reason."""
    if status.state in (EngineState.STARTING, EngineState.LOADING):
        return msg("status.warming", message=EngineSaid(status.load_message), fraction=status.load_fraction)
    if status.state is EngineState.SWITCHING:
        return msg("status.switching")
    if status.state is EngineState.FAILED:
        error = EngineSaid(status.error) if status.error else msg("status.unknown_error")
        return msg("status.engine_failed", error=error)
    return None


def status_line(job: Job, *, position: int | None, note: str | None, paused: bool) -> StatusLine:
    if job.state is JobState.QUEUED:
        waiting = msg("status.paused") if paused else note
        return StatusLine(job.state, position=position, note=waiting)
    if job.state is JobState.RUNNING:
        return StatusLine(job.state, step=job.progress_step or 0, total=job.progress_total or job.request.steps)
    return StatusLine(job.state)


def status_text(job: Job, facts: StatusLine, *, eta_s: float | None, now: float) -> str:
    """The whole status message for the job's current state, in the language of the one who asked."""
    locale = job.requester.locale
    lines = [_first_line(job, facts, eta_s, now)]
    if facts.note and facts.state is JobState.QUEUED:
        lines.append(localize(facts.note, locale))
    lines.append(f"> {quote(job.request.prompt, 300)}")
    seed = job.seed_used if job.seed_used is not None else job.request.seed
    lines.append(f"-# {params_line(job.request, seed, locale)}")
    return clip("\n".join(lines))


def _first_line(job: Job, facts: StatusLine, eta_s: float | None, now: float) -> str:
    locale = job.requester.locale
    if facts.state is JobState.QUEUED:
        eta = eta_s or 0.0
        return t(
            "status.queued",
            locale,
            job=job.id,
            position=facts.position or 1,
            minutes=whole_minutes(eta),
            when=relative(now + eta),
        )
    if facts.state is JobState.RUNNING:
        left = ""
        if eta_s is not None:
            left = t("status.left", locale, duration=seconds_text(eta_s, locale), when=relative(now + eta_s))
        return t(
            "status.running",
            locale,
            job=job.id,
            bar=bar(facts.step, facts.total),
            step=facts.step,
            total=facts.total,
            left=left,
        )
    if facts.state is JobState.DONE:
        return t("status.done", locale, job=job.id)
    if facts.state is JobState.FAILED:
        error = reason_text(job.error, locale) if job.error else t("status.unknown_error", locale)
        return t("status.failed", locale, job=job.id, error=quote(error, 400))
    reason = ""
    if job.error and "admin" in job.error:
        reason = t("status.cancel_reason", locale, reason=quote(reason_text(job.error, locale), 100))
    return t("status.cancelled", locale, job=job.id, reason=reason)


def reason_text(error: str, locale: Locale) -> str:
    """A job's stored error in the locale's language when it is one the queue writes itself (an admin's cancel,
    a purge, repeated crashes) or one of the coded texts of the queue, the rules and the engine; else as it is."""
    if error == ADMIN_CANCEL:
        return t("reason.admin_cancel", locale)
    if error == PURGED:
        return t("reason.purged", locale)
    before, _, after = CRASH_ERROR.partition("{n}")
    count = error.removeprefix(before).removesuffix(after)
    if error.startswith(before) and error.endswith(after) and count.isdigit():
        return t("reason.crashed", locale, n=int(count))
    return stored_text(error, locale) or error
