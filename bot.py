"""Start the Discord bot: queue, engine, dispatcher and cogs, wired together; stop them cleanly.

``python bot.py`` reads the settings (.env or the environment), opens the durable
queue, puts back jobs an earlier run left unfinished, and starts the GPU engine in
the background: the bot is online and queueing within seconds while the model
loads. SIGINT/SIGTERM stop claiming jobs, give the running one a short grace (else
it goes back to the queue), close the database and exit 0.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from cogs.buttons import RESULT_BUTTONS
from cogs.errors import BotTree
from cogs.text import NO_MENTIONS
from db import JobQueue, open_queue
from db.models import QueueError
from engine.dispatcher import Dispatcher
from engine.plans import PLANS
from engine.service import Engine, EngineConfig
from settings import Settings, SettingsError, load_settings

log = logging.getLogger("bot")

EXTENSIONS = (
    "cogs.imagine",
    "cogs.myjobs",
    "cogs.admin",
    "cogs.progress",
    "cogs.delivery",
)
MEMORY_KEY = "memory_mode"
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


def api_base(url: str) -> str:
    """DISCORD_API_BASE with or without the version path: ``http://host`` becomes ``http://host/api/v10``."""
    url = url.rstrip("/")
    return url if re.search(r"/api/v\d+$", url) else url + "/api/v10"


def point_discord_at(settings: Settings) -> None:
    """Use DISCORD_API_BASE and DISCORD_GATEWAY_URL (a REST proxy, or a test stand-in)."""
    discord.http.Route.BASE = api_base(settings.discord_api_base)
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def model_label(model_id: str) -> str:
    """How the model is named to users: a Hugging Face id as is, a local folder by its name only."""
    path = Path(model_id).expanduser()
    return path.name if path.is_dir() else model_id


def invite_url(application_id: int) -> str:
    return (
        f"https://discord.com/oauth2/authorize?client_id={application_id}"
        f"&scope=bot+applications.commands&permissions={PERMISSIONS.value}"
    )


class ImageBot(commands.Bot):
    """The bot: owns the queue, the engine and the dispatcher; the cogs reach them through it."""

    queue: JobQueue
    engine: Engine
    dispatcher: Dispatcher

    def __init__(self, settings: Settings, **options: object) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # slash commands and buttons need no more (no privileged intents)
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
        self._closed_services = False

    async def setup_hook(self) -> None:
        settings = self.settings
        self.queue = await open_queue(settings)
        requeued, failed = await self.queue.recover_interrupted()
        if requeued or failed:
            log.warning(
                "Jobs interrupted by the last stop: %d back in the queue, %d failed", len(requeued), len(failed)
            )
        mode = await self._memory_mode()
        if await self.queue.is_paused():
            log.warning("The queue is paused (an admin used /pause); /resume starts jobs again")
        self.model_label = await asyncio.to_thread(model_label, settings.model_id)
        if settings.queue_backend == "postgres":  # GPU machines run the jobs (python -m engine worker)
            from engine.cluster_view import ClusterEngine

            self.engine = ClusterEngine(self.queue.list_workers, settings.model_id)  # type: ignore[assignment,attr-defined]
            await self.engine.start()
        else:
            config = dataclasses.replace(EngineConfig.from_settings(settings), memory_mode=mode)
            self.engine = await asyncio.to_thread(Engine, config)  # reads the model's configs and tokenizer
            self.engine.start()  # loads in the background; jobs wait in the queue meanwhile
            log.info("Loading %s with memory plan %s in the background", settings.model_id, mode)
            self.dispatcher = Dispatcher(
                self.queue,
                self.engine,
                settings.output_dir,
                worker_id=f"{socket.gethostname()}:{os.getpid()}",
                model_id=self.model_label,  # written into the PNGs people download: no local paths
            )
            self.dispatcher.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*RESULT_BUTTONS)  # result buttons keep working after a restart
        await self._sync_commands()
        if self.application_id is not None:
            log.info("Invite the bot with: %s", invite_url(self.application_id))

    async def _memory_mode(self) -> str:
        """The plan an admin chose with /memory (kept across restarts), else MEMORY_MODE."""
        chosen = await self.queue.kv_get(MEMORY_KEY)
        if chosen is None:
            return self.settings.memory_mode
        if chosen != "auto" and chosen not in PLANS:
            log.warning(
                "The saved memory plan %r no longer exists; using MEMORY_MODE=%s", chosen, self.settings.memory_mode
            )
            return self.settings.memory_mode
        return chosen

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
        if not self._closed_services and hasattr(self, "dispatcher"):
            self._closed_services = True
            await self.dispatcher.stop(SHUTDOWN_GRACE_S)
        await super().close()  # unloads the cogs: the delivery and progress loops stop
        if hasattr(self, "engine"):
            await self.engine.stop()
        if hasattr(self, "queue"):
            await self.queue.close()


class _Redact(logging.Formatter):
    """Belt and braces: whatever a library logs, the token never reaches the output."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "[token hidden]")
        return text


class _RedactedStream:
    """stdout/stderr with the secrets replaced, for what bypasses logging: a crash's traceback, a thread's
    uncaught error, warnings, a library's print. Whole lines are written, so a secret split across two
    writes is still caught; everything else (fileno, isatty, encoding) is the real stream's."""

    def __init__(self, stream: TextIO, secrets: list[str]) -> None:
        self._stream = stream
        self._secrets = [s for s in secrets if s]
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._stream.write(self._redact(done + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._redact(self._pending))
            self._pending = ""
        self._stream.flush()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[token hidden]")
        return text

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def hide_secrets_in_output(secrets: list[str]) -> None:
    sys.stdout = _RedactedStream(sys.stdout, secrets)  # type: ignore[assignment]
    sys.stderr = _RedactedStream(sys.stderr, secrets)  # type: ignore[assignment]
    atexit.register(sys.stdout.flush)
    atexit.register(sys.stderr.flush)


def setup_logging(level: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Redact("%(asctime)s %(levelname)-7s %(name)s: %(message)s", secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiosqlite").setLevel(max(logging.getLevelName(level), logging.INFO))  # one line per SQL


async def run(settings: Settings, token: str) -> int:
    """Run until Discord closes the bot or a stop signal arrives; return the exit code."""
    point_discord_at(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: only Ctrl+C, through signal.signal
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    bot = ImageBot(settings)
    async with bot:
        runner = asyncio.create_task(bot.start(token), name="discord")
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if runner in done:
            return _exit_code(runner)
        log.info("Stopping: finishing or handing back the running job, then closing the database")
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    log.info("Stopped cleanly")
    return 0


def _exit_code(runner: asyncio.Task[None]) -> int:
    error = runner.exception()
    if error is None:
        return 0
    if isinstance(error, discord.LoginFailure):
        print(
            "Discord rejected DISCORD_TOKEN. Reset the token at https://discord.com/developers/applications "
            "→ your app → Bot → Reset Token, and put the new one in .env.",
            file=sys.stderr,
        )
    elif isinstance(error, discord.PrivilegedIntentsRequired):
        print("Discord refused the bot's intents; this bot needs no privileged intents.", file=sys.stderr)
    elif isinstance(error, QueueError | OSError):
        print(f"Could not start: {error}", file=sys.stderr)
    else:
        log.error("The bot stopped with an error", exc_info=error)
    return 1


def main() -> int:
    try:
        settings = load_settings()
        token = settings.token()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    hide_secrets_in_output([token])  # first: the log handler writes to the wrapped stderr
    setup_logging(settings.log_level, [token])
    logging.captureWarnings(True)
    try:
        return asyncio.run(run(settings, token))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
