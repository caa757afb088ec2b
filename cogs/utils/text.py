"""Small text helpers shared by the cogs: safe echoes of user text, mention rules, durations.

Everything a user typed is echoed through ``quote`` so it can neither ping anyone
nor break the message's markdown, and every message goes out with allowed
mentions that can never reach @everyone, @here or a role. Durations and the parameters line are written in a
locale's language (English unless it is zh-CN).
"""

from __future__ import annotations

import math
import time

import discord

from cogs.utils.i18n import Locale, t
from jobrequest import JobRequest

# No pings at all: the default for every bot message.
NO_MENTIONS = discord.AllowedMentions.none()

_ZWSP = "\u200b"


def only_user(user_id: int) -> discord.AllowedMentions:
    """Allowed mentions that can ping this one user and nobody else."""
    return discord.AllowedMentions(everyone=False, roles=False, replied_user=False, users=[discord.Object(user_id)])


def defuse(text: str) -> str:
    """Break every mention-like sequence (@everyone, @here, <@id>, <@&id>) with a zero-width space."""
    return text.replace("@", "@" + _ZWSP)


def quote(text: str, limit: int = 300) -> str:
    """User text as it may appear in a bot message: shortened, markdown escaped, mentions defused."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return defuse(discord.utils.escape_markdown(text))


def clip(text: str, limit: int = 2000) -> str:
    """Keep a message within Discord's length limit."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def relative(ts: float) -> str:
    """A Discord timestamp that each reader sees as "in 2 minutes" in their own time zone."""
    return f"<t:{int(ts)}:R>"


def whole_minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


def seconds_text(seconds: float, locale: Locale = None) -> str:
    if seconds < 90:
        return t("time.seconds", locale, n=max(1, round(seconds)))
    if seconds < 5400:
        return t("time.minutes", locale, n=round(seconds / 60))
    return t("time.hours", locale, n=seconds / 3600)


def bar(done: int, total: int, width: int = 12) -> str:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "▰" * filled + "▱" * (width - filled)


def seeds_text(seed: int | None, count: int, locale: Locale = None) -> str:
    if seed is None:
        return t("params.random_seed", locale)
    if count == 1:
        return t("params.seed", locale, seed=seed)
    return t("params.seeds", locale, first=seed, last=seed + count - 1)


def params_line(request: JobRequest, seed: int | None, locale: Locale = None) -> str:
    """One line with everything needed to make the same image again."""
    parts = [
        f"{request.width}×{request.height}",
        t("params.steps", locale, steps=request.steps),
        t("params.guidance", locale, guidance=request.guidance),
        seeds_text(seed, request.count, locale),
    ]
    if request.count > 1:
        parts.insert(0, t("params.images", locale, count=request.count))
    if request.draft:
        parts.append(t("params.draft", locale))
    return " · ".join(parts)


def now() -> float:
    return time.time()
