"""What the queue keeps per user: their own /settings (cached: only the bot writes them) and how many images
they asked for today (what DAILY_QUOTA counts). Written once for both backends (portable SQL with `?`).
"""

from __future__ import annotations

import dataclasses
import json

from db import clock, enqueue
from db.base import QueueBase
from db.models import UserSettings

SETTINGS_CACHE_SIZE = 50_000  # users; past this the cache starts afresh


def settings_to_json(settings: UserSettings) -> str:
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def settings_from_json(text: str) -> UserSettings:
    """Unknown keys (a newer bot's) are ignored, missing ones take their defaults."""
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(UserSettings)}
    return UserSettings(**{k: v for k, v in data.items() if k in known})


class PerUser(QueueBase):
    """Part of `db.core.QueueCore`: one user's saved settings and today's count."""

    _user_settings: dict[int, UserSettings]

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
                (user_id, settings_to_json(settings), clock.now()),
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
            row = await conn.one(f"SELECT ({enqueue.USED_SINCE_SQL}) AS n", (user_id, enqueue.day_start(clock.now())))
        return int(row["n"]) if row else 0
