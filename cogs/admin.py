"""Admin commands: /memory, /pause, /resume, /purge, /status, /spoilers, /drafts, /safety.

Every command is checked in code (``admin_only``): Manage Server, ADMIN_USER_IDS or
ADMIN_ROLE_IDS, never in DMs. Every change is written to the audit table. Replies are in the admin's language.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.checks import admin_only
from cogs.utils.errors import reply_private
from cogs.utils.host import Host
from cogs.utils.i18n import EngineSaid, msg, t
from cogs.utils.kv_keys import MEMORY_KEY, drafts_key, safety_key, spoilers_key
from cogs.utils.reports import memory_report, status_report, workers_report
from cogs.utils.safety import MODES, server_mode
from cogs.utils.text import clip
from db.models import JobState, QueueError
from engine.plans import PLANS
from engine.types import PlanSwitchFailed

log = logging.getLogger(__name__)

_PLAN_CHOICES = [app_commands.Choice(name="auto", value="auto")] + [
    app_commands.Choice(name=name, value=name) for name in PLANS
]


class Admin(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot

    async def _audit(self, interaction: discord.Interaction, action: str, detail: str) -> None:
        await self.bot.queue.audit(interaction.user.id, action, detail, guild_id=interaction.guild_id)
        log.info("Admin %s: %s %s", interaction.user.id, action, detail)

    @app_commands.command(name="memory", description="Show or switch the GPU memory plan (admins)")
    @app_commands.describe(plan="auto, or a plan name; the switch applies between jobs and is remembered")
    @app_commands.choices(plan=_PLAN_CHOICES)
    @admin_only()
    async def memory(self, interaction: discord.Interaction, plan: str | None = None) -> None:
        engine = self.bot.engine
        if plan is None:
            await reply_private(interaction, memory_report(engine.status(), engine.plan_rows(), interaction.locale))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            sentence = await engine.switch_plan(plan)
        except PlanSwitchFailed as exc:
            await self._audit(interaction, "memory", f"{plan}: failed: {exc}")
            raise
        await self.bot.queue.kv_set(MEMORY_KEY, plan)
        await self._audit(interaction, "memory", f"{plan}: {sentence}")
        said = EngineSaid(sentence)
        await reply_private(interaction, t("admin.memory_switched", interaction.locale, sentence=said))

    @app_commands.command(name="pause", description="Stop starting new jobs; the running one finishes (admins)")
    @admin_only()
    async def pause(self, interaction: discord.Interaction) -> None:
        await self.bot.queue.set_paused(True)
        await self._audit(interaction, "pause", "")
        waiting = await self.bot.queue.queue_length()
        await reply_private(interaction, t("admin.paused", interaction.locale, waiting=waiting))

    @app_commands.command(name="resume", description="Start jobs again after /pause (admins)")
    @admin_only()
    async def resume(self, interaction: discord.Interaction) -> None:
        await self.bot.queue.set_paused(False)
        await self._audit(interaction, "resume", "")
        waiting = await self.bot.queue.queue_length()
        await reply_private(interaction, t("admin.resumed", interaction.locale, waiting=waiting))

    @app_commands.command(name="purge", description="Remove waiting jobs, of everyone or of one user (admins)")
    @app_commands.describe(user="Only this user's jobs (default: everyone's)")
    @admin_only()
    async def purge(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        user_id = user.id if user is not None else None
        if interaction.user.id in self.bot.settings.admin_user_ids:  # the bot's owners: every server's queue
            ids = await self.bot.queue.purge(user_id=user_id)
        else:  # a server's admins: only the jobs asked for in their server
            ids = await self._purge_server(interaction, user_id)
        whose = f"user {user.id}" if user is not None else "everyone"
        await self._audit(interaction, "purge", f"{whose}: {len(ids)} job(s) {ids[:50]}")
        locale = interaction.locale
        target = t("admin.purge_target", locale, user=user.id) if user is not None else ""
        await reply_private(interaction, t("admin.purged", locale, count=len(ids), target=target))

    async def _purge_server(self, interaction: discord.Interaction, user_id: int | None) -> list[int]:
        queue = self.bot.queue
        ids = []
        for job in await queue.active_jobs():
            mine = job.requester.guild_id == interaction.guild_id and user_id in (None, job.requester.user_id)
            if not mine or job.state is not JobState.QUEUED:
                continue
            # One by one (the queue's purge spans every server): a job that finished meanwhile is skipped, one
            # that started meanwhile is stopped at its next step, as the purge meant it to be.
            with contextlib.suppress(QueueError):
                await queue.cancel(job.id, by_user_id=interaction.user.id, is_admin=True)
                ids.append(job.id)
        return ids

    @app_commands.command(name="status", description="Engine, plan, speed and queue (admins)")
    @admin_only()
    async def status(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        stats = await bot.queue.stats()
        locale = interaction.locale
        report = status_report(bot.engine.status(), stats, uptime_s=time.time() - bot.started_at, locale=locale)
        if bot.settings.queue_backend == "postgres":  # GPU machines run the jobs: one line each, or how to add one
            report = clip(f"{report}\n{workers_report(bot.engine.workers(), now=time.time(), locale=locale)}")
        await reply_private(interaction, report)

    @app_commands.command(name="spoilers", description="Post this server's results as spoilers, or not (admins)")
    @app_commands.describe(enabled="On: images are hidden until clicked; off: shown at once")
    @admin_only()
    async def spoilers(self, interaction: discord.Interaction, enabled: bool | None = None) -> None:
        assert interaction.guild_id is not None  # admin_only refuses DMs
        locale = interaction.locale
        texts = (t("admin.spoilers_on", locale), t("admin.spoilers_off", locale))
        said = (t("admin.spoilers_set_on", locale), t("admin.spoilers_set_off", locale))
        await self._switch(interaction, "spoilers", spoilers_key(interaction.guild_id), enabled, texts, said)

    @app_commands.command(name="drafts", description="Make drafts this server's default for /imagine, or not (admins)")
    @app_commands.describe(enabled="On: /imagine makes fast drafts unless asked otherwise; off: full images")
    @admin_only()
    async def drafts(self, interaction: discord.Interaction, enabled: bool | None = None) -> None:
        assert interaction.guild_id is not None  # admin_only refuses DMs
        locale = interaction.locale
        texts = (t("admin.drafts_on", locale), t("admin.drafts_off", locale))
        said = (t("admin.drafts_set_on", locale), t("admin.drafts_set_off", locale))
        await self._switch(interaction, "drafts", drafts_key(interaction.guild_id), enabled, texts, said)

    @app_commands.command(name="safety", description="What happens to images the safety check flags here (admins)")
    @app_commands.describe(mode="off, spoiler, age-restricted (the default) or block")
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m) for m in MODES])
    @admin_only()
    async def safety(self, interaction: discord.Interaction, mode: str | None = None) -> None:
        assert interaction.guild_id is not None  # admin_only refuses DMs
        locale = interaction.locale
        if mode is None:
            current = await server_mode(self.bot.queue, interaction.guild_id)
            await reply_private(interaction, t("admin.safety_is", locale, mode=mode_text(current, locale)))
            return
        if mode not in MODES:  # a choice, unless a client sends something else
            raise QueueError(msg("admin.safety_modes", modes=", ".join(MODES)))
        await self.bot.queue.kv_set(safety_key(interaction.guild_id), mode)
        await self._audit(interaction, "safety", mode)
        await reply_private(interaction, t("admin.safety_set", locale, mode=mode_text(mode, locale)))

    async def _switch(
        self,
        interaction: discord.Interaction,
        name: str,
        key: str,
        enabled: bool | None,
        texts: tuple[str, str],
        said: tuple[str, str],
    ) -> None:
        """A server's on/off setting: without `enabled`, says how it is (`texts`: on, off); else stores it, audits
        it and says so (`said`: on, off)."""
        if enabled is None:
            on = await self.bot.queue.kv_get(key) == "1"
            await reply_private(interaction, texts[0] if on else texts[1])
            return
        await self.bot.queue.kv_set(key, "1" if enabled else "0")
        await self._audit(interaction, name, "on" if enabled else "off")
        await reply_private(interaction, said[0] if enabled else said[1])


def mode_text(mode: str, locale: discord.Locale | str | None) -> str:
    """A /safety mode and what it does, in the admin's language."""
    if mode == "off":
        return t("safety.mode_off", locale)
    if mode == "spoiler":
        return t("safety.mode_spoiler", locale)
    if mode == "block":
        return t("safety.mode_block", locale)
    return t("safety.mode_age_restricted", locale)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(cast(Host, bot)))
