"""Keep each job's status message current: place in line, then a progress bar, then the outcome.

One background loop reads the queue (the dispatcher stores progress on the job row) and
edits a message only when what it shows has changed, and at most every few seconds per
message, so a busy queue stays well inside Discord's edit rate limits. A slow or failing
edit never holds up the others.

With PREVIEWS=on a running job's message also shows its newest live preview (an attachment the
dispatcher's heartbeat stored in the queue), edited in place under the same per-message limit,
less often after a rate limit; the outcome edit removes it, and once delivery is about to post
the result no preview edit is started or left in flight (finish_previews).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import time
from dataclasses import dataclass
from typing import cast

import aiohttp
import discord
from discord.ext import commands

from cogs.utils.eta import finish_times, queue_positions
from cogs.utils.host import Host
from cogs.utils.status import StatusLine, engine_note, status_line, status_text
from cogs.utils.text import NO_MENTIONS, now
from db.models import Job, JobState

log = logging.getLogger(__name__)

TICK_S = 1.0
EDIT_INTERVAL_S = 3.0
PREVIEW_NAME = "preview.jpg"
SLOW_EDIT_S = 1.0  # an edit that took longer waited out a rate limit (discord.py retries 429s itself)
MAX_PREVIEW_GAP_S = 60.0


@dataclass
class _Tracked:
    shown: StatusLine | None = None
    shown_end: float | None = None  # the finish time (unix) the message shows
    edited_at: float = 0.0  # monotonic
    editing: asyncio.Task[None] | None = None
    gone: bool = False  # the message was deleted: stop editing it
    preview: str | None = None  # digest of the live preview the message shows
    preview_gap_s: float = EDIT_INTERVAL_S  # since the last edit; grows after a rate limit, shrinks after quick edits
    previews_done: bool = False  # the result is being posted: no more preview edits


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
    async def on_job_queued(self, job_id: int, shown: StatusLine) -> None:
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
        line = status_line(job, position=None, note=None, paused=False)
        if tracked.shown == line:
            self._tracked.pop(job.id, None)
            return
        tracked.edited_at = time.monotonic()
        tracked.editing = asyncio.create_task(
            self._edit(job, tracked, line, status_text(job, line, eta_s=None, now=now()), None), name=f"status-{job.id}"
        )
        await asyncio.wait({tracked.editing})

    async def finish_previews(self, job_id: int) -> None:
        """The result is about to be posted: no preview edit may start from now on or land after the post."""
        tracked = self._tracked.get(job_id)
        if tracked is None:
            return
        tracked.previews_done = True
        if tracked.editing is not None and not tracked.editing.done():
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
            line = status_line(job, position=positions.get(job.id), note=note, paused=paused)
            end = t + ends[job.id]
            moved = tracked.shown_end is None or abs(end - tracked.shown_end) > max(30.0, 0.2 * ends[job.id])
            preview = await self._new_preview(job, tracked)
            if line != tracked.shown or (job.state is JobState.QUEUED and moved) or preview is not None:
                text = status_text(job, line, eta_s=ends[job.id], now=t)
                self._maybe_edit(job, tracked, line, text, end, preview)
        finished = set(self._tracked) - {job.id for job in active}
        for job_id in finished:
            done = await queue.get_job(job_id)
            tracked = self._tracked.get(job_id)  # an edit finishing meanwhile may have dropped it
            if tracked is None or (done is not None and not done.state.finished):
                continue  # queued after the read above; next tick
            if done is None or done.status_message_id is None or tracked.gone:
                self._tracked.pop(job_id, None)
                continue
            line = status_line(done, position=None, note=None, paused=False)
            if line == tracked.shown:
                self._tracked.pop(job_id, None)
            else:
                self._maybe_edit(done, tracked, line, status_text(done, line, eta_s=None, now=t), None)

    async def _new_preview(self, job: Job, tracked: _Tracked) -> bytes | None:
        """The running job's newest preview when its message is due one and does not show it yet."""
        if not self.bot.settings.previews or job.state is not JobState.RUNNING or job.status_message_id is None:
            return None
        if tracked.previews_done or tracked.gone or time.monotonic() - tracked.edited_at < tracked.preview_gap_s:
            return None
        data = await self.bot.queue.preview(job.id)
        if data is None or hashlib.sha256(data).hexdigest() == tracked.preview:
            return None
        return data

    def _maybe_edit(
        self, job: Job, tracked: _Tracked, line: StatusLine, text: str, end: float | None, preview: bytes | None = None
    ) -> None:
        if job.status_message_id is None or tracked.gone:
            return
        if tracked.previews_done:
            preview = None  # checked again here: no await between this and the edit task starting
        if tracked.editing is not None and not tracked.editing.done():
            return
        if time.monotonic() - tracked.edited_at < self.edit_interval_s:
            return
        tracked.edited_at = time.monotonic()
        tracked.editing = asyncio.create_task(
            self._edit(job, tracked, line, text, end, preview), name=f"status-{job.id}"
        )

    async def _edit(
        self, job: Job, tracked: _Tracked, line: StatusLine, text: str, end: float | None, preview: bytes | None = None
    ) -> None:
        assert job.status_message_id is not None
        channel = self.bot.get_partial_messageable(job.requester.channel_id, guild_id=job.requester.guild_id)
        extra: dict[str, list[discord.File]] = {}
        if preview is not None:
            extra["attachments"] = [discord.File(io.BytesIO(preview), filename=PREVIEW_NAME)]
        elif line.state.finished and self.bot.settings.previews:
            extra["attachments"] = []  # the result replaces the preview
        started = time.monotonic()
        try:
            message = channel.get_partial_message(job.status_message_id)
            await message.edit(content=text, allowed_mentions=NO_MENTIONS, **extra)
        except discord.NotFound:
            log.info("Status message of job #%s is gone; no more updates for it", job.id)
            tracked.gone = True
            if line.state.finished:
                self._tracked.pop(job.id, None)
            return
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:  # a dropped connection too
            log.warning("Editing the status message of job #%s failed: %s", job.id, exc)
            self._pace_previews(tracked, rate_limited=getattr(exc, "status", None) == 429)
            return
        finally:
            tracked.edited_at = time.monotonic()
        if preview is not None:
            tracked.preview = hashlib.sha256(preview).hexdigest()
        self._pace_previews(tracked, rate_limited=time.monotonic() - started > SLOW_EDIT_S)
        tracked.shown = line
        tracked.shown_end = end
        if line.state.finished:
            self._tracked.pop(job.id, None)

    def _pace_previews(self, tracked: _Tracked, *, rate_limited: bool) -> None:
        """After a rate-limited edit of this message, double the wait before its next preview edit; come back
        slowly after quick ones. Text edits keep their own pace: they say something new."""
        if rate_limited:
            tracked.preview_gap_s = min(MAX_PREVIEW_GAP_S, tracked.preview_gap_s * 2)
        else:
            tracked.preview_gap_s = max(self.edit_interval_s, tracked.preview_gap_s * 0.75)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Progress(cast(Host, bot)))
