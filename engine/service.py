"""The engine as the rest of the bot sees it: a small facade over the GPU thread, the plan
manager and the generator.

`Engine` implements `engine.types.EngineView`. Importing this module stays cheap for
the Discord side: torch is imported on the GPU thread only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from db.workers import WorkerInfo
from engine import plans as plan_catalog
from engine.generator import CancelCheck, Generator, ProgressCallback
from engine.gpu_thread import GpuThread
from engine.plan_manager import PlanManager
from engine.plans import Measurement
from engine.types import (
    EngineConfig,
    EngineState,
    EngineStatus,
    EngineUnavailable,
    GenerationResult,
    PlanRow,
    PlanSwitchFailed,
    Prefetch,
    Progress,
)
from jobrequest import JobRequest, ModelLimits

__all__ = ["Engine", "EngineConfig", "Prefetch"]


class Engine:
    def __init__(self, config: EngineConfig, table: dict[str, Measurement] | None = None) -> None:
        self.config = config
        self.plan_manager = PlanManager(config, table if table is not None else plan_catalog.load_table())
        self.generator = Generator(self.plan_manager)
        self._thread = GpuThread()
        self._started_at = time.time()
        self._current_job: int | None = None

    @property
    def limits(self) -> ModelLimits:
        return self.plan_manager.limits

    @property
    def model_loads(self) -> int:
        """Times weights were placed on the device: 1 unless the plan changed."""
        return self.plan_manager.model_loads

    @property
    def ready(self) -> bool:
        return self.plan_manager.state is EngineState.READY

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the GPU thread and begin loading in the background (the bot comes online meanwhile)."""
        if self._thread.started:
            return
        self._thread.start()
        self._thread.submit(lambda: self.plan_manager.load(self.plan_manager.requested_mode))
        # Downloaded on the first start, like the model; a failure is logged and every job fails with it.
        self._thread.submit(self.generator.load_safety)

    async def stop(self) -> None:
        if not self._thread.started:
            return
        self._thread.submit(self.plan_manager.stop_streaming)  # after the jobs already submitted
        await self._thread.stop()
        self.plan_manager.state = EngineState.STOPPED

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the first load has finished, loaded or failed (see status().error)."""
        return await asyncio.to_thread(self.plan_manager.loaded.wait, timeout)

    # --- what the cogs read -----------------------------------------------------------------------
    def status(self) -> EngineStatus:
        plans = self.plan_manager
        return EngineStatus(
            state=plans.state,
            requested_mode=plans.requested_mode,
            plan=plans.plan_name,
            plan_note=plans.plan_note,
            load_message=plans.load_message,
            load_fraction=plans.load_fraction,
            device_name=plans.device_name,
            free_vram_gib=plans.free_gib(),
            step_s=self.generator.step_s,
            jobs_done=self.generator.jobs_done,
            jobs_failed=self.generator.jobs_failed,
            started_at=self._started_at,
            error=plans.error,
            current_job=self._current_job,
            plan_reason=plans.auto_reason,
        )

    def estimate_seconds(self, request: JobRequest) -> float:
        return self.generator.estimate_seconds(request)

    def plan_rows(self) -> list[PlanRow]:
        plan, seconds = self.plan_manager.plan_name, self.generator.image_s
        return self.plan_manager.plan_rows({plan: seconds} if plan and seconds else None)

    def workers(self) -> list[WorkerInfo]:
        return []  # one machine: its GPU is this engine, shown by status()

    def max_area(self) -> int:
        return self.plan_manager.max_area()

    # --- commands ---------------------------------------------------------------------------------
    async def switch_plan(self, mode: str) -> str:
        """Apply a memory plan (or auto) between jobs. Returns a sentence for the admin."""
        if mode != "auto" and mode not in plan_catalog.PLANS:
            choices = ", ".join(plan_catalog.PLANS)
            raise PlanSwitchFailed(f"Unknown memory plan {mode!r}. Choose auto or one of: {choices}.")
        plans = self.plan_manager
        previous_mode, plans.requested_mode = plans.requested_mode, mode
        try:
            return await self._thread.call(lambda: plans.switch(mode))
        except BaseException:
            plans.requested_mode = previous_mode
            raise

    async def generate(
        self,
        request: JobRequest,
        *,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        holder: object | None = None,
        prefetch: Iterable[Prefetch] = (),
        start_image: bytes | None = None,
    ) -> GenerationResult:
        """Make the images of one job. The request was validated where it came in; raises EngineError
        subclasses with user-facing messages (InvalidRequest if this model cannot make that size).
        With `start_image` (the bytes of request.start_image) the job is image-to-image, made at the
        fitted size of that image (jobrequest.fit_size), or an upscale of it."""
        if start_image is None:
            self.generator.check_fits(request)
        if self.plan_manager.state is EngineState.FAILED:
            raise EngineUnavailable(code="engine.unavailable", reason=self.plan_manager.error)
        loop = asyncio.get_running_loop()

        def report(progress: Progress) -> None:
            if on_progress is not None:
                loop.call_soon_threadsafe(on_progress, progress)

        job = holder if isinstance(holder, int) and not isinstance(holder, bool) else None
        holder = holder if holder is not None else object()
        lookahead = list(prefetch)
        self._current_job = job
        try:
            return await self._thread.call(
                lambda: self.generator.generate(request, report, should_cancel, holder, lookahead, start_image)
            )
        finally:
            if self._current_job == job:
                self._current_job = None

    async def release(self, holders: Iterable[object]) -> None:
        """Drop look-ahead embeddings of jobs that will not run (cancelled, purged)."""
        held = list(holders)
        await self._thread.call(lambda: self.generator.release(held))
