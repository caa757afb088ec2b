"""What a server does with a result the safety check flagged (engine.safety marks the job): its /safety mode.

Discord requires adult content to stay in age-restricted channels. The modes:

- ``off``: posted as any other result;
- ``spoiler``: posted as ``SPOILER_`` files (hidden until clicked);
- ``age-restricted`` (the default): posted only where Discord marks the channel age-restricted (NSFW; a thread
  counts as its parent channel); elsewhere — a DM included — a short notice with a button that sends the
  images by DM, as spoilers, to the one who asked;
- ``block``: not posted; the one who asked is told.

A private result (the user's /settings) and a job asked for in a DM follow the same rule (a DM is not an
age-restricted channel; a DM job has no server and gets the default). Nothing is deleted: the images stay in
the result store.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import Any

from cogs.utils.i18n import t
from cogs.utils.kv_keys import safety_key
from cogs.utils.notices import Post
from db.interface import JobQueue
from db.models import Job
from db.results import ResultFile

MODES = ("off", "spoiler", "age-restricted", "block")
DEFAULT_MODE = "age-restricted"


class Treatment(enum.Enum):
    AS_USUAL = "as usual"
    SPOILER = "spoiler"
    BY_DM = "by DM on request"  # a notice with the button that sends the images by DM
    BLOCKED = "blocked"


async def server_mode(queue: JobQueue, guild_id: int | None) -> str:
    """The server's /safety mode; the default for a server that chose none and for a DM job."""
    if guild_id is None:
        return DEFAULT_MODE
    stored = await queue.kv_get(safety_key(guild_id))
    return stored if stored in MODES else DEFAULT_MODE


def age_restricted(channel: Any) -> bool:
    """Whether Discord marks this channel age-restricted (a thread: its parent); a DM or an unknown channel is not."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw is not None and is_nsfw())


def treatment(mode: str, flagged: bool, in_age_restricted_channel: bool) -> Treatment:
    """What happens to a result: the one rule, for posts, /show and private results alike."""
    if not flagged or mode == "off":
        return Treatment.AS_USUAL
    if mode == "spoiler":
        return Treatment.SPOILER
    if mode == "block":
        return Treatment.BLOCKED
    return Treatment.AS_USUAL if in_age_restricted_channel else Treatment.BY_DM


def spoilered(files: list[ResultFile]) -> list[ResultFile]:
    return [ResultFile(f"SPOILER_{f.name}", f.data) for f in files]


def flagged_post(post: Post, job: Job, how: Treatment) -> Post:
    """A flagged result's post under its treatment (the post itself when it goes out as usual)."""
    user, locale = job.requester.user_id, job.requester.locale
    if how is Treatment.SPOILER:
        return replace(post, content=f"{post.content}\n-# {t('safety.spoilered', locale)}", files=spoilered(post.files))
    if how is Treatment.BY_DM:
        return Post(t("safety.notice", locale, user=user, job=job.id), user, dm_button_for=job.id, locale=locale)
    if how is Treatment.BLOCKED:
        return Post(t("safety.blocked", locale, user=user, job=job.id), user, locale=locale)
    return post
