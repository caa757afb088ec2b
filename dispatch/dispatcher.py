"""Feed queued jobs to the engine, one at a time, and record what happened.

The dispatcher is the only consumer of the local queue, and a cluster worker runs each of
its jobs through one too. It claims a job, renews its lease while the engine works (each
renewal also carries progress and brings back a cancel request), hands the PNGs to the
queue's result store, and marks the job done together with its outbox row. It never talks
to Discord, so a slow or failing Discord cannot stall the GPU.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from db.interface import JobSource
from db.models import Job
from db.results import UnsafeResult
from engine.png import encode_job_pngs
from engine.service import Engine, Prefetch
from engine.types import ENGINE_TEXTS, EngineError, EngineUnavailable, GenerationResult, JobCancelled, Progress
from jobrequest import InvalidRequest, JobRequest, strength_used, uses_cfg

log = logging.getLogger(__name__)

# Stored as the job's error: shown if the job finally fails, so it must not promise a retry.
DISK_FULL = ENGINE_TEXTS["engine.disk_full"]
DISK_FULL_HOLD_S = 30.0  # no new job starts for this long after a full disk, so jobs don't burn their attempts
RECORD_RETRY_MAX_S = 30.0


@dataclass
class _Running:
    job: Job
    cancel: threading.Event
    progress: Progress | None = None
    handing_back: bool = False
    first_step_at: float | None = None
    preview: bytes | None = None  # the newest live preview not yet sent with a heartbeat


class Dispatcher:
    def __init__(
        self,
        source: JobSource,
        engine: Engine,
        *,
        worker_id: str,
        model_id: str,
        lease_s: float = 60.0,
        heartbeat_s: float = 1.0,
        lookahead: int = 8,
        idle_poll_s: float = 2.0,
        dispatch_timings: bool = False,
        check: Callable[[JobRequest], object] | None = None,
    ) -> None:
        """`dispatch_timings`: also record claim → engine start and claim → first step in each job's
        timings (`claim_to_engine_s`, `claim_to_first_step_s`), which the scale-out benchmark reads.
        `check`: where this process is an edge of its own (a cluster worker, whose jobs were checked against
        the bot machine's idea of the model), each job's one check against this engine's model before it
        runs (`jobrequest.check`); a request it refuses fails with that sentence."""
        self.source = source
        self.engine = engine
        self.worker_id = worker_id
        self.model_id = model_id
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.lookahead = lookahead
        self.idle_poll_s = idle_poll_s
        self.dispatch_timings = dispatch_timings
        self.check = check
        self._stopping = asyncio.Event()
        self._running: _Running | None = None
        self._task: asyncio.Task[None] | None = None
        self._prefetched: set[int] = set()
        self._hold_claims_until = 0.0

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="dispatcher")
        return self._task

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop claiming; let the running job finish within grace_s, else hand it back to the queue."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except TimeoutError:
            running = self._running
            if running is not None:
                log.info("Handing job #%s back to the queue for the next start", running.job.id)
                running.handing_back = True
                running.cancel.set()
            try:
                await asyncio.wait_for(self._task, 30)
            except TimeoutError:
                self._task.cancel()

    def interrupt(self, *, hand_back: bool) -> None:
        """Stop the running job at its next step: cancelled, or (hand_back) put back in the queue.

        For a caller that learns of a cancel or a shutdown before the next heartbeat would
        (a cluster worker hears procrastinate's abort notification); the model stays loaded."""
        running = self._running
        if running is not None:
            running.handing_back = running.handing_back or hand_back
            running.cancel.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.engine.ready or time.monotonic() < self._hold_claims_until:
                    await self._sleep(1.0)
                    continue
                job = await self.source.claim_next(self.worker_id, self.lease_s)
                if job is None:
                    await self.source.wait_for_change(self.idle_poll_s)
                    continue
                await self.process(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Dispatcher loop error; retrying in 2 s")
                await self._sleep(2.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    # --- one job ------------------------------------------------------------------------------
    async def process(self, job: Job) -> None:
        """Run one claimed job to its recorded end: done, failed, cancelled or handed back."""
        claimed_at = job.started_at or time.time()
        running = _Running(job=job, cancel=threading.Event())
        self._running = running
        beat = asyncio.create_task(self._heartbeat(running), name=f"heartbeat-{job.id}")
        try:
            prefetch = await self._lookahead(job)
            engine_at = time.time()
            try:
                if self.check is not None:
                    self.check(job.request)
                result = await self.engine.generate(
                    job.request,
                    on_progress=lambda p: self._on_progress(running, p),
                    should_cancel=running.cancel.is_set,
                    holder=job.id,
                    prefetch=prefetch,
                    start_image=await self._start_image(job),
                )
            except JobCancelled:
                if running.handing_back:
                    await self._record(job, "the hand-back", lambda: self.source.release(job.id, self.worker_id))
                else:
                    await self._record(job, "the cancel", lambda: self.source.mark_cancelled(job.id, self.worker_id))
                return
            except (InvalidRequest, EngineUnavailable, EngineError) as exc:
                error, retry = str(exc), isinstance(exc, EngineUnavailable)
                if retry:
                    log.warning("Job #%s: engine unavailable: %s", job.id, exc)
                await self._record(
                    job, "the failure", lambda: self.source.fail(job.id, self.worker_id, error, retry=retry)
                )
                return
            except Exception:
                log.exception("Job #%s failed", job.id)
                error = ENGINE_TEXTS["engine.unexpected"].format(id=job.id)
                await self._record(job, "the failure", lambda: self.source.fail(job.id, self.worker_id, error))
                return
            for note in result.notes:
                log.warning("Job #%s: %s", job.id, note)
            if self.dispatch_timings:
                result.timings["claim_to_engine_s"] = engine_at - claimed_at
                result.timings["claim_to_first_step_s"] = (running.first_step_at or engine_at) - claimed_at
            await self._store(job, result)
        finally:
            beat.cancel()
            self._running = None
            self._prefetched.discard(job.id)

    async def _start_image(self, job: Job) -> bytes | None:
        """The stored bytes of the job's start image (None for text-to-image): a result of its parent job (Vary,
        Remix, Upscale start from it by reference), else an upload in the input store. A missing one fails
        the job."""
        digest = job.request.start_image
        if digest is None:
            return None
        if job.parent_job_id is not None and (data := await self._parent_result(job.parent_job_id, digest)):
            return data
        try:
            return await self.source.inputs.get(digest)
        except FileNotFoundError:
            log.warning("Job #%s: start image %s is not stored", job.id, digest)
            raise EngineError(code="engine.start_image_gone") from None

    async def _parent_result(self, parent_id: int, digest: str) -> bytes | None:
        """The parent job's result image with this SHA-256, or None (pruned, deleted, or not one of its)."""
        parent = await self.source.get_job(parent_id)
        if parent is None or not parent.result_paths:
            return None
        try:
            files = await self.source.results.read(parent)
        except (FileNotFoundError, UnsafeResult):
            return None
        hashes = await asyncio.to_thread(lambda: [hashlib.sha256(f.data).hexdigest() for f in files])
        return next((f.data for f, h in zip(files, hashes, strict=True) if h == digest), None)

    @staticmethod
    def _on_progress(running: _Running, progress: Progress) -> None:
        if running.first_step_at is None:
            running.first_step_at = time.time()
        running.progress = progress
        if progress.preview is not None:
            running.preview = progress.preview

    async def _store(self, job: Job, result: GenerationResult) -> None:
        request = job.request
        parameters: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": result.seed,
            "steps": request.steps,
            "guidance": request.guidance,
            "width": result.images[0].width if result.images else request.width,  # img2img: the image's fit
            "height": result.images[0].height if result.images else request.height,
            "model": self.model_id,
            "plan": result.plan,
            "job_id": job.id,
        }
        if request.start_image is not None:
            parameters.update(start_image=request.start_image, strength=strength_used(request), upscale=request.upscale)
        if request.draft:
            parameters["draft"] = True
        try:
            pngs = await asyncio.to_thread(encode_job_pngs, result.images, parameters)
            paths = await self.source.results.save(job.id, pngs)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = exc.strerror or str(exc)
            message = DISK_FULL if full else ENGINE_TEXTS["engine.save_failed"].format(reason=reason)
            log.error(
                "Job #%s: could not save the images in %s (%s); it goes back in the queue (while it has tries left)"
                " and no job starts for %.0f s",
                job.id,
                self.source.results.where,
                exc,
                DISK_FULL_HOLD_S,
            )
            await self._record(
                job, "the failure", lambda: self.source.fail(job.id, self.worker_id, message, retry=True)
            )
            # Give the owner time to free space instead of burning the job's attempts.
            self._hold_claims_until = time.monotonic() + DISK_FULL_HOLD_S
            return
        # A flagged result is marked first: its post, queued by complete, must never go out unmarked.
        marked = not result.flagged or await self._record(
            job, "the safety mark", lambda: self.source.mark_flagged(job.id, self.worker_id)
        )
        done = marked and await self._record(
            job,
            "the result",
            lambda: self.source.complete(
                job.id,
                self.worker_id,
                result_paths=paths,
                seed_used=result.seed,
                plan=result.plan,
                timings={k: float(v) for k, v in result.timings.items()},
            ),
        )
        if done is False:
            log.warning("Job #%s finished after its lease was lost; the result is discarded", job.id)

    async def _record(self, job: Job, what: str, write: Callable[[], Awaitable[bool]]) -> bool | None:
        """Write a job's outcome. If the database refuses (disk full, I/O error), keep trying: giving up
        would leave the job marked running until the next restart. When stopping, leave it to that restart
        (returns None then)."""
        delay = 1.0
        while True:
            try:
                return await write()
            except Exception as exc:
                if self._stopping.is_set():
                    log.error("Job #%s: could not record %s (%s); the next start requeues it", job.id, what, exc)
                    return None
                log.error("Job #%s: could not record %s (%s); trying again in %.0f s", job.id, what, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_S)

    async def _lookahead(self, job: Job) -> list[Prefetch]:
        """Queued jobs that will run next: their prompts ride along in this job's encoder visit."""
        if self.lookahead <= 0:
            return []
        upcoming = await self.source.peek_next(self.lookahead)
        wanted = {j.id for j in upcoming}
        stale = self._prefetched - wanted - {job.id}
        if stale:
            await self.engine.release(stale)
        self._prefetched = wanted | {job.id}
        return [
            Prefetch(j.id, (r.prompt, r.negative_prompt) if uses_cfg(r.guidance) else (r.prompt,))
            for j in upcoming
            if (r := j.request)
        ]

    async def _heartbeat(self, running: _Running) -> None:
        job = running.job
        while True:
            await asyncio.sleep(self.heartbeat_s)
            progress, preview, running.preview = running.progress, running.preview, None
            try:
                beat = await self.source.heartbeat(
                    job.id,
                    self.worker_id,
                    self.lease_s,
                    step=progress.step if progress else None,
                    total=progress.total if progress else None,
                    preview=preview,
                )
            except Exception:
                log.warning("Heartbeat for job #%s failed", job.id, exc_info=True)
                continue
            if beat.cancel_requested or not beat.alive:
                running.cancel.set()
