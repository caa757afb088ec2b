"""What each owed channel post says: results, failures, resumed and cancelled jobs.

Kept apart from the delivery loop so the wording and the file checks can be tested
without Discord. Result images come from the queue's result store, which posts only
files of its own (a tampered path is refused and logged here); a missing file becomes
a failure message that says what to do. Each post is written in the language of the one
who asked for the job (the locale it stores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cogs.utils.i18n import CATALOGUE, Locale, localize, msg, t
from cogs.utils.status import reason_text
from cogs.utils.text import clip, params_line, quote
from db.models import ADMIN_CANCEL, RESUMED_WORKER_LOST, Job, Notice, NoticeKind
from db.results import ResultFile, ResultStore, UnsafeResult

log = logging.getLogger(__name__)

GENERIC_FAILURE = msg("notice.generic_failure")


@dataclass(frozen=True)
class Post:
    """One channel post owed to a user: text, images to attach, and whether it carries the result buttons."""

    content: str
    user_id: int
    files: list[ResultFile] = field(default_factory=list)
    buttons_for: int | None = None
    locale: str | None = None  # the buttons' labels are in the language of the one who asked
    draft: bool = False  # a draft's buttons start with Finish
    dm_button_for: int | None = None  # a flagged result's notice: the button that sends that job's images by DM


async def compose(notice: Notice, results: ResultStore) -> Post:
    """The post, in the language of the one who asked for the job (the locale it stores)."""
    job = notice.job
    user, locale = job.requester.user_id, job.requester.locale
    if notice.kind is NoticeKind.RESULT:
        return await _result(job, results)
    if notice.kind is NoticeKind.FAILED:
        error = localize(user_error(notice.body or job.error or ""), locale)
        text = t("notice.failed", locale, user=user, job=job.id, error=quote(reason_text(error, locale), 1200))
        return Post(clip(f"{text}\n{_prompt(job)}"), user)
    if notice.kind is NoticeKind.RESUMED:
        if notice.body == RESUMED_WORKER_LOST:
            return Post(t("notice.worker_lost", locale, user=user, job=job.id), user)
        # RESUMED_RESTART, or an older row without a reason: only a restart requeued jobs then
        return Post(t("notice.restarted", locale, user=user, job=job.id), user)
    reason = reason_text(notice.body or job.error or ADMIN_CANCEL, locale)
    text = t("notice.cancelled", locale, user=user, job=job.id, reason=quote(reason, 200))
    return Post(clip(f"{text}\n{_prompt(job)}"), user)


def user_error(text: str) -> str:
    """Errors come from the engine already phrased for users; never let a stack trace through anyway."""
    text = text.strip()
    if not text or "Traceback (most recent call last)" in text or '  File "' in text:
        return GENERIC_FAILURE
    return text


async def _result(job: Job, results: ResultStore) -> Post:
    user, locale = job.requester.user_id, job.requester.locale
    try:
        files = await results.read(job)
    except UnsafeResult as exc:  # the bot only ever writes into its store: a row pointing elsewhere was tampered with
        log.warning("Not posting job #%s: %s", job.id, exc)
        text = t("notice.unsafe", locale, user=user, job=job.id)
        return Post(clip(f"{text}\n{_prompt(job)}"), user)
    except FileNotFoundError:
        files = []
    if not files:
        text = t("notice.missing", locale, user=user, job=job.id)
        return Post(clip(f"{text}\n{_prompt(job)}"), user)
    origin = ""
    if job.parent_job_id:
        origin = t("notice.origin", locale, kind=kind_name(job.kind, locale), parent=job.parent_job_id)
    lines = [t("notice.result", locale, user=user, job=job.id, origin=origin), _prompt(job)]
    lines.append(f"-# {params_line(job.request, job.seed_used, locale)}")
    if job.request.negative_prompt:
        lines.append(f"-# {t('settings.without', locale, negative=quote(job.request.negative_prompt, 300))}")
    return Post(clip("\n".join(lines)), user, files=files, buttons_for=job.id, locale=locale, draft=job.request.draft)


def kind_name(kind: str, locale: Locale) -> str:
    """A job kind in the locale's language (its stored name in English, or when the catalogue has no word)."""
    key = f"kind.{kind}"
    return t(key, locale) if key in CATALOGUE else kind


def _prompt(job: Job) -> str:
    return f"> {quote(job.request.prompt, 900)}"
