"""The Discord bot: ``ImageBot`` and its setup_hook, which wires the services (``services.open_services``) and
loads the cogs.

``python launcher.py`` starts it (settings, logging with the token hidden, signals, exit codes); this module
never imports the launcher. SIGINT/SIGTERM stop claiming jobs, give the running one a short grace (else it
goes back to the queue), close the database and exit 0.
"""

from __future__ import annotations

import logging
import sys
import time

import discord
from discord.ext import commands

from cogs.utils.errors import BotTree
from cogs.utils.i18n import Translator
from cogs.utils.text import NO_MENTIONS
from db import JobQueue
from engine.types import EngineView
from services import Services, open_services
from settings import Settings

log = logging.getLogger("bot")
EXTENSIONS = (
    "cogs.imagine",
    "cogs.myjobs",
    "cogs.admin",
    "cogs.progress",
    "cogs.delivery",
    "cogs.buttons",
    "cogs.personal",
    "cogs.retention",
)
SHUTDOWN_GRACE_S = 8.0
# What the bot needs in a channel: see docs/discord.md.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    attach_files=True,
    embed_links=True,
    read_message_history=True,
    use_application_commands=True,
)


def invite_url(application_id: int) -> str:
    return (
        f"https://discord.com/oauth2/authorize?client_id={application_id}"
        f"&scope=bot+applications.commands&permissions={PERMISSIONS.value}"
    )


class ImageBot(commands.Bot):
    """The bot: holds the queue and the engine (cogs.utils.host.Host is what the cogs see of it)."""

    queue: JobQueue
    engine: EngineView

    def __init__(self, settings: Settings, **options: object) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # slash commands and buttons need no more (no privileged intents)
        # The bot has no voice: discord.py's start-up warnings about voice libraries (PyNaCl, davey) only confuse.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=BotTree,
            allowed_mentions=NO_MENTIONS,
            help_command=None,
            **options,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.started_at = time.time()
        self.model_label = settings.model_id
        self.services: Services | None = None
        self._stopped_claiming = False

    async def setup_hook(self) -> None:
        services = self.services = await open_services(self.settings)
        self.queue, self.engine, self.model_label = services.queue, services.engine, services.model_label
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.tree.set_translator(Translator())  # zh-CN names and descriptions, sent with the sync
        await self._sync_commands()
        if self.application_id is not None:
            log.info("Invite the bot with: %s", invite_url(self.application_id))

    async def _sync_commands(self) -> None:
        guild_id = self.settings.dev_guild_id
        try:
            if guild_id is not None:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("Synced %d commands to server %s (instant)", len(synced), guild_id)
            else:
                synced = await self.tree.sync()
                log.info("Synced %d global commands (Discord may take up to an hour to show them)", len(synced))
        except discord.HTTPException as exc:
            where = f"server {guild_id} (DEV_GUILD_ID): is the bot in that server?" if guild_id else "Discord"
            log.error("Could not sync slash commands to %s (%s); the old ones stay", where, exc)

    async def on_ready(self) -> None:
        log.info("Online as %s in %d server(s)", self.user, len(self.guilds))

    async def close(self) -> None:
        """Stop claiming, let the running job finish briefly (or requeue it), then close everything."""
        services = self.services
        if services is not None and not self._stopped_claiming:
            self._stopped_claiming = True
            await services.stop_claiming(SHUTDOWN_GRACE_S)
        await super().close()  # unloads the cogs: the delivery and progress loops stop
        if services is not None:
            await services.close()


if __name__ == "__main__":
    # The start-up flows launcher → bot: this module holds the bot class and never imports the launcher.
    print("Start the bot with: python launcher.py (bot.py holds the bot class; launcher.py runs it).", file=sys.stderr)
    sys.exit(2)
