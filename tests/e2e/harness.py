"""Run the real bot against the fake Discord: in this process (fast) or as `python launcher.py` (the real
thing)."""

# Test helpers wait with an explicit timeout argument by design.

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bot import ImageBot
from db.models import Job
from launcher import point_discord_at
from settings import Settings
from tests.fakediscord import FakeDiscord, InteractionHandle, StoredMessage, point_discord_py_at

REPO = Path(__file__).resolve().parents[2]
QUEUED = re.compile(r"Queued as #(\d+) — position (\d+), about \d+ min \(<t:\d+:R>\)")
QUEUED_ZH = re.compile(r"已排队 #(\d+) — 第 (\d+) 位，约 \d+ 分钟（<t:\d+:R>）")  # the job of a zh-CN user


def settings_for(server: FakeDiscord, model: Path, tmp: Path, **overrides: Any) -> Settings:
    """Settings for a test bot: tiny model on CPU, files in tmp, commands synced to the test guild."""
    values: dict[str, Any] = {
        "discord_token": "fake-token",
        "discord_api_base": server.base_url,  # without /api/v10, like client_env() gives a subprocess
        "discord_gateway_url": server.gateway_url,
        "model_id": str(model),
        "device": "cpu",
        "memory_mode": "auto",
        "database_path": tmp / "queue.sqlite3",
        "output_dir": tmp / "outputs",
        "default_steps": 4,
        "log_level": "INFO",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def process_env(server: FakeDiscord, model: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for `python launcher.py` against the fake (nothing inherited that could change the bot)."""
    env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    env.update(server.client_env())
    env.update(
        {
            "MODEL_ID": str(model),
            "DEVICE": "cpu",
            "DATABASE_PATH": str(tmp / "queue.sqlite3"),
            "OUTPUT_DIR": str(tmp / "outputs"),
            "DEFAULT_STEPS": "4",
            "SAFETY_MODEL": "off",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def _is_setting(name: str) -> bool:
    return name.upper() in {f.upper() for f in Settings.model_fields}


class FastBot(ImageBot):
    """The product bot with test-speed gateway settings."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before a re-IDENTIFY; the fake needs no politeness."""


@contextlib.asynccontextmanager
async def running_bot(server: FakeDiscord, settings: Settings, *, ready: bool = True) -> AsyncIterator[ImageBot]:
    """Start the bot in this event loop; wait until it is online (and the engine loaded); always stop it."""
    with point_discord_py_at(server):  # restores Route.BASE / DEFAULT_GATEWAY afterwards
        point_discord_at(settings)
        bot = FastBot(settings, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start("fake-token"))
        try:
            online = asyncio.create_task(bot.wait_until_ready())
            done, _ = await asyncio.wait({task, online}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                raise RuntimeError("the bot stopped before it was online")
            if online not in done:
                online.cancel()
                raise TimeoutError("the bot did not come online")
            if ready:
                assert await bot.engine.wait_ready(60), "the engine did not load"
                assert bot.engine.ready, bot.engine.status().error
            yield bot
        finally:
            await bot.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)


class BotProcess:
    """`python launcher.py` as a child process, its output collected in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> BotProcess:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(REPO / "launcher.py"), env=self.env, cwd=self.cwd, stdout=log, stderr=log
            )
        finally:
            log.close()
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_online(server: FakeDiscord, proc: BotProcess, guild: Any, timeout: float = 30) -> None:
    """Until the bot's commands are synced to the guild and its gateway session is up."""

    def check() -> bool:
        if proc.proc is not None and proc.proc.returncode is not None:
            raise RuntimeError(f"bot exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
        return bool(server.gateway.connected_sessions and server.commands(guild))

    try:
        await server.wait_for(check, timeout, "bot online")
    except TimeoutError:
        raise TimeoutError(f"bot not online; its output:\n{proc.output()[-3000:]}") from None


async def queued_reply(handle: InteractionHandle, timeout: float = 5) -> tuple[int, int, StoredMessage]:
    """The public "Queued as #N — position P" reply (or its Chinese): (job id, position, message)."""
    callback = await handle.wait_response(timeout)
    assert callback.accepted and not callback.ephemeral, callback
    message = await handle.wait_original(timeout=timeout)
    match = QUEUED.search(message.content) or QUEUED_ZH.search(message.content)
    assert match, message.content
    return int(match.group(1)), int(match.group(2)), message


async def ephemeral_reply(handle: InteractionHandle, timeout: float = 5) -> str:
    """The text of a private answer (first response or followup after a defer)."""
    callback = await handle.wait_response(timeout)
    assert callback.accepted, callback
    if callback.type == 4:
        assert callback.ephemeral, callback
        return callback.content or ""
    message = await handle.wait_original(timeout=timeout)
    assert message.ephemeral
    return message.content


async def wait_result(server: FakeDiscord, channel: Any, job_id: int, timeout: float = 30) -> StoredMessage:
    """The channel post with job #N's images."""
    return await server.wait_for_message(
        channel, lambda m: f"**#{job_id}**" in m.content and bool(m.attachments), timeout, include_ephemeral=False
    )


async def wait_job(bot: ImageBot, job_id: int, predicate: Callable[[Job], bool], timeout: float = 20) -> Job:
    """Until the job's row satisfies ``predicate`` (re-read whenever the queue changes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await bot.queue.get_job(job_id)
        if job is not None and predicate(job):
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"job #{job_id} never got there: {job}")
        await bot.queue.wait_for_change(0.2)


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size
