"""The delivery loop: post every channel message the bot still owes (the outbox), exactly once.

The queue writes a notice in the same transaction that finishes a job; this loop posts
it with ``channel.send`` (interaction tokens die after 15 minutes) and then records the
message id (a result goes by DM when the user's /settings ask for private results, and as
spoilers where a server's admins turned /spoilers on; a result the safety check flagged follows the server's
/safety mode, cogs.utils.safety). Each notice has its own nonce with
``enforce_nonce``, so if the bot dies between posting and recording, the retry returns the
message already posted instead of a duplicate. A failed post is retried later with exponential
backoff and jitter, without holding up the other notices; only errors that can never succeed
(channel gone, no access) give up, after logging. Posts are in the language of the one who asked for the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import aiohttp
import discord
from discord.ext import commands

from cogs.utils.host import Host, progress_of
from cogs.utils.i18n import t
from cogs.utils.images import fit_upload
from cogs.utils.kv_keys import spoilers_key
from cogs.utils.notices import Post, compose
from cogs.utils.safety import age_restricted, flagged_post, server_mode, spoilered, treatment
from cogs.utils.text import only_user
from cogs.utils.views import by_dm_view, result_view
from db.models import Notice, NoticeKind
from db.results import ResultFile

log = logging.getLogger(__name__)

POLL_S = 1.0
PARALLEL_POSTS = 3
UPLOAD_MARGIN = 0.95  # the multipart form around the files counts too
# Discord error codes after which a retry can never succeed.
CANNOT_MESSAGE_USER = 50007
PERMANENT_CODES = {
    10003,  # Unknown Channel
    10013,  # Unknown User
    50001,  # Missing Access
    CANNOT_MESSAGE_USER,  # DMs closed
    40005,  # Request entity too large
    50035,  # Invalid form body
}


def retry_delay(
    attempts: int, *, base_s: float = 2.0, cap_s: float = 300.0, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped at 5 minutes."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempts))
    return ceiling / 2 + rand() * ceiling / 2


def is_permanent(error: discord.HTTPException) -> bool:
    return error.code in PERMANENT_CODES


def nonce_for(notice: Notice, part: int = 0) -> str:
    """Stable across retries and restarts, unique per notice (≤ 25 characters, as Discord requires)."""
    base = f"cv{notice.id}.{int(notice.job.created_at) % 10**8}"
    return base if part == 0 else f"{base}p{part}"


class Delivery(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot
        self._task: asyncio.Task[None] | None = None
        self._busy: set[int] = set()
        self._posts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PARALLEL_POSTS)

    async def cog_load(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="delivery")

    async def cog_unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._posts:  # let posts under way finish briefly; a cut-off one is retried (nonce: no duplicate)
            _, pending = await asyncio.wait(self._posts, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self) -> None:
        queue = self.bot.queue
        while True:
            try:
                for notice in await queue.pending_notices(limit=20):
                    if notice.id in self._busy:
                        continue
                    self._busy.add(notice.id)
                    task = asyncio.create_task(self._deliver(notice), name=f"notice-{notice.id}")
                    self._posts.add(task)
                    task.add_done_callback(self._posts.discard)
            except Exception:
                log.exception("Reading the outbox failed; trying again shortly")
            await queue.wait_for_change(POLL_S)
            await asyncio.sleep(0.05)

    async def _deliver(self, notice: Notice) -> None:
        try:
            async with self._slots:
                await self._deliver_one(notice)
        finally:
            self._busy.discard(notice.id)

    async def _deliver_one(self, notice: Notice) -> None:
        queue = self.bot.queue
        job = notice.job
        progress = progress_of(self.bot)
        if progress is not None:
            await progress.finish_previews(job.id)  # no live preview edit lands after the result
        try:
            message_id = await self._post(notice)
        except discord.HTTPException as exc:
            await self._failed(notice, f"HTTP {exc.status} (code {exc.code}): {exc.text}", is_permanent(exc))
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._failed(notice, f"network: {exc.__class__.__name__}: {exc}", False)
            return
        except Exception as exc:
            log.exception("Posting notice %s (%s) of job #%s failed", notice.id, notice.kind.value, job.id)
            await self._failed(notice, f"{exc.__class__.__name__}: {exc}", False)
            return
        if progress is not None and notice.kind is not NoticeKind.RESUMED:
            await progress.show_outcome(job)  # before recording: a crash in between redoes both
        try:
            await queue.notice_sent(notice.id, message_id)
        except Exception:
            # Posted but not recorded: the retry finds the same message through its nonce.
            log.exception("Recording notice %s as sent failed; it will be re-sent with the same nonce", notice.id)
            return
        log.info("Posted %s of job #%s (message %s)", notice.kind.value, job.id, message_id)

    async def _failed(self, notice: Notice, error: str, permanent: bool) -> None:
        job = notice.job
        delay = retry_delay(notice.attempts)
        if permanent:
            log.error(
                "Giving up on the %s post of job #%s to channel %s: %s",
                notice.kind.value,
                job.id,
                job.requester.channel_id,
                error,
            )
        else:
            log.warning(
                "Posting the %s of job #%s failed (%s); retrying in %.0f s", notice.kind.value, job.id, error, delay
            )
        try:
            await self.bot.queue.notice_failed(notice.id, error, delay, give_up=permanent)
        except Exception:
            log.exception("Recording the failed post of notice %s failed", notice.id)

    async def _post(self, notice: Notice) -> int:
        post = await compose(notice, self.bot.queue.results)
        job = notice.job
        channel = self.bot.get_partial_messageable(job.requester.channel_id, guild_id=job.requester.guild_id)
        private = bool(post.files) and (await self.bot.queue.user_settings(post.user_id)).private
        if post.files and job.flagged:
            mode = await server_mode(self.bot.queue, job.requester.guild_id)
            where = None if private else await self._channel(job.requester.channel_id)  # a DM is not age-restricted
            post = flagged_post(post, job, treatment(mode, True, age_restricted(where)))
        if private:
            return await self._post_private(notice, post, channel)
        guild_id = job.requester.guild_id
        if post.files and guild_id and await self.bot.queue.kv_get(spoilers_key(guild_id)) == "1":
            post = replace(post, files=spoilered(post.files))
        return await self._send(channel, notice, post)

    async def _channel(self, channel_id: int) -> object:
        """The channel as Discord describes it (its age-restricted mark), from the cache or asked for; None if
        it cannot be read (then it counts as not age-restricted)."""
        found = self.bot.get_channel(channel_id)
        if found is not None:
            return found
        try:
            return await self.bot.fetch_channel(channel_id)
        except (discord.HTTPException, aiohttp.ClientError, OSError):
            return None

    async def _post_private(self, notice: Notice, post: Post, channel: discord.PartialMessageable) -> int:
        """The user chose private results: by DM; if their DMs are closed, a short notice in the channel
        (no image, mentioning only them) says so. An ephemeral reply is impossible: the interaction expired."""
        dm = await self.bot.create_dm(discord.Object(post.user_id))
        try:
            return await self._send(dm, notice, post)
        except discord.Forbidden as exc:
            if exc.code != CANNOT_MESSAGE_USER:
                raise
        text = t("notice.dm_closed", notice.job.requester.locale, user=post.user_id, job=notice.job.id)
        sent = await channel.send(text, allowed_mentions=only_user(post.user_id), nonce=f"{nonce_for(notice)}d")
        return sent.id

    async def _send(self, channel: discord.abc.Messageable, notice: Notice, post: Post) -> int:
        limit = int(self.bot.settings.discord_upload_limit_mb * 2**20 * UPLOAD_MARGIN)
        files = [ResultFile(*await asyncio.to_thread(fit_upload, f.name, f.data, limit)) for f in post.files]
        groups = _upload_groups(files, limit)
        first = await channel.send(
            post.content,
            files=[_file(name, data) for name, data in groups[0]] if groups else discord.utils.MISSING,
            view=post_view(post),
            allowed_mentions=only_user(post.user_id),
            nonce=nonce_for(notice),
        )
        for part, group in enumerate(groups[1:], start=1):
            await channel.send(
                files=[_file(name, data) for name, data in group],
                allowed_mentions=only_user(post.user_id),
                nonce=nonce_for(notice, part),
            )
        return first.id


def post_view(post: Post) -> discord.ui.View:
    """A result's buttons, a flagged result's notice's button, or none."""
    if post.buttons_for is not None:
        return result_view(post.buttons_for, post.locale, draft=post.draft)
    if post.dm_button_for is not None:
        return by_dm_view(post.dm_button_for, post.locale)
    return discord.utils.MISSING


def _file(name: str, data: bytes) -> discord.File:
    return discord.File(io.BytesIO(data), filename=name)


def _upload_groups(files: list[ResultFile], limit: int) -> list[list[tuple[str, bytes]]]:
    """Split the result images into uploads that fit Discord's per-message limit."""
    groups: list[list[tuple[str, bytes]]] = []
    size = 0
    for image in files:
        if not groups or size + len(image.data) > limit:
            groups.append([])
            size = 0
        groups[-1].append((image.name, image.data))
        size += len(image.data)
    return groups


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Delivery(cast(Host, bot)))
