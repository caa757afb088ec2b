"""What the cogs need of the bot, as a Protocol: the cogs are written against this, never against bot.py,
so no cog imports the module that loads it (no import cycle, not even a typing-only one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import discord
from discord.ext import commands

from db.interface import JobQueue
from engine.types import EngineView
from settings import Settings

if TYPE_CHECKING:
    from db.models import Job


class Host(Protocol):
    """The bot as the cogs see it: its services, plus the few discord.py calls they make on it."""

    queue: JobQueue
    engine: EngineView  # the local GPU engine, or the GPU workers of other machines: the cogs can't tell
    settings: Settings
    started_at: float  # unix time, for /status's uptime
    model_label: str  # the model as users see it (a local folder by its name only)

    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...

    def get_cog(self, name: str, /) -> commands.Cog | None: ...

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None: ...

    async def create_dm(self, user: discord.abc.Snowflake) -> discord.DMChannel: ...

    def get_channel(self, id: int, /) -> Any: ...

    async def fetch_channel(self, channel_id: int, /) -> Any: ...


@runtime_checkable
class ProgressHooks(Protocol):
    """What another cog asks of the Progress cog (cogs.progress), found through ``bot.get_cog``: a cog never
    imports another cog."""

    async def finish_previews(self, job_id: int) -> None: ...

    async def show_outcome(self, job: Job) -> None: ...


def progress_of(bot: Host) -> ProgressHooks | None:
    """The loaded Progress cog, or None (not loaded, or unloaded while stopping)."""
    cog = bot.get_cog("Progress")
    return cog if isinstance(cog, ProgressHooks) else None
