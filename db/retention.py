"""Retention: removing a finished job's images, and its start image once no job needs it any more.

Start images are shared by content hash (a Vary of a Vary of the same picture, two users uploading
the same file), so one is removed only when no other job still needs it: a queued or running job, or
a finished one whose results are still kept (a job whose results were removed records no result paths).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from db.inputs import InputStore
from db.models import Job
from db.results import ResultStore

log = logging.getLogger(__name__)

_NEEDED = (
    "SELECT count(*) AS n FROM jobs WHERE start_image = ? AND id <> ? "
    "AND (state IN ('queued', 'running') OR result_paths <> '[]')"
)


class Retention:
    """Mixed into `db.core.QueueCore`; uses its transaction, job reads and stores."""

    results: ResultStore
    inputs: InputStore
    _tx: Callable[[], AbstractAsyncContextManager[Any]]

    async def get_job(self, job_id: int) -> Job | None: ...

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
