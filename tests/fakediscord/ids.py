"""Snowflake ids and timestamps shaped like Discord's, so discord.py's ``created_at`` maths stays sane."""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeFactory:
    """Hands out unique, strictly increasing snowflakes derived from the current time."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._last = 0

    def next(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        candidate = (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return candidate


def iso_now() -> str:
    """Current UTC time in the ISO-8601 form Discord uses for timestamps."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def new_token(prefix: str) -> str:
    """A random opaque token (interaction tokens, session ids)."""
    return f"{prefix}{secrets.token_urlsafe(24)}"
