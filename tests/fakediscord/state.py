"""The fake's world (users, guilds, channels, messages, commands) and its records; one instance per server."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import payloads
from .ids import SnowflakeFactory
from .models import (
    DM_CHANNEL,
    PUBLIC_THREAD,
    TEXT_CHANNEL,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    RecordedRequest,
    StoredAttachment,
    StoredMessage,
)
from .notify import Notifier
from .permissions import ALL_PERMISSIONS, DEFAULT_BOT, DEFAULT_EVERYONE, Intent, Perm

if TYPE_CHECKING:
    from .interactions import InteractionHandle

# Application flags that say "privileged intents are enabled" (presence, members, message content).
APP_FLAGS_PRIVILEGED = (1 << 12) | (1 << 14) | (1 << 18)


class HasId(Protocol):
    @property
    def id(self) -> int: ...


IdLike = int | str | HasId


def id_of(obj: IdLike) -> int:
    """Accept an int, a numeric string or anything with ``.id`` (fake records, discord.py objects)."""
    if isinstance(obj, int):
        return obj
    if isinstance(obj, str):
        return int(obj)
    return int(obj.id)


class Publisher(Protocol):
    """Hands a dispatch to the gateway. ``content_gated``: strip content for sessions without that intent."""

    def __call__(
        self, event: str, data: dict[str, Any], required_intents: int, content_gated: bool = False
    ) -> None: ...


def _no_gateway(event: str, data: dict[str, Any], required_intents: int, content_gated: bool = False) -> None:
    return None


@dataclass
class CommandSync:
    """One bulk overwrite of application commands (``guild_id`` None = global)."""

    guild_id: int | None
    commands: list[dict[str, Any]]
    at: float


class FakeState:
    """Holds everything the REST API, the gateway and the test controls share."""

    def __init__(self, *, bot_username: str = "FakeBot", privileged_intents: bool = True) -> None:
        self.ids = SnowflakeFactory()
        self.notifier = Notifier()
        self.base_url = "http://127.0.0.1:0"
        self.publish: Publisher = _no_gateway
        self.privileged_intents = privileged_intents
        self.ack_deadline = 3.0
        """Seconds a bot has to answer an interaction callback before it is "Unknown interaction"."""
        self.attachment_size_limit = 10 * 1024 * 1024

        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.attachments: dict[int, StoredAttachment] = {}
        self.nonces: dict[tuple[int, str], int] = {}

        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.command_syncs: list[CommandSync] = []
        self.requests: list[RecordedRequest] = []
        self.interactions: dict[int, InteractionHandle] = {}
        self.interactions_by_token: dict[str, InteractionHandle] = {}

        self.bot_user = self.add_user(bot_username, bot=True, discriminator="0000")
        self.application_id = self.bot_user.id
        self.owner = self.add_user("app-owner")

    # ----------------------------------------------------------------- world building

    @property
    def application_flags(self) -> int:
        return APP_FLAGS_PRIVILEGED if self.privileged_intents else 0

    def changed(self) -> None:
        self.notifier.bump()

    def add_user(
        self, username: str, *, global_name: str | None = None, bot: bool = False, discriminator: str = "0"
    ) -> FakeUser:
        user = FakeUser(
            id=self.ids.next(), username=username, global_name=global_name, bot=bot, discriminator=discriminator
        )
        self.users[user.id] = user
        self.changed()
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: FakeUser | None = None,
        channels: Iterable[str] = ("general",),
        everyone_permissions: int = DEFAULT_EVERYONE,
        bot_permissions: int = DEFAULT_BOT,
        locale: str = "en-US",
    ) -> FakeGuild:
        owner = owner or self.owner
        guild_id = self.ids.next()
        guild = FakeGuild(id=guild_id, name=name, owner_id=owner.id, preferred_locale=locale)
        guild.roles[guild_id] = FakeRole(
            id=guild_id, guild_id=guild_id, name="@everyone", permissions=everyone_permissions
        )
        bot_role = FakeRole(
            id=self.ids.next(),
            guild_id=guild_id,
            name=self.bot_user.username,
            permissions=int(bot_permissions),
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        self.guilds[guild_id] = guild
        for index, channel_name in enumerate(channels):
            channel = FakeChannel(
                id=self.ids.next(), type=TEXT_CHANNEL, name=channel_name, guild_id=guild_id, position=index
            )
            guild.channels[channel.id] = channel
            self.channels[channel.id] = channel
        text = guild.text_channels()
        guild.system_channel_id = text[0].id if text else None
        guild.members[owner.id] = FakeMember(guild_id=guild_id, user_id=owner.id)
        guild.members[self.bot_user.id] = FakeMember(
            guild_id=guild_id, user_id=self.bot_user.id, role_ids=[bot_role.id]
        )
        self.publish(
            "GUILD_CREATE", payloads.guild_create_payload(guild, self, include_all_members=True), Intent.GUILDS
        )
        self.changed()
        return guild

    def add_role(self, guild: IdLike, name: str, permissions: int = 0, *, position: int | None = None) -> FakeRole:
        g = self.guild(guild)
        role = FakeRole(
            id=self.ids.next(),
            guild_id=g.id,
            name=name,
            permissions=int(permissions),
            position=position if position is not None else len(g.roles),
        )
        g.roles[role.id] = role
        self.publish("GUILD_ROLE_CREATE", {"guild_id": str(g.id), "role": payloads.role_payload(role)}, Intent.GUILDS)
        self.changed()
        return role

    def add_text_channel(
        self, guild: IdLike, name: str, *, topic: str | None = None, nsfw: bool = False
    ) -> FakeChannel:
        """A text channel; ``nsfw`` marks it age-restricted."""
        g = self.guild(guild)
        channel = FakeChannel(
            id=self.ids.next(),
            type=TEXT_CHANNEL,
            name=name,
            guild_id=g.id,
            position=len(g.channels),
            topic=topic,
            nsfw=nsfw,
        )
        g.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self.publish("CHANNEL_CREATE", payloads.channel_payload(channel, self), Intent.GUILDS)
        self.changed()
        return channel

    def add_thread(self, parent: IdLike, name: str, owner: IdLike) -> FakeChannel:
        """A public thread under a text channel, started by ``owner`` (THREAD_CREATE, as Discord sends it)."""
        under = self.channel(parent)
        assert under.guild_id is not None and under.type == TEXT_CHANNEL, "threads live under guild text channels"
        thread = FakeChannel(
            id=self.ids.next(),
            type=PUBLIC_THREAD,
            name=name,
            guild_id=under.guild_id,
            parent_id=under.id,
            owner_id=self.user(owner).id,
        )
        self.guilds[under.guild_id].channels[thread.id] = thread
        self.channels[thread.id] = thread
        self.publish("THREAD_CREATE", {**payloads.channel_payload(thread, self), "newly_created": True}, Intent.GUILDS)
        self.changed()
        return thread

    def add_member(
        self,
        guild: IdLike,
        user: IdLike,
        *,
        roles: Iterable[IdLike] = (),
        nick: str | None = None,
        permissions: int | None = None,
    ) -> FakeMember:
        g = self.guild(guild)
        u = self.user(user)
        member = FakeMember(
            guild_id=g.id,
            user_id=u.id,
            role_ids=[id_of(r) for r in roles],
            nick=nick,
            permissions=int(permissions) if permissions is not None else None,
        )
        g.members[u.id] = member
        data = payloads.member_payload(member, self)
        data["guild_id"] = str(g.id)
        self.publish("GUILD_MEMBER_ADD", data, Intent.GUILD_MEMBERS)
        self.changed()
        return member

    def dm_channel(self, user: IdLike) -> FakeChannel:
        """The DM channel between the bot and ``user``, created on first use (like POST /users/@me/channels)."""
        uid = id_of(user)
        self.user(uid)
        for channel in self.channels.values():
            if channel.type == DM_CHANNEL and channel.recipient_ids == [uid]:
                return channel
        channel = FakeChannel(id=self.ids.next(), type=DM_CHANNEL, recipient_ids=[uid])
        self.channels[channel.id] = channel
        self.changed()
        return channel

    # ----------------------------------------------------------------- lookups

    def user(self, user: IdLike) -> FakeUser:
        try:
            return self.users[id_of(user)]
        except KeyError:
            raise KeyError(f"fakediscord: unknown user {user!r}") from None

    def guild(self, guild: IdLike) -> FakeGuild:
        try:
            return self.guilds[id_of(guild)]
        except KeyError:
            raise KeyError(f"fakediscord: unknown guild {guild!r}") from None

    def channel(self, channel: IdLike) -> FakeChannel:
        try:
            return self.channels[id_of(channel)]
        except KeyError:
            raise KeyError(f"fakediscord: unknown channel {channel!r}") from None

    def message(self, message: IdLike) -> StoredMessage:
        try:
            return self.messages[id_of(message)]
        except KeyError:
            raise KeyError(f"fakediscord: unknown message {message!r}") from None

    def member_permissions(self, guild: FakeGuild, user_id: int) -> int:
        """Guild-level permissions: explicit override, else owner/administrator = all, else OR of roles."""
        member = guild.members.get(user_id)
        if member is not None and member.permissions is not None:
            return member.permissions
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        value = guild.everyone_role.permissions
        if member is not None:
            for role_id in member.role_ids:
                role = guild.roles.get(role_id)
                if role is not None:
                    value |= role.permissions
        if value & Perm.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return value

    def record_request(self, record: RecordedRequest) -> None:
        self.requests.append(record)
        self.changed()

    def now(self) -> float:
        return time.monotonic()
