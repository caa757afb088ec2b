"""``FakeDiscord``: the one object tests use: start/stop, build the world, act as users, inject faults, wait."""

# Test helpers wait with an explicit timeout argument by design (clearer than wrapping in asyncio.timeout).

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web

from . import commands as cmds
from . import interactions as ix
from . import messages as msgs
from .faults import Delay, Disconnect, ErrorResponse, Fault, FaultRule, FaultSchedule, RateLimit, ServerError
from .gateway import GatewayHub
from .interactions import InteractionHandle
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    RecordedFile,
    RecordedRequest,
    StoredMessage,
    UploadFile,
)
from .permissions import DEFAULT_BOT, DEFAULT_EVERYONE
from .recording import make_middleware
from .rest import RestApi
from .state import CommandSync, FakeState, IdLike, id_of

T = TypeVar("T")

__all__ = ["FakeDiscord"]


class FakeDiscord:
    """A fake Discord (REST v10 + gateway) on 127.0.0.1 for the real discord.py client.

    Point a bot at it with ``Route.BASE = server.api_base`` and
    ``DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)`` (see ``fakediscord.client``), or for a
    subprocess pass ``server.client_env()``. Everything the client does is recorded in ``requests``,
    ``messages`` and ``gateway.frames``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        bot_username: str = "FakeBot",
        heartbeat_interval: float = 41.25,
        gateway_compression: bool = True,
        privileged_intents: bool = True,
        all_members_in_guild_create: bool = True,
        ack_deadline: float = 3.0,
    ) -> None:
        """``token``: if set, REST and IDENTIFY reject any other token. ``heartbeat_interval`` is in seconds.

        ``privileged_intents=False`` makes IDENTIFY with members/presences/message-content intents fail (4014).
        ``ack_deadline``: seconds a bot has to answer an interaction before callbacks get "Unknown interaction".
        """
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.state = FakeState(bot_username=bot_username, privileged_intents=privileged_intents)
        self.state.ack_deadline = ack_deadline
        self.faults = FaultSchedule()
        self.gateway = GatewayHub(
            self.state,
            resume_url=lambda: self.resume_gateway_url,
            heartbeat_interval=heartbeat_interval,
            compression=gateway_compression,
            token=token,
            all_members_in_guild_create=all_members_in_guild_create,
        )
        self.state.publish = self.gateway.publish
        self.rest = RestApi(self.state, lambda: self.gateway_url, token=token)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # ================================================================== lifecycle

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[make_middleware(self.state, self.faults)], client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/resume", self.gateway.handle)
        app.router.add_routes(self.rest.routes())
        app.router.add_route("*", "/{tail:.*}", self.rest.unknown_route)
        return app

    async def start(self) -> FakeDiscord:
        """Listen on ``host`` (a free port unless one was given); returns self."""
        if self._runner is not None:
            return self
        runner = web.AppRunner(self._app(), shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        self._site = site
        self.port = int(runner.addresses[0][1])
        self.state.base_url = self.base_url
        return self

    async def go_offline(self) -> None:
        """Stop listening and kill every open connection (gateway included, without close frames).

        Until :meth:`go_online`, connects fail with ECONNREFUSED, like Discord being unreachable.
        """
        if self._site is None or self._runner is None:
            return
        site, self._site = self._site, None
        await site.stop()
        server = self._runner.server
        for handler in list(server.connections) if server is not None else []:
            handler.force_close()
        await asyncio.sleep(0)

    async def go_online(self) -> None:
        """Listen again on the same port after :meth:`go_offline`."""
        if self._site is not None or self._runner is None:
            return
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self._site = site

    async def stop(self) -> None:
        """Close gateway sockets (code 1001) and stop listening. Safe to call twice."""
        if self._runner is None:
            return
        await self.gateway.close_all(1001)
        runner, self._runner, self._site = self._runner, None, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ================================================================== addresses

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; attachments are served under it."""
        if self.port is None:
            raise RuntimeError("fakediscord: server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be: ``base_url + "/api/v10"``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` must be (the client appends its own query string)."""
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """Sent in READY; RESUMEs land on this path, so tests can tell them apart in ``gateway.connections``."""
        return f"ws://{self.host}:{self.port}/gateway/resume"

    def client_env(self, token: str = "fake-token") -> dict[str, str]:
        """Environment for a bot subprocess: ``DISCORD_API_BASE`` (without /api/v10), gateway URL and token."""
        return {"DISCORD_API_BASE": self.base_url, "DISCORD_GATEWAY_URL": self.gateway_url, "DISCORD_TOKEN": token}

    # ================================================================== the world

    @property
    def bot_user(self) -> FakeUser:
        return self.state.bot_user

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def users(self) -> dict[int, FakeUser]:
        return self.state.users

    @property
    def guilds(self) -> dict[int, FakeGuild]:
        return self.state.guilds

    @property
    def channels(self) -> dict[int, FakeChannel]:
        return self.state.channels

    def add_user(self, username: str, *, global_name: str | None = None, bot: bool = False) -> FakeUser:
        return self.state.add_user(username, global_name=global_name, bot=bot)

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
        """A guild with @everyone, the bot (managed role with ``bot_permissions``), the owner and text channels.

        Added after the bot connected, it is sent as GUILD_CREATE (like the bot joining a guild).
        """
        return self.state.add_guild(
            name,
            owner=owner,
            channels=channels,
            everyone_permissions=everyone_permissions,
            bot_permissions=bot_permissions,
            locale=locale,
        )

    def add_role(self, guild: IdLike, name: str, permissions: int = 0) -> FakeRole:
        return self.state.add_role(guild, name, permissions)

    def add_text_channel(
        self, guild: IdLike, name: str, *, topic: str | None = None, nsfw: bool = False
    ) -> FakeChannel:
        return self.state.add_text_channel(guild, name, topic=topic, nsfw=nsfw)

    def add_thread(self, parent: IdLike, name: str, owner: IdLike) -> FakeChannel:
        return self.state.add_thread(parent, name, owner)

    def add_member(
        self,
        guild: IdLike,
        user: IdLike,
        *,
        roles: Iterable[IdLike] = (),
        nick: str | None = None,
        permissions: int | None = None,
    ) -> FakeMember:
        """Make ``user`` a member; ``permissions`` (e.g. ``Perm.MANAGE_GUILD`` or 0) overrides role-derived ones."""
        return self.state.add_member(guild, user, roles=roles, nick=nick, permissions=permissions)

    def dm_channel(self, user: IdLike) -> FakeChannel:
        """The bot's DM channel with ``user`` (created on first use)."""
        return self.state.dm_channel(user)

    def _channel_for(self, where: IdLike) -> FakeChannel:
        """A channel, or a guild (meaning its first text channel)."""
        key = id_of(where)
        if key in self.state.channels:
            return self.state.channels[key]
        if key in self.state.guilds:
            text = self.state.guilds[key].text_channels()
            if not text:
                raise ValueError(f"fakediscord: guild {key} has no text channel")
            return text[0]
        raise KeyError(f"fakediscord: {where!r} is neither a channel nor a guild")

    # ================================================================== acting as users

    def _require_session(self) -> None:
        if not self.gateway.live_sessions():
            raise RuntimeError("fakediscord: no gateway session has identified yet; is the bot connected?")

    async def _dispatch(self, handle: InteractionHandle) -> InteractionHandle:
        self._require_session()
        handle.dispatched_at = self.state.now()
        self.gateway.publish("INTERACTION_CREATE", handle.payload)
        self.state.changed()
        await asyncio.sleep(0)
        return handle

    async def send_slash_command(
        self,
        user: IdLike,
        where: IdLike,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        permissions: int | None = None,
        app_permissions: int | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionHandle:
        """Invoke ``/name`` as ``user`` in ``where`` (a channel, a DM channel, or a guild = its first channel).

        ``name`` may hold subcommands: ``"queue clear"``. Option types come from the synced command
        (``strict=False`` allows unsynced commands, inferring types from Python values: str, int, bool,
        float, FakeUser/FakeMember, FakeRole, FakeChannel, UploadFile). ``permissions`` overrides the member's
        permissions in this interaction. Returns a handle to await the acknowledgement and responses.
        """
        fake_user = self.state.user(user)
        channel = self._channel_for(where)
        parts = name.split()
        command = cmds.find_command(self.state, parts[0], channel.guild_id)
        if command is None and strict:
            raise LookupError(f"fakediscord: /{parts[0]} was never synced (synced: {self.synced_command_names()})")
        guild = self.state.guilds.get(channel.guild_id) if channel.guild_id else None
        builder = cmds.OptionBuilder(self.state, guild, channel.id)
        schema = (command.get("options") or []) if command is not None else None
        data: dict[str, Any] = {
            "id": command["id"] if command is not None else str(self.state.ids.next()),
            "name": parts[0],
            "type": cmds.CHAT_INPUT,
            "options": builder.build(schema, parts[1:], options or {}),
        }
        if command is not None and command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if builder.resolved:
            data["resolved"] = builder.resolved
        handle = ix.new_interaction(
            self.state,
            kind=ix.APPLICATION_COMMAND,
            user=fake_user,
            channel=channel,
            data=data,
            permissions=permissions,
            locale=locale,
            app_permissions=app_permissions,
            command_name=name,
        )
        return await self._dispatch(handle)

    async def send_autocomplete(
        self,
        user: IdLike,
        where: IdLike,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """Autocomplete for option ``focused`` (its value is sent as typed text); the bot answers with type 8."""
        fake_user = self.state.user(user)
        channel = self._channel_for(where)
        parts = name.split()
        command = cmds.find_command(self.state, parts[0], channel.guild_id)
        if command is None:
            raise LookupError(f"fakediscord: /{parts[0]} was never synced")
        guild = self.state.guilds.get(channel.guild_id) if channel.guild_id else None
        builder = cmds.OptionBuilder(self.state, guild, channel.id)
        data: dict[str, Any] = {
            "id": command["id"],
            "name": parts[0],
            "type": cmds.CHAT_INPUT,
            "options": builder.build(command.get("options") or [], parts[1:], options, focused=focused),
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        handle = ix.new_interaction(
            self.state,
            kind=ix.AUTOCOMPLETE,
            user=fake_user,
            channel=channel,
            data=data,
            locale=locale,
            command_name=name,
        )
        return await self._dispatch(handle)

    async def send_component_click(
        self,
        user: IdLike,
        message: IdLike,
        custom_id: str,
        *,
        values: Sequence[str] | None = None,
        permissions: int | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionHandle:
        """Click a button (or pick ``values`` in a select) with ``custom_id`` on ``message`` as ``user``.

        ``strict`` checks the component exists on the message, as Discord only lets users click what is shown.
        """
        fake_user = self.state.user(user)
        stored = self.state.message(message)
        if stored.deleted:
            raise ValueError(f"fakediscord: message {stored.id} was deleted")
        component_type = ix.component_type_of(stored, custom_id)
        if component_type is None:
            if strict:
                raise ValueError(
                    f"fakediscord: no component {custom_id!r} on message {stored.id} ({stored.custom_ids()})"
                )
            component_type = 2 if values is None else 3
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = list(values)
        handle = ix.new_interaction(
            self.state,
            kind=ix.MESSAGE_COMPONENT,
            user=fake_user,
            channel=self.state.channel(stored.channel_id),
            data=data,
            permissions=permissions,
            locale=locale,
            message=stored,
        )
        return await self._dispatch(handle)

    async def send_modal_submit(
        self,
        user: IdLike,
        where: IdLike,
        custom_id: str,
        fields: Mapping[str, str],
        *,
        message: IdLike | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionHandle:
        """Submit a modal ``custom_id`` with text inputs ``{input_custom_id: value}``.

        ``strict``: as on Discord, only a modal the bot showed this user can be submitted."""
        if strict and ix.opened_modal(self.state, custom_id, id_of(user)) is None:
            raise ValueError(f"fakediscord: the bot never showed modal {custom_id!r} to this user")
        stored = self.state.message(message) if message is not None else None
        channel = self.state.channel(stored.channel_id) if stored is not None else self._channel_for(where)
        handle = ix.new_interaction(
            self.state,
            kind=ix.MODAL_SUBMIT,
            user=self.state.user(user),
            channel=channel,
            data={"custom_id": custom_id, "components": ix.modal_components(fields)},
            locale=locale,
            message=stored,
        )
        return await self._dispatch(handle)

    async def send_message_command(
        self, user: IdLike, message: IdLike, name: str, *, permissions: int | None = None, locale: str = "en-US"
    ) -> InteractionHandle:
        """Run the message context-menu command ``name`` on ``message`` (type 2 interaction, data type 3, with
        ``target_id`` and the message in ``resolved.messages``, attachments and all)."""
        stored = self.state.message(message)
        channel = self.state.channel(stored.channel_id)
        command = cmds.find_command(self.state, name, channel.guild_id, cmds.MESSAGE)
        if command is None:
            raise LookupError(f"fakediscord: message command {name!r} was never synced")
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": cmds.MESSAGE,
            "target_id": str(stored.id),
            "resolved": {"messages": {str(stored.id): stored.payload()}},
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        handle = ix.new_interaction(
            self.state,
            kind=ix.APPLICATION_COMMAND,
            user=self.state.user(user),
            channel=channel,
            data=data,
            permissions=permissions,
            locale=locale,
            command_name=name,
        )
        return await self._dispatch(handle)

    async def post_user_message(
        self, user: IdLike, channel: IdLike, content: str, *, files: Sequence[UploadFile] = ()
    ) -> StoredMessage:
        """A user posts a message (dispatched as MESSAGE_CREATE, content hidden without the content intent)."""
        fake_user = self.state.user(user)
        target = self._channel_for(channel)
        recorded = [RecordedFile(f"files[{i}]", f.filename, f.content_type, f.data) for i, f in enumerate(files)]
        message, _ = msgs.create_message(self.state, target, fake_user, {"content": content}, recorded)
        return message

    # ================================================================== reading

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request in arrival order (REST, gateway upgrades, attachment fetches)."""
        return self.state.requests

    def requests_for(self, method: str | None = None, path: str = "") -> list[RecordedRequest]:
        """Requests whose method matches and whose path ``re.search``-es ``path`` (e.g. ``r"/messages$"``)."""
        pattern = re.compile(path)
        return [
            r for r in self.state.requests if (method is None or r.method == method.upper()) and pattern.search(r.path)
        ]

    @property
    def unknown_requests(self) -> list[RecordedRequest]:
        """Requests for routes the fake does not model (answered 404, code 10000)."""
        return [r for r in self.state.requests if r.unknown_route]

    def messages(
        self, channel: IdLike | None = None, *, include_deleted: bool = False, include_ephemeral: bool = True
    ) -> list[StoredMessage]:
        """Messages (current state) in creation order, in ``channel`` or everywhere."""
        cid = id_of(channel) if channel is not None else None
        return [
            m
            for m in self.state.messages.values()
            if (cid is None or m.channel_id == cid)
            and (include_deleted or not m.deleted)
            and (include_ephemeral or not m.ephemeral)
        ]

    def message(self, message_id: IdLike) -> StoredMessage:
        return self.state.message(message_id)

    def attachment_bytes(self, message: IdLike) -> dict[str, bytes]:
        """``{filename: bytes}`` of a message's current attachments."""
        return {a.filename: a.data for a in self.state.message(message).attachments}

    @property
    def interactions(self) -> list[InteractionHandle]:
        return list(self.state.interactions.values())

    @property
    def command_syncs(self) -> list[CommandSync]:
        """Every bulk overwrite (PUT) of application commands, in order."""
        return self.state.command_syncs

    def commands(self, guild: IdLike | None = None) -> list[dict[str, Any]]:
        """Currently registered commands (global, or for ``guild``)."""
        return self.state.commands.get(id_of(guild) if guild is not None else None, [])

    def synced_command_names(self, guild: IdLike | None = None) -> list[str]:
        if guild is not None:
            return [c["name"] for c in self.commands(guild)]
        return sorted({c["name"] for scope in self.state.commands.values() for c in scope})

    @property
    def identify_count(self) -> int:
        return self.gateway.identify_count

    @property
    def resume_count(self) -> int:
        return self.gateway.resume_count

    # ================================================================== waiting

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "condition") -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every change and every 50 ms); return its value."""
        return await self.state.notifier.wait_for(predicate, timeout, what)

    async def wait_for_message(
        self,
        channel: IdLike | None = None,
        predicate: Callable[[StoredMessage], bool] | None = None,
        timeout: float = 5.0,
        *,
        after: IdLike | None = None,
        include_ephemeral: bool = True,
    ) -> StoredMessage:
        """First live message (in ``channel``, newer than ``after``) that is not "thinking" and matches."""
        floor = id_of(after) if after is not None else 0

        def check() -> StoredMessage | None:
            for m in self.messages(channel, include_ephemeral=include_ephemeral):
                if m.id > floor and not m.loading and (predicate is None or predicate(m)):
                    return m
            return None

        return await self.wait_for(check, timeout, f"message in {channel}")

    async def wait_for_request(
        self, method: str | None = None, path: str = "", *, count: int = 1, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until at least ``count`` matching requests were answered; return all matches."""

        def check() -> list[RecordedRequest] | None:
            found = [r for r in self.requests_for(method, path) if r.status is not None]
            return found if len(found) >= count else None

        return await self.wait_for(check, timeout, f"{count} x {method or '*'} {path}")

    async def wait_for_identify(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until the gateway handled ``count`` IDENTIFYs in total."""
        await self.wait_for(lambda: self.gateway.identify_count >= count, timeout, f"{count} IDENTIFY")

    async def wait_for_resume(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until the gateway accepted ``count`` RESUMEs in total."""
        await self.wait_for(lambda: self.gateway.resume_count >= count, timeout, f"{count} RESUME")

    # ================================================================== faults

    def inject(
        self, fault: Fault, *, method: str | None = None, path: str = "", times: int | None = 1, skip: int = 0
    ) -> FaultRule:
        """Apply ``fault`` to the next ``times`` requests matching ``method`` and ``path`` (regex on the full
        path), after letting ``skip`` matching ones through. Returns the rule (``.hits`` counts firings)."""
        return self.faults.add(fault, method=method, path=path, times=times, skip=skip)

    def rate_limit(
        self,
        method: str | None = None,
        path: str = "",
        *,
        times: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
        scope: str = "user",
    ) -> FaultRule:
        """Shortcut: answer the next ``times`` matching requests with a retryable 429."""
        return self.inject(
            RateLimit(retry_after=retry_after, is_global=is_global, scope=scope), method=method, path=path, times=times
        )

    def server_error(
        self, method: str | None = None, path: str = "", *, status: int = 500, times: int = 1
    ) -> FaultRule:
        return self.inject(ServerError(status), method=method, path=path, times=times)

    def disconnect(
        self, method: str | None = None, path: str = "", *, reset: bool = False, times: int = 1
    ) -> FaultRule:
        return self.inject(Disconnect(reset=reset), method=method, path=path, times=times)

    def delay(self, seconds: float, method: str | None = None, path: str = "", *, times: int = 1) -> FaultRule:
        return self.inject(Delay(seconds), method=method, path=path, times=times)

    def error(
        self, status: int, message: str, code: int, method: str | None = None, path: str = "", *, times: int = 1
    ) -> FaultRule:
        return self.inject(ErrorResponse(status, message, code), method=method, path=path, times=times)

    async def drop_gateway(self, code: int = 4000, *, abrupt: bool = False, forget_session: bool = False) -> int:
        """Close the bot's websocket(s) with ``code`` (4000 → the client RESUMEs); returns connections closed.

        ``abrupt``: kill the TCP connection without a close frame. ``forget_session``: the sessions expire too,
        so the client's RESUME is answered with op 9 and it must IDENTIFY again.
        """
        if forget_session:
            for session in self.gateway.live_sessions():
                session.invalidated = True
        count = self.gateway.drop(code, abrupt=abrupt)
        await asyncio.sleep(0)
        return count

    async def invalidate_session(self, *, resumable: bool = False) -> int:
        """Send op 9; ``resumable=False`` kills the session so the client must IDENTIFY again."""
        count = self.gateway.invalidate(resumable)
        await asyncio.sleep(0)
        return count

    async def request_reconnect(self) -> int:
        """Send op 7 RECONNECT; the client reconnects to the resume URL and RESUMEs."""
        count = self.gateway.request_reconnect()
        await asyncio.sleep(0)
        return count
