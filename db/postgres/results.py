"""Result images in the database, for a cluster: the GPU machines share no disk with the bot.

`save` upserts a job's PNGs into job_images; they count as a result only once `complete` has
flipped the job to done (in its own transaction) and recorded their names. `read` selects them.
Nothing here writes a file: the bot posts the bytes as they come.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from db.results import ResultFile, UnsafeResult, result_name

if TYPE_CHECKING:
    from db.core import Conn
    from db.models import Job

T = TypeVar("T")


class DatabaseStore:
    """Images kept in the PostgreSQL queue's own tables (results, start images): what every such store needs."""

    def __init__(
        self,
        tx: Callable[[], AbstractAsyncContextManager[Conn]],
        read: Callable[[], AbstractAsyncContextManager[Conn]],
        retrying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    ) -> None:
        """The queue's write transaction, read connection and worker-side retry."""
        self.where = "the database"
        self._tx = tx
        self._read = read
        self._retrying = retrying


class DatabaseResults(DatabaseStore):
    """`db.results.ResultStore` on the job_images table of the PostgreSQL queue."""

    async def save(self, job_id: int, pngs: Sequence[bytes]) -> list[str]:
        names = [result_name(job_id, index) for index in range(len(pngs))]

        async def store() -> None:
            async with self._tx() as conn:
                for index, data in enumerate(pngs):  # only while the job runs: a finished result never changes
                    await conn.run(
                        "INSERT INTO job_images (job_id, idx, png) SELECT id, ?, ? FROM jobs "
                        "WHERE id = ? AND state = 'running' "
                        "ON CONFLICT (job_id, idx) DO UPDATE SET png = excluded.png",
                        (index, bytes(data), job_id),
                    )
                # an earlier attempt may have saved more images than this one
                await conn.run(
                    "DELETE FROM job_images WHERE job_id = ? AND idx >= ? "
                    "AND job_id IN (SELECT id FROM jobs WHERE state = 'running')",
                    (job_id, len(pngs)),
                )

        await self._retrying(store)
        return names

    async def read(self, job: Job, *, count: int | None = None) -> list[ResultFile]:
        expected = [result_name(job.id, index) for index in range(len(job.result_paths))]
        if job.result_paths != expected:
            raise UnsafeResult(f"job #{job.id} records results {job.result_paths}, not the names this store gives")
        expected = expected[:count]
        if not expected:
            raise FileNotFoundError(f"job #{job.id} has no result images")
        async with self._read() as conn:
            rows = await conn.all(
                "SELECT idx, png FROM job_images WHERE job_id = ? AND idx < ? ORDER BY idx", (job.id, len(expected))
            )
        if len(rows) != len(expected):
            raise FileNotFoundError(f"job #{job.id} has {len(rows)} of its {len(expected)} result images")
        return [ResultFile(expected[row["idx"]], bytes(row["png"])) for row in rows]

    async def delete(self, job: Job) -> None:
        async with self._tx() as conn:
            await conn.run("DELETE FROM job_images WHERE job_id = ?", (job.id,))
