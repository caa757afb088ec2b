"""Discord misbehaving on a schedule: every REST call fails (429, global 429, 500, 502, reset, refused)
and the gateway drops (RESUME) and invalidates the session (re-IDENTIFY). The engine keeps finishing jobs
meanwhile (read from the database, not from Discord), and once Discord is back every result is posted once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

import cogs.delivery
from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import queued_reply, running_bot, settings_for, wait_result
from tests.fakediscord import Disconnect, RateLimit, ServerError
from tests.reliability import dbread

EVERY_CALL = r"/api/v10/"
PHASE_S = 1.5


@pytest.mark.timeout(180)
async def test_engine_never_waits_for_a_failing_discord(
    world: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    caplog.set_level(logging.WARNING)
    # The fault schedule is under test here, not the back-off curve (it has its own test): retry sooner.
    monkeypatch.setattr(cogs.delivery, "retry_delay", functools.partial(cogs.delivery.retry_delay, cap_s=6.0))
    settings = settings_for(
        server,
        tiny_model,
        tmp_path,
        dev_guild_id=world.guild.id,
        engine_step_delay=0.1,
        default_steps=4,
        max_jobs_per_user=10,
    )
    db = tmp_path / "queue.sqlite3"
    async with running_bot(server, settings) as bot:
        progress = bot.get_cog("Progress")
        progress.edit_interval_s = 0.3  # type: ignore[union-attr]  # plenty of status edits to fail
        await bot.queue.set_paused(True)
        jobs = []
        for index in range(10):
            user = (world.alice, world.bob)[index % 2]
            handle = await server.send_slash_command(user, world.channel, "imagine", {"prompt": f"storm {index}"})
            jobs.append((await queued_reply(handle))[0])
        await bot.queue.set_paused(False)

        # --- Discord fails every call, one kind of failure after another, while the engine works
        identifies, resumes = server.identify_count, server.resume_count
        start = time.time()
        done_at_start = sum(j["state"] == "done" for j in dbread.jobs(db))
        hits: dict[str, int] = {}
        phases = [
            RateLimit(retry_after=0.3),
            RateLimit(retry_after=0.3, is_global=True),
            ServerError(500),
            ServerError(502),
            Disconnect(reset=True),
            Disconnect(reset=False),
        ]
        for index, fault in enumerate(phases):
            rule = server.inject(fault, path=EVERY_CALL, times=None)
            if index == 2:
                await server.drop_gateway(4000)  # the client RESUMEs
            if index == 4:
                await server.invalidate_session()  # the client must IDENTIFY again
            await asyncio.sleep(PHASE_S)
            # discord.py sleeps between its own retries of a 5xx: keep the phase until calls really met it.
            await server.wait_for(lambda rule=rule: rule.hits >= 2, 15, f"{fault} answered")
            server.faults.rules.remove(rule)
            hits[fault.name] = rule.hits
        await server.go_offline()  # connection refused, gateway included
        await asyncio.sleep(2 * PHASE_S)
        mid = dbread.jobs(db)
        mid_notices = dbread.notices(db)
        await server.go_online()
        end = time.time()

        finished_during = [j for j in mid if j["state"] == "done" and start <= j["finished_at"] <= end]
        assert sum(j["state"] == "done" for j in mid) - done_at_start >= 5, mid  # the engine kept going
        assert len(finished_during) >= 5
        undelivered = {n["job_id"] for n in mid_notices if n["delivered_at"] is None and n["kind"] == "result"}
        assert undelivered, "some results must have been waiting for Discord while the engine went on"

        # --- Discord is back: every result is posted, once; the bot answers again
        for job_id in jobs:
            await wait_result(server, world.channel, job_id, timeout=60)
        caught_up_s = time.time() - end
        await server.wait_for(lambda: bool(server.gateway.connected_sessions), 30, "gateway back")
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "after"})
        after, _, _ = await queued_reply(handle)
        assert handle.ack_latency is not None and handle.ack_latency < 3.0
        await wait_result(server, world.channel, after, timeout=30)
        states = {j.id: j.state for j in [await bot.queue.get_job(i) for i in [*jobs, after]] if j is not None}
        await server.wait_for(lambda: not any(n["delivered_at"] is None for n in dbread.notices(db)), 30, "outbox")

    print(
        f"faults {end - start:.1f} s, calls failed {hits}, jobs finished meanwhile {len(finished_during)}/{len(jobs)},"
        f" results waiting for Discord {len(undelivered)}, all posted {caught_up_s:.1f} s after the end,"
        f" RESUMEs {server.resume_count - resumes}, IDENTIFYs {server.identify_count - identifies}"
    )
    assert set(states.values()) == {JobState.DONE}
    assert server.resume_count > resumes and server.identify_count > identifies
    results = Counter(m.content.split("**#")[1].split("**")[0] for m in server.messages(world.channel) if m.attachments)
    assert sorted(int(k) for k in results) == sorted([*jobs, after]) and set(results.values()) == {1}
    nonces = [m.data["nonce"] for m in server.messages(world.channel) if m.data.get("nonce")]
    assert len(nonces) == len(set(nonces))
    ours = ("bot", "cogs", "engine", "db", "asyncio")  # discord.py logs its own reconnects with a traceback
    unhandled = [r.getMessage() for r in caplog.records if r.exc_info and r.name.split(".")[0] in ours]
    assert unhandled == []
