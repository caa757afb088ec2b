"""The job queue on PostgreSQL, for a bot whose GPUs sit in other machines.

The queue's rules are db.core's, as on SQLite; what is PostgreSQL's own is in three parts: the connection
(db.postgres.connection), the dispatch to GPU machines through procrastinate tokens
(db.postgres.job_dispatch) and the registry of GPU workers (db.postgres.worker_registry).
"""

from __future__ import annotations

from db.postgres.job_dispatch import JobDispatch
from db.postgres.worker_registry import WorkerRegistry


class PostgresJobQueue(WorkerRegistry, JobDispatch):
    """`db.interface.JobQueue` on PostgreSQL, plus what GPU workers and /status need."""
