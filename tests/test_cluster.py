"""Several GPU workers on one PostgreSQL database: real `python -m engine worker` processes.

Each worker is a separate process running the tiny CogView4 on the CPU; a job's length is
set by ENGINE_STEP_DELAY. The test process plays the bot (enqueue, progress, outbox). Faults
are real: SIGKILL of a worker, an immediate-mode PostgreSQL restart.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from cluster.view import ClusterView
from cogs.utils.notices import compose
from cogs.utils.reports import workers_report
from db.models import RESUMED_WORKER_LOST, JobState, NoticeKind
from tests.pg_fixtures import require_cluster_extra

require_cluster_extra()  # the imports below need procrastinate and psycopg

from tests.cluster import Cluster, request, requester, worker_roles_sql  # noqa: E402
from tests.conftest import World  # noqa: E402
from tests.e2e.harness import ephemeral_reply, image_size, queued_reply, running_bot, settings_for, wait_result  # noqa: E402
from tests.pgserver import PgServer, admin_sql  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def cluster(pg_url: str, tiny_model: Path, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await Cluster(pg_url, tiny_model, tmp_path).open()
    try:
        yield c
    finally:
        await c.close()


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_three_workers_share_twelve_jobs_fairly_and_deliver_each_once(
    cluster: Cluster, pg_server: PgServer, pg_url: str
) -> None:
    names = ("gpu_a", "gpu_b", "gpu_c")
    admin_sql(pg_url, *worker_roles_sql(*names))  # each machine logs in with its own role (README)
    for name in names:
        cluster.start_worker(name, url=pg_server.url(dbname(pg_url), user=name, password=f"secret-{name}"))
    # User 1 asks first and most: 4 jobs each for users 1, 2, 3, queued while the queue is paused.
    await cluster.queue.set_paused(True)
    ids = [
        (await cluster.queue.enqueue(requester(u), request(f"u{u} #{n}", seed=n))).job_id
        for u in (1, 2, 3)
        for n in range(4)
    ]
    await cluster.wait_ready(*names)
    await cluster.queue.set_paused(False)
    jobs = await cluster.wait_jobs(ids, timeout=120)
    assert all(job.state is JobState.DONE for job in jobs), [(j.id, j.state, j.error) for j in jobs]

    posted = await cluster.deliver_all()
    assert posted == {job_id: [NoticeKind.RESULT] for job_id in ids}, "every result delivered exactly once"
    assert await cluster.queue.pending_notices() == []
    for job in await asyncio.gather(*(cluster.queue.get_job(i) for i in ids)):
        assert job is not None and job.result_message_id is not None and len(job.result_paths) == 1
        (png,) = await cluster.queue.results.read(job)
        with Image.open(io.BytesIO(png.data)) as image:
            assert image.size == (64, 64)

    rows = cluster.sql("SELECT id, user_id, worker_id, started_at, finished_at FROM jobs ORDER BY served_seq")
    users = [row[1] for row in rows]
    rank = {row[0]: [r[0] for r in rows if r[1] == row[1]].index(row[0]) for row in rows}
    assert set(users[:3]) == {1, 2, 3}, f"the first three jobs go to three users: {users}"
    for index, row in enumerate(rows):  # round-robin: nobody's (k+2)-th job before everyone's k-th
        assert all(rank[later[0]] + 2 > rank[row[0]] for later in rows[index + 1 :]), users
    for user in (1, 2, 3):
        mine = [row[0] for row in rows if row[1] == user]
        assert mine == sorted(mine), "each user's jobs in the order asked"
    # One user never holds every GPU while another waits.
    for row in rows:
        t = row[3]
        busy = {r[1] for r in rows if r[3] <= t < r[4]}
        waiting = {r[1] for r in rows if r[3] > t}
        assert not (len(busy) == 1 and sum(r[3] <= t < r[4] for r in rows) == 3 and waiting - busy), (t, busy)
    assert {row[2] for row in rows} == set(names), "all three GPUs worked"
    for worker in await cluster.queue.list_workers():
        assert worker.model_loads == 1 and worker.jobs_done >= 1, worker


async def test_sigkilled_worker_job_completes_on_another(cluster: Cluster) -> None:
    for name in ("gpu_a", "gpu_b"):
        cluster.start_worker(name, stalled_after=2.0)
    await cluster.wait_ready("gpu_a", "gpu_b")
    long = await cluster.queue.enqueue(requester(1), request("long job", steps=100))
    others = [(await cluster.queue.enqueue(requester(2), request(f"short {n}"))).job_id for n in range(2)]
    (running,) = await cluster.wait_jobs(
        [long.job_id], lambda job: job.state is JobState.RUNNING and (job.progress_step or 0) >= 5, timeout=60
    )
    victim = running.worker_id
    assert victim in ("gpu_a", "gpu_b")
    cluster.kill(victim)  # mid-job, no goodbye

    # Once another worker has the job, /status no longer shows the dead one busy with it, and soon (well
    # before stale_s of silence) shows it offline.
    await cluster.wait_jobs([long.job_id], lambda job: job.worker_id not in (victim, None), timeout=60)
    view = ClusterView(cluster.queue.list_workers, str(cluster.model), stale_s=60)
    taken_over = time.monotonic()
    while True:
        await view.refresh()
        dead = next(w for w in view.workers() if w.name == victim)
        assert dead.state != "busy" and dead.current_job is None, dead
        if dead.state == "offline":
            break
        assert time.monotonic() - taken_over < 15, dead
        await asyncio.sleep(0.2)
    report = workers_report(view.workers(), now=time.time())
    (line,) = [line for line in report.splitlines() if line.startswith(f"`{victim}`")]
    assert "offline (last seen" in line and f"#{long.job_id}" not in line, report

    jobs = await cluster.wait_jobs([long.job_id, *others], timeout=90)
    assert all(job.state is JobState.DONE for job in jobs), [(j.id, j.state, j.error) for j in jobs]
    done = jobs[0]
    assert done.worker_id not in (victim, None) and done.attempts == 2, (victim, done.worker_id, done.attempts)
    # The owner is told a GPU worker stopped, not that something restarted.
    (resumed,) = [n for n in await cluster.queue.pending_notices(limit=100) if n.kind is NoticeKind.RESUMED]
    assert (resumed.job.id, resumed.body) == (long.job_id, RESUMED_WORKER_LOST)
    post = await compose(resumed, cluster.queue.results)
    assert f"The GPU worker making your job #{long.job_id} stopped; it is back in the queue." in post.content
    assert "restart" not in post.content, post.content
    posted = await cluster.deliver_all()
    assert posted[long.job_id] == [NoticeKind.RESUMED, NoticeKind.RESULT], "told once it resumed, result once"
    assert all(posted[job_id] == [NoticeKind.RESULT] for job_id in others)
    tokens = cluster.sql(
        "SELECT status::text FROM procrastinate_jobs WHERE args->>'job_id' = %s ORDER BY id", (str(long.job_id),)
    )
    assert [t[0] for t in tokens] == ["failed", "succeeded"], "the dead worker's attempt was closed, one retry ran"


async def test_cancelling_a_running_remote_job_stops_it_and_keeps_the_model(cluster: Cluster) -> None:
    cluster.step_delay = 0.1
    # Progress every 2 s: a stop well before that comes from procrastinate's abort notification.
    cluster.start_worker("gpu_a", progress_every=2.0)
    await cluster.wait_ready("gpu_a")
    job = await cluster.queue.enqueue(requester(1), request("cancel me", steps=100))
    await cluster.wait_jobs([job.job_id], lambda j: j.state is JobState.RUNNING, timeout=60)
    await asyncio.sleep(0.6)
    asked = time.monotonic()
    outcome = await cluster.queue.cancel(job.job_id, by_user_id=1)
    assert not outcome.immediate
    (cancelled,) = await cluster.wait_jobs([job.job_id], lambda j: j.state is JobState.CANCELLED, timeout=20)
    took = time.monotonic() - asked
    assert took < 1.0, f"cancelled after {took:.2f} s (steps are 0.1 s)"
    assert cancelled.attempts == 1 and await cluster.queue.pending_notices() == []

    after = await cluster.queue.enqueue(requester(1), request("next one", steps=5))
    (done,) = await cluster.wait_jobs([after.job_id], timeout=60)
    assert done.state is JobState.DONE and done.worker_id == "gpu_a"
    (worker,) = await cluster.queue.list_workers()
    assert cluster.workers["gpu_a"].poll() is None, "the worker process survived the cancel"
    assert (worker.model_loads, worker.jobs_done, worker.pid) == (1, 1, cluster.workers["gpu_a"].pid)
    assert "Loading transformer" not in cluster.log_of("gpu_a").split("cancel requested", 1)[1]


async def test_postgres_restart_mid_run_loses_nothing(cluster: Cluster, pg_server: PgServer) -> None:
    for name in ("gpu_a", "gpu_b"):  # polling every 30 s: only LISTEN/NOTIFY can make pick-ups quick
        cluster.start_worker(name, stalled_after=15.0, poll=30.0)
    await cluster.wait_ready("gpu_a", "gpu_b")
    ids = [
        (await cluster.queue.enqueue(requester(u), request(f"u{u} #{n}", steps=20))).job_id
        for n in range(3)
        for u in (1, 2, 3)
    ]
    await cluster.wait_jobs(ids[:2], lambda j: j.state is not JobState.QUEUED, timeout=60)
    await asyncio.to_thread(pg_server.restart_immediate, 2.0)

    jobs = await cluster.wait_jobs(ids, timeout=150)
    assert all(job.state is JobState.DONE for job in jobs), [(j.id, j.state, j.error) for j in jobs]
    posted = await cluster.deliver_all()
    assert all(posted[job_id].count(NoticeKind.RESULT) == 1 for job_id in ids), posted
    assert set(posted) == set(ids)
    await cluster.wait_ready("gpu_a", "gpu_b")  # both workers came back on their own
    asked = time.monotonic()
    late = await cluster.queue.enqueue(requester(4), request("after the restart"))
    await cluster.wait_jobs([late.job_id], lambda j: j.state is not JobState.QUEUED, timeout=30)
    assert time.monotonic() - asked < 5, "the workers hear new jobs again (LISTEN came back)"


async def test_bot_in_postgres_mode_shows_progress_and_posts_results_from_a_remote_worker(
    world: World, tiny_model: Path, tmp_path: Path, pg_url: str
) -> None:
    """The bot with QUEUE_BACKEND=postgres starts no engine; a worker process makes the image."""
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, queue_backend="postgres", database_url=pg_url
    )
    workers = Cluster(pg_url, tiny_model, tmp_path, step_delay=0.15)
    async with running_bot(server, settings, ready=False) as bot:
        assert not hasattr(bot, "dispatcher"), "no local GPU work in the bot process"
        progress = bot.get_cog("Progress")
        progress.edit_interval_s = 0.2  # type: ignore[union-attr]
        await workers.open()
        try:
            workers.start_worker("gpu_a")
            assert await bot.engine.wait_ready(90), workers.log_of("gpu_a")
            handle = await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "a lighthouse at dusk", "steps": 16}
            )
            job_id, position, status = await queued_reply(handle)
            assert position == 1
            posted = await wait_result(server, world.channel, job_id, timeout=60)
            assert [image_size(a.data) for a in posted.attachments] == [(64, 64)]
            await server.wait_for(lambda: "Done — see below" in server.message(status.id).content, 10, "final")
            shown = [h["content"] for h in server.message(status.id).history]
            assert any("making it" in text and "/16 steps" in text for text in shown), shown

            report = await ephemeral_reply(await server.send_slash_command(world.admin, world.channel, "status"))
            assert "**GPU workers:** 1 of 1 online" in report, report
            assert "`gpu_a`" in report and "plan bf16_resident" in report and "1 done" in report, report
            memory = await server.send_slash_command(world.admin, world.channel, "memory", {"plan": "mixed_resident"})
            assert "Each GPU machine picks its own memory plan" in await ephemeral_reply(memory)
        finally:
            await workers.close()


def test_size_classes() -> None:
    from db.postgres.dispatch import queues_up_to, size_queue

    assert [size_queue(a) for a in (64 * 64, 1024 * 1024, 1024 * 1024 + 1, 2048 * 1024)] == [
        "cogview-1mp",
        "cogview-1mp",
        "cogview-2mp",
        "cogview-2mp",
    ]
    assert queues_up_to(8192) == ["cogview-1mp"], "a worker always takes the smallest class"
    assert queues_up_to(2 * 1024 * 1024) == ["cogview-1mp", "cogview-2mp"]


async def test_a_worker_only_fetches_sizes_its_plan_can_make(pg_url: str) -> None:
    from db.postgres import PostgresJobQueue

    async with PostgresJobQueue(pg_url) as queue:
        big = await queue.enqueue(requester(1), request("big", size=1536))  # 2.25 MP
        small = await queue.enqueue(requester(2), request("small", size=1024))
        manager = queue.procrastinate_app.job_manager
        worker = await manager.register_worker()
        token = await manager.fetch_job(queues=["cogview-1mp"], worker_id=worker)  # a 1-megapixel card
        assert token is not None and token.task_kwargs == {"job_id": small.job_id}
        assert await manager.fetch_job(queues=["cogview-1mp"], worker_id=worker) is None
        token = await manager.fetch_job(queues=["cogview-1mp", "cogview-2mp", "cogview-3mp"], worker_id=worker)
        assert token is not None and token.task_kwargs == {"job_id": big.job_id}


async def test_a_remote_worker_sends_live_previews_through_the_heartbeat(cluster: Cluster) -> None:
    """Issue 14: a cluster worker's previews reach the bot's queue the way its progress does."""
    cluster.step_delay = 0.25
    cluster.start_worker("gpu_a", progress_every=0.5, extra_env={"PREVIEWS": "on"})
    await cluster.wait_ready("gpu_a")
    job = await cluster.queue.enqueue(requester(1), request("a preview from afar", steps=30))
    await cluster.wait_jobs([job.job_id], lambda j: j.state is JobState.RUNNING, timeout=60)
    preview = None
    deadline = time.monotonic() + 20
    while preview is None and time.monotonic() < deadline:
        await cluster.queue.wait_for_change(0.5)  # each heartbeat announces the job's progress
        preview = await cluster.queue.preview(job.job_id)
    assert preview is not None, cluster.log_of("gpu_a")
    with Image.open(io.BytesIO(preview)) as image:
        assert image.format == "JPEG" and max(image.size) <= 256
    (done,) = await cluster.wait_jobs([job.job_id], timeout=60)
    assert done.state is JobState.DONE and await cluster.queue.preview(job.job_id) is None
