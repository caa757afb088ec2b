"""JSON shapes of Discord objects, built from the fake's records; complete enough for discord.py's parsers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ids import iso_now
from .models import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser

if TYPE_CHECKING:
    from .state import FakeState


def user_payload(user: FakeUser) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "username": user.username,
        "global_name": user.global_name,
        "discriminator": user.discriminator,
        "avatar": user.avatar,
        "bot": user.bot,
        "system": False,
        "public_flags": 0,
        "flags": 0,
        "banner": None,
        "accent_color": None,
        "avatar_decoration_data": None,
    }


def self_user_payload(user: FakeUser) -> dict[str, Any]:
    """``GET /users/@me`` and READY's ``user``: the bot's own account."""
    out = user_payload(user)
    out.update({"mfa_enabled": False, "verified": True, "email": None, "locale": "en-US", "premium_type": 0})
    return out


def role_payload(role: FakeRole) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(role.id),
        "name": role.name,
        "permissions": str(role.permissions),
        "position": role.position,
        "color": role.color,
        "colors": {"primary_color": role.color, "secondary_color": None, "tertiary_color": None},
        "hoist": role.hoist,
        "managed": role.managed,
        "mentionable": role.mentionable,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }
    if role.bot_id is not None:
        out["tags"] = {"bot_id": str(role.bot_id)}
    return out


def channel_payload(channel: FakeChannel, state: FakeState, *, include_guild_id: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(channel.id),
        "type": channel.type,
        "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
        "flags": 0,
    }
    if channel.is_dm:
        out["recipients"] = [user_payload(state.users[uid]) for uid in channel.recipient_ids]
        return out
    if channel.is_thread:  # a thread object: no nsfw, topic or overwrites of its own (its parent's apply)
        out.update(
            {
                "name": channel.name,
                "parent_id": str(channel.parent_id),
                "owner_id": str(channel.owner_id),
                "rate_limit_per_user": 0,
                "message_count": 0,
                "member_count": 1,
                "total_message_sent": 0,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": iso_now(),
                    "locked": False,
                },
            }
        )
        if include_guild_id and channel.guild_id is not None:
            out["guild_id"] = str(channel.guild_id)
        return out
    out.update(
        {
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": list(channel.permission_overwrites),
            "nsfw": channel.nsfw,
            "topic": channel.topic,
            "parent_id": str(channel.parent_id) if channel.parent_id else None,
            "rate_limit_per_user": 0,
        }
    )
    if include_guild_id and channel.guild_id is not None:
        out["guild_id"] = str(channel.guild_id)
    return out


def member_payload(
    member: FakeMember, state: FakeState, *, include_user: bool = True, permissions: int | None = None
) -> dict[str, Any]:
    """A guild member; ``permissions`` (decimal string) is only present in interaction payloads."""
    out: dict[str, Any] = {
        "roles": [str(r) for r in member.role_ids],
        "nick": member.nick,
        "avatar": None,
        "banner": None,
        "joined_at": member.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if include_user:
        out["user"] = user_payload(state.users[member.user_id])
    if permissions is not None:
        out["permissions"] = str(permissions)
    return out


def guild_payload(guild: FakeGuild, state: FakeState) -> dict[str, Any]:
    """The REST ``GET /guilds/{id}`` shape (no channels or members)."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(guild.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": guild.preferred_locale,
        "system_channel_id": str(guild.system_channel_id) if guild.system_channel_id else None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "application_id": None,
        "features": [],
        "roles": [role_payload(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "max_members": 500000,
        "max_video_channel_users": 25,
        "approximate_member_count": len(guild.members),
        "approximate_presence_count": 0,
    }


def guild_create_payload(guild: FakeGuild, state: FakeState, *, include_all_members: bool) -> dict[str, Any]:
    """GUILD_CREATE: the REST shape plus channels, members and the gateway-only fields."""
    out = guild_payload(guild, state)
    if include_all_members:
        members = list(guild.members.values())
    else:
        members = [m for m in guild.members.values() if m.user_id == state.bot_user.id]
    out.update(
        {
            "unavailable": False,
            "large": False,
            "joined_at": guild.joined_at,
            "member_count": len(guild.members),
            "members": [member_payload(m, state) for m in members],
            "channels": [
                channel_payload(c, state, include_guild_id=False) for c in guild.channels.values() if not c.is_thread
            ],
            "threads": [channel_payload(c, state) for c in guild.channels.values() if c.is_thread],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
        }
    )
    return out


def partial_guild_for_interaction(guild: FakeGuild) -> dict[str, Any]:
    return {"id": str(guild.id), "locale": guild.preferred_locale, "features": []}


def application_payload(state: FakeState) -> dict[str, Any]:
    """``GET /oauth2/applications/@me``: every key discord.py's ``AppInfo`` reads unconditionally."""
    return {
        "id": str(state.application_id),
        "name": state.bot_user.username,
        "description": "fakediscord test application",
        "icon": None,
        "cover_image": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": user_payload(state.owner),
        "team": None,
        "verify_key": "0" * 64,
        "summary": "",
        "flags": state.application_flags,
        "rpc_origins": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "role_connections_verification_url": None,
        "terms_of_service_url": None,
        "privacy_policy_url": None,
        "tags": [],
        "custom_install_url": None,
        "install_params": None,
        "integration_types_config": {"0": {}, "1": {}},
        "approximate_guild_count": len(state.guilds),
        "approximate_user_install_count": 0,
        "bot": user_payload(state.bot_user),
        "guild_id": None,
        "primary_sku_id": None,
        "slug": None,
        "event_webhooks_url": None,
        "event_webhooks_status": 1,
        "event_webhooks_types": [],
    }


def error_payload(message: str, code: int, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"message": message, "code": code}
    if errors:
        out["errors"] = errors
    return out
