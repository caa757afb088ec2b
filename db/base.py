"""The base every part of the queue shares: a connection's protocol, and `QueueBase` with the backend's
transactions, its change notification and the reading of jobs. A backend (db.sqlite_queue,
db.postgres.queue) implements what raises NotImplementedError here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol, Self, TypeVar

from db.inputs import InputStore
from db.models import Job, QueueError
from db.results import ResultStore
from db.rows import job_from_row

T = TypeVar("T")


def opened(handle: T | None) -> T:
    """A backend's open connection or pool; a queue used before `open()` or after `close()` says so."""
    if handle is None:
        raise QueueError("The queue database is not open.")
    return handle


Row = Mapping[str, Any]


class Conn(Protocol):
    """One connection inside a backend's transaction (or read), with `?` placeholders."""

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; returns the number of rows changed."""
        ...


class QueueBase:
    """What every part of the queue stands on: the backend's transactions and reads, the job columns, and
    the reading of jobs. Each part (db.core, db.outbox, db.runtime, db.retention, db.per_user,
    db.heartbeats) subclasses it; a backend implements what raises NotImplementedError here."""

    results: ResultStore
    inputs: InputStore
    # SQL pieces that differ: the job row (PostgreSQL keeps progress in a table of its own), the
    # column holding a queued job's turn (db.fairness), and row locks (SQLite locks the whole file).
    JOB_COLUMNS: ClassVar[str] = "j.*"
    JOB_FROM: ClassVar[str] = "jobs j"
    TURN: ClassVar[str] = "queue_seq"
    FOR_UPDATE: ClassVar[str] = ""

    def __init__(self) -> None:
        self._changed_event = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what a backend provides ---------------------------------------------------------------------
    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _tx(self) -> AbstractAsyncContextManager[Conn]:
        """One write transaction; local waiters are woken after it committed."""
        raise NotImplementedError

    def _read(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Worker-side writes; a backend whose database can restart under a worker retries them."""
        return await fn()

    async def _enter_queue(self, conn: Conn, job_id: int) -> None:
        """The job (new or handed back) takes its turn in the queue; its progress is cleared."""
        raise NotImplementedError

    async def _withdraw(self, conn: Conn, job_id: int, *, running: bool) -> None:
        """A queued job was cancelled, or a running one asked to stop (PostgreSQL: its token)."""

    async def _progress_done(self, conn: Conn, job_id: int) -> None:
        raise NotImplementedError

    async def _announce(self, conn: Conn, what: str = "") -> None:
        """Tell other processes that something changed (delivered on commit)."""

    async def _on_resume(self, conn: Conn) -> None:
        """The queue was resumed (PostgreSQL: wake the workers)."""

    # --- change notification -------------------------------------------------------------------------
    def _wake_local(self) -> None:
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    async def wait_for_change(self, max_wait: float) -> None:
        event = self._changed_event
        try:
            await asyncio.wait_for(event.wait(), max_wait)
        except TimeoutError:
            pass

    # --- reads of jobs ----------------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        async with self._read() as conn:
            return await self._get(conn, job_id)

    async def _get(self, conn: Conn, job_id: int, *, lock: bool = False) -> Job | None:
        lock_sql = f"{self.FOR_UPDATE} OF j" if lock and self.FOR_UPDATE else ""
        row = await conn.one(f"SELECT {self.JOB_COLUMNS} FROM {self.JOB_FROM} WHERE j.id = ?{lock_sql}", (job_id,))
        return job_from_row(row) if row else None

    async def _jobs(self, conn: Conn, where: str, params: Sequence[Any] = ()) -> list[Job]:
        rows = await conn.all(f"SELECT {self.JOB_COLUMNS} FROM {self.JOB_FROM} WHERE {where}", params)
        return [job_from_row(row) for row in rows]
