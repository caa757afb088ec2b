"""/settings and /quota: a user's own /imagine defaults and private results, and what is left of today's quota.

Settings are stored in the queue's database (they survive restarts) and are checked by the same rules as an
/imagine (`cogs.utils.submit.build_request`) before they are saved, so a saved setting never makes a later
/imagine fail. Inline flags and /imagine options still beat them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.errors import reply_private
from cogs.utils.flags import Choices
from cogs.utils.host import Host
from cogs.utils.i18n import t
from cogs.utils.submit import build_request
from cogs.utils.text import quote
from db.models import UserSettings
from jobrequest import ASPECTS, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS
from settings import Settings

# The prompt used to check saved settings against the model's limits and the ban list (it is never queued).
_PROBE = Choices(prompt="settings check")
DAY_S = 86_400


def describe(own: UserSettings, settings: Settings, locale: discord.Locale | str | None = None) -> str:
    """One user's settings, with the bot's default where they set nothing (in the locale's language)."""

    def value(own: object, default: object) -> str:
        return f"{own}" if own is not None else t("settings.default", locale, value=default)

    lines = [
        t(
            "settings.line",
            locale,
            aspect=value(own.aspect, "1:1"),
            steps=value(own.steps, settings.default_steps),
            guidance=value(own.guidance, f"{settings.default_guidance:g}"),
        ),
        t("settings.without", locale, negative=quote(own.negative_prompt, 300))
        if own.negative_prompt
        else t("settings.without_nothing", locale),
        t("settings.by_dm" if own.private else "settings.in_channel", locale),
    ]
    if own.draft is not None:
        lines.append(t("settings.drafts", locale, value=t("settings.on" if own.draft else "settings.off", locale)))
    return "\n".join(lines)


class PersonalSettings(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Your defaults for /imagine, and private results")
    @app_commands.describe(
        aspect="Default shape of your images",
        steps="Default denoising steps",
        guidance="Default guidance (how closely to follow the prompt)",
        negative_prompt="What to keep out of every image you make",
        private="Send your results by direct message instead of in the channel",
        draft="Make your /imagine a fast draft unless you ask otherwise",
        reset="Forget all your settings first (then apply any given here)",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def settings_command(
        self,
        interaction: discord.Interaction,
        aspect: str | None = None,
        steps: app_commands.Range[int, MIN_STEPS, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE] | None = None,
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        private: bool | None = None,
        draft: bool | None = None,
        reset: bool = False,
    ) -> None:
        queue, user, locale = self.bot.queue, interaction.user.id, interaction.locale
        given = {
            name: value
            for name, value in (
                ("aspect", aspect),
                ("steps", steps),
                ("guidance", guidance),
                ("negative_prompt", negative_prompt.strip() if negative_prompt else None),
                ("private", private),
                ("draft", draft),
            )
            if value is not None
        }
        if not given and not reset:
            own = await queue.user_settings(user)
            await reply_private(
                interaction, f"{t('settings.yours', locale)}\n{describe(own, self.bot.settings, locale)}"
            )
            return
        own = replace(UserSettings() if reset else await queue.user_settings(user), **given)
        build_request(_PROBE, self.bot.engine.limits, self.bot.settings, own)  # the /imagine rules; raises if not
        if own == UserSettings():
            await queue.clear_user_settings(user)
        else:
            await queue.set_user_settings(user, own)
        head = t("settings.reset" if reset and not given else "settings.saved", locale)
        yours = t("settings.yours", locale)
        await reply_private(interaction, f"{head} {yours}\n{describe(own, self.bot.settings, locale)}")

    @app_commands.command(name="quota", description="How many images you can still make today")
    async def quota(self, interaction: discord.Interaction) -> None:
        quota = self.bot.settings.daily_quota
        if quota <= 0:
            await reply_private(interaction, t("quota.none", interaction.locale))
            return
        used = await self.bot.queue.used_today(interaction.user.id)
        resets = (int(time.time()) // DAY_S + 1) * DAY_S  # the queue counts per UTC day
        left = max(0, quota - used)
        text = t("quota.left", interaction.locale, used=used, quota=quota, left=left, when=f"<t:{resets}:R>")
        await reply_private(interaction, text)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(PersonalSettings(cast(Host, bot)))
