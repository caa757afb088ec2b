"""The buttons under every result: Re-roll, Variations, Info, Delete (and Finish under a draft); and under the
notice that stands for a flagged result outside age-restricted channels, the one that sends it by DM.

They are ``DynamicItem``s whose custom_id carries the job id (``cv4:reroll:12``), so
after a restart discord.py rebuilds them from the id alone: no view state has to
survive in memory (the ``cogs.buttons`` extension registers them). Re-roll and
Variations queue their job through ``submit`` like /imagine; errors go through the
same ``report`` as slash commands.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import discord

from cogs.utils.checks import is_admin_for
from cogs.utils.errors import reply_private, report
from cogs.utils.host import Host
from cogs.utils.i18n import Locale, msg, t
from cogs.utils.image_jobs import finished_job as _finished_job
from cogs.utils.image_jobs import open_remix, upscale, vary
from cogs.utils.notices import kind_name
from cogs.utils.safety import spoilered
from cogs.utils.status import reason_text
from cogs.utils.submit import submit
from cogs.utils.text import clip, params_line, quote, relative, seconds_text
from db.models import Job, JobNotFound, JobState, NotAllowed
from jobrequest import MAX_IMAGES_PER_JOB, STRONG_STRENGTH, SUBTLE_STRENGTH, image_seed

log = logging.getLogger(__name__)

Button = discord.ui.Button[discord.ui.View]
Handler = Callable[[Host, discord.Interaction, int], Awaitable[None]]


def _button(label: str, emoji: str, action: str, job_id: int, style: discord.ButtonStyle) -> Button:
    return discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"cv4:{action}:{job_id}")


async def _run(interaction: discord.Interaction, job_id: int, handler: Handler) -> None:
    interaction.extras["job_id"] = job_id
    try:
        await handler(cast(Host, interaction.client), interaction, job_id)
    except Exception as exc:
        await report(interaction, exc, job_id=job_id)


async def reroll(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    """Same parameters, a new random seed: a new job of the person who clicked, with the usual caps."""
    parent = await _finished_job(bot, job_id)
    request = dataclasses.replace(parent.request, seed=None)
    await submit(bot, interaction, request, kind="reroll", parent_job_id=job_id)


async def variations(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    """Four images from the seeds right after the parent's, so they stay close to it."""
    parent = await _finished_job(bot, job_id)
    assert parent.seed_used is not None
    seed = image_seed(parent.seed_used, parent.request.count)
    request = dataclasses.replace(parent.request, seed=seed, count=MAX_IMAGES_PER_JOB)
    await submit(bot, interaction, request, kind="variations", parent_job_id=job_id)


async def finish(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    """A draft made in full: the same prompt, seed and size without the step cache."""
    parent = await _finished_job(bot, job_id)
    request = dataclasses.replace(parent.request, seed=parent.seed_used, draft=False)
    await submit(bot, interaction, request, kind="finish", parent_job_id=job_id)


async def send_by_dm(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    """A flagged result's images, by DM and as spoilers, to the one who asked for it (nobody else)."""
    job = await bot.queue.get_job(job_id)
    if job is None:
        raise JobNotFound(msg("job.gone", job=job_id))
    if interaction.user.id != job.requester.user_id:
        raise NotAllowed(msg("safety.not_yours", job=job_id))
    await interaction.response.defer(ephemeral=True, thinking=True)
    files = spoilered(await bot.queue.results.read(job))
    locale = interaction.locale
    dm = await bot.create_dm(interaction.user)
    text = clip(f"{t('safety.by_dm', locale, job=job_id)}\n> {quote(job.request.prompt, 900)}")
    try:
        await dm.send(text, files=[discord.File(io.BytesIO(f.data), filename=f.name) for f in files])
    except discord.Forbidden:
        await reply_private(interaction, t("safety.dm_closed", locale, job=job_id))
        return
    await reply_private(interaction, t("safety.sent", locale, job=job_id))


async def info(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    job = await bot.queue.get_job(job_id)
    if job is None:
        raise JobNotFound(msg("job.gone", job=job_id))
    await reply_private(interaction, job_info(job, bot.model_label, interaction.locale))


async def delete(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    """Only the requester or an admin; the message goes, and the job remembers it was deleted."""
    job = await bot.queue.get_job(job_id)
    if job is None:
        raise JobNotFound(msg("job.gone", job=job_id))
    if interaction.user.id != job.requester.user_id and not is_admin_for(
        interaction, bot.settings, job.requester.guild_id
    ):
        raise NotAllowed(msg("job.delete_not_allowed", job=job_id))
    await interaction.response.send_message(t("button.deleted", interaction.locale, job=job_id), ephemeral=True)
    if interaction.message is not None:
        try:
            await interaction.message.delete()
        except discord.NotFound:
            pass
    await bot.queue.mark_result_deleted(job_id)
    if interaction.user.id != job.requester.user_id:
        await bot.queue.audit(
            interaction.user.id,
            "delete",
            f"job #{job_id} of user {job.requester.user_id}",
            guild_id=interaction.guild_id,
        )
    log.info("Job #%s result deleted by %s", job_id, interaction.user.id)


def job_info(job: Job, model_id: str, locale: Locale = None) -> str:
    """Everything about a job, for the Info button (in the language of the one who clicked)."""
    request = job.request
    origin = ""
    if job.parent_job_id:
        origin = t("info.from", locale, parent=job.parent_job_id, kind=kind_name(job.kind, locale))
    lines = [f"**#{job.id}** — {t(f'state.{job.state.value}', locale)}{origin}"]
    lines.append(t("info.prompt", locale, prompt=quote(request.prompt, 900)))
    if request.negative_prompt:
        lines.append(t("info.negative", locale, negative=quote(request.negative_prompt, 400)))
    seed = job.seed_used if job.seed_used is not None else request.seed
    lines.append(t("info.parameters", locale, params=params_line(request, seed, locale)))
    if request.start_image is not None:
        if request.upscale:
            start = t("info.upscale", locale, factor=request.upscale)
        else:
            start = t("info.strength", locale, strength=request.strength)
        lines.append(t("info.started_from", locale, start=start, digest=request.start_image[:12]))
    plan = job.plan or t("info.not_run", locale)
    lines.append(t("info.model", locale, model=quote(model_id, 100), plan=plan))
    timing = [t("info.asked", locale, when=relative(job.created_at))]
    if job.started_at is not None:
        timing.append(t("info.waited", locale, duration=seconds_text(job.started_at - job.created_at, locale)))
    if job.started_at is not None and job.finished_at is not None:
        timing.append(t("info.ran", locale, duration=seconds_text(job.finished_at - job.started_at, locale)))
    lines.append(t("info.timing", locale, timing=" · ".join(timing)))
    lines.append(t("info.by", locale, user=job.requester.user_id))
    if job.flagged:
        lines.append(t("info.flagged", locale))
    if job.error and job.state is not JobState.DONE:
        lines.append(t("info.error", locale, error=quote(reason_text(job.error, locale), 400)))
    return clip("\n".join(lines))


class _JobButton(discord.ui.DynamicItem[Button], template=r"cv4:(?P<action>[a-z]+):(?P<job>\d+)"):
    """Shared behaviour; each subclass below has its own template so discord.py routes clicks to it."""

    handler: Handler
    emoji: str
    action: str  # also names its label in the catalogue: button.<action>
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: int, locale: Locale = None, row: int | None = None) -> None:
        label = t(f"button.{self.action}", locale)
        super().__init__(_button(label, self.emoji, self.action, job_id, self.style), row=row)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Any:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _run(interaction, self.job_id, type(self).handler)


class RerollButton(_JobButton, template=r"cv4:reroll:(?P<job>\d+)"):
    handler = reroll
    emoji, action = "🎲", "reroll"
    style = discord.ButtonStyle.primary


# Also answers "cv4:vary:", the id this button carries on results posted by earlier versions ("vary" now
# names image-to-image only).
class VariationsButton(_JobButton, template=r"cv4:(?:variations|vary):(?P<job>\d+)"):
    handler = variations
    emoji, action = "🔀", "variations"


class InfoButton(_JobButton, template=r"cv4:info:(?P<job>\d+)"):
    handler = info
    emoji, action = "ℹ️", "info"


class DeleteButton(_JobButton, template=r"cv4:delete:(?P<job>\d+)"):
    handler = delete
    emoji, action = "🗑️", "delete"
    style = discord.ButtonStyle.danger


async def vary_subtle(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    await vary(bot, interaction, job_id, SUBTLE_STRENGTH)


async def vary_strong(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    await vary(bot, interaction, job_id, STRONG_STRENGTH)


class VarySubtleButton(_JobButton, template=r"cv4:subtle:(?P<job>\d+)"):
    handler = vary_subtle
    emoji, action = "🌱", "subtle"


class VaryStrongButton(_JobButton, template=r"cv4:strong:(?P<job>\d+)"):
    handler = vary_strong
    emoji, action = "🌪️", "strong"


class RemixButton(_JobButton, template=r"cv4:remix:(?P<job>\d+)"):
    handler = open_remix
    emoji, action = "✏️", "remix"


class UpscaleButton(_JobButton, template=r"cv4:upscale:(?P<job>\d+)"):
    handler = upscale
    emoji, action = "🔍", "upscale"


class FinishButton(_JobButton, template=r"cv4:finish:(?P<job>\d+)"):
    handler = finish
    emoji, action = "✨", "finish"
    style = discord.ButtonStyle.success


# Two rows on the message: the four buttons of every result, then the four that start from its image.
RESULT_BUTTONS: tuple[type[_JobButton], ...] = (
    RerollButton,
    VariationsButton,
    InfoButton,
    DeleteButton,
    VarySubtleButton,
    VaryStrongButton,
    RemixButton,
    UpscaleButton,
)


class SendByDmButton(_JobButton, template=r"cv4:bydm:(?P<job>\d+)"):
    handler = send_by_dm
    emoji, action = "📩", "bydm"
    style = discord.ButtonStyle.primary


# Every button discord.py rebuilds from its custom_id after a restart (cogs.buttons registers them).
DYNAMIC_BUTTONS: tuple[type[_JobButton], ...] = (*RESULT_BUTTONS, FinishButton, SendByDmButton)


def by_dm_view(job_id: int, locale: Locale = None) -> discord.ui.View:
    """The button under a flagged result's notice (cogs.utils.safety: age-restricted mode)."""
    view = discord.ui.View(timeout=None)
    view.add_item(SendByDmButton(job_id, locale))
    return view


def result_view(job_id: int, locale: Locale = None, *, draft: bool = False) -> discord.ui.View:
    """The buttons for a result message; they keep working after a restart (see DYNAMIC_BUTTONS). Everyone who
    sees the message sees the same labels: they are in the language of the one the post is addressed to. A
    draft's first row starts with Finish."""
    view = discord.ui.View(timeout=None)
    if draft:
        view.add_item(FinishButton(job_id, locale, row=0))
    for index, item in enumerate(RESULT_BUTTONS):
        button = item(job_id, locale)
        button.row = index // 4
        view.add_item(button)
    return view
