"""The buttons under every result: registered once, so clicks on results posted before a restart still work."""

from __future__ import annotations

from discord.ext import commands

from cogs.utils.views import RESULT_BUTTONS


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(*RESULT_BUTTONS)


async def teardown(bot: commands.Bot) -> None:
    bot.remove_dynamic_items(*RESULT_BUTTONS)
