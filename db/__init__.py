"""The durable job queue. Only this package writes SQL.

Callers use `db.interface.JobQueue` (or its consumer half, `JobSource`), the types of `db.models`
and the result store of `db.results`; `open_queue` picks the backend named by the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.interface import JobQueue

if TYPE_CHECKING:
    from settings import Settings


async def open_queue(settings: Settings) -> JobQueue:
    """Open (and migrate) the queue the settings ask for."""
    if settings.queue_backend == "sqlite":
        from db.results import FolderResults
        from db.sqlite_queue import SqliteJobQueue

        queue: JobQueue = SqliteJobQueue(settings.database_path, results=FolderResults(settings.output_dir))
    else:
        queue = _postgres_queue(settings)
    await queue.open()
    return queue


def _postgres_queue(settings: Settings) -> JobQueue:
    """The multi-machine queue; its driver is an optional extra, imported only here."""
    from db.models import QueueError

    if settings.database_url is None:
        raise QueueError(
            "QUEUE_BACKEND=postgres needs DATABASE_URL=postgresql://ROLE:PASSWORD@HOST/DB "
            "(README, 'Add a second GPU PC')."
        )
    try:
        from db.postgres import PostgresJobQueue
    except ImportError as exc:
        raise QueueError(
            f"QUEUE_BACKEND=postgres needs the cluster extra ({exc.name} is missing): pip install -e '.[cluster]'"
        ) from exc
    return PostgresJobQueue(settings.database_url.get_secret_value())


__all__ = ["JobQueue", "open_queue"]
