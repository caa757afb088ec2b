"""Admin commands: refused for everyone else (and in DMs), audited, and the memory plan switch between jobs."""

from __future__ import annotations

from pathlib import Path

from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result

ADMIN_CALLS: list[tuple[str, dict[str, object]]] = [
    ("memory", {"plan": "mixed_resident"}),
    ("memory", {}),
    ("pause", {}),
    ("resume", {}),
    ("purge", {}),
    ("status", {}),
]


async def test_non_admins_are_refused_and_nothing_changes(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, admin_user_ids=[world.admin.id])  # global: DMs too
    async with running_bot(server, settings) as bot:
        await bot.queue.set_paused(True)
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        job_id, _, _ = await queued_reply(handle)
        for name, options in ADMIN_CALLS:
            refused = await server.send_slash_command(world.bob, world.channel, name, options)
            assert "for server admins" in await ephemeral_reply(refused), name
        for name, options in ADMIN_CALLS:  # even a listed admin user is refused in DMs
            refused = await server.send_slash_command(world.admin, server.dm_channel(world.admin), name, options)
            assert "not in direct messages" in await ephemeral_reply(refused), name
        plan = bot.engine.status().plan
        assert await bot.queue.kv_get("memory_mode") is None
        assert await bot.queue.audit_log() == []
        assert await bot.queue.is_paused()  # /resume was refused
        job = await bot.queue.get_job(job_id)
    assert plan == "bf16_resident"
    assert job is not None and job.state is JobState.QUEUED  # /purge was refused


async def test_memory_switch_applies_between_jobs(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, engine_step_delay=0.15)
    async with running_bot(server, settings) as bot:
        table = await server.send_slash_command(world.admin, world.channel, "memory")
        text = await ephemeral_reply(table)
        assert "**Plan now:** bf16_resident" in text
        assert "✅ `bf16_resident`" in text and "✅ `mixed_resident`" in text and "❌ `nf4_resident`" in text

        first = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat", "steps": 12})
        first_id, _, _ = await queued_reply(first)
        await wait_job(bot, first_id, lambda j: j.state is JobState.RUNNING)
        switch = await server.send_slash_command(world.admin, world.channel, "memory", {"plan": "mixed_resident"})
        assert (await switch.wait_response()).type == 5  # deferred: the switch waits for the running job
        second = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a dog", "steps": 2})
        second_id, _, _ = await queued_reply(second)
        answer = await switch.wait_original(lambda m: "plan" in m.content, timeout=20)
        assert "Now using plan mixed_resident" in answer.content and answer.ephemeral
        first_post = await wait_result(server, world.channel, first_id)
        second_post = await wait_result(server, world.channel, second_id)
        infos = []
        for job_id, post in ((first_id, first_post), (second_id, second_post)):
            click = await server.send_component_click(world.bob, post, f"cv4:info:{job_id}")
            infos.append(await ephemeral_reply(click))
        assert await bot.queue.kv_get("memory_mode") == "mixed_resident"
        audit = await bot.queue.audit_log()
    assert "**plan:** bf16_resident" in infos[0]  # it was running when the switch was asked for
    assert "**plan:** mixed_resident" in infos[1]
    assert [(a.actor_id, a.action) for a in audit] == [(world.admin.id, "memory")]
    assert audit[0].detail.startswith("mixed_resident: Now using plan mixed_resident")


async def test_pause_resume_purge_status_by_role_and_user_id(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    role = server.add_role(world.guild, "image-mods")
    mod = server.add_user("mod")
    server.add_member(world.guild, mod, roles=[role], permissions=0)
    settings = settings_for(
        server,
        tiny_model,
        tmp_path,
        dev_guild_id=world.guild.id,
        admin_role_ids=[role.id],
        admin_user_ids=[world.bob.id],
    )
    async with running_bot(server, settings) as bot:
        paused = await server.send_slash_command(mod, world.channel, "pause")
        assert "Paused" in await ephemeral_reply(paused)
        ids = []
        for prompt in ("a cat", "a dog"):
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": prompt})
            ids.append((await queued_reply(handle))[0])
        status = await server.send_slash_command(world.bob, world.channel, "status")
        report = await ephemeral_reply(status)
        assert "**Engine:** ready on CPU" in report and "2 waiting" in report and "**paused**" in report
        assert "**Plan:** bf16_resident" in report
        purge = await server.send_slash_command(mod, world.channel, "purge", {"user": world.alice})
        assert "Removed 2 waiting job(s)" in await ephemeral_reply(purge)
        for job_id in ids:
            await server.wait_for_message(
                world.channel, lambda m, j=job_id: f"Your job #{j} was cancelled" in m.content, 10
            )
        resumed = await server.send_slash_command(world.bob, world.channel, "resume")
        assert "Resumed" in await ephemeral_reply(resumed)
        assert not await bot.queue.is_paused()
        audit = await bot.queue.audit_log()
    assert [(a.actor_id, a.action) for a in reversed(audit)] == [
        (mod.id, "pause"),
        (mod.id, "purge"),
        (world.bob.id, "resume"),
    ]
    assert str(world.alice.id) in audit[1].detail
