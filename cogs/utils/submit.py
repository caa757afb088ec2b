"""Turn what a user asked for into a queued job, and answer with its status message.

/imagine without a picture and the Re-roll / Variations buttons go through ``submit``; a job that
starts from a picture goes through ``cogs.utils.image_jobs.submit_image_job``. Both meet the same
checks, each once (channel, role, then ``check_request``: ``jobrequest.check`` against the model's
limits and the ban list; then the queue's per-user and global caps, cooldown and daily quota) and get
the same kind of reply within Discord's 3-second window.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import TypeVar

import aiohttp
import discord

import jobrequest
from cogs.utils.checks import require_allowed_channel, require_allowed_role, require_no_banned_words
from cogs.utils.flags import Choices
from cogs.utils.host import Host
from cogs.utils.i18n import msg
from cogs.utils.kv_keys import drafts_key
from cogs.utils.status import StatusLine, engine_note, status_line, status_text
from cogs.utils.text import NO_MENTIONS, now
from db.models import Enqueued, EnqueueLimits, InvalidJob, Job, JobState, QueueError, Requester, UserSettings
from jobrequest import JobRequest, ModelLimits
from settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_request(
    choices: Choices, limits: ModelLimits, settings: Settings, defaults: UserSettings | None = None
) -> JobRequest:
    """Apply defaults to an /imagine's parsed choices (``cogs.utils.flags.parse_choices``) and check every rule
    (``check_request``); raise a user-facing error for any problem. The choices (inline flags over options) beat
    the user's own /settings (`defaults`, with the server's /drafts default filled in: ``imagine_defaults``),
    which beat the bot's defaults."""
    defaults = defaults or UserSettings()
    if not choices.prompt:
        raise InvalidJob(msg("imagine.empty_prompt"))
    aspect = choices.aspect or defaults.aspect
    width, height = limits.size_for_aspect(aspect) if aspect else (limits.native_size, limits.native_size)
    request = JobRequest(
        prompt=choices.prompt,
        negative_prompt=_first(choices.negative_prompt, defaults.negative_prompt, "").strip(),
        width=width,
        height=height,
        steps=_first(choices.steps, defaults.steps, settings.default_steps),
        guidance=float(_first(choices.guidance, defaults.guidance, settings.default_guidance)),
        seed=choices.seed,
        count=_first(choices.count, 1),
        draft=_first(choices.draft, defaults.draft, False),
    )
    return check_request(request, limits, settings)


async def imagine_defaults(bot: Host, interaction: discord.Interaction, choices: Choices) -> UserSettings:
    """The user's own /settings, with the server's /drafts default where neither they nor this /imagine chose
    anything about drafts (only then is it read)."""
    own = await bot.queue.user_settings(interaction.user.id)
    if choices.draft is not None or own.draft is not None or interaction.guild_id is None:
        return own
    return replace(own, draft=await bot.queue.kv_get(drafts_key(interaction.guild_id)) == "1")


def check_request(request: JobRequest, limits: ModelLimits, settings: Settings) -> JobRequest:
    """The edge's one check of a request: the model's limits and the ban list (the queue keeps its own
    invariant check). Returns the request, checked."""
    jobrequest.check(request, limits)
    require_no_banned_words((request.prompt, request.negative_prompt), settings)
    return request


def enqueue_limits(settings: Settings) -> EnqueueLimits:
    return EnqueueLimits(
        max_per_user=settings.max_jobs_per_user,
        max_total=settings.max_queue_length,
        cooldown_s=settings.user_cooldown_seconds,
        daily_quota=settings.daily_quota,
    )


async def submit(
    bot: Host,
    interaction: discord.Interaction,
    asked: Choices | JobRequest,
    *,
    kind: str = "imagine",
    parent_job_id: int | None = None,
) -> int:
    """Check where and what was asked (an /imagine's options, or a button's request made from a finished job),
    queue the job and reply with its status message (which the progress loop keeps editing)."""
    require_allowed_channel(interaction, bot.settings)
    require_allowed_role(interaction, bot.settings)
    limits = bot.engine.limits
    if isinstance(asked, Choices):
        request = build_request(asked, limits, bot.settings, await imagine_defaults(bot, interaction, asked))
    else:
        request = check_request(asked, limits, bot.settings)
    requester = requester_of(interaction)
    enqueued = await bot.queue.enqueue(
        requester, request, enqueue_limits(bot.settings), kind=kind, parent_job_id=parent_job_id
    )
    job_id = enqueued.job_id
    interaction.extras["job_id"] = job_id
    # Answer before any other database trip: Discord allows 3 s, and in a burst every read waits its turn
    # behind hundreds of writes.
    line, text = queued_status(bot, job_id, requester, request, enqueued, kind)
    try:
        callback = await interaction.response.send_message(text, allowed_mentions=NO_MENTIONS)
    except discord.NotFound:
        # Discord gave up on the interaction (no answer within 3 s) and told the user it failed: the job must
        # not run behind their back (they will likely ask again), so it is withdrawn.
        with contextlib.suppress(QueueError):
            await bot.queue.cancel(job_id, by_user_id=interaction.user.id)
        log.warning("Interaction %s expired before job #%s was confirmed; job withdrawn", interaction.id, job_id)
        return job_id
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        # Maybe answered, maybe not: keep the job (its result is posted in the channel either way).
        log.warning("Could not confirm job #%s to its user (%s); it stays queued", job_id, exc)
        return job_id
    message_id = callback.message_id
    if message_id is None:
        message_id = (await interaction.original_response()).id
    await bot.queue.set_status_message(job_id, message_id)
    bot.dispatch("job_queued", job_id, line)
    log.info("Job #%s queued by %s (%s) at position %s", job_id, interaction.user.id, kind, enqueued.position)
    return job_id


def requester_of(interaction: discord.Interaction) -> Requester:
    """Who asked, with the ids needed to answer long after the interaction expired, and their locale: the job's
    public posts are written in its language."""
    assert interaction.channel_id is not None
    return Requester(
        user_id=interaction.user.id,
        channel_id=interaction.channel_id,
        guild_id=interaction.guild_id,
        user_name=interaction.user.display_name[:100],
        interaction_id=interaction.id,
        locale=interaction.locale.value,
    )


def queued_status(
    bot: Host, job_id: int, requester: Requester, request: JobRequest, enqueued: Enqueued, kind: str
) -> tuple[StatusLine, str]:
    """The first status text of a just-queued job. The ETA is a first guess from the place in line (each job
    ahead taking as long as this one); the status loop replaces it within seconds."""
    eta = enqueued.position * bot.engine.estimate_seconds(request)
    job = Job(
        id=job_id, requester=requester, request=request, state=JobState.QUEUED, attempts=0, created_at=now(), kind=kind
    )
    line = status_line(job, position=enqueued.position, note=engine_note(bot.engine.status()), paused=enqueued.paused)
    return line, status_text(job, line, eta_s=eta, now=now())


def _first(*values: T | None) -> T:
    """The first value that was given (the last one is the default and is never None)."""
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value given and no default")
