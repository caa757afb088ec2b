"""Keep each job's status message current: place in line, then a progress bar, then the outcome.

One background loop reads the queue (the dispatcher stores progress on the job row) and
edits a message only when what it shows has changed, and at most every few seconds per
message, so a busy queue stays well inside Discord's edit rate limits. A slow or failing
edit never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import cast

import aiohttp
import discord
from discord.ext import commands

from cogs.utils.eta import finish_times, queue_positions
from cogs.utils.host import Host
from cogs.utils.status import Snapshot, engine_note, snapshot, status_text
from cogs.utils.text import NO_MENTIONS, now
from db.models import Job, JobState

log = logging.getLogger(__name__)

TICK_S = 1.0
EDIT_INTERVAL_S = 3.0


@dataclass
class _Tracked:
    shown: Snapshot | None = None
    shown_end: float | None = None  # the finish time (unix) the message shows
    edited_at: float = 0.0  # monotonic
    editing: asyncio.Task[None] | None = None
    gone: bool = False  # the message was deleted: stop editing it


class Progress(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot
        self._tracked: dict[int, _Tracked] = {}
        self._task: asyncio.Task[None] | None = None
        self.edit_interval_s = EDIT_INTERVAL_S

    async def cog_load(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="status-messages")

    async def cog_unload(self) -> None:
        tasks = [t.editing for t in self._tracked.values() if t.editing is not None]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @commands.Cog.listener()
    async def on_job_queued(self, job_id: int, shown: Snapshot) -> None:
        """The /imagine reply is the first version of the status message."""
        tracked = self._tracked.setdefault(job_id, _Tracked())
        if tracked.shown is None:  # the loop may have seen the job before its reply existed
            tracked.shown = shown
            tracked.edited_at = time.monotonic()

    async def show_outcome(self, job: Job) -> None:
        """Edit a finished job's status message to its outcome now, before its post is recorded as sent.

        The loop only follows jobs it has seen active; after a restart, a job that finished in the previous
        run would keep showing "making it…" forever. The delivery loop calls this for every outcome it posts,
        so once a post is recorded the status says the outcome too (a failed edit is retried by the loop).
        """
        if job.status_message_id is None or not job.state.finished:
            return
        tracked = self._tracked.setdefault(job.id, _Tracked())
        if tracked.gone:
            return
        if tracked.editing is not None and not tracked.editing.done():  # let an older edit land first
            await asyncio.wait({tracked.editing})
        snap = snapshot(job, position=None, note=None, paused=False)
        if tracked.shown == snap:
            self._tracked.pop(job.id, None)
            return
        tracked.edited_at = time.monotonic()
        tracked.editing = asyncio.create_task(
            self._edit(job, tracked, snap, status_text(job, snap, eta_s=None, now=now()), None), name=f"status-{job.id}"
        )
        await asyncio.wait({tracked.editing})

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("Updating status messages failed; trying again shortly")
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        queue = self.bot.queue
        active = await queue.active_jobs()
        paused = await queue.is_paused()
        note = engine_note(self.bot.engine.status())
        t = now()
        ends = finish_times(active, self.bot.engine.estimate_seconds, t)
        positions = queue_positions(active)
        for job in active:
            tracked = self._tracked.setdefault(job.id, _Tracked())  # jobs from before a restart too
            snap = snapshot(job, position=positions.get(job.id), note=note, paused=paused)
            end = t + ends[job.id]
            moved = tracked.shown_end is None or abs(end - tracked.shown_end) > max(30.0, 0.2 * ends[job.id])
            if snap != tracked.shown or (job.state is JobState.QUEUED and moved):
                self._maybe_edit(job, tracked, snap, status_text(job, snap, eta_s=ends[job.id], now=t), end)
        finished = set(self._tracked) - {job.id for job in active}
        for job_id in finished:
            done = await queue.get_job(job_id)
            tracked = self._tracked.get(job_id)  # an edit finishing meanwhile may have dropped it
            if tracked is None or (done is not None and not done.state.finished):
                continue  # queued after the read above; next tick
            if done is None or done.status_message_id is None or tracked.gone:
                self._tracked.pop(job_id, None)
                continue
            snap = snapshot(done, position=None, note=None, paused=False)
            if snap == tracked.shown:
                self._tracked.pop(job_id, None)
            else:
                self._maybe_edit(done, tracked, snap, status_text(done, snap, eta_s=None, now=t), None)

    def _maybe_edit(self, job: Job, tracked: _Tracked, snap: Snapshot, text: str, end: float | None) -> None:
        if job.status_message_id is None or tracked.gone:
            return
        if tracked.editing is not None and not tracked.editing.done():
            return
        if time.monotonic() - tracked.edited_at < self.edit_interval_s:
            return
        tracked.edited_at = time.monotonic()
        tracked.editing = asyncio.create_task(self._edit(job, tracked, snap, text, end), name=f"status-{job.id}")

    async def _edit(self, job: Job, tracked: _Tracked, snap: Snapshot, text: str, end: float | None) -> None:
        assert job.status_message_id is not None
        channel = self.bot.get_partial_messageable(job.requester.channel_id, guild_id=job.requester.guild_id)
        try:
            await channel.get_partial_message(job.status_message_id).edit(content=text, allowed_mentions=NO_MENTIONS)
        except discord.NotFound:
            log.info("Status message of job #%s is gone; no more updates for it", job.id)
            tracked.gone = True
            if snap.state.finished:
                self._tracked.pop(job.id, None)
            return
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:  # a dropped connection too
            log.warning("Editing the status message of job #%s failed: %s", job.id, exc)
            return
        finally:
            tracked.edited_at = time.monotonic()
        tracked.shown = snap
        tracked.shown_end = end
        if snap.state.finished:
            self._tracked.pop(job.id, None)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Progress(cast(Host, bot)))
