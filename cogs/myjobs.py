"""/queue, /cancel and /show: a user's own jobs."""

from __future__ import annotations

import io
import logging
from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.checks import is_admin, is_admin_for, require_allowed_channel
from cogs.utils.errors import reply_private
from cogs.utils.eta import finish_times, queue_positions
from cogs.utils.host import Host
from cogs.utils.i18n import msg, t
from cogs.utils.kv_keys import spoilers_key
from cogs.utils.safety import Treatment, age_restricted, server_mode, spoilered, treatment
from cogs.utils.text import NO_MENTIONS, clip, now, params_line, quote, relative, whole_minutes
from cogs.utils.views import result_view
from db.models import Job, JobNotFound, JobState, NotAllowed, QueueError
from db.results import ResultFile, UnsafeResult

log = logging.getLogger(__name__)


class MyJobs(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Your jobs and their place in line")
    async def queue_command(self, interaction: discord.Interaction) -> None:
        queue = self.bot.queue
        active = await queue.active_jobs()
        at = now()
        ends = finish_times(active, self.bot.engine.estimate_seconds, at)
        positions = queue_positions(active)
        mine = [job for job in active if job.requester.user_id == interaction.user.id]
        locale = interaction.locale
        lines = []
        for job in mine:
            common = {
                "job": job.id,
                "minutes": whole_minutes(ends[job.id]),
                "when": relative(at + ends[job.id]),
                "prompt": quote(job.request.prompt, 60),
            }
            if job.state is JobState.RUNNING:
                step, total = job.progress_step or 0, job.progress_total or job.request.steps
                lines.append(t("queue.running", locale, step=step, total=total, **common))
            else:
                lines.append(t("queue.waiting", locale, position=positions.get(job.id, 0), **common))
        head = t("queue.head", locale) + "\n" + "\n".join(lines) if lines else t("queue.none", locale)
        waiting = len(positions)
        paused = await queue.is_paused()
        tail = t("queue.tail", locale, waiting=waiting) + (t("queue.paused", locale) if paused else "")
        if not self.bot.engine.ready:
            tail += t("queue.warming", locale)
        await reply_private(interaction, clip(head + tail))

    @app_commands.command(name="cancel", description="Cancel your latest job, or a job by number")
    @app_commands.describe(job="Job number (default: your latest waiting or running job)")
    async def cancel(self, interaction: discord.Interaction, job: app_commands.Range[int, 1] | None = None) -> None:
        queue = self.bot.queue
        if job is None:
            latest = await queue.list_user_jobs(interaction.user.id, limit=1)
            if not latest:
                raise QueueError(msg("cancel.none"))
            job = latest[0].id
        interaction.extras["job_id"] = job
        target = await queue.get_job(job)
        if target is None:
            raise JobNotFound(job=job)
        admin = is_admin_for(interaction, self.bot.settings, target.requester.guild_id)
        outcome = await queue.cancel(job, by_user_id=interaction.user.id, is_admin=admin)
        if target.requester.user_id != interaction.user.id:
            await queue.audit(
                interaction.user.id,
                "cancel",
                f"job #{job} of user {target.requester.user_id}",
                guild_id=interaction.guild_id,
            )
        if outcome.immediate:
            await reply_private(interaction, t("cancel.cancelled", interaction.locale, job=job))
        else:
            await reply_private(interaction, t("cancel.stopping", interaction.locale, job=job))

    @app_commands.command(name="show", description="Post a finished job's images here again")
    @app_commands.describe(job="Job number")
    async def show(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        require_allowed_channel(interaction, self.bot.settings)
        interaction.extras["job_id"] = job
        found = await self.bot.queue.get_job(job)
        if found is None:
            raise JobNotFound(job=job)
        if not _may_repost(interaction, found, is_admin(interaction, self.bot.settings)):
            raise NotAllowed(msg("show.not_allowed", job=job))
        if found.state is not JobState.DONE:
            raise QueueError(msg("show.no_images", job=job, state=found.state))
        if await self.bot.queue.is_pruned(job):
            days = self.bot.settings.retention_days
            kept = t("show.kept_days", interaction.locale, days=f"{days:g}") if days else ""
            raise QueueError(msg("show.pruned", job=job, kept=kept))
        files = await self._images(found)
        if not files:
            raise QueueError(msg("show.gone", job=job))
        # A flagged result follows this server's /safety mode here (cogs.utils.safety): outside age-restricted
        # channels it is shown only to the one who asked to see it (an ephemeral reply, as spoilers).
        mode = await server_mode(self.bot.queue, interaction.guild_id) if found.flagged else "off"
        how = treatment(mode, found.flagged, age_restricted(interaction.channel))
        if how is Treatment.BLOCKED:
            raise QueueError(msg("show.blocked", job=job))
        private = how is Treatment.BY_DM
        spoilers = interaction.guild_id and await self.bot.queue.kv_get(spoilers_key(interaction.guild_id)) == "1"
        if spoilers or how is not Treatment.AS_USUAL:
            files = spoilered(files)
        await interaction.response.defer(thinking=True, ephemeral=private)
        locale = interaction.locale  # a reply to the one who asked to see it again
        lines = [
            t("show.post", locale, job=job, user=found.requester.user_id),
            f"> {quote(found.request.prompt, 900)}",
            f"-# {params_line(found.request, found.seed_used, locale)}",
        ]
        if found.flagged:
            lines.append(f"-# {t('info.flagged', locale)}")
        await interaction.followup.send(
            clip("\n".join(lines)),
            files=[discord.File(io.BytesIO(image.data), filename=image.name) for image in files],
            view=result_view(job, locale, draft=found.request.draft),
            allowed_mentions=NO_MENTIONS,
            ephemeral=private,
        )

    async def _images(self, job: Job) -> list[ResultFile]:
        """The job's images from the result store; none if they are gone or not the store's own."""
        try:
            return await self.bot.queue.results.read(job)
        except UnsafeResult as exc:  # a tampered row: refused, as the delivery loop refuses it
            log.warning("Not posting job #%s again: %s", job.id, exc)
        except FileNotFoundError:
            pass
        return []


def _may_repost(interaction: discord.Interaction, job: Job, admin: bool) -> bool:
    """The requester always; others only within the server it was made in (never a DM's result),
    and once the requester deleted it, only admins."""
    if job.requester.user_id == interaction.user.id:
        return True
    if job.requester.guild_id is None or job.requester.guild_id != interaction.guild_id:
        return False
    return admin or job.result_message_id is not None


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(MyJobs(cast(Host, bot)))
