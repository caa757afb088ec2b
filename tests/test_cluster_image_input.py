"""Image input in PostgreSQL mode: the bot stores the start image in the database, a remote GPU worker makes
the job, and the result is posted with the image buttons; a Vary of it goes the same way."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from db.models import JobState
from tests.pg_fixtures import require_cluster_extra

require_cluster_extra()  # the imports below need procrastinate and psycopg

from tests.cluster import Cluster  # noqa: E402
from tests.conftest import World  # noqa: E402
from tests.e2e.harness import running_bot, settings_for, wait_job, wait_result  # noqa: E402
from tests.e2e.test_bot_image_input import image_job_reply  # noqa: E402
from tests.fakediscord import UploadFile  # noqa: E402

pytestmark = pytest.mark.timeout(180)


async def test_image_jobs_made_by_a_remote_worker(world: World, tiny_model: Path, tmp_path: Path, pg_url: str) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, queue_backend="postgres", database_url=pg_url
    )
    workers = Cluster(pg_url, tiny_model, tmp_path, step_delay=0.05)
    upload = io.BytesIO()
    Image.new("RGB", (80, 80), (10, 120, 200)).save(upload, format="PNG")
    async with running_bot(server, settings, ready=False) as bot:
        await workers.open()
        try:
            workers.start_worker("gpu_a")
            assert await bot.engine.wait_ready(90), workers.log_of("gpu_a")
            options = {"prompt": "a blue square --steps 2", "image": UploadFile("sq.png", upload.getvalue())}
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", options)
            job_id, _ = await image_job_reply(server, handle)
            queued = await bot.queue.get_job(job_id)
            assert queued is not None and queued.request.start_image is not None
            assert await bot.queue.inputs.get(queued.request.start_image)  # in the database, for any worker
            posted = await wait_result(server, world.channel, job_id, timeout=90)
            click = await server.send_component_click(world.bob, posted, f"cv4:subtle:{job_id}")
            vary_id, _ = await image_job_reply(server, click)
            await wait_result(server, world.channel, vary_id, timeout=90)
            varied = await wait_job(bot, vary_id, lambda j: j.state is JobState.DONE)
            assert (varied.kind, varied.parent_job_id, varied.worker_id) == ("vary", job_id, "gpu_a")
        finally:
            await workers.close()
