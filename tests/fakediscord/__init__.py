"""A fake Discord (REST API v10 + gateway) for running the real discord.py against, in-process or not.

Quick start::

    server = await FakeDiscord(heartbeat_interval=1.0).start()
    guild = server.add_guild("Test")
    alice = server.add_user("alice")
    server.add_member(guild, alice, permissions=Perm.MANAGE_GUILD)
    with point_discord_py_at(server):          # or: subprocess with env=server.client_env()
        ...start a commands.Bot, wait until ready...
        handle = await server.send_slash_command(alice, guild, "imagine", {"prompt": "a cat"})
        await handle.wait_response()
        message = await handle.wait_original()
    await server.stop()
"""

from .client import point_discord_py_at
from .errors import ApiError
from .faults import Delay, Disconnect, ErrorResponse, FaultRule, FaultSchedule, RateLimit, ServerError
from .interactions import CallbackRecord, InteractionHandle
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    RecordedFile,
    RecordedRequest,
    StoredAttachment,
    StoredMessage,
    UploadFile,
)
from .permissions import ALL_PERMISSIONS, DEFAULT_EVERYONE, Intent, Perm
from .server import FakeDiscord

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_EVERYONE",
    "ApiError",
    "CallbackRecord",
    "Delay",
    "Disconnect",
    "ErrorResponse",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "FaultRule",
    "FaultSchedule",
    "Intent",
    "InteractionHandle",
    "Perm",
    "RateLimit",
    "RecordedFile",
    "RecordedRequest",
    "ServerError",
    "StoredAttachment",
    "StoredMessage",
    "UploadFile",
    "point_discord_py_at",
]
