"""What the queue keeps per user and per result beyond jobs: personal settings, the daily quota's
count, and retention (deleting old result images from the store and the rows together).

Written once for both backends (portable SQL with `?`), mixed into each queue next to db.core.
Retention runs in three steps so a kill anywhere leaves nothing half-done: one transaction marks
the old jobs 'pruning', then their images are deleted from the result store (idempotent), then one
transaction clears their result_paths and marks them 'pruned'. A pass first finishes every job an
interrupted pass left 'pruning'. Which files a pruned job frees (its results, and its start image once no
other job needs it) is db.retention's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

from db import core, enqueue
from db.models import Job, UserSettings
from db.results import ResultStore, UnsafeResult

log = logging.getLogger(__name__)

PRUNE_BATCH = 200
SETTINGS_CACHE_SIZE = 50_000  # users; past this the cache starts afresh


def settings_to_json(settings: UserSettings) -> str:
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def settings_from_json(text: str) -> UserSettings:
    """Unknown keys (a newer bot's) are ignored, missing ones take their defaults."""
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(UserSettings)}
    return UserSettings(**{k: v for k, v in data.items() if k in known})


class UserData:
    """Mixed into a queue class after db.core.QueueCore, which provides these."""

    results: ResultStore
    _user_settings: dict[int, UserSettings]

    def _tx(self) -> AbstractAsyncContextManager[core.Conn]:
        raise NotImplementedError

    def _read(self) -> AbstractAsyncContextManager[core.Conn]:
        raise NotImplementedError

    async def _jobs(self, conn: core.Conn, where: str, params: Any = ()) -> list[Job]:
        raise NotImplementedError

    async def drop_start_image(self, digest: str, *, besides: int = 0) -> bool:
        raise NotImplementedError  # db.retention.Retention, through QueueCore

    # --- personal settings (/settings) -----------------------------------------------------------------
    def _settings_cache(self) -> dict[int, UserSettings]:
        """Settings read or written by this process. Every /imagine reads them before it is answered, and in
        a burst each database trip waits behind hundreds of writes; only the bot writes settings, so what it
        read or wrote stays true."""
        cache: dict[int, UserSettings] | None = getattr(self, "_user_settings", None)
        if cache is None or len(cache) > SETTINGS_CACHE_SIZE:
            cache = {}
            self._user_settings = cache
        return cache

    async def user_settings(self, user_id: int) -> UserSettings:
        """The user's saved settings, or all defaults."""
        cache = self._settings_cache()
        if user_id not in cache:
            async with self._read() as conn:
                row = await conn.one("SELECT settings FROM user_settings WHERE user_id = ?", (user_id,))
            cache[user_id] = settings_from_json(row["settings"]) if row else UserSettings()
        return cache[user_id]

    async def set_user_settings(self, user_id: int, settings: UserSettings) -> None:
        self._settings_cache().pop(user_id, None)  # first: a failed write must not leave the new value cached
        async with self._tx() as conn:
            await conn.run(
                "INSERT INTO user_settings (user_id, settings, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                (user_id, settings_to_json(settings), core.now()),
            )
        self._settings_cache()[user_id] = settings

    async def clear_user_settings(self, user_id: int) -> None:
        self._settings_cache().pop(user_id, None)
        async with self._tx() as conn:
            await conn.run("DELETE FROM user_settings WHERE user_id = ?", (user_id,))
        self._settings_cache()[user_id] = UserSettings()

    # --- the daily quota ----------------------------------------------------------------------------------
    async def used_today(self, user_id: int) -> int:
        """Images the user asked for since the start of this UTC day (what DAILY_QUOTA counts)."""
        async with self._read() as conn:
            row = await conn.one(f"SELECT ({enqueue.USED_SINCE_SQL}) AS n", (user_id, enqueue.day_start(core.now())))
        return int(row["n"]) if row else 0

    # --- retention ----------------------------------------------------------------------------------------
    async def prune_results(self, before: float, *, limit: int = PRUNE_BATCH) -> list[int]:
        """Delete the images of jobs finished before `before` (and finish any interrupted pass).
        Returns the ids whose images were deleted in this pass."""
        async with self._tx() as conn:
            await conn.run(
                "INSERT INTO pruned_results (job_id, state, at) SELECT j.id, 'pruning', ? FROM jobs j "
                "WHERE j.state = 'done' AND j.finished_at < ? AND j.result_paths <> '[]' "
                "AND NOT EXISTS (SELECT 1 FROM pruned_results p WHERE p.job_id = j.id) "
                "ORDER BY j.finished_at LIMIT ?",
                (core.now(), before, max(1, limit)),
            )
        async with self._read() as conn:
            doomed = await self._jobs(
                conn, "j.id IN (SELECT job_id FROM pruned_results WHERE state = 'pruning') ORDER BY j.id"
            )
        for job in doomed:
            try:
                await self.results.delete(job)
            except UnsafeResult as exc:  # a tampered row: nothing of the store's own to delete
                log.warning("Retention of job #%s: %s", job.id, exc)
        ids = [job.id for job in doomed]
        if ids:
            marks = ", ".join("?" for _ in ids)
            async with self._tx() as conn:
                await conn.run(f"UPDATE jobs SET result_paths = '[]' WHERE id IN ({marks})", ids)
                await conn.run(f"UPDATE pruned_results SET state = 'pruned' WHERE job_id IN ({marks})", ids)
            log.info("Retention deleted the images of %s job(s): %s", len(ids), ids[:50])
        for job in doomed:  # and their start images, once no other job needs them (db.retention)
            if job.request.start_image is not None:
                await self.drop_start_image(job.request.start_image, besides=job.id)
        return ids

    async def is_pruned(self, job_id: int) -> bool:
        """True once retention has started deleting the job's images."""
        async with self._read() as conn:
            row = await conn.one("SELECT 1 AS x FROM pruned_results WHERE job_id = ?", (job_id,))
        return row is not None
