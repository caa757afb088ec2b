"""What each owed channel post says: results, failures, resumed and cancelled jobs.

Kept apart from the delivery loop so the wording and the file checks can be tested
without Discord. Result images come from the queue's result store, which posts only
files of its own (a tampered path is refused and logged here); a missing file becomes
a failure message that says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cogs.utils.text import clip, params_line, quote
from db.models import RESUMED_WORKER_LOST, Job, Notice, NoticeKind
from db.results import ResultFile, ResultStore, UnsafeResult

log = logging.getLogger(__name__)

GENERIC_FAILURE = "Something went wrong while making it. Try again; if it keeps happening, tell the bot owner."


@dataclass(frozen=True)
class Post:
    """One channel post owed to a user: text, images to attach, and whether it carries the result buttons."""

    content: str
    user_id: int
    files: list[ResultFile] = field(default_factory=list)
    buttons_for: int | None = None


async def compose(notice: Notice, results: ResultStore) -> Post:
    job = notice.job
    user = job.requester.user_id
    if notice.kind is NoticeKind.RESULT:
        return await _result(job, results)
    if notice.kind is NoticeKind.FAILED:
        error = user_error(notice.body or job.error or "")
        return Post(clip(f"<@{user}> Job #{job.id} failed: {quote(error, 1200)}\n{_prompt(job)}"), user)
    if notice.kind is NoticeKind.RESUMED:
        if notice.body == RESUMED_WORKER_LOST:
            return Post(f"<@{user}> The GPU worker making your job #{job.id} stopped; it is back in the queue.", user)
        # RESUMED_RESTART, or an older row without a reason: only a restart requeued jobs then
        return Post(f"<@{user}> Your job #{job.id} was interrupted by a restart and is back in the queue.", user)
    reason = notice.body or job.error or "cancelled by an admin"
    return Post(clip(f"<@{user}> Your job #{job.id} was cancelled ({quote(reason, 200)}).\n{_prompt(job)}"), user)


def user_error(text: str) -> str:
    """Errors come from the engine already phrased for users; never let a stack trace through anyway."""
    text = text.strip()
    if not text or "Traceback (most recent call last)" in text or '  File "' in text:
        return GENERIC_FAILURE
    return text


async def _result(job: Job, results: ResultStore) -> Post:
    user = job.requester.user_id
    try:
        files = await results.read(job)
    except UnsafeResult as exc:  # the bot only ever writes into its store: a row pointing elsewhere was tampered with
        log.warning("Not posting job #%s: %s", job.id, exc)
        text = (
            f"<@{user}> Job #{job.id} finished, but its image is not in the bot's output folder, so it was not "
            "posted (the bot owner can see why in the log). Run /imagine again to make it anew."
        )
        return Post(clip(f"{text}\n{_prompt(job)}"), user)
    except FileNotFoundError:
        files = []
    if not files:
        text = (
            f"<@{user}> Job #{job.id} finished, but its image file is missing on the bot's disk "
            "(it may have been cleaned up). Run /imagine again to make it anew."
        )
        return Post(clip(f"{text}\n{_prompt(job)}"), user)
    origin = f" ({job.kind} of #{job.parent_job_id})" if job.parent_job_id else ""
    lines = [f"<@{user}> here is **#{job.id}**{origin}", _prompt(job)]
    lines.append(f"-# {params_line(job.request, job.seed_used)}")
    if job.request.negative_prompt:
        lines.append(f"-# without: {quote(job.request.negative_prompt, 300)}")
    return Post(clip("\n".join(lines)), user, files=files, buttons_for=job.id)


def _prompt(job: Job) -> str:
    return f"> {quote(job.request.prompt, 900)}"
