"""The safety check's mark on a job (engine.safety): written once for both backends (portable SQL with `?`)."""

from __future__ import annotations

from db import clock
from db.base import QueueBase


class Flags(QueueBase):
    """A part of the queue (db.core.QueueCore) like the outbox and the heartbeats."""

    async def mark_flagged(self, job_id: int, worker_id: str) -> bool:
        """Mark a running job's images as flagged, before `complete` queues its result post (so the post is never
        made unmarked), and write it in the audit log under the requester, once however often the job runs.
        False if the lease was lost."""
        async with self._tx() as conn:
            changed = await conn.run(
                "UPDATE jobs SET flagged = ? WHERE id = ? AND state = 'running' AND worker_id = ? AND flagged = ?",
                (True, job_id, worker_id, False),
            )
            if changed == 1:
                await conn.run(
                    "INSERT INTO audit (at, actor_id, guild_id, action, detail) "
                    "SELECT ?, user_id, guild_id, 'flagged', ? FROM jobs WHERE id = ?",
                    (clock.now(), f"job #{job_id}: the safety check flagged its images", job_id),
                )
                return True
            row = await conn.one(
                "SELECT 1 AS ours FROM jobs WHERE id = ? AND state = 'running' AND worker_id = ?", (job_id, worker_id)
            )
            return row is not None
