"""Live previews end to end (issue 14), and two small polish points: no voice warnings, /queue ETAs per job."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from pathlib import Path

import discord
import pytest
from PIL import Image

from bot import ImageBot
from cogs.progress import EDIT_INTERVAL_S, PREVIEW_NAME
from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result
from tests.fakediscord import FakeDiscord, RecordedRequest

TOLERANCE_S = 0.1  # the fake stamps requests on arrival; the bot measures from its own clock


def _payload(request: RecordedRequest) -> dict:
    if "payload_json" in request.form:
        return json.loads(request.form["payload_json"])
    return request.json or {}


def _status_edits(server: FakeDiscord, channel_id: int, message_id: int) -> list[RecordedRequest]:
    return server.requests_for("PATCH", rf"/channels/{channel_id}/messages/{message_id}$")


def _result_post(server: FakeDiscord, channel_id: int, job_id: int) -> RecordedRequest:
    posts = [
        r
        for r in server.requests_for("POST", rf"/channels/{channel_id}/messages$")
        if r.files and f"**#{job_id}**" in _payload(r).get("content", "")
    ]
    assert len(posts) == 1, posts
    return posts[0]


async def test_the_status_message_shows_previews_throttled_and_the_result_replaces_them(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, previews=True, engine_step_delay=0.3
    )
    async with running_bot(server, settings):
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a lighthouse --steps 40"}
        )
        job_id, _, status = await queued_reply(handle)
        await wait_result(server, world.channel, job_id, timeout=90)
        await server.wait_for(lambda: "Done — see below" in server.message(status.id).content, 10, "final status")
    result_at = _result_post(server, world.channel.id, job_id).received_at
    edits = [r for r in _status_edits(server, world.channel.id, status.id) if r.status == 200]
    previews = [r for r in edits if r.files]
    before = [r for r in previews if r.received_at < result_at]
    assert len(before) >= 2, f"{len(previews)} preview edits"
    assert not [r for r in previews if r.received_at >= result_at], "a preview edit after the result"
    for request in previews:
        assert [f.filename for f in request.files] == [PREVIEW_NAME]
        with Image.open(io.BytesIO(request.files[0].data)) as image:
            assert image.format == "JPEG" and max(image.size) <= 256
        attachments = _payload(request)["attachments"]
        assert [a["filename"] for a in attachments] == [PREVIEW_NAME], attachments  # the previous one is dropped
    print(f"{len(before)} preview edits before the result, {len(edits)} edits in all")
    # The throttle: edits of one message (text or preview) at least EDIT_INTERVAL_S apart until the outcome.
    running = [r for r in edits if r.received_at < result_at]
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(running)]
    assert all(gap >= EDIT_INTERVAL_S - TOLERANCE_S for gap in gaps), gaps
    # The outcome edit removed the preview: the result post shows the images.
    assert server.message(status.id).attachments == []


async def test_previews_off_edits_no_attachments(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, previews=False, engine_step_delay=0.3
    )
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a lighthouse --steps 20"}
        )
        job_id, _, status = await queued_reply(handle)
        await wait_result(server, world.channel, job_id, timeout=90)
        await server.wait_for(lambda: "Done — see below" in server.message(status.id).content, 10, "final status")
        assert await bot.queue.preview(job_id) is None
    edits = _status_edits(server, world.channel.id, status.id)
    assert len(edits) >= 2  # running, then done
    assert all(not r.files and "attachments" not in _payload(r) for r in edits)


async def test_a_rate_limited_edit_slows_the_previews_down(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, previews=True, engine_step_delay=0.3
    )
    async with running_bot(server, settings):
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a lighthouse --steps 60"}
        )
        job_id, _, status = await queued_reply(handle)
        path = rf"/channels/{world.channel.id}/messages/{status.id}$"
        limited = server.rate_limit("PATCH", path, retry_after=1.2)  # the next edit: discord.py waits, then retries
        await wait_result(server, world.channel, job_id, timeout=120)
    assert limited.hits == 1
    edits = _status_edits(server, world.channel.id, status.id)
    hit = next(i for i, r in enumerate(edits) if r.status == 429)
    retried = edits[hit + 1]
    assert retried.status == 200
    later_previews = [r for r in edits[hit + 2 :] if r.files]
    assert later_previews, "previews went on after the rate limit"
    assert later_previews[0].received_at - retried.received_at >= 2 * EDIT_INTERVAL_S - TOLERANCE_S


def test_no_voice_warnings_at_start_up(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, world: World
) -> None:
    """discord.py warns once per process that voice is unsupported; the bot has no voice (issue 14)."""
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)  # as in a fresh process
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    with caplog.at_level(logging.WARNING, logger="discord"):
        ImageBot(settings_for(world.server, tiny_model, tmp_path))
    assert "voice" not in caplog.text


async def test_queue_lists_an_eta_for_each_of_your_jobs(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, engine_step_delay=0.3)
    async with running_bot(server, settings) as bot:
        jobs = []
        for prompt in ("a cat --steps 30", "a dog", "a fox"):
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": prompt})
            jobs.append((await queued_reply(handle))[0])
        first = jobs[0]
        await wait_job(bot, first, lambda job: job.state is JobState.RUNNING)
        listing = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "queue"))
        await bot.queue.purge()
        await bot.queue.cancel(first, by_user_id=world.alice.id)
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r"#(\d+) — .*", listing)}
    assert sorted(lines) == sorted(jobs), listing
    assert "running, step" in lines[first]
    for line in lines.values():
        assert re.search(r"about \d+ min \(<t:\d+:R>\)", line), line
