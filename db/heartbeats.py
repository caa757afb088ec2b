"""Heartbeats: a running job's worker renews its lease, reports progress and the newest preview, and
learns whether to stop. The public method is written once here; each backend supplies `_beat`, its own
SQL for renewing the lease (PostgreSQL also vouches for the procrastinate worker holding the token).
"""

from __future__ import annotations

from db.base import QueueBase
from db.models import Heartbeat


class Heartbeats(QueueBase):
    """Part of `db.core.QueueCore`; uses the backend's retry (PostgreSQL retries through a database restart)."""

    async def heartbeat(
        self,
        job_id: int,
        worker_id: str,
        lease_s: float,
        *,
        step: int | None = None,
        total: int | None = None,
        preview: bytes | None = None,
    ) -> Heartbeat:
        """Renew the lease; a worker that lost it (or whose job was cancelled) is told to stop."""
        return await self._retrying(lambda: self._beat(job_id, worker_id, lease_s, step, total, preview))

    async def _beat(
        self, job_id: int, worker_id: str, lease_s: float, step: int | None, total: int | None, preview: bytes | None
    ) -> Heartbeat:
        raise NotImplementedError
