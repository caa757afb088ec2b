"""The engine as the bot sees it when the GPUs are in other machines (QUEUE_BACKEND=postgres).

The cogs ask the engine (`engine.types.EngineView`) for its status, its limits and an estimate
per job; with remote workers the answers come from what the workers report in the database.
This object answers those questions from a snapshot refreshed every couple of seconds, so the
synchronous `status()` the cogs call never touches the network. It also decides what is true
of each worker: one that went silent is offline, and one whose job the queue took back is not
busy with it. No torch, no procrastinate here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from db.workers import WorkerInfo
from engine import plans as plan_catalog
from engine.rules import limits_for_model
from engine.types import EngineState, EngineStatus, PlanRow, PlanSwitchFailed
from jobrequest import COGVIEW4_LIMITS, JobRequest, ModelLimits, estimate_seconds

log = logging.getLogger(__name__)

PER_MACHINE = (
    "Each GPU machine picks its own memory plan: set MEMORY_MODE in that machine's .env and restart its "
    "worker (python -m engine worker). /status lists the plan each one runs."
)
NO_WORKER = "Waiting for a GPU worker to connect (python -m engine worker on a GPU machine)"


class ClusterView:
    """`EngineView` of the remote GPU workers, from their reports in the database."""

    def __init__(
        self,
        list_workers: Callable[[], Awaitable[list[WorkerInfo]]],
        model_id: str,
        *,
        refresh_s: float = 2.0,
        stale_s: float = 60.0,
        lost_s: float = 5.0,
    ) -> None:
        """`list_workers`: the queue's worker reports, in which `current_job` is set only while that job
        still runs under the worker's name. `stale_s`: a worker silent this long is offline (it reports
        every few seconds). `lost_s`: a worker still saying busy after the queue took its job back, and
        silent this long, is offline too (a live one says ready right after recording its job)."""
        self._list_workers = list_workers
        self.model_id = model_id
        self.refresh_s = refresh_s
        self.stale_s = stale_s
        self.lost_s = lost_s
        self.limits: ModelLimits = COGVIEW4_LIMITS
        self.table = plan_catalog.load_table()
        self._workers: list[WorkerInfo] = []
        self._started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self.limits = await asyncio.to_thread(limits_for_model, self.model_id)
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="cluster-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        self._workers = await self._list_workers()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("Reading the GPU workers' status failed: %s", exc)

    # --- what the cogs ask -------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """The GPU workers as they are now, not as they last said they were."""
        now = time.time()
        return [self._as_seen(w, now) for w in self._workers]

    def _as_seen(self, worker: WorkerInfo, now: float) -> WorkerInfo:
        if not worker.online(now, self.stale_s):
            return replace(worker, state="offline", current_job=None)
        if worker.state == "busy" and worker.current_job is None:
            # Its job is no longer its own: it recorded the result a moment ago, or it died and the queue
            # gave the job to another worker (after more silence than a live worker ever keeps).
            return replace(worker, state="offline" if now - worker.last_seen > self.lost_s else "ready")
        return worker

    def online(self) -> list[WorkerInfo]:
        return [w for w in self.workers() if w.state != "offline"]

    @property
    def ready(self) -> bool:
        return any(w.state in ("ready", "busy") for w in self.online())

    async def wait_ready(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    def status(self) -> EngineStatus:
        online = self.online()
        serving = [w for w in online if w.state in ("ready", "busy")]
        loading = [w for w in online if w.state in ("starting", "loading")]
        if serving:
            state, message = EngineState.READY, f"{len(serving)} GPU worker(s) ready"
        elif loading:
            state, message = EngineState.LOADING, f"{len(loading)} GPU worker(s) loading the model"
        else:
            state, message = EngineState.STARTING, NO_WORKER
        plans = sorted({w.plan for w in serving if w.plan})
        busy = sum(w.state == "busy" for w in serving)
        return EngineStatus(
            state=state,
            requested_mode="auto",
            plan=", ".join(plans) or None,
            plan_note=None,
            load_message=message,
            load_fraction=0.0,
            device_name=f"{len(online)} GPU worker(s) online, {busy} busy",
            free_vram_gib=None,
            step_s=self._step_s(serving),
            jobs_done=sum(w.jobs_done for w in self._workers),
            jobs_failed=sum(w.jobs_failed for w in self._workers),
            started_at=self._started_at,
            error=None,
        )

    @staticmethod
    def _step_s(workers: list[WorkerInfo]) -> float | None:
        rates = [w.step_s for w in workers if w.step_s]
        return statistics.median(rates) if rates else None

    def estimate_seconds(self, request: JobRequest) -> float:
        """One job's run time on a typical worker, divided by the workers sharing the queue."""
        serving = [w for w in self.online() if w.state in ("ready", "busy")]
        step_s = self._step_s(serving)
        encode_decode = 0.0
        if step_s is None:
            measured = [self.table[w.plan] for w in serving if w.plan in self.table]
            if measured:
                step_s = statistics.median(m.step_s for m in measured)
                encode_decode = statistics.median(m.encode_s + m.decode_s for m in measured)
            else:
                step_s = 1.0
        return estimate_seconds(request, step_s, encode_decode, self.limits.native_size) / max(1, len(serving))

    def plan_rows(self) -> list[PlanRow]:
        return plan_catalog.plan_rows(self.table, has_gpu=None)  # each worker checks its own machine

    async def switch_plan(self, mode: str) -> str:
        raise PlanSwitchFailed(PER_MACHINE)
