"""Retention: every hour, delete the result images older than RETENTION_DAYS (files and rows together).

The queue does the deleting in crash-safe steps (`JobQueue.prune_results`, db/retention.py); this loop
only decides when. RETENTION_DAYS=0 (the default) keeps everything and the loop never starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import cast

from discord.ext import commands

from cogs.utils.host import Host

log = logging.getLogger(__name__)

INTERVAL_S = 3600.0
FIRST_PASS_S = 30.0  # after start-up, once the bot has settled
BATCH = 200


class Retention(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot
        self._task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        if self.bot.settings.retention_days > 0:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def cog_unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        await asyncio.sleep(FIRST_PASS_S)
        while True:
            try:
                await self.prune_once()
            except Exception:
                log.exception("The retention pass failed; trying again in an hour")
            await asyncio.sleep(INTERVAL_S)

    async def prune_once(self) -> int:
        """One pass: batches until nothing older than RETENTION_DAYS is left. Returns the jobs pruned."""
        before = time.time() - self.bot.settings.retention_days * 86_400
        total = 0
        while True:
            pruned = await self.bot.queue.prune_results(before, limit=BATCH)
            total += len(pruned)
            if len(pruned) < BATCH:
                return total


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Retention(cast(Host, bot)))
