"""Drafts and the safety check in PostgreSQL mode: the bot queues, a worker process (with SAFETY_MODEL) makes
and checks the image, and the bot posts what the server's /safety mode says, then finishes the draft."""

from __future__ import annotations

from pathlib import Path

from db.models import JobState
from tests.cluster import Cluster
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result


async def test_a_flagged_draft_from_a_remote_worker_and_its_finish(
    world: World, tiny_model: Path, tiny_classifier: Path, tmp_path: Path, pg_url: str
) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, queue_backend="postgres", database_url=pg_url
    )
    workers = Cluster(pg_url, tiny_model, tmp_path)
    async with running_bot(server, settings, ready=False) as bot:
        await workers.open()
        try:
            safety = {"SAFETY_MODEL": str(tiny_classifier), "SAFETY_THRESHOLD": "0"}  # flags every image
            workers.start_worker("gpu_a", extra_env=safety)
            assert await bot.engine.wait_ready(90), workers.log_of("gpu_a")
            handle = await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "a lighthouse --draft --seed 5", "steps": 4}
            )
            job_id, _, _ = await queued_reply(handle)
            notice = await server.wait_for_message(
                world.channel, lambda m: m.content.startswith(f"<@{world.alice.id}> #{job_id} is ready"), 60
            )
            assert notice.custom_ids() == [f"cv4:bydm:{job_id}"] and not notice.attachments
            draft = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
            assert draft.request.draft and draft.flagged and draft.timings["passes"] == 4
            assert [a.action for a in await bot.queue.audit_log()] == ["flagged"]

            await ephemeral_reply(
                await server.send_slash_command(world.admin, world.channel, "safety", {"mode": "off"})
            )
            shown = await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
            reposted = await shown.wait_original(lambda m: bool(m.attachments), timeout=10)
            assert reposted.custom_ids()[0] == f"cv4:finish:{job_id}" and not reposted.ephemeral
            finish_id, _, _ = await queued_reply(
                await server.send_component_click(world.alice, reposted, f"cv4:finish:{job_id}")
            )
            finished = await wait_job(bot, finish_id, lambda j: j.state is JobState.DONE, timeout=60)
            posted = await wait_result(server, world.channel, finish_id, timeout=30)
        finally:
            await workers.close()
    assert (finished.request.draft, finished.request.seed, finished.kind) == (False, 5, "finish")
    assert finished.flagged and posted.attachments, "the server's mode is off now: posted as usual"
