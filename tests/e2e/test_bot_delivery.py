"""Result delivery through the outbox: retries, nonces, permanent failures, clean shutdown."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

import bot as bot_module
from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import queued_reply, running_bot, settings_for, wait_job, wait_result

POSTS = r"/channels/\d+/messages$"


def channel_posts(world: World) -> list:
    return world.server.requests_for("POST", rf"/channels/{world.channel.id}/messages$")


async def test_429_twice_then_500_posts_exactly_one_result(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    limited = server.rate_limit("POST", POSTS, times=2, retry_after=0.05)
    failed = server.server_error("POST", POSTS, status=500)
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a boat"})
        job_id, _, _ = await queued_reply(handle)
        posted = await wait_result(server, world.channel, job_id, timeout=20)
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
    assert limited.hits == 2 and failed.hits == 1
    attempts = channel_posts(world)
    assert [r.status for r in attempts] == [429, 429, 500, 200]
    assert len({r.payload["nonce"] for r in attempts}) == 1 and all(r.payload["enforce_nonce"] for r in attempts)
    results = [m for m in server.messages(world.channel) if m.attachments]
    assert [m.id for m in results] == [posted.id]
    assert job is not None and job.result_message_id == posted.id


async def test_crash_between_post_and_record_does_not_post_twice(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    """The post went out but recording it failed: the retry reuses the nonce and Discord returns the same message."""
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        real_notice_sent = bot.queue.notice_sent
        failures = []

        async def notice_sent_fails_once(notice_id: int, message_id: int | None) -> None:
            if not failures:
                failures.append(notice_id)
                raise sqlite3.OperationalError("disk I/O error (injected)")
            await real_notice_sent(notice_id, message_id)

        bot.queue.notice_sent = notice_sent_fails_once  # type: ignore[method-assign]
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a kite"})
        job_id, _, _ = await queued_reply(handle)

        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
    attempts = channel_posts(world)
    assert failures and len(attempts) == 2
    assert attempts[0].payload["nonce"] == attempts[1].payload["nonce"]
    assert attempts[0].response["id"] == attempts[1].response["id"]
    results = [m for m in server.messages(world.channel) if m.attachments]
    assert len(results) == 1 and job is not None and job.result_message_id == results[0].id


async def test_unknown_channel_gives_up_without_blocking_others(
    world: World, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    gone = server.error(404, "Unknown Channel", 10003, "POST", rf"/channels/{world.other_channel.id}/messages$")
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    caplog.set_level(logging.WARNING)
    async with running_bot(server, settings) as bot:
        lost = await server.send_slash_command(world.alice, world.other_channel, "imagine", {"prompt": "a moon"})
        lost_id, _, _ = await queued_reply(lost)
        await server.wait_for(lambda: gone.hits == 1, 15, "the refused post")
        kept = await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a sun"})
        kept_id, _, _ = await queued_reply(kept)
        await wait_result(server, world.channel, kept_id)
        await wait_job(bot, kept_id, lambda j: j.result_message_id is not None)
        assert await bot.queue.pending_notices() == []
        lost_job = await bot.queue.get_job(lost_id)
    assert lost_job is not None and lost_job.state is JobState.DONE and lost_job.result_message_id is None
    assert len(server.requests_for("POST", rf"/channels/{world.other_channel.id}/messages$")) == 1  # no retry
    assert any("Giving up" in r.getMessage() and f"#{lost_id}" in r.getMessage() for r in caplog.records)


async def test_transient_refusal_is_retried_with_backoff(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    refused = server.error(403, "Missing Permissions", 50013, "POST", POSTS)
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings):
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a bird"})
        job_id, _, _ = await queued_reply(handle)
        await wait_result(server, world.channel, job_id, timeout=15)
    attempts = channel_posts(world)
    assert refused.hits == 1 and [r.status for r in attempts] == [403, 200]
    assert attempts[1].received_at - attempts[0].received_at >= 0.9  # waited (backoff), did not hammer


async def test_clean_shutdown_hands_the_running_job_back(
    world: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = world.server
    monkeypatch.setattr(bot_module, "SHUTDOWN_GRACE_S", 0.2)
    slow = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, engine_step_delay=0.2)
    async with running_bot(server, slow) as bot:
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a fox", "steps": 40}
        )
        job_id, _, status = await queued_reply(handle)
        await wait_job(bot, job_id, lambda j: j.state is JobState.RUNNING and (j.progress_step or 0) > 0)
    fast = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, fast) as bot:
        job = await bot.queue.get_job(job_id)
        assert job is not None and job.state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE)
        posted = await wait_result(server, world.channel, job_id)
        job = await bot.queue.get_job(job_id)
    assert job is not None and job.attempts == 1  # handed back: the interrupted try does not count
    assert "interrupted" not in " ".join(m.content for m in server.messages(world.channel))  # clean: no RESUMED
    assert posted.attachments and status.id != posted.id
