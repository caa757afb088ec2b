"""`python -m engine worker`: one GPU of a multi-machine setup, pulling jobs from PostgreSQL.

Each worker process owns one GPU: it loads the model once in that machine's own memory
plan, then runs a procrastinate worker with concurrency 1 on the size classes its plan can
make. A fetched token becomes a claimed job (`claim_token`), and the local `Dispatcher` runs
it exactly as on a single machine, through the same `JobSource` calls (progress and cancel
through its per-job heartbeat); the queue's result store puts the images into the database,
not onto a disk the bot cannot see.

procrastinate's abort notification (an admin or the owner cancelled a running job) cancels
our task; we turn that into a stop at the next step, and the model stays loaded. If the
database goes away, procrastinate's worker stops; this process keeps the model, retries its
writes, and starts a new procrastinate worker once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from procrastinate.job_context import AbortReason, JobContext
from procrastinate.worker import Worker
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

import jobrequest
from db.postgres import PostgresJobQueue
from db.postgres.dispatch import TASK_NAME, queues_up_to
from dispatch.dispatcher import Dispatcher
from engine.rules import model_label
from engine.service import Engine, EngineConfig
from engine.types import EngineState

log = logging.getLogger(__name__)

LEASE_S = 60.0


@dataclass(frozen=True)
class WorkerOptions:
    database_url: str
    name: str
    heartbeat_s: float = 10.0  # procrastinate's worker heartbeat
    stalled_after_s: float = 30.0  # silence after which a worker counts as dead and its job is retried
    progress_s: float = 1.0  # per-job heartbeat: progress, lease, cancel flag
    status_s: float = 2.0  # how often /status's row is refreshed
    reap_s: float = 5.0  # how often this worker looks for jobs of dead workers
    poll_s: float = 5.0  # fetch poll when no notification arrives
    shutdown_grace_s: float = 30.0  # on SIGTERM, let the running job finish this long, then hand it back


class _Restart(Exception):
    """procrastinate's worker stopped without being asked (the database went away)."""


class GpuWorker:
    def __init__(self, options: WorkerOptions, config: EngineConfig) -> None:
        self.options = options
        self.config = config
        self.queue = PostgresJobQueue(
            options.database_url, stalled_after_s=options.stalled_after_s, retry_for_s=120.0, pool_size=4
        )
        self.engine = Engine(config)
        self.dispatcher: Dispatcher | None = None
        self.procrastinate: Worker | None = None
        self.started_at = time.time()
        self._stopping = asyncio.Event()
        self._current: int | None = None
        self._queues: list[str] = []

    # --- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self._retry_until_stopped(self.queue.open, "open the database")
        if self._stopping.is_set():
            return 0
        try:
            return await self._serve()
        finally:
            with contextlib.suppress(Exception):
                await self._report(state="stopped", current_job=None)
            await self.engine.stop()
            await self.queue.close()

    def stop(self) -> None:
        """Stop fetching; the running job gets `shutdown_grace_s`, then goes back to the queue."""
        log.info("Stopping worker %s", self.options.name)
        self._stopping.set()
        if self.procrastinate is not None:
            self.procrastinate.stop()

    async def _serve(self) -> int:
        self.engine.start()
        await self._report(state="loading", note=None)
        while not await self.engine.wait_ready(1.0):
            status = self.engine.status()
            await self._report(state="loading", note=f"{status.load_message} ({status.load_fraction:.0%})")
        status = self.engine.status()
        if status.state is not EngineState.READY:
            log.error("The model could not be loaded: %s", status.error)
            await self._report(state="failed", note=status.error)
            return 1
        self.dispatcher = Dispatcher(
            self.queue,
            self.engine,
            worker_id=self.options.name,
            model_id=model_label(self.config.model_id),
            lease_s=LEASE_S,
            heartbeat_s=self.options.progress_s,
            lookahead=0,  # the next jobs may go to other GPUs: no prefetching their prompts here
            dispatch_timings=True,  # the scale-out benchmark reads claim → engine and claim → first step
            check=lambda request: jobrequest.check(request, self.engine.limits),  # this machine's model
        )
        self._queues = queues_up_to(self.engine.max_area())
        self.queue.procrastinate_app.task(name=TASK_NAME, pass_context=True)(self._generate)
        log.info(
            "Worker %s ready: plan %s on %s, up to %d px per image (queues %s)",
            self.options.name,
            status.plan,
            status.device_name,
            self.engine.max_area(),
            ", ".join(self._queues),
        )
        side = [
            asyncio.create_task(self._every(self.options.status_s, self._report), name="status"),
            asyncio.create_task(self._every(self.options.reap_s, self.queue.requeue_expired_leases), name="reaper"),
        ]
        try:
            await self.queue.requeue_expired_leases()
            await self._retry_until_stopped(self._run_procrastinate, "run the job loop")
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
        return 0

    async def _run_procrastinate(self) -> None:
        """One procrastinate worker's life: until asked to stop, or until the database goes away."""
        self.procrastinate = Worker(
            self.queue.procrastinate_app,
            queues=self._queues,
            name=self.options.name,
            concurrency=1,
            fetch_job_polling_interval=self.options.poll_s,
            abort_job_polling_interval=max(1.0, self.options.poll_s),
            shutdown_graceful_timeout=self.options.shutdown_grace_s,
            listen_notify=True,
            install_signal_handlers=False,
            update_heartbeat_interval=self.options.heartbeat_s,
            stalled_worker_timeout=self.options.stalled_after_s,
        )
        if self._stopping.is_set():
            return
        await self._report(state="ready", current_job=None)
        await self.procrastinate.run()
        if not self._stopping.is_set():
            raise _Restart("procrastinate's worker stopped (is the database reachable?)")

    async def _retry_until_stopped(self, action: Any, what: str) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),  # QueueError, a lost connection, _Restart
            wait=wait_exponential(multiplier=0.5, max=10.0),
            before_sleep=lambda state: log.warning(
                "Could not %s (%s); trying again in %.1f s",
                what,
                state.outcome.exception() if state.outcome else "?",
                state.next_action.sleep if state.next_action else 0,
            ),
        ):
            with attempt:
                if self._stopping.is_set():
                    return
                await action()

    async def _every(self, seconds: float, action: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await action()
            except Exception as exc:
                log.warning("%s failed: %s", getattr(action, "__name__", action), exc)

    # --- one job ---------------------------------------------------------------------------
    async def _generate(self, context: JobContext, job_id: int) -> None:
        """The procrastinate task: claim the token's job, run it on the local dispatcher."""
        assert self.dispatcher is not None and context.job.id is not None
        job = await self.queue.claim_token(context.job.id, job_id, self.options.name, LEASE_S)
        if job is None:
            log.info("Token %s: job #%s is no longer waiting (cancelled meanwhile)", context.job.id, job_id)
            return
        self._current = job.id
        await self._report(state="busy", current_job=job.id)
        run = asyncio.ensure_future(self.dispatcher.process(job))
        try:
            while not run.done():
                try:
                    await asyncio.shield(run)
                except asyncio.CancelledError:
                    # procrastinate cancels the task: a cancel request (stop, keep the model) or our shutdown.
                    user = context.abort_reason() is AbortReason.USER_REQUEST
                    log.info("Job #%s: %s", job.id, "cancel requested" if user else "handing back (shutdown)")
                    self.dispatcher.interrupt(hand_back=not user)
            run.result()
        finally:
            self._current = None
            with contextlib.suppress(Exception):
                await self._report(state="ready", current_job=None)

    # --- /status ---------------------------------------------------------------------------
    async def _report(self, **overrides: Any) -> None:
        status = self.engine.status()
        state = "busy" if self._current is not None else "ready"
        if status.state is not EngineState.READY:
            state = {EngineState.FAILED: "failed", EngineState.STOPPED: "stopped"}.get(status.state, "loading")
        fields: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpu": status.device_name,
            "plan": status.plan,
            "state": state,
            "note": status.plan_note,
            "current_job": self._current,
            "jobs_done": status.jobs_done,
            "jobs_failed": status.jobs_failed,
            "step_s": status.step_s,
            "model_loads": self.engine.model_loads,
            "max_area": self.engine.max_area() if status.state is EngineState.READY else None,
            "queues": ",".join(self._queues),
            "procrastinate_worker_id": self.procrastinate.worker_id if self.procrastinate else None,
            "started_at": self.started_at,
        }
        fields.update(overrides)
        await self.queue.report_worker(self.options.name, **fields)
