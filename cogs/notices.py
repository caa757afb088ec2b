"""What each owed channel post says: results, failures, resumed and cancelled jobs.

Kept apart from the delivery loop so the wording and the file checks can be tested
without Discord. Result files are posted only if they sit inside OUTPUT_DIR; a missing
file becomes a failure message that says what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cogs.text import clip, params_line, quote
from db.models import Job, Notice, NoticeKind
from engine.results import inside_output_dir

log = logging.getLogger(__name__)

GENERIC_FAILURE = "Something went wrong while making it. Try again; if it keeps happening, tell the bot owner."


@dataclass(frozen=True)
class Post:
    """One channel post owed to a user: text, files to attach, and whether it carries the result buttons."""

    content: str
    user_id: int
    files: list[Path] = field(default_factory=list)
    buttons_for: int | None = None


def compose(notice: Notice, output_dir: Path) -> Post:
    job = notice.job
    user = job.requester.user_id
    if notice.kind is NoticeKind.RESULT:
        return _result(job, output_dir)
    if notice.kind is NoticeKind.FAILED:
        error = user_error(notice.body or job.error or "")
        return Post(clip(f"<@{user}> Job #{job.id} failed: {quote(error, 1200)}\n{_prompt(job)}"), user)
    if notice.kind is NoticeKind.RESUMED:
        return Post(f"<@{user}> Your job #{job.id} was interrupted by a restart and is back in the queue.", user)
    reason = notice.body or job.error or "cancelled by an admin"
    return Post(clip(f"<@{user}> Your job #{job.id} was cancelled ({quote(reason, 200)}).\n{_prompt(job)}"), user)


def user_error(text: str) -> str:
    """Errors come from the engine already phrased for users; never let a stack trace through anyway."""
    text = text.strip()
    if not text or "Traceback (most recent call last)" in text or '  File "' in text:
        return GENERIC_FAILURE
    return text


def _result(job: Job, output_dir: Path) -> Post:
    user = job.requester.user_id
    paths = [Path(p) for p in job.result_paths]
    outside = [str(p) for p in paths if not inside_output_dir(output_dir, p)]
    if outside:  # the bot only ever writes there: a row pointing elsewhere was tampered with
        log.warning("Not posting job #%s: its files %s are not in OUTPUT_DIR %s", job.id, outside, output_dir)
        text = (
            f"<@{user}> Job #{job.id} finished, but its image is not in the bot's output folder, so it was not "
            "posted (the bot owner can see why in the log). Run /imagine again to make it anew."
        )
        return Post(clip(f"{text}\n{_prompt(job)}"), user)
    usable = [p for p in paths if os.path.isfile(p)]
    if not paths or len(usable) != len(paths):
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
    return Post(clip("\n".join(lines)), user, files=usable, buttons_for=job.id)


def _prompt(job: Job) -> str:
    return f"> {quote(job.request.prompt, 900)}"
