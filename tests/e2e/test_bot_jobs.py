"""/queue, /cancel, /show and the result buttons (Re-roll, Variations, Info, Delete)."""

from __future__ import annotations

from pathlib import Path

from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import (
    ephemeral_reply,
    image_size,
    queued_reply,
    running_bot,
    settings_for,
    wait_job,
    wait_result,
)


async def test_queue_and_cancel(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings) as bot:
        progress = bot.get_cog("Progress")
        progress.edit_interval_s = 0.2  # type: ignore[union-attr]
        await bot.queue.set_paused(True)
        statuses = {}
        for prompt in ("a cat", "a dog"):
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": prompt})
            job_id, position, message = await queued_reply(handle)
            statuses[job_id] = message
            assert position == len(statuses)
        first, second = statuses
        listing = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "queue"))
        assert f"#{first} — position 1" in listing and f"#{second} — position 2" in listing
        assert "2 waiting" in listing and "paused" in listing
        nothing = await ephemeral_reply(await server.send_slash_command(world.bob, world.channel, "queue"))
        assert nothing.startswith("You have no jobs")

        latest = await server.send_slash_command(world.alice, world.channel, "cancel")
        assert await ephemeral_reply(latest) == f"Cancelled #{second}."
        await server.wait_for(lambda: "Cancelled" in server.message(statuses[second].id).content, 10, "status edit")
        not_yours = await server.send_slash_command(world.bob, world.channel, "cancel", {"job": first})
        assert "isn't yours" in await ephemeral_reply(not_yours)
        by_admin = await server.send_slash_command(world.admin, world.channel, "cancel", {"job": first})
        assert await ephemeral_reply(by_admin) == f"Cancelled #{first}."
        told = await server.wait_for_message(world.channel, lambda m: f"Your job #{first} was cancelled" in m.content)
        assert told.data["mentions"][0]["id"] == str(world.alice.id)
        again = await server.send_slash_command(world.alice, world.channel, "cancel", {"job": first})
        assert "already finished" in await ephemeral_reply(again)
        none_left = await server.send_slash_command(world.alice, world.channel, "cancel")
        assert "no job waiting or running" in await ephemeral_reply(none_left)
        audit = await bot.queue.audit_log()
    assert [(a.actor_id, a.action) for a in audit] == [(world.admin.id, "cancel")]


async def test_result_buttons_and_show(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat --seed 7"})
        job_id, _, _ = await queued_reply(handle)
        result = await wait_result(server, world.channel, job_id)

        info = await ephemeral_reply(await server.send_component_click(world.bob, result, f"cv4:info:{job_id}"))
        assert "**Prompt:** a cat" in info and "seed 7" in info and "**plan:** bf16_resident" in info

        vary = await server.send_component_click(world.bob, result, f"cv4:variations:{job_id}")
        vary_id, _, _ = await queued_reply(vary)
        varied = await wait_result(server, world.channel, vary_id)
        assert len(varied.attachments) == 4 and {image_size(a.data) for a in varied.attachments} == {(64, 64)}
        vary_job = await bot.queue.get_job(vary_id)
        assert vary_job is not None and vary_job.requester.user_id == world.bob.id
        assert (vary_job.request.seed, vary_job.request.count, vary_job.parent_job_id) == (8, 4, job_id)

        reroll = await server.send_component_click(world.alice, result, f"cv4:reroll:{job_id}")
        reroll_id, _, _ = await queued_reply(reroll)
        await wait_result(server, world.channel, reroll_id)
        reroll_job = await bot.queue.get_job(reroll_id)
        assert reroll_job is not None and reroll_job.request.seed is None and reroll_job.kind == "reroll"
        assert reroll_job.request.prompt == "a cat" and reroll_job.request.steps == 2

        refused = await server.send_component_click(world.bob, result, f"cv4:delete:{job_id}")
        assert "Only the person who asked" in await ephemeral_reply(refused)
        assert not server.message(result.id).deleted
        deleted = await server.send_component_click(world.alice, result, f"cv4:delete:{job_id}")
        assert f"Deleted the images of #{job_id}" in await ephemeral_reply(deleted)
        await server.wait_for(lambda: server.message(result.id).deleted, 5, "deleted result")
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is None)
        assert job.state is JobState.DONE

        hidden = await server.send_slash_command(world.bob, world.channel, "show", {"job": job_id})
        assert "Only the person who asked" in await ephemeral_reply(hidden)
        shown = await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
        reposted = await shown.wait_original(lambda m: bool(m.attachments), timeout=5)
        assert f"**#{job_id}**" in reposted.content and not reposted.ephemeral
        assert reposted.custom_ids()[0] == f"cv4:reroll:{job_id}"
        public = await server.send_slash_command(world.alice, world.channel, "show", {"job": vary_id})
        assert len((await public.wait_original(lambda m: bool(m.attachments), timeout=5)).attachments) == 4
        missing = await server.send_slash_command(world.alice, world.channel, "show", {"job": 999})
        assert "There is no job #999" in await ephemeral_reply(missing)
