"""``python launcher.py`` starts the bot: settings, logging with the token hidden, signals, exit codes.

``main`` reads the settings (.env or the environment), makes the bot (``bot.ImageBot``, whose setup_hook
wires the services, ``services.open_services``) and runs it until Discord closes it or SIGINT/SIGTERM
arrives; the exit code says how it ended (0 stopped, 1 could not run, 2 bad settings). The start-up flows
one way, as in Rapptz/RoboDanny: launcher → bot → services; neither of those imports this module.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import signal
import sys
from collections.abc import Callable
from typing import TextIO

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from bot import ImageBot
from db.models import QueueError
from engine.rules import missing_model_folder
from settings import Settings, SettingsError, load_settings

log = logging.getLogger("bot")  # every start-up log line is named "bot"


def api_base(url: str) -> str:
    """DISCORD_API_BASE with or without the version path: ``http://host`` becomes ``http://host/api/v10``."""
    url = url.rstrip("/")
    return url if re.search(r"/api/v\d+$", url) else url + "/api/v10"


def point_discord_at(settings: Settings) -> None:
    """Use DISCORD_API_BASE and DISCORD_GATEWAY_URL (a REST proxy, or a test stand-in)."""
    discord.http.Route.BASE = api_base(settings.discord_api_base)
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


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


def main(make_bot: BotFactory = ImageBot) -> int:
    """``python launcher.py``: 0 after a clean stop, 1 if the bot could not run, 2 if the settings are wrong."""
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


if __name__ == "__main__":
    sys.exit(main())
