"""One place that turns failures into short private replies, for slash commands and buttons alike.

Known failures (queue limits, invalid input, refused checks) carry a message written for
the user, shown in the user's language when it has a catalogue code or key (cogs.utils.i18n);
anything else is logged with the job id and the user gets a generic line, never a traceback.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from cogs.utils.checks import Refused
from cogs.utils.flags import FlagError
from cogs.utils.i18n import engine_text, localize_error_text, t
from cogs.utils.text import NO_MENTIONS, clip, quote
from db.models import QueueError
from engine.types import EngineError
from jobrequest import InvalidRequest

log = logging.getLogger(__name__)

_KNOWN = (QueueError, InvalidRequest, FlagError, EngineError, Refused)


def user_message(error: BaseException, locale: discord.Locale | str | None = None) -> str | None:
    """The text to show for a known failure (in the locale's language where the catalogue has it), or None for a
    bug that only the log should describe."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, _KNOWN):
        return localize_error_text(error, locale) or engine_text(str(error), locale) or None
    if isinstance(error, app_commands.TransformerError):
        return t("error.bad_value", locale, value=quote(str(error.value), 60))
    if isinstance(error, app_commands.CommandOnCooldown):
        return t("queue.cooldown", locale, seconds=f"{error.retry_after:.0f}")
    if isinstance(error, app_commands.NoPrivateMessage):
        return t("error.no_dm", locale)
    if isinstance(error, app_commands.CheckFailure):
        return t("error.check_failed", locale)
    return None


async def reply_private(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer, as the first response or as a followup; expired interactions are only logged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(clip(text), ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.response.send_message(clip(text), ephemeral=True, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as exc:
        log.warning("Could not answer interaction %s: %s", interaction.id, exc)


async def report(interaction: discord.Interaction, error: BaseException, *, job_id: int | None = None) -> None:
    """Tell the user what went wrong; log what they should not see."""
    message = user_message(error, interaction.locale)
    if message is None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        job_id = job_id if job_id is not None else interaction.extras.get("job_id")
        command = interaction.command.qualified_name if interaction.command else interaction.data
        log.error("Unhandled error in %s (user %s, job %s)", command, interaction.user.id, job_id, exc_info=original)
        message = t("error.unexpected", interaction.locale)
    await reply_private(interaction, message)


class BotTree(app_commands.CommandTree):
    """The command tree whose on_error handles every slash command failure."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report(interaction, error)
