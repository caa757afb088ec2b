"""Start-up concerns of ``python bot.py``: logging with the token hidden, the services wired, signals, exit codes.

``main`` reads the settings (.env or the environment), and runs the bot until Discord
closes it or SIGINT/SIGTERM arrives; the exit code says how it ended (0 stopped, 1
could not run, 2 bad settings). ``open_services`` is what the bot's setup_hook calls:
it opens the durable queue, puts back jobs an earlier run left unfinished, and starts
the GPU engine and its dispatcher in the background (or, when GPU machines run the
jobs, the view of those machines): the bot is online and queueing within seconds
while the model loads. This module never imports bot.py: ``main`` is given the class.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from cogs.utils.kv_keys import MEMORY_KEY
from db import JobQueue, open_queue
from db.models import QueueError
from dispatch.dispatcher import Dispatcher
from engine.plans import PLANS
from engine.rules import missing_model_folder, model_label
from engine.service import Engine, EngineConfig
from engine.types import EngineView
from settings import Settings, SettingsError, load_settings

log = logging.getLogger("bot")  # the name its log lines have always carried


def api_base(url: str) -> str:
    """DISCORD_API_BASE with or without the version path: ``http://host`` becomes ``http://host/api/v10``."""
    url = url.rstrip("/")
    return url if re.search(r"/api/v\d+$", url) else url + "/api/v10"


def point_discord_at(settings: Settings) -> None:
    """Use DISCORD_API_BASE and DISCORD_GATEWAY_URL (a REST proxy, or a test stand-in)."""
    discord.http.Route.BASE = api_base(settings.discord_api_base)
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


# --- the services the cogs use ----------------------------------------------------------------------------
@dataclass
class Services:
    """The queue and the engine the cogs see, and the dispatcher when this machine runs the jobs itself."""

    queue: JobQueue
    engine: EngineView
    dispatcher: Dispatcher | None  # None when GPU machines run the jobs (QUEUE_BACKEND=postgres)
    model_label: str

    async def stop_claiming(self, grace_s: float) -> None:
        """Take no new job; the running one gets ``grace_s`` to finish, else it goes back to the queue."""
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace_s)

    async def close(self) -> None:
        await self.engine.stop()
        await self.queue.close()


async def open_services(settings: Settings) -> Services:
    """Open the queue, recover what the last stop interrupted, and start the engine (or the cluster's view)."""
    queue = await open_queue(settings)
    engine: EngineView | None = None
    try:
        requeued, failed = await queue.recover_interrupted()
        if requeued or failed:
            log.warning(
                "Jobs interrupted by the last stop: %d back in the queue, %d failed", len(requeued), len(failed)
            )
        mode = await saved_memory_mode(queue, settings)
        if await queue.is_paused():
            log.warning("The queue is paused (an admin used /pause); /resume starts jobs again")
        label = await asyncio.to_thread(model_label, settings.model_id)
        if settings.queue_backend == "postgres":  # GPU machines run the jobs (python -m engine worker)
            from cluster.view import ClusterView

            view = ClusterView(queue.list_workers, settings.model_id)
            engine = view
            await view.start()
            return Services(queue, view, None, label)
        config = dataclasses.replace(EngineConfig.from_settings(settings), memory_mode=mode)
        local = await asyncio.to_thread(Engine, config)  # reads the model's configs and tokenizer
        engine = local
        local.start()  # loads in the background; jobs wait in the queue meanwhile
        log.info("Loading %s with memory plan %s in the background", settings.model_id, mode)
        dispatcher = Dispatcher(
            queue,
            local,
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            model_id=label,  # written into the PNGs people download: no local paths
        )
        dispatcher.start()
        return Services(queue, local, dispatcher, label)
    except BaseException:
        if engine is not None:
            await engine.stop()
        await queue.close()
        raise


async def saved_memory_mode(queue: JobQueue, settings: Settings) -> str:
    """The plan an admin chose with /memory (kept across restarts), else MEMORY_MODE."""
    chosen = await queue.kv_get(MEMORY_KEY)
    if chosen is None:
        return settings.memory_mode
    if chosen != "auto" and chosen not in PLANS:
        log.warning("The saved memory plan %r no longer exists; using MEMORY_MODE=%s", chosen, settings.memory_mode)
        return settings.memory_mode
    return chosen


# --- the token never reaches the output --------------------------------------------------------------------
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


# --- running until stopped ---------------------------------------------------------------------------------
BotFactory = Callable[[Settings], commands.Bot]


async def run(make_bot: BotFactory, settings: Settings, token: str) -> int:
    """Run until Discord closes the bot or a stop signal arrives; return the exit code."""
    point_discord_at(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: only Ctrl+C, through signal.signal
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    bot = make_bot(settings)
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


def main(make_bot: BotFactory) -> int:
    """``python bot.py``: 0 after a clean stop, 1 if the bot could not run, 2 if the settings are wrong."""
    try:
        settings = load_settings()
        token = settings.token()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if settings.queue_backend == "sqlite" and (problem := missing_model_folder(settings.model_id)):
        print(f"MODEL_ID: {problem}", file=sys.stderr)  # before the bot goes online with an engine that can't load
        return 2
    hide_secrets_in_output([token])  # first: the log handler writes to the wrapped stderr
    setup_logging(settings.log_level, [token])
    logging.captureWarnings(True)
    try:
        return asyncio.run(run(make_bot, settings, token))
    except KeyboardInterrupt:
        return 0
