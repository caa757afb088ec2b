"""The fake Discord server, exercised with the real discord.py client (a small bot defined here, not the product)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakediscord import (
    FakeDiscord,
    FakeGuild,
    FakeUser,
    Perm,
    UploadFile,
    point_discord_py_at,
)

TOKEN = "fake-token"


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


class PanelView(discord.ui.View):
    """Persistent view: fixed custom_ids and no timeout, so clicks work on messages from earlier runs."""

    def __init__(self, clicks: list[str]) -> None:
        super().__init__(timeout=None)
        self.clicks = clicks

    @discord.ui.button(label="Go", custom_id="panel:go")
    async def go(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.clicks.append(f"go:{interaction.user.id}")
        await interaction.response.send_message("clicked", ephemeral=True)

    @discord.ui.button(label="Bump", custom_id="panel:bump")
    async def bump(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.clicks.append("bump")
        await interaction.response.edit_message(content="bumped")


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(label="Text", custom_id="fb:text")

    def __init__(self) -> None:
        super().__init__(custom_id="fb")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"thanks {self.text.value}", ephemeral=True)


class TinyBot(commands.Bot):
    """A minimal slash-command bot; records what its handlers saw so tests can assert on it."""

    def __init__(self, *, members: bool = False) -> None:
        intents = discord.Intents.default()
        intents.members = members
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.ready_event = asyncio.Event()
        self.seen: list[Any] = []
        self.clicks: list[str] = []
        self._add_commands()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every re-IDENTIFY; tests do not need that politeness."""

    async def setup_hook(self) -> None:
        self.add_view(PanelView(self.clicks))
        await self.tree.sync()

    async def on_ready(self) -> None:
        self.ready_event.set()

    def _add_commands(self) -> None:
        tree = self.tree

        @tree.command(name="ping", description="Answer privately")
        async def ping(interaction: discord.Interaction, text: str) -> None:
            self.seen.append(("ping", text))
            await interaction.response.send_message(f"pong {text}", ephemeral=True)

        @tree.command(name="slow", description="Defer, then follow up")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await asyncio.sleep(0.05)
            await interaction.followup.send("done")
            await interaction.followup.send("extra")

        @tree.command(name="upload", description="Post a file to the channel")
        async def upload(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True, ephemeral=True)
            assert isinstance(interaction.channel, discord.TextChannel)
            sent = await interaction.channel.send("here", file=discord.File(io.BytesIO(png_bytes()), "img.png"))
            fetched = await sent.attachments[0].read()
            self.seen.append(("upload", len(fetched), sent.attachments[0].width))
            await interaction.followup.send("uploaded")

        @tree.command(name="attach", description="Answer with a file")
        async def attach(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("file!", file=discord.File(io.BytesIO(b"hello"), "hi.txt"))

        @tree.command(name="panel", description="Post the button panel")
        async def panel(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("panel", view=PanelView(self.clicks))

        @tree.command(name="admin", description="Needs Manage Server")
        @app_commands.checks.has_permissions(manage_guild=True)
        async def admin(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("admin ok", ephemeral=True)

        @admin.error
        async def admin_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.seen.append(("admin-error", type(error).__name__))
            await interaction.response.send_message("denied", ephemeral=True)

        @tree.command(name="who", description="Describe a member")
        async def who(interaction: discord.Interaction, user: discord.Member, loud: bool = False) -> None:
            self.seen.append(("who", user.id, user.display_name, loud))
            await interaction.response.send_message(f"that is {user.display_name}")

        @tree.command(name="pick", description="Autocompleted choice")
        async def pick(interaction: discord.Interaction, colour: str) -> None:
            await interaction.response.send_message(colour)

        @pick.autocomplete("colour")
        async def pick_colour(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            options = ["red", "green", "rose"]
            return [app_commands.Choice(name=o, value=o) for o in options if o.startswith(current)]

        config = app_commands.Group(name="config", description="Settings")

        @config.command(name="set", description="Set a value")
        async def config_set(interaction: discord.Interaction, key: str, value: int, ratio: float = 1.0) -> None:
            self.seen.append(("config set", key, value, ratio))
            await interaction.response.send_message(f"{key}={value}", ephemeral=True)

        tree.add_command(config)

        @tree.command(name="progress", description="Edit the original response, then a private followup")
        async def progress(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content="50%")
            await interaction.edit_original_response(
                content="100%", attachments=[discord.File(io.BytesIO(png_bytes()), "out.png")]
            )
            original = await interaction.original_response()
            self.seen.append(("progress", original.content, [a.filename for a in original.attachments]))
            await interaction.followup.send("secret", ephemeral=True, file=discord.File(io.BytesIO(b"f"), "f.txt"))

        @tree.command(name="feedback", description="Open a modal")
        async def feedback(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(FeedbackModal())

        @tree.command(name="silent", description="Never answers")
        async def silent(interaction: discord.Interaction) -> None:
            self.seen.append(("silent", interaction.id))

        @tree.command(name="late", description="Answers after the ack deadline")
        async def late(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.4)
            try:
                await interaction.response.send_message("too late")
            except discord.NotFound as exc:
                self.seen.append(("late", exc.code))


@contextlib.asynccontextmanager
async def running(server: FakeDiscord, bot: TinyBot, ready_within: float = 10.0) -> AsyncIterator[TinyBot]:
    """Start ``bot`` against ``server`` and wait for on_ready; always close it."""
    with point_discord_py_at(server):
        task = asyncio.create_task(bot.start(TOKEN))
        ready = asyncio.create_task(bot.ready_event.wait())
        try:
            done, _ = await asyncio.wait({task, ready}, timeout=ready_within, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                raise RuntimeError("bot stopped before it was ready")
            if ready not in done:
                raise TimeoutError("bot did not become ready")
            yield bot
        finally:
            ready.cancel()
            await bot.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)


@pytest.fixture
async def server() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord(heartbeat_interval=0.5).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def guild(server: FakeDiscord) -> FakeGuild:
    return server.add_guild("Test Guild", channels=("general", "images"))


@pytest.fixture
def alice(server: FakeDiscord, guild: FakeGuild) -> FakeUser:
    user = server.add_user("alice", global_name="Alice")
    server.add_member(guild, user)
    return user


@pytest.fixture
async def bot(server: FakeDiscord, guild: FakeGuild, alice: FakeUser) -> AsyncIterator[TinyBot]:
    async with running(server, TinyBot()) as started:
        yield started


def general(guild: FakeGuild) -> int:
    return guild.text_channels()[0].id


# ---------------------------------------------------------------------- login and gateway


@pytest.mark.parametrize("compression", [True, False], ids=["zlib-stream", "plain-text"])
async def test_login_ready_and_guild_create(compression: bool) -> None:
    async with FakeDiscord(heartbeat_interval=0.2, gateway_compression=compression) as server:
        guild = server.add_guild("Test Guild", channels=("general", "images"))
        async with running(server, TinyBot()) as bot:
            assert bot.user is not None and bot.user.id == server.bot_user.id
            assert bot.application_id == server.application_id
            cached = bot.get_guild(guild.id)
            assert cached is not None and cached.name == "Test Guild"
            assert sorted(c.name for c in cached.text_channels) == ["general", "images"]
            assert cached.me is not None
            routes = [(r.method, r.route) for r in server.requests]
            assert routes[:2] == [("GET", "/users/@me"), ("GET", "/oauth2/applications/@me")]
            assert all(r.headers.get("Authorization") == f"Bot {TOKEN}" for r in server.requests_for(path="/api/"))
            await server.wait_for(lambda: server.gateway.heartbeat_count >= 2, 3, "heartbeats")
        assert server.identify_count == 1 and server.resume_count == 0
        assert server.gateway.connections[0].query.get("compress") == "zlib-stream"
        assert (server.gateway.connections[0].compressor is not None) is compression
        dispatched = [f.t for f in server.gateway.frames if f.direction == "out" and f.op == 0]
        assert dispatched[:2] == ["READY", "GUILD_CREATE"]
        assert server.unknown_requests == []


async def test_members_intent_chunk_request() -> None:
    async with FakeDiscord(heartbeat_interval=0.5, all_members_in_guild_create=False) as server:
        guild = server.add_guild()
        for name in ("bob", "carol"):
            server.add_member(guild, server.add_user(name))
        async with running(server, TinyBot(members=True)) as bot:
            cached = bot.get_guild(guild.id)
            assert cached is not None and cached.chunked
            assert {m.name for m in cached.members} >= {"bob", "carol", "FakeBot"}
        assert len(server.gateway.member_requests) == 1


async def test_disallowed_privileged_intents_close_4014() -> None:
    async with FakeDiscord(privileged_intents=False) as server:
        server.add_guild()
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with running(server, TinyBot(members=True)):
                pass


# ---------------------------------------------------------------------- slash commands


async def test_sync_and_ephemeral_response(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    assert len(server.command_syncs) == 1 and server.command_syncs[0].guild_id is None
    names = set(server.synced_command_names())
    assert {"ping", "slow", "upload", "panel", "admin", "config", "who"} <= names
    put = server.requests_for("PUT", r"/applications/\d+/commands$")
    assert len(put) == 1 and put[0].status == 200
    assert all(c["application_id"] == str(server.application_id) for c in put[0].response)

    handle = await server.send_slash_command(alice, guild, "ping", {"text": "hi"})
    callback = await handle.wait_response(timeout=2)
    assert callback.accepted and callback.status == 200 and callback.with_response
    assert callback.type == 4 and callback.ephemeral and callback.content == "pong hi"
    assert handle.ack_latency is not None and handle.ack_latency < 1.0
    message = await handle.wait_original()
    assert message.content == "pong hi" and message.ephemeral
    assert message.channel_id == general(guild) and message.author_id == server.bot_user.id
    assert ("ping", "hi") in bot.seen


async def test_defer_then_followups(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    handle = await server.send_slash_command(alice, guild, "slow")
    callback = await handle.wait_response()
    assert callback.type == 5 and not callback.ephemeral
    original = await handle.wait_original(timeout=3)
    assert original.content == "done"  # Discord: the first followup after a defer edits the "thinking" message
    extra = await handle.wait_followup(lambda m: m.content == "extra")
    assert [m.content for m in handle.messages] == ["done", "extra"]
    assert extra.data["interaction_metadata"]["id"] == str(handle.id)


async def test_channel_send_with_file(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    handle = await server.send_slash_command(alice, guild, "upload")
    await handle.wait_original(timeout=3)  # "uploaded": the followup replaced the thinking message
    posted = await server.wait_for_message(general(guild), lambda m: m.content == "here")
    assert [a.filename for a in posted.attachments] == ["img.png"]
    attachment = posted.attachments[0]
    assert attachment.data == png_bytes() and attachment.content_type == "image/png"
    assert (attachment.width, attachment.height) == (4, 3)
    assert server.attachment_bytes(posted) == {"img.png": png_bytes()}
    post = server.requests_for("POST", r"/channels/\d+/messages$")[-1]
    assert post.files[0].field == "files[0]" and post.files[0].data == png_bytes()
    assert post.payload["content"] == "here"
    assert ("upload", len(png_bytes()), 4) in bot.seen  # the bot fetched the bytes back from the fake CDN
    async with aiohttp.ClientSession() as http, http.get(attachment.url) as resp:
        assert resp.status == 200 and await resp.read() == png_bytes()
    original = handle.original_message
    assert original is not None and original.ephemeral and original.content == "uploaded"


async def test_interaction_response_with_file(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    handle = await server.send_slash_command(alice, guild, "attach")
    callback = await handle.wait_response()
    assert callback.type == 4 and [f.data for f in callback.files] == [b"hello"]
    message = await handle.wait_original()
    assert message.content == "file!" and server.attachment_bytes(message) == {"hi.txt": b"hello"}
    assert not message.ephemeral and message.data["type"] == 20


async def test_permissions_subcommands_and_user_options(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    denied = await server.send_slash_command(alice, guild, "admin")
    assert (await denied.wait_response()).content == "denied"
    allowed = await server.send_slash_command(alice, guild, "admin", permissions=Perm.MANAGE_GUILD)
    assert (await allowed.wait_response()).content == "admin ok"
    assert ("admin-error", "MissingPermissions") in bot.seen

    handle = await server.send_slash_command(alice, guild, "config set", {"key": "steps", "value": 30, "ratio": 0.5})
    assert (await handle.wait_response()).content == "steps=30"
    assert ("config set", "steps", 30, 0.5) in bot.seen

    bob = server.add_user("bob", global_name="Bobby")
    server.add_member(guild, bob, nick="bobnick")
    handle = await server.send_slash_command(alice, guild, "who", {"user": bob, "loud": True})
    assert (await handle.wait_response()).content == "that is bobnick"
    assert ("who", bob.id, "bobnick", True) in bot.seen

    with pytest.raises(LookupError):
        await server.send_slash_command(alice, guild, "nope")
    with pytest.raises(ValueError):
        await server.send_slash_command(alice, guild, "ping", {"wrong": "x"})


async def test_autocomplete_and_dm(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    handle = await server.send_autocomplete(alice, guild, "pick", {"colour": "r"}, focused="colour")
    callback = await handle.wait_response()
    assert callback.type == 8
    assert [c["value"] for c in (callback.data or {})["choices"]] == ["red", "rose"]

    dm = server.dm_channel(alice)
    handle = await server.send_slash_command(alice, dm, "ping", {"text": "dm"})
    assert (await handle.wait_response()).content == "pong dm"
    assert "user" in handle.payload and "member" not in handle.payload
    assert (await handle.wait_original()).channel_id == dm.id


async def test_late_ack_is_unknown_interaction(guild: FakeGuild, alice: FakeUser) -> None:
    async with FakeDiscord(heartbeat_interval=0.5, ack_deadline=0.2) as server:
        world = server.add_guild()
        user = server.add_user("late-user")
        server.add_member(world, user)
        async with running(server, TinyBot()) as bot:
            handle = await server.send_slash_command(user, world, "late")
            callback = await handle.wait_response(timeout=3)
            assert callback.status == 404 and callback.error_code == 10062 and not callback.accepted
            assert not handle.acknowledged
            await server.wait_for(lambda: ("late", 10062) in bot.seen, 2)


async def test_edit_original_and_private_followup_with_file(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    handle = await server.send_slash_command(alice, guild, "progress")
    followup = await handle.wait_followup(timeout=3)
    original = handle.original_message
    assert original is not None and original.content == "100%"
    assert [h["content"] for h in original.history] == ["", "50%"]
    assert server.attachment_bytes(original) == {"out.png": png_bytes()}
    assert ("progress", "100%", ["out.png"]) in bot.seen
    assert followup.ephemeral and followup.content == "secret" and server.attachment_bytes(followup) == {"f.txt": b"f"}
    routes = [(r.method, r.route.split("/")[-1]) for r in server.requests_for(path="/webhooks/")]
    assert routes == [("PATCH", "@original"), ("PATCH", "@original"), ("GET", "@original"), ("POST", handle.token)]


async def test_modal_roundtrip(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    handle = await server.send_slash_command(alice, guild, "feedback")
    callback = await handle.wait_response()
    assert callback.type == 9 and (callback.data or {})["custom_id"] == "fb"
    submit = await server.send_modal_submit(alice, guild, "fb", {"fb:text": "great"})
    assert (await submit.wait_response()).content == "thanks great"


async def test_callback_rules(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    handle = await server.send_slash_command(alice, guild, "silent")
    await server.wait_for(lambda: ("silent", handle.id) in bot.seen, 2)
    url = f"{server.api_base}/interactions/{handle.id}/{handle.token}/callback"
    body = {"type": 4, "data": {"content": "raw"}}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body) as resp:
            assert resp.status == 204  # no ?with_response: empty answer
        async with http.post(url, json=body) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 40060
        followup = f"{server.api_base}/webhooks/{server.application_id}/{handle.token}?wait=true"
        async with http.post(followup, json={"content": "more"}) as resp:
            assert resp.status == 200 and (await resp.json())["content"] == "more"
        async with http.post(f"{server.api_base}/interactions/1/nope/callback", json=body) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 10062
    assert [c.status for c in handle.callbacks] == [204, 400]
    assert handle.response_type == 4 and [m.content for m in handle.messages] == ["raw", "more"]


async def test_rest_lookups(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    server.add_role(guild, "artists", Perm.ATTACH_FILES)
    with point_discord_py_at(server):
        channel = await bot.fetch_channel(general(guild))
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        fetched_guild = await bot.fetch_guild(guild.id)
        assert fetched_guild.name == "Test Guild"
        member = await fetched_guild.fetch_member(alice.id)
        assert member.display_name == "Alice"
        assert "artists" in {r.name for r in await fetched_guild.fetch_roles()}
        assert {c.name for c in await fetched_guild.fetch_channels()} == {"general", "images"}
        user = await bot.fetch_user(alice.id)
        dm = await user.create_dm()
        sent = await dm.send("psst")
    assert server.message(sent.id).channel_id == server.dm_channel(alice).id
    assert server.unknown_requests == []


async def test_dm_to_a_user_with_closed_dms_is_50007(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    """Discord opens the DM channel (type 1) but refuses the message: 403, code 50007."""
    alice.accepts_dms = False
    with point_discord_py_at(server):
        dm = await bot.create_dm(discord.Object(alice.id))
        with pytest.raises(discord.Forbidden) as refused:
            await dm.send("psst")
    assert isinstance(dm, discord.DMChannel) and dm.id == server.dm_channel(alice).id
    assert (refused.value.status, refused.value.code) == (403, 50007)
    assert server.messages(dm.id) == []


async def test_guild_sync_and_user_messages(server: FakeDiscord, guild: FakeGuild, alice: FakeUser) -> None:
    bot = TinyBot()
    heard: list[tuple[str, int]] = []

    async def on_message(message: discord.Message) -> None:
        heard.append((message.content, message.author.id))

    bot.add_listener(on_message)

    async def setup_hook() -> None:
        bot.tree.copy_global_to(guild=discord.Object(guild.id))
        await bot.tree.sync(guild=discord.Object(guild.id))

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    async with running(server, bot):
        assert [s.guild_id for s in server.command_syncs] == [guild.id]
        assert "ping" in server.synced_command_names(guild) and server.commands() == []
        handle = await server.send_slash_command(alice, guild, "ping", {"text": "guild"})
        assert handle.payload["data"]["guild_id"] == str(guild.id)
        assert (await handle.wait_response()).content == "pong guild"

        await server.post_user_message(alice, guild, "no content intent, so this arrives blank")
        await server.post_user_message(alice, guild, f"{server.bot_user.mention} mentions are visible")
        await server.wait_for(lambda: len(heard) == 2, 2, "two on_message")
    assert heard == [("", alice.id), (f"<@{server.bot_user.id}> mentions are visible", alice.id)]


# ---------------------------------------------------------------------- components


async def test_persistent_view_button(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    # Post the panel "from an earlier run": raw HTTP, so no view is bound to this message in the client.
    params = discord.http.handle_message_parameters(content="panel", view=PanelView([]))
    with point_discord_py_at(server):
        data = await bot.http.send_message(general(guild), params=params)
    panel = server.message(int(data["id"]))
    assert panel.custom_ids() == ["panel:go", "panel:bump"]

    handle = await server.send_component_click(alice, panel, "panel:go")
    callback = await handle.wait_response()
    assert callback.type == 4 and callback.ephemeral and callback.content == "clicked"
    assert bot.clicks == [f"go:{alice.id}"]
    assert handle.payload["data"] == {"custom_id": "panel:go", "component_type": 2}

    handle = await server.send_component_click(alice, panel, "panel:bump")
    assert (await handle.wait_response()).type == 7
    assert panel.content == "bumped" and panel.edit_count == 1 and panel.history[0]["content"] == "panel"
    with pytest.raises(ValueError):
        await server.send_component_click(alice, panel, "panel:missing")


async def test_panel_via_interaction(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    handle = await server.send_slash_command(alice, guild, "panel")
    panel = await handle.wait_original()
    click = await server.send_component_click(alice, panel, "panel:go")
    assert (await click.wait_response()).content == "clicked"


# ---------------------------------------------------------------------- REST faults and semantics


async def test_rate_limited_twice_then_one_message(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    rule = server.rate_limit("POST", r"/channels/\d+/messages$", times=2, retry_after=0.05)
    channel = bot.get_channel(general(guild))
    assert isinstance(channel, discord.TextChannel)
    with point_discord_py_at(server):
        sent = await channel.send("after 429s")
    attempts = server.requests_for("POST", r"/channels/\d+/messages$")
    assert [r.status for r in attempts] == [429, 429, 200]
    assert attempts[0].fault == "429" and rule.hits == 2
    assert [m.content for m in server.messages(general(guild))] == ["after 429s"]
    assert sent.id == server.messages(general(guild))[0].id


async def test_server_error_retried(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    server.server_error("POST", r"/channels/\d+/messages$", status=502)
    channel = bot.get_channel(general(guild))
    assert isinstance(channel, discord.TextChannel)
    with point_discord_py_at(server):
        await channel.send("after 502")  # discord.py sleeps 1 s before retrying a 5xx
    assert [r.status for r in server.requests_for("POST", "/messages$")] == [502, 200]


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_dropped_connection_surfaces_to_client(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot, reset: bool
) -> None:
    server.disconnect("POST", r"/channels/\d+/messages$", reset=reset)
    channel = bot.get_channel(general(guild))
    assert isinstance(channel, discord.TextChannel)
    with point_discord_py_at(server):
        with pytest.raises(aiohttp.ClientError):
            await channel.send("lost")
        await channel.send("next one works")
    assert [r.fault for r in server.requests_for("POST", "/messages$")] == [("reset" if reset else "disconnect"), None]
    assert [m.content for m in server.messages(general(guild))] == ["next one works"]


async def test_nonce_dedupe(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    channel = bot.get_channel(general(guild))
    assert isinstance(channel, discord.TextChannel)
    with point_discord_py_at(server):
        first = await channel.send("once", nonce="job-1")
        second = await channel.send("once", nonce="job-1")
        third = await channel.send("other", nonce="job-2")
    assert first.id == second.id != third.id
    assert [m.content for m in server.messages(general(guild))] == ["once", "other"]
    assert len(server.requests_for("POST", "/messages$")) == 3


async def test_message_edit_delete_and_unknown_routes(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    channel = bot.get_channel(general(guild))
    assert isinstance(channel, discord.TextChannel)
    with point_discord_py_at(server):
        sent = await channel.send("v1", file=discord.File(io.BytesIO(b"a"), "a.txt"))
        edited = await sent.edit(content="v2", attachments=[*sent.attachments, discord.File(io.BytesIO(b"b"), "b.txt")])
        assert [a.filename for a in edited.attachments] == ["a.txt", "b.txt"]
        fetched = await channel.fetch_message(sent.id)
        assert fetched.content == "v2" and fetched.edited_at is not None
        await fetched.delete()
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(sent.id)
    stored = server.message(sent.id)
    assert stored.deleted and [h["content"] for h in stored.history] == ["v1"]
    assert server.messages(channel.id) == []
    assert server.unknown_requests == []
    async with aiohttp.ClientSession() as http, http.get(f"{server.api_base}/nothing/here") as resp:
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["code"] == 10000
    assert [r.route for r in server.unknown_requests] == ["/nothing/here"]


# ---------------------------------------------------------------------- gateway faults


async def test_gateway_drop_resumes_and_replays(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    assert await server.drop_gateway(4000) == 1
    handle = await server.send_slash_command(alice, guild, "ping", {"text": "while away"})  # buffered, replayed
    await server.wait_for_resume(1)
    assert (await handle.wait_response()).content == "pong while away"
    assert server.identify_count == 1 and server.resume_count == 1
    resume = [f for f in server.gateway.frames if f.direction == "in" and f.op == 6]
    assert len(resume) == 1 and resume[0].d["session_id"] == next(iter(server.gateway.sessions))


async def test_reconnect_request_resumes_on_resume_url(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    await server.request_reconnect()
    await server.wait_for_resume(1)
    assert server.gateway.connections[-1].path == "/gateway/resume"
    assert server.identify_count == 1
    handle = await server.send_slash_command(alice, guild, "ping", {"text": "again"})
    assert (await handle.wait_response()).accepted


async def test_invalidated_session_reidentifies(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    await server.invalidate_session()
    await server.wait_for_identify(2)
    assert server.resume_count == 0
    await server.wait_for(lambda: server.gateway.connected_sessions, 3, "a connected session")
    handle = await server.send_slash_command(alice, guild, "ping", {"text": "fresh"})
    assert (await handle.wait_response()).content == "pong fresh"


async def test_expired_session_resume_fails_then_identifies(
    server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot
) -> None:
    await server.drop_gateway(4000, forget_session=True)
    await server.wait_for_identify(2)
    assert server.gateway.failed_resume_count == 1 and server.resume_count == 0


async def test_offline_then_online(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, bot: TinyBot) -> None:
    channel = bot.get_channel(general(guild))
    assert isinstance(channel, discord.TextChannel)
    await server.go_offline()
    with point_discord_py_at(server):
        with pytest.raises(aiohttp.ClientConnectorError):
            await channel.send("nobody home")
        await server.go_online()
        await server.wait_for_resume(1, timeout=8)  # discord.py backs off (random, up to a few s) then RESUMEs
        await channel.send("back")
    assert server.identify_count == 1
    assert [m.content for m in server.messages(channel.id)] == ["back"]


# ---------------------------------------------------------------------- cross-process


BOT_SCRIPT = """
import asyncio, os, discord, yarl
from discord.ext import commands

discord.http.Route.BASE = os.environ["DISCORD_API_BASE"] + "/api/v10"
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05)

@bot.tree.command(name="hello", description="Say hello")
async def hello(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("hello from a subprocess")

async def setup_hook() -> None:
    await bot.tree.sync()

bot.setup_hook = setup_hook
bot.run(os.environ["DISCORD_TOKEN"], log_handler=None)
"""


async def test_bot_in_subprocess(server: FakeDiscord, guild: FakeGuild, alice: FakeUser, tmp_path: Path) -> None:
    script = tmp_path / "bot.py"
    script.write_text(textwrap.dedent(BOT_SCRIPT))
    env = {**os.environ, **server.client_env(TOKEN)}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env)
    try:
        await server.wait_for(lambda: server.gateway.connected_sessions and server.commands(), 20, "bot online")
        handle = await server.send_slash_command(alice, guild, "hello")
        message = await handle.wait_original(timeout=5)
        assert message.content == "hello from a subprocess"
    finally:
        proc.terminate()
        await proc.wait()


async def test_upload_option_attachment(server: FakeDiscord, guild: FakeGuild, alice: FakeUser) -> None:
    """Attachment options (type 11) resolve to discord.Attachment whose bytes come from the fake CDN."""
    got: list[bytes] = []
    bot = TinyBot()

    @bot.tree.command(name="img2img", description="Use an input image")
    async def img2img(interaction: discord.Interaction, image: discord.Attachment) -> None:
        got.append(await image.read())
        await interaction.response.send_message(f"{image.filename} {image.width}x{image.height}")

    async with running(server, bot):
        upload = UploadFile("in.png", png_bytes(8, 6), "image/png")
        handle = await server.send_slash_command(alice, guild, "img2img", {"image": upload})
        assert (await handle.wait_response()).content == "in.png 8x6"
    assert got == [png_bytes(8, 6)]
