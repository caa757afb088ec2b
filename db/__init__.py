"""The durable job queue. Only this package writes SQL.

Callers use `db.interface.JobQueue` and the types of `db.models`; `open_queue`
picks the backend named by the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.interface import JobQueue

if TYPE_CHECKING:
    from settings import Settings


async def open_queue(settings: Settings) -> JobQueue:
    """Open (and migrate) the queue the settings ask for."""
    if settings.queue_backend == "sqlite":
        from db.sqlite_queue import SqliteJobQueue

        queue: JobQueue = SqliteJobQueue(settings.database_path)
    else:
        raise NotImplementedError("QUEUE_BACKEND=postgres needs the cluster extra (see README).")
    await queue.open()
    return queue


__all__ = ["JobQueue", "open_queue"]
