"""/settings, private results, /quota, allowed roles, /spoilers and retention, end to end against the fake Discord."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from db.models import JobState, UserSettings
from engine.rules import limits_from_folder
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result


async def job_count(bot: Any) -> int:
    stats = await bot.queue.stats()
    return stats.queued + stats.running + stats.done + stats.failed + stats.cancelled


async def test_settings_survive_a_restart_and_options_and_flags_beat_them(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings):
        handle = await server.send_slash_command(
            world.alice,
            world.channel,
            "settings",
            {"aspect": "16:9", "steps": 3, "guidance": 5.0, "negative_prompt": "blur"},
        )
        saved = await ephemeral_reply(handle)
        assert "Saved." in saved and "aspect 16:9 · steps 3 · guidance 5" in saved and "without: blur" in saved
    async with running_bot(server, settings) as bot:  # a restart: the settings are read back from the database
        shown = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "settings", {}))
        assert "aspect 16:9 · steps 3 · guidance 5" in shown, shown
        plain, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        )
        override, _, _ = await queued_reply(
            await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "a dog --steps 2 --no text", "aspect": "1:1"}
            )
        )
        others, _, _ = await queued_reply(
            await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a cow"})
        )
        jobs = {
            j: await wait_job(bot, j, lambda job: job.state is JobState.DONE, timeout=60)
            for j in (plain, override, others)
        }
        reset = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"reset": True})
        )
        assert "Settings reset." in reset and await bot.queue.user_settings(world.alice.id) == UserSettings()
    limits = limits_from_folder(tiny_model)
    mine = jobs[plain].request
    assert (mine.steps, mine.guidance, mine.negative_prompt) == (3, 5.0, "blur")
    assert (mine.width, mine.height) == limits.size_for_aspect("16:9")
    flagged = jobs[override].request
    assert (flagged.steps, flagged.guidance, flagged.negative_prompt) == (2, 5.0, "text")
    assert (flagged.width, flagged.height) == limits.size_for_aspect("1:1")
    bobs = jobs[others].request
    assert (bobs.steps, bobs.negative_prompt) == (settings.default_steps, "")


async def test_a_setting_outside_the_imagine_rules_is_refused_and_not_saved(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, banned_words=["gore"])
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(
            world.alice, world.channel, "settings", {"steps": 3, "negative_prompt": "no gore please"}
        )
        assert "doesn't allow" in await ephemeral_reply(handle)
        assert await bot.queue.user_settings(world.alice.id) == UserSettings()


async def test_private_results_arrive_by_dm_and_never_in_the_channel(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"private": True})
        )
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a secret garden"})
        )
        dm = server.dm_channel(world.alice)
        posted = await wait_result(server, dm, job_id)
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
    assert posted.attachments and job.result_message_id == posted.id
    assert server.requests_for("POST", r"/users/@me/channels$")
    assert not [m for m in server.messages(world.channel) if m.attachments or f"#{job_id}**" in m.content]


async def test_closed_dms_get_a_short_channel_notice_without_the_image(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    world.alice.accepts_dms = False
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"private": True})
        )
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a secret garden"})
        )
        notice = await server.wait_for_message(
            world.channel, lambda m: "can't send you direct messages" in m.content, 30, include_ephemeral=False
        )
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
    assert job.result_message_id == notice.id and not notice.attachments
    assert f"/show {job_id}" in notice.content and notice.content.startswith(f"<@{world.alice.id}>")
    assert server.messages(server.dm_channel(world.alice)) == []
    assert not [m for m in server.messages(world.channel) if m.attachments]


async def test_quota_refusal_is_ephemeral_and_writes_nothing(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2, daily_quota=2)
    async with running_bot(server, settings) as bot:
        await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a fox", "count": 2})
        )
        before = await job_count(bot)
        refused = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "one more"})
        assert "used 2 of your 2 images" in await ephemeral_reply(refused)
        assert await job_count(bot) == before
        left = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "quota", {}))
        assert "used 2 of your 2 images: 0 left" in left, left
        bobs = await ephemeral_reply(await server.send_slash_command(world.bob, world.channel, "quota", {}))
        assert "used 0 of your 2 images: 2 left" in bobs, bobs


async def test_role_refusal_is_ephemeral_and_writes_nothing(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    artists = server.add_role(world.guild, "artists")
    server.add_member(world.guild, world.alice, roles=[artists.id])
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2, allowed_role_ids=[artists.id]
    )
    async with running_bot(server, settings) as bot:
        refused = await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a fox"})
        assert f"needs one of these roles: <@&{artists.id}>" in await ephemeral_reply(refused)
        assert await job_count(bot) == 0
        await queued_reply(await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a fox"}))
        await queued_reply(await server.send_slash_command(world.admin, world.channel, "imagine", {"prompt": "a fox"}))
        assert await job_count(bot) == 2


async def test_spoilers_per_server_and_retention(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2, retention_days=2e-5
    )
    async with running_bot(server, settings) as bot:
        refused = await server.send_slash_command(world.alice, world.channel, "spoilers", {"enabled": True})
        assert "for server admins" in await ephemeral_reply(refused)
        on = await server.send_slash_command(world.admin, world.channel, "spoilers", {"enabled": True})
        assert "Spoilers on" in await ephemeral_reply(on)
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a twist"})
        )
        posted = await wait_result(server, world.channel, job_id)
        assert [a.filename for a in posted.attachments] == [f"SPOILER_job{job_id:07d}_0.png"]
        audit = await bot.queue.audit_log()
        assert [(e.action, e.detail, e.actor_id) for e in audit] == [("spoilers", "on", world.admin.id)]
        await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
        again = await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
        reposted = await again.wait_original(timeout=10)
        assert [a.filename for a in reposted.attachments] == [f"SPOILER_job{job_id:07d}_0.png"]
        await asyncio.sleep(2)  # older than RETENTION_DAYS now
        retention: Any = bot.get_cog("Retention")  # discord.py imports an extension afresh: no isinstance
        assert await retention.prune_once() == 1
        assert not (tmp_path / "outputs" / f"job{job_id:07d}_0.png").is_file()
        shown = await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
        assert "were deleted (this bot keeps results for 2e-05 days)" in await ephemeral_reply(shown)
