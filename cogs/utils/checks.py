"""Who may do what, and where: admin rights, allowed channels and roles, the prompt ban list.

Admin rights are checked here in code on every call: Discord's default_permissions
only hides commands in the client and a server admin can override it. Each refusal
is a ``Refused`` whose message is shown to the user as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, cast

import discord
from discord import app_commands

from cogs.utils.host import Host
from cogs.utils.i18n import msg
from cogs.utils.text import quote
from settings import Settings


class Refused(app_commands.CheckFailure):
    """The user may not do this here; the message says why and what to do."""


class NotAdmin(Refused):
    pass


class ChannelNotAllowed(Refused):
    pass


class BannedWord(Refused):
    pass


class RoleNotAllowed(Refused):
    pass


def is_admin(interaction: discord.Interaction, settings: Settings) -> bool:
    """Manage Server in this guild, or listed in ADMIN_USER_IDS, or holding a role in ADMIN_ROLE_IDS."""
    if interaction.guild_id is None:
        return False
    user = interaction.user
    if user.id in settings.admin_user_ids:
        return True
    permissions = interaction.permissions
    if permissions.manage_guild or permissions.administrator:
        return True
    roles: Iterable[Any] = getattr(user, "roles", ())
    return any(role.id in settings.admin_role_ids for role in roles)


def is_admin_for(interaction: discord.Interaction, settings: Settings, guild_id: int | None) -> bool:
    """Admin power over a job made in ``guild_id``: ADMIN_USER_IDS anywhere (the bot's owners), a server's
    admins only over that server's jobs (an admin of another server the bot is in is no one here)."""
    if not is_admin(interaction, settings):
        return False
    return interaction.user.id in settings.admin_user_ids or (guild_id is not None and guild_id == interaction.guild_id)


def require_admin(interaction: discord.Interaction, settings: Settings) -> None:
    if interaction.guild_id is None:
        raise NotAdmin(msg("check.admin_dm"))
    if not is_admin(interaction, settings):
        raise NotAdmin(msg("check.admin_only"))


def admin_only() -> Any:
    """app_commands check: refuse DMs and non-admins before the command body runs."""

    async def predicate(interaction: discord.Interaction) -> bool:
        require_admin(interaction, cast(Host, interaction.client).settings)
        return True

    return app_commands.check(predicate)


def require_allowed_channel(interaction: discord.Interaction, settings: Settings) -> None:
    """ALLOWED_CHANNEL_IDS, when set, limits image commands to those channels (and their threads)."""
    allowed = settings.allowed_channel_ids
    if not allowed:
        return
    channel = interaction.channel
    ids = {interaction.channel_id, getattr(channel, "parent_id", None)}
    if ids & set(allowed):
        return
    where = ", ".join(f"<#{cid}>" for cid in allowed[:10])
    raise ChannelNotAllowed(msg("check.channel", where=where))


@lru_cache(maxsize=8)
def _ban_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    cleaned = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    return re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in cleaned) + r")(?!\w)", re.IGNORECASE)


def banned_word(texts: Iterable[str], words: Iterable[str]) -> str | None:
    """The first banned word (or phrase) found as a whole word in any of the texts, case-insensitively."""
    pattern = _ban_pattern(tuple(words))
    if pattern is None:
        return None
    for text in texts:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def require_no_banned_words(texts: Iterable[str], settings: Settings) -> None:
    word = banned_word(texts, settings.banned_words)
    if word is not None:
        raise BannedWord(msg("check.banned_word", word=quote(word, 60)))


def require_allowed_role(interaction: discord.Interaction, settings: Settings) -> None:
    """ALLOWED_ROLE_IDS, when set, limits making images to members holding one of those roles (admins always may;
    in DMs there are no roles, so only the bot's owners may)."""
    allowed = set(settings.allowed_role_ids)
    if not allowed or is_admin(interaction, settings) or interaction.user.id in settings.admin_user_ids:
        return
    roles: Iterable[Any] = getattr(interaction.user, "roles", ())
    if any(role.id in allowed for role in roles):
        return
    if interaction.guild_id is None:
        raise RoleNotAllowed(msg("check.role_in_server"))
    names = ", ".join(f"<@&{rid}>" for rid in sorted(allowed)[:10])
    raise RoleNotAllowed(msg("check.role_needed", names=names))
