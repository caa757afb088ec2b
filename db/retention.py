"""Retention: removing a finished job's images, and its start image once no job needs it any more.

Start images are shared by content hash (two users uploading the same file), so one is removed only when
no other job still needs it: a queued or running job, or a finished one whose results are still kept (a
job whose results were removed records no result paths).

The RETENTION_DAYS pass (`prune_results`) runs in three steps so a kill anywhere leaves nothing half-done:
one transaction marks the old jobs 'pruning', then their images are deleted from the result store
(idempotent), then one transaction clears their result_paths and marks them 'pruned'. A pass first
finishes every job an interrupted pass left 'pruning'.
"""

from __future__ import annotations

import logging

from db import clock
from db.base import QueueBase
from db.results import UnsafeResult

log = logging.getLogger(__name__)

PRUNE_BATCH = 200
_NEEDED = (
    "SELECT count(*) AS n FROM jobs WHERE start_image = ? AND id <> ? "
    "AND (state IN ('queued', 'running') OR result_paths <> '[]')"
)


class Retention(QueueBase):
    """Part of `db.core.QueueCore`: a job's images and start image, removed on request or by age."""

    async def delete_results(self, job_id: int) -> bool:
        """Remove a finished job's result images and, if no other job needs it, its start image.
        False (nothing removed) while the job is queued or running."""
        job = await self.get_job(job_id)
        if job is None or not job.state.finished:
            return False
        if job.result_paths:
            await self.results.delete(job)
        async with self._tx() as conn:
            await conn.run("UPDATE jobs SET result_paths = '[]' WHERE id = ?", (job_id,))
        if job.request.start_image is not None:
            await self.drop_start_image(job.request.start_image, besides=job_id)
        return True

    async def drop_start_image(self, digest: str, *, besides: int = 0) -> bool:
        """Remove a start image unless a job other than `besides` needs it (retention, or an enqueue that was
        refused after the image was stored). True if removed."""
        async with self._tx() as conn:
            row = await conn.one(_NEEDED, (digest, besides))
        if row is not None and row["n"]:
            return False
        await self.inputs.delete(digest)
        log.info("Removed start image %s…, which no job needs any more", digest[:12])
        return True

    async def prune_results(self, before: float, *, limit: int = PRUNE_BATCH) -> list[int]:
        """Delete the images of jobs finished before `before` (and finish any interrupted pass).
        Returns the ids whose images were deleted in this pass."""
        async with self._tx() as conn:
            await conn.run(
                "INSERT INTO pruned_results (job_id, state, at) SELECT j.id, 'pruning', ? FROM jobs j "
                "WHERE j.state = 'done' AND j.finished_at < ? AND j.result_paths <> '[]' "
                "AND NOT EXISTS (SELECT 1 FROM pruned_results p WHERE p.job_id = j.id) "
                "ORDER BY j.finished_at LIMIT ?",
                (clock.now(), before, max(1, limit)),
            )
        async with self._read() as conn:
            doomed = await self._jobs(
                conn, "j.id IN (SELECT job_id FROM pruned_results WHERE state = 'pruning') ORDER BY j.id"
            )
        for job in doomed:
            try:
                await self.results.delete(job)
            except UnsafeResult as exc:  # a tampered row: nothing of the store's own to delete
                log.warning("Retention of job #%s: %s", job.id, exc)
        ids = [job.id for job in doomed]
        if ids:
            marks = ", ".join("?" for _ in ids)
            async with self._tx() as conn:
                await conn.run(f"UPDATE jobs SET result_paths = '[]' WHERE id IN ({marks})", ids)
                await conn.run(f"UPDATE pruned_results SET state = 'pruned' WHERE job_id IN ({marks})", ids)
            log.info("Retention deleted the images of %s job(s): %s", len(ids), ids[:50])
        for job in doomed:  # and their start images, once no other job needs them (db.retention)
            if job.request.start_image is not None:
                await self.drop_start_image(job.request.start_image, besides=job.id)
        return ids

    async def is_pruned(self, job_id: int) -> bool:
        """True once retention has started deleting the job's images."""
        async with self._read() as conn:
            row = await conn.one("SELECT 1 AS x FROM pruned_results WHERE job_id = ?", (job_id,))
        return row is not None
