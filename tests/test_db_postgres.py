"""What only the PostgreSQL queue has: the GPU workers /status lists, told truthfully."""

from __future__ import annotations

from tests.pg_fixtures import require_cluster_extra

require_cluster_extra()

from db.postgres import PostgresJobQueue  # noqa: E402
from tests.queue_helpers import what, who  # noqa: E402


async def test_a_worker_is_not_shown_busy_with_a_job_it_no_longer_runs(pg_url: str) -> None:
    async with PostgresJobQueue(pg_url, apply_schema=False) as queue:
        await queue.enqueue(who(1), what())
        job = await queue.claim_next("gpu-a", 60)
        assert job is not None
        await queue.report_worker("gpu-a", state="busy", current_job=job.id)
        await queue.report_worker("gpu-b", state="busy", current_job=job.id)  # a stale report of another worker
        assert [(w.name, w.current_job) for w in await queue.list_workers()] == [("gpu-a", job.id), ("gpu-b", None)]
        assert await queue.release(job.id, "gpu-a")  # taken back (as the reaper does for a silent worker)
        assert [(w.name, w.current_job) for w in await queue.list_workers()] == [("gpu-a", None), ("gpu-b", None)]
