"""Load (see load.py): 1000 /imagine from 50 users at once, all acknowledged within Discord's 3 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import running_bot, settings_for
from tests.reliability.load import run_load


@pytest.mark.timeout(180)
async def test_a_thousand_interactions_are_all_answered_in_time(tiny_model: Path, tmp_path: Path) -> None:
    report = await run_load(tiny_model, tmp_path, users=50, per_user=20, cap=5)
    print(report.summary())
    assert report.late_or_missing == 0 and report.acknowledged == 1000, report.summary()
    assert report.max_ms < 3000, report.summary()
    assert report.accepted == 50 * 5 and report.refused_by_cap == 1000 - 250, report.summary()
    assert report.other_replies == []
    assert report.per_user_max == 5 and report.claim_rounds_fair, report.summary()
    assert report.database_locked_lines == 0


async def test_a_reply_discord_refused_as_too_late_withdraws_the_job(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    """The user was told "the application did not respond": the job must not run behind their back."""
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings, ready=False) as bot:
        await bot.queue.set_paused(True)
        slow = server.delay(3.2, "POST", r"/interactions/\d+/[^/]+/callback")
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a late cat"})
        callback = await handle.wait_response(10)
        assert slow.hits == 1 and not callback.accepted and callback.error_code == 10062
        for _ in range(50):  # the bot learns of the refusal a moment after the fake sent it
            jobs = await bot.queue.list_user_jobs(world.alice.id, states=list(JobState))
            if jobs and jobs[0].state is JobState.CANCELLED:
                break
            await bot.queue.wait_for_change(0.1)
        assert [j.state for j in jobs] == [JobState.CANCELLED]
    assert not any(m.attachments for m in server.messages(world.channel))
