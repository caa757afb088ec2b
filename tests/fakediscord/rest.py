"""The REST routes (Discord API v10 subset) discord.py uses for a slash-command bot, plus the attachment CDN."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import commands, errors, interactions, messages, payloads
from .http_util import json_response, no_content
from .models import RecordedFile, RecordedRequest, StoredMessage
from .recording import API_PREFIX, RECORD_KEY
from .state import CommandSync, FakeState


def _record(request: web.Request) -> RecordedRequest:
    return request[RECORD_KEY]


def _body(request: web.Request) -> dict[str, Any]:
    """JSON body or multipart ``payload_json``; Discord accepts either on message routes."""
    record = _record(request)
    body = record.payload
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise errors.invalid_form("_root", "MODEL_TYPE_CONVERT", "Expected an object")
    return body


def _snowflake(request: web.Request, key: str, what: str, code: int) -> int:
    try:
        return int(request.match_info[key])
    except ValueError:
        raise errors.not_found(what, code) from None


def _flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "").lower() in ("1", "true")


class RestApi:
    """Route handlers bound to one :class:`FakeState`; ``gateway_url`` is what ``GET /gateway`` advertises."""

    def __init__(self, state: FakeState, gateway_url: Callable[[], str], token: str | None = None) -> None:
        self.state = state
        self.gateway_url = gateway_url
        self.token = token

    def routes(self) -> list[web.AbstractRouteDef]:
        p = API_PREFIX
        app_cmds = p + "/applications/{app_id}/commands"
        guild_cmds = p + "/applications/{app_id}/guilds/{guild_id}/commands"
        webhook = p + "/webhooks/{app_id}/{token}"
        msg = p + "/channels/{channel_id}/messages/{message_id}"
        return [
            web.get(p + "/users/@me", self.get_me),
            web.get(p + "/users/{user_id}", self.get_user),
            web.post(p + "/users/@me/channels", self.create_dm),
            web.get(p + "/oauth2/applications/@me", self.get_application),
            web.get(p + "/gateway", self.get_gateway),
            web.get(p + "/gateway/bot", self.get_gateway_bot),
            web.put(app_cmds, self.put_commands),
            web.get(app_cmds, self.get_commands),
            web.put(guild_cmds, self.put_commands),
            web.get(guild_cmds, self.get_commands),
            web.post(p + "/interactions/{interaction_id}/{token}/callback", self.interaction_callback),
            web.post(webhook, self.webhook_execute),
            web.get(webhook + "/messages/{message_ref}", self.webhook_get),
            web.patch(webhook + "/messages/{message_ref}", self.webhook_edit),
            web.delete(webhook + "/messages/{message_ref}", self.webhook_delete),
            web.get(p + "/channels/{channel_id}", self.get_channel),
            web.get(p + "/channels/{channel_id}/messages", self.get_messages),
            web.post(p + "/channels/{channel_id}/messages", self.create_message),
            web.post(p + "/channels/{channel_id}/typing", self.typing),
            web.get(msg, self.get_message),
            web.patch(msg, self.edit_message),
            web.delete(msg, self.delete_message),
            web.put(msg + "/reactions/{emoji}/@me", self.add_reaction),
            web.get(p + "/guilds/{guild_id}", self.get_guild),
            web.get(p + "/guilds/{guild_id}/channels", self.get_guild_channels),
            web.get(p + "/guilds/{guild_id}/roles", self.get_guild_roles),
            web.get(p + "/guilds/{guild_id}/members/{user_id}", self.get_member),
            web.get("/attachments/{channel_id}/{attachment_id}/{filename}", self.get_attachment),
            web.get("/media/{channel_id}/{attachment_id}/{filename}", self.get_attachment),
        ]

    # ------------------------------------------------------------------ helpers

    def _check_auth(self, request: web.Request) -> None:
        if self.token is None:
            return
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise errors.ApiError(401, "401: Unauthorized", 0)

    def _check_app(self, request: web.Request) -> None:
        if request.match_info.get("app_id") != str(self.state.application_id):
            raise errors.ApiError(403, "Missing Access", errors.MISSING_ACCESS)

    def _check_size(self, files: list[RecordedFile]) -> None:
        if sum(len(f.data) for f in files) > self.state.attachment_size_limit:
            raise errors.ApiError(413, "Request entity too large", 40005)

    def _channel(self, request: web.Request) -> Any:
        cid = _snowflake(request, "channel_id", "Channel", errors.UNKNOWN_CHANNEL)
        channel = self.state.channels.get(cid)
        if channel is None:
            raise errors.not_found("Channel", errors.UNKNOWN_CHANNEL)
        return channel

    def _channel_message(self, request: web.Request) -> StoredMessage:
        channel = self._channel(request)
        mid = _snowflake(request, "message_id", "Message", errors.UNKNOWN_MESSAGE)
        message = self.state.messages.get(mid)
        if message is None or message.deleted or message.channel_id != channel.id or message.ephemeral:
            raise errors.not_found("Message", errors.UNKNOWN_MESSAGE)
        return message

    def _guild(self, request: web.Request) -> Any:
        gid = _snowflake(request, "guild_id", "Guild", errors.UNKNOWN_GUILD)
        guild = self.state.guilds.get(gid)
        if guild is None:
            raise errors.not_found("Guild", errors.UNKNOWN_GUILD)
        return guild

    # ------------------------------------------------------------------ users / app / gateway

    async def get_me(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response(payloads.self_user_payload(self.state.bot_user))

    async def get_user(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        uid = _snowflake(request, "user_id", "User", errors.UNKNOWN_USER)
        user = self.state.users.get(uid)
        if user is None:
            raise errors.not_found("User", errors.UNKNOWN_USER)
        return json_response(payloads.user_payload(user))

    async def create_dm(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        recipient = _body(request).get("recipient_id")
        if recipient is None or int(recipient) not in self.state.users:
            raise errors.not_found("User", errors.UNKNOWN_USER)
        channel = self.state.dm_channel(int(recipient))
        return json_response(payloads.channel_payload(channel, self.state))

    async def get_application(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response(payloads.application_payload(self.state))

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url()})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": self.gateway_url(), "shards": 1, "session_start_limit": limit})

    # ------------------------------------------------------------------ application commands

    def _scope(self, request: web.Request) -> int | None:
        if "guild_id" not in request.match_info:
            return None
        guild = self._guild(request)
        return int(guild.id)

    async def put_commands(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        self._check_app(request)
        scope = self._scope(request)
        body = _record(request).json
        stored = commands.bulk_overwrite(self.state, scope, body if body is not None else [])
        self.state.command_syncs.append(
            CommandSync(guild_id=scope, commands=copy.deepcopy(body or []), at=_record(request).received_at)
        )
        self.state.changed()
        return json_response(stored)

    async def get_commands(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        self._check_app(request)
        return json_response(self.state.commands.get(self._scope(request), []))

    # ------------------------------------------------------------------ interactions & webhooks

    async def interaction_callback(self, request: web.Request) -> web.Response:
        iid = _snowflake(request, "interaction_id", "interaction", errors.UNKNOWN_INTERACTION)
        record = _record(request)
        self._check_size(record.files)
        status, body = interactions.handle_callback(
            self.state,
            iid,
            request.match_info["token"],
            _body(request),
            record.files,
            with_response=_flag(request, "with_response"),
        )
        return no_content() if body is None else json_response(body, status)

    async def webhook_execute(self, request: web.Request) -> web.Response:
        self._check_app(request)
        handle = interactions.webhook_handle(self.state, int(request.match_info["app_id"]), request.match_info["token"])
        record = _record(request)
        self._check_size(record.files)
        message = interactions.send_followup(handle, _body(request), record.files)
        return json_response(message.payload()) if _flag(request, "wait") else no_content()

    def _webhook_message(self, request: web.Request) -> StoredMessage:
        try:
            app_id = int(request.match_info["app_id"])
        except ValueError:
            raise errors.not_found("Webhook", errors.UNKNOWN_WEBHOOK) from None
        handle = interactions.webhook_handle(self.state, app_id, request.match_info["token"])
        return interactions.webhook_message(handle, request.match_info["message_ref"])

    async def webhook_get(self, request: web.Request) -> web.Response:
        return json_response(self._webhook_message(request).payload())

    async def webhook_edit(self, request: web.Request) -> web.Response:
        message = self._webhook_message(request)
        record = _record(request)
        self._check_size(record.files)
        messages.edit_message(self.state, message, _body(request), record.files)
        return json_response(message.payload())

    async def webhook_delete(self, request: web.Request) -> web.Response:
        messages.delete_message(self.state, self._webhook_message(request))
        return no_content()

    # ------------------------------------------------------------------ channels & messages

    async def get_channel(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response(payloads.channel_payload(self._channel(request), self.state))

    async def get_messages(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        channel = self._channel(request)
        limit = max(1, min(100, int(request.query.get("limit", "50"))))
        before = int(request.query["before"]) if "before" in request.query else None
        after = int(request.query["after"]) if "after" in request.query else None
        found = [
            m
            for m in self.state.messages.values()
            if m.channel_id == channel.id
            and not m.deleted
            and not m.ephemeral
            and (before is None or m.id < before)
            and (after is None or m.id > after)
        ]
        found.sort(key=lambda m: m.id, reverse=True)
        found = found[-limit:] if after is not None and before is None else found[:limit]
        return json_response([m.payload() for m in found])

    async def create_message(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        channel = self._channel(request)
        if channel.is_dm and not all(self.state.users[uid].accepts_dms for uid in channel.recipient_ids):
            raise errors.ApiError(403, "Cannot send messages to this user", errors.CANNOT_MESSAGE_USER)
        record = _record(request)
        self._check_size(record.files)
        message, _created = messages.create_message(
            self.state, channel, self.state.bot_user, _body(request), record.files
        )
        return json_response(message.payload())

    async def typing(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        self._channel(request)
        return no_content()

    async def get_message(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response(self._channel_message(request).payload())

    async def edit_message(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        message = self._channel_message(request)
        if message.author_id != self.state.bot_user.id:
            raise errors.ApiError(403, "Cannot edit a message authored by another user", 50005)
        record = _record(request)
        self._check_size(record.files)
        messages.edit_message(self.state, message, _body(request), record.files)
        return json_response(message.payload())

    async def delete_message(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        messages.delete_message(self.state, self._channel_message(request))
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        message = self._channel_message(request)
        emoji = request.match_info["emoji"]
        reactions = message.data.setdefault("reactions", [])
        for reaction in reactions:
            if reaction["emoji"]["name"] == emoji:
                reaction["me"] = True
                break
        else:
            reactions.append({"count": 1, "me": True, "emoji": {"id": None, "name": emoji}})
        self.state.changed()
        return no_content()

    # ------------------------------------------------------------------ guilds

    async def get_guild(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response(payloads.guild_payload(self._guild(request), self.state))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        guild = self._guild(request)
        channels = [c for c in guild.channels.values() if not c.is_thread]  # threads are listed elsewhere
        return json_response([payloads.channel_payload(c, self.state) for c in channels])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response([payloads.role_payload(r) for r in self._guild(request).roles.values()])

    async def get_member(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        guild = self._guild(request)
        uid = _snowflake(request, "user_id", "Member", errors.UNKNOWN_MEMBER)
        member = guild.members.get(uid)
        if member is None:
            raise errors.not_found("Member", errors.UNKNOWN_MEMBER)
        return json_response(payloads.member_payload(member, self.state))

    # ------------------------------------------------------------------ CDN & fallback

    async def get_attachment(self, request: web.Request) -> web.Response:
        try:
            attachment = self.state.attachments[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data, content_type=attachment.content_type or "application/octet-stream")

    async def unknown_route(self, request: web.Request) -> web.Response:
        """Anything not modelled: answer like Discord and flag it so tests can assert nothing unexpected ran."""
        _record(request).unknown_route = True
        return json_response({"message": "Unknown Route", "code": errors.UNKNOWN_ROUTE}, 404)
