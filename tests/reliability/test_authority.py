"""Authority, table-driven: every admin command and every admin-only action on someone else's job, tried by
everyone who is not an admin there, is refused and leaves the database exactly as it was.

"Not an admin there": a member without Manage Server (with other powers, or a role not listed), the admin
of another server the bot is in (acting here, or acting from their own server on this server's jobs), and
admins in a direct message (where no server's rights apply).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result
from tests.fakediscord import FakeChannel, FakeUser, Perm, StoredMessage
from tests.reliability import dbread

ADMIN_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("memory", {}),
    ("memory", {"plan": "mixed_resident"}),
    ("memory", {"plan": "auto"}),
    ("pause", {}),
    ("resume", {}),
    ("purge", {}),
    ("purge", {"user": "alice"}),
    ("status", {}),
]
REFUSED = ("for server admins", "not in direct messages")


@dataclass
class Cast:
    world: World
    mod: FakeUser  # Kick/Ban/Manage Messages, a role that is not an admin role: still no admin
    stranger: FakeUser  # admin (Manage Server) of another server the bot is in; ordinary member here
    owner: FakeUser  # listed in ADMIN_USER_IDS
    elsewhere: FakeChannel  # the stranger's own server
    result: StoredMessage  # alice's finished job, posted
    done_id: int
    queued_id: int


@contextlib.asynccontextmanager
async def scene(world: World, tiny_model: Path, tmp_path: Path) -> AsyncIterator[tuple[Any, Cast]]:
    server = world.server
    other = server.add_guild("Other Club", channels=("lobby",))
    [elsewhere] = other.text_channels()
    mod_role = server.add_role(world.guild, "helpers", permissions=int(Perm.KICK_MEMBERS | Perm.BAN_MEMBERS))
    mod = server.add_user("mod")
    server.add_member(
        world.guild, mod, roles=[mod_role], permissions=int(Perm.KICK_MEMBERS | Perm.MANAGE_MESSAGES | Perm.BAN_MEMBERS)
    )
    stranger = server.add_user("stranger")
    server.add_member(world.guild, stranger)
    server.add_member(other, stranger, permissions=int(Perm.MANAGE_GUILD | Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES))
    owner = server.add_user("owner")
    server.add_member(world.guild, owner)
    admin_role = server.add_role(world.guild, "image-admins")
    settings = settings_for(  # global commands: usable in DMs and in the other server too
        server, tiny_model, tmp_path, admin_user_ids=[owner.id], admin_role_ids=[admin_role.id], default_steps=1
    )
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        done_id, _, _ = await queued_reply(handle)
        result = await wait_result(server, world.channel, done_id)
        await wait_job(bot, done_id, lambda j: j.result_message_id is not None)
        await bot.queue.set_paused(True)
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a dog"})
        queued_id, _, _ = await queued_reply(handle)
        await wait_job(bot, queued_id, lambda j: j.status_message_id is not None)
        yield bot, Cast(world, mod, stranger, owner, elsewhere, result, done_id, queued_id)


def actors(cast: Cast) -> list[tuple[str, FakeUser, Any]]:
    world = cast.world
    server = world.server
    return [
        ("member", world.bob, world.channel),
        ("moderator without Manage Server", cast.mod, world.channel),
        ("admin of another server, here", cast.stranger, world.channel),
        ("server admin in a DM", world.admin, server.dm_channel(world.admin)),
        ("listed admin in a DM", cast.owner, server.dm_channel(cast.owner)),
    ]


async def test_admin_commands_refused_and_nothing_changes(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    db = tmp_path / "queue.sqlite3"
    async with scene(world, tiny_model, tmp_path) as (bot, cast):
        before = dbread.dump(db)
        plan = bot.engine.status().plan
        rows = []
        for who, user, where in actors(cast):
            for name, options in ADMIN_CALLS:
                values = {k: (world.alice if v == "alice" else v) for k, v in options.items()}
                text = await ephemeral_reply(await server.send_slash_command(user, where, name, values))
                rows.append((who, name, options, text))
        after = dbread.dump(db)
        assert bot.engine.status().plan == plan
    wrong = [(who, name, options, text) for who, name, options, text in rows if not any(r in text for r in REFUSED)]
    assert wrong == []
    assert after == before


async def test_actions_on_someone_elses_job_refused(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    db = tmp_path / "queue.sqlite3"
    async with scene(world, tiny_model, tmp_path) as (_, cast):
        before = dbread.dump(db)
        rows = []
        for who, user, where in actors(cast):
            if where.guild_id == world.guild.id:  # buttons live on the result message, in the server
                click = await server.send_component_click(user, cast.result, f"cv4:delete:{cast.done_id}")
                rows.append((who, "Delete", await ephemeral_reply(click)))
            for job in (cast.queued_id, cast.done_id):
                cancel = await server.send_slash_command(user, where, "cancel", {"job": job})
                rows.append((who, f"/cancel {job}", await ephemeral_reply(cancel)))
        # The stranger is an admin in their own server: that gives no power over this server's jobs.
        for job in (cast.queued_id, cast.done_id):
            cancel = await server.send_slash_command(cast.stranger, cast.elsewhere, "cancel", {"job": job})
            rows.append(("admin of another server, there", f"/cancel {job}", await ephemeral_reply(cancel)))
        after = dbread.dump(db)
    refused = ("Only the person who asked", "isn't yours", "already finished")
    assert [row for row in rows if not any(r in row[2] for r in refused)] == []
    assert after == before
    assert not server.message(cast.result.id).deleted


async def test_another_servers_admin_purges_only_their_servers_jobs(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    db = tmp_path / "queue.sqlite3"
    async with scene(world, tiny_model, tmp_path) as (_, cast):
        jobs_before = dbread.jobs(db)
        for options in ({}, {"user": world.alice}):
            purge = await server.send_slash_command(cast.stranger, cast.elsewhere, "purge", options)
            assert "Removed 0 waiting job(s)" in await ephemeral_reply(purge)
        assert dbread.jobs(db) == jobs_before
        # The owner (ADMIN_USER_IDS) may act everywhere; this server's admin here.
        cancel = await server.send_slash_command(world.admin, world.channel, "cancel", {"job": cast.queued_id})
        assert await ephemeral_reply(cancel) == f"Cancelled #{cast.queued_id}."


@pytest.mark.parametrize("who", ["owner", "admin"])
async def test_real_admins_still_can(world: World, tiny_model: Path, tmp_path: Path, who: str) -> None:
    server = world.server
    async with scene(world, tiny_model, tmp_path) as (bot, cast):
        user = cast.owner if who == "owner" else world.admin
        purge = await server.send_slash_command(user, world.channel, "purge", {})
        assert "Removed 1 waiting job(s)" in await ephemeral_reply(purge)
        delete = await server.send_component_click(user, cast.result, f"cv4:delete:{cast.done_id}")
        assert "Deleted the images" in await ephemeral_reply(delete)
        await wait_job(bot, cast.done_id, lambda j: j.result_message_id is None)
        await server.wait_for(lambda: server.message(cast.result.id).deleted, 5, "result deleted")
        for _ in range(50):  # the audit row is written right after the answer
            audit = await bot.queue.audit_log()
            if len(audit) == 2:
                break
            await bot.queue.wait_for_change(0.1)
    assert [a.action for a in reversed(audit)] == ["purge", "delete"]
