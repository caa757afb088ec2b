"""/imagine end to end, with the real bot in this process against the fake Discord."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from db.models import JobState
from engine.rules import limits_from_folder
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, image_size, queued_reply, running_bot, settings_for, wait_result


async def test_inline_flags_override_options(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(
            world.alice,
            world.channel,
            "imagine",
            {
                "prompt": "a red fox in snow --ar 3:2 --seed 42 --no text, blur --steps 3 --guidance 4 --count 2",
                "negative_prompt": "people",
                "aspect": "1:1",
                "steps": 10,
                "guidance": 7.0,
                "seed": 5,
                "count": 1,
            },
        )
        job_id, position, _ = await queued_reply(handle)
        assert handle.ack_latency is not None and handle.ack_latency < 3.0
        assert position == 1
        posted = await wait_result(server, world.channel, job_id)
        job = await bot.queue.get_job(job_id)
    assert job is not None and job.state is JobState.DONE
    request = job.request
    assert request.prompt == "a red fox in snow"
    assert (request.negative_prompt, request.steps, request.guidance, request.seed, request.count) == (
        "text, blur",
        3,
        4.0,
        42,
        2,
    )
    size = limits_from_folder(tiny_model).size_for_aspect("3:2")
    assert (request.width, request.height) == size
    assert [image_size(a.data) for a in posted.attachments] == [size, size]
    assert "seeds 42–43" in posted.content and "3 steps" in posted.content
    assert posted.custom_ids() == [
        f"cv4:reroll:{job_id}",
        f"cv4:variations:{job_id}",
        f"cv4:info:{job_id}",
        f"cv4:delete:{job_id}",
        f"cv4:subtle:{job_id}",
        f"cv4:strong:{job_id}",
        f"cv4:remix:{job_id}",
        f"cv4:upscale:{job_id}",
    ]


async def test_defaults_give_the_native_size(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a lighthouse"})
        job_id, _, status = await queued_reply(handle)
        posted = await wait_result(server, world.channel, job_id)
        native = bot.engine.limits.native_size
        await server.wait_for(lambda: "Done — see below" in server.message(status.id).content, 10, "final status")
    assert [image_size(a.data) for a in posted.attachments] == [(native, native)]
    assert "2 steps" in posted.content and "guidance 3.5" in posted.content
    assert posted.data["mentions"][0]["id"] == str(world.alice.id)  # the requester is pinged, nobody else


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "a cat --steps abc"}, "--steps needs a whole number"),
    ({"prompt": "a cat", "steps": 500}, "Steps must be from 1 to 100"),
    ({"prompt": "a cat --steps 500"}, "Steps must be from 1 to 100"),
    ({"prompt": "a cat --ar 5:7"}, "--ar 5:7 isn't supported"),
    ({"prompt": "a cat --sharpness 3"}, "Unknown flag --sharpness"),
    ({"prompt": "a cat --seed 1 --seed 2"}, "given twice"),
    ({"prompt": "a Forbidden cat"}, "doesn't allow"),
    ({"prompt": "a cat", "negative_prompt": "FORBIDDEN"}, "doesn't allow"),
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": "--seed 4"}, "prompt is empty"),
    ({"prompt": "a cat", "count": 9}, "1 to 4 images"),
    ({"prompt": "a cat", "seed": -1}, "seed"),
    ({"prompt": "a cat", "guidance": 50.0}, "Guidance must be from"),
]


async def test_invalid_input_is_refused_privately_and_queues_nothing(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, banned_words=["forbidden"])
    async with running_bot(server, settings, ready=False) as bot:
        for options, expected in INVALID:
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", options)
            text = await ephemeral_reply(handle)
            assert expected in text, (options, text)
            assert "Traceback" not in text
        stats = await bot.queue.stats()
        mine = await bot.queue.list_user_jobs(world.alice.id, states=list(JobState))
    assert (stats.queued, stats.running, stats.done, stats.failed, stats.cancelled) == (0, 0, 0, 0, 0)
    assert mine == []
    assert server.messages(world.channel, include_ephemeral=False) == []


async def test_limits_channels_caps_and_cooldown(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server,
        tiny_model,
        tmp_path,
        dev_guild_id=world.guild.id,
        allowed_channel_ids=[world.channel.id],
        max_jobs_per_user=1,
        max_queue_length=2,
        user_cooldown_seconds=30,
    )
    async with running_bot(server, settings, ready=False) as bot:
        await bot.queue.set_paused(True)  # keep everything waiting
        elsewhere = await server.send_slash_command(world.alice, world.other_channel, "imagine", {"prompt": "a cat"})
        assert f"<#{world.channel.id}>" in await ephemeral_reply(elsewhere)
        first = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        await queued_reply(first)
        again = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a dog"})
        assert "You already have 1 job(s) waiting" in await ephemeral_reply(again)
        bob = await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a cow"})
        await queued_reply(bob)
        await bot.queue.cancel((await bot.queue.list_user_jobs(world.bob.id))[0].id, by_user_id=world.bob.id)
        soon = await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a hen"})
        assert "try again in" in await ephemeral_reply(soon)
        admin = await server.send_slash_command(world.admin, world.channel, "imagine", {"prompt": "a pig"})
        await queued_reply(admin)
        carol = server.add_user("carol")
        server.add_member(world.guild, carol)
        full = await server.send_slash_command(carol, world.channel, "imagine", {"prompt": "a goat"})
        assert "The queue is full" in await ephemeral_reply(full)
        assert await bot.queue.queue_length() == 2


@pytest.mark.parametrize("where", ["guild", "dm"])
async def test_mentions_in_prompts_ping_nobody(world: World, tiny_model: Path, tmp_path: Path, where: str) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, default_steps=2)  # global commands: usable in DMs
    channel = world.channel if where == "guild" else server.dm_channel(world.alice)
    prompt = f"@everyone look <@&123> and @here, hi <@{world.bob.id}> **bold** --no @here"
    async with running_bot(server, settings) as bot:
        cog = bot.get_cog("Progress")
        assert cog is not None
        cog.edit_interval_s = 0.2  # type: ignore[attr-defined]
        handle = await server.send_slash_command(world.alice, channel, "imagine", {"prompt": prompt})
        job_id, _, status = await queued_reply(handle)
        posted = await wait_result(server, channel, job_id)
        await server.wait_for(lambda: "Done" in server.message(status.id).content, 10, "final status")
        info = await server.send_component_click(world.alice, posted, f"cv4:info:{job_id}")
        assert "look" in (await info.wait_response()).content  # type: ignore[operator]

    bodies = []
    for request in server.requests_for(path=r"/(messages|callback|webhooks)"):
        payload = request.payload
        if isinstance(payload, dict):
            body = payload.get("data") if isinstance(payload.get("data"), dict) else payload
            if body.get("content"):
                bodies.append(body)
    assert len(bodies) >= 4  # reply, status edit, result post, info
    for body in bodies:
        allowed = body.get("allowed_mentions")
        assert allowed is not None and allowed.get("parse") == [], body
        assert not allowed.get("roles") and {str(u) for u in allowed.get("users", [])} <= {str(world.alice.id)}, body
        assert "@everyone" not in body["content"] and "@here" not in body["content"]
        assert "<@&123>" not in body["content"] and f"<@{world.bob.id}>" not in body["content"]
    for message in server.messages(channel):
        assert message.data["mention_everyone"] is False and message.data["mention_roles"] == []
        assert {u["id"] for u in message.data["mentions"]} <= {str(world.alice.id)}
