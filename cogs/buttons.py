"""The buttons under every result: registered once, so clicks on results posted before a restart still work."""

from __future__ import annotations

import re
from typing import cast

import discord
from discord.ext import commands

from cogs.utils.errors import report
from cogs.utils.host import Host
from cogs.utils.image_jobs import modal_values, remix
from cogs.utils.views import DYNAMIC_BUTTONS

_REMIX_MODAL = re.compile(r"cv4:remixed:(\d+)")


class RemixSubmits(commands.Cog):
    """The Remix modal's submit, routed by its custom_id alone (discord.py keeps modals only in memory), so a
    modal opened before a restart still works after it."""

    def __init__(self, bot: Host) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit or interaction.data is None:
            return
        match = _REMIX_MODAL.fullmatch(str(interaction.data.get("custom_id", "")))
        if match is None:
            return
        job_id = int(match[1])
        interaction.extras["job_id"] = job_id
        values = modal_values(interaction.data)
        try:
            await remix(self.bot, interaction, job_id, values.get("prompt", ""), values.get("negative", ""))
        except Exception as exc:
            await report(interaction, exc, job_id=job_id)


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(*DYNAMIC_BUTTONS)
    await bot.add_cog(RemixSubmits(cast(Host, bot)))


async def teardown(bot: commands.Bot) -> None:
    bot.remove_dynamic_items(*DYNAMIC_BUTTONS)
