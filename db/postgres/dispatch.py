"""How jobs reach the GPU workers: procrastinate jobs ("tokens") on size-class queues.

Each attempt of a queued job has one procrastinate job carrying {"job_id": N}. Its
priority is minus the job's fairness round, so procrastinate's own fetch (priority,
then age, `FOR UPDATE SKIP LOCKED`) hands out jobs round-robin by user. Queues are
size classes: a worker listens only to the classes its memory plan can run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from procrastinate import App, PsycopgConnector, sql
from procrastinate import exceptions as pexc
from procrastinate import jobs as pjobs
from procrastinate.connector import Notify
from procrastinate.manager import JobManager, get_channel_for_queues

log = logging.getLogger(__name__)

TASK_NAME = "cogview.generate"
MEGAPIXEL = 1 << 20


def size_queue(area: int) -> str:
    """The queue a job of `area` pixels goes to: one per started megapixel."""
    return f"cogview-{max(1, math.ceil(area / MEGAPIXEL))}mp"


def queues_up_to(max_area: int) -> list[str]:
    """Every size class a worker that can make `max_area` pixels may take (always the smallest)."""
    return [f"cogview-{n}mp" for n in range(1, max(1, max_area // MEGAPIXEL) + 1)]


# procrastinate 3.x stops watching a worker's side tasks as soon as one returns, and the periodic
# deferrer returns at once when no periodic task exists (procrastinate issue #1597, PR #1605): a
# listener or heartbeat that fails during a database restart would stay dead. These two overrides
# keep them alive instead; fetching errors still end the worker, and `python -m engine worker`
# starts a new one.


class ResilientConnector(PsycopgConnector):
    """procrastinate's connector whose LISTEN comes back after the database does."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wakers: set[asyncio.Task[None]] = set()

    async def listen_notify(self, on_notification: Notify, channels: Iterable[str]) -> None:
        channels = list(channels)
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                await super().listen_notify(on_notification=on_notification, channels=channels)
            except pexc.ConnectorException as exc:
                log.warning("Lost the job notifications (%s); listening again in %.1f s", exc.__cause__ or exc, delay)
            delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, 10.0)
            await asyncio.sleep(delay)
            # Jobs queued while nobody listened: have the worker look once it listens again.
            waker = asyncio.create_task(_wake_soon(on_notification, channels[0]))
            self._wakers.add(waker)
            waker.add_done_callback(self._wakers.discard)


async def _wake_soon(on_notification: Notify, channel: str) -> None:
    await asyncio.sleep(0.5)
    await on_notification(channel=channel, payload='{"type": "job_inserted", "job_id": null}')


class PausableJobManager(JobManager):
    """procrastinate's fetch, except while an admin has paused the queue (/pause)."""

    def __init__(self, connector: PsycopgConnector, is_paused: Callable[[], Awaitable[bool]]) -> None:
        super().__init__(connector)
        self._is_paused = is_paused

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> pjobs.Job | None:
        if await self._is_paused():
            return None
        return await super().fetch_job(queues, worker_id)

    async def update_heartbeat(self, worker_id: int) -> None:
        """A missed beat while the database restarts is not fatal: the next one is a few seconds away."""
        try:
            await super().update_heartbeat(worker_id)
        except pexc.ConnectorException as exc:
            log.warning("Worker heartbeat failed (%s); trying again at the next beat", exc.__cause__ or exc)


def make_app(is_paused: Callable[[], Awaitable[bool]]) -> App:
    """A procrastinate app; open it with the queue's pool (`open_async(pool)`)."""
    app = App(connector=ResilientConnector())
    app.job_manager = PausableJobManager(app.connector, is_paused)  # type: ignore[arg-type]
    return app


async def defer_token(app: App, conn: psycopg.AsyncConnection, job_id: int, fair_round: int, area: int) -> int:
    """Queue a new attempt of job `job_id` inside the caller's transaction; returns the token id."""
    token = pjobs.Job(
        queue=size_queue(area),
        task_name=TASK_NAME,
        priority=-fair_round,
        lock=None,
        queueing_lock=None,
        task_kwargs={"job_id": job_id},
    )
    (deferred,) = await app.job_manager.batch_defer_jobs_async([token], connection=conn)
    assert deferred.id is not None
    return deferred.id


async def cancel_token(app: App, conn: psycopg.AsyncConnection, token_id: int, *, abort: bool) -> bool:
    """Withdraw a waiting token, or (abort=True) ask the worker running it to stop (NOTIFY)."""
    return await app.job_manager.cancel_job_by_id_async(token_id, abort=abort, connection=conn)


async def fail_token(app: App, conn: psycopg.AsyncConnection, token_id: int) -> bool:
    """Close the token of an attempt that a dead worker left 'doing' (its job gets a fresh token).

    False if the token had already ended (procrastinate refuses): the caller's transaction goes on,
    since the statement ran in a savepoint.
    """
    try:
        async with conn.transaction():
            await app.connector.execute_query_one_async_with_connection(  # type: ignore[attr-defined]
                conn, query=sql.queries["finish_job"], job_id=token_id, status="failed", delete_job=False
            )
    except Exception:  # procrastinate raises if the token is no longer todo/doing
        return False
    return True


async def wake_workers(conn: psycopg.AsyncConnection, queues: Iterable[str] | None = None) -> None:
    """Tell listening workers to fetch now (after /resume), in procrastinate's own notification format."""
    channels = list(get_channel_for_queues(None)) + (list(get_channel_for_queues(queues)) if queues else [])
    payload = '{"type": "job_inserted", "job_id": null}'
    for channel in channels:
        await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def token_job_id(kwargs: dict[str, Any]) -> int:
    value = kwargs.get("job_id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"a {TASK_NAME} token needs an integer job_id, got {value!r}")
    return value
