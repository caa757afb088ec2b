"""One job's images on the GPU thread: embeddings (with look-ahead), progress, cancel, speed.

The generator asks the plan manager for the runner in place, steps down to a leaner
plan before a job that would not fit (auto mode) or after one that ran out of memory
(then retries once), and keeps the measured step rate the ETA estimates use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from engine.img2img import StartImage, open_image, start_image
from engine.plan_manager import PlanManager
from engine.preview import Previewer
from engine.stepcache import DRAFT_THRESHOLD
from engine.types import EngineUnavailable, GenerationResult, JobCancelled, OutOfMemory, Prefetch, Progress
from jobrequest import (
    InvalidRequest,
    JobRequest,
    check_size,
    estimate_seconds,
    image_seed,
    img2img_steps,
    new_seed,
    uses_cfg,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


class Generator:
    def __init__(self, plans: PlanManager) -> None:
        self.plans = plans
        self.jobs_done = 0
        self.jobs_failed = 0
        self._step_s: float | None = None
        self._step_s_load = 0  # the plan placement (PlanManager.model_loads) the step rate was measured under
        self._upscaler: Any = None  # engine.upscaler.Upscaler, loaded at the first upscale job
        self._safety: Any = None  # engine.safety.SafetyChecker, loaded at start (load_safety) or the first job
        self._safety_error: EngineUnavailable | None = None  # why it could not load: every job fails with it

    # --- read from any thread ------------------------------------------------------------------
    @property
    def step_s(self) -> float | None:
        """Seconds per step at the native size, measured under the plan in place now (None before)."""
        return self._step_s if self._step_s_load == self.plans.model_loads else None

    @property
    def image_s(self) -> float | None:
        """Seconds per 50-step image at the native size under the plan in place, measured here (None before)."""
        step_s = self.step_s
        measured = self.plans.table.get(self.plans.plan_name or "")
        if step_s is None:
            return None
        return 50 * step_s + (measured.encode_s + measured.decode_s if measured is not None else 0.0)

    def check_fits(self, request: JobRequest) -> None:
        """What this model can make at all; every other rule was checked where the request came in."""
        check_size(request.width, request.height, self.plans.limits)

    def estimate_seconds(self, request: JobRequest) -> float:
        """Expected run time of a job, from this machine's measured step rate (else the plan table)."""
        step_s = self.step_s
        encode_decode = 0.0
        measured = self.plans.table.get(self.plans.plan_name or "")
        if step_s is None and measured is not None:
            step_s = measured.step_s
            encode_decode = measured.encode_s + measured.decode_s
        if step_s is None:
            step_s = 1.0
        # For image input, width × height is the size made (jobrequest.output_size), set where it came in.
        return estimate_seconds(request, step_s, encode_decode, self.plans.limits.native_size)

    # --- GPU thread ------------------------------------------------------------------------------
    def load_safety(self) -> Any:
        """The safety checker (SAFETY_MODEL), loaded once; None when the check is off. A model that cannot load
        raises EngineUnavailable, now and for every later job (no image goes out unchecked)."""
        model = self.plans.config.safety_model
        if model is None or self._safety is not None:
            return self._safety
        if self._safety_error is not None:
            raise self._safety_error
        import torch

        from engine.safety import SafetyChecker

        device = self.plans.device or torch.device("cpu")  # the model's device, once it is placed
        try:
            self._safety = SafetyChecker(model, device, self.plans.config.safety_threshold, _log_progress)
        except EngineUnavailable as exc:
            log.error("%s", exc)
            self._safety_error = exc
            raise
        return self._safety

    def generate(
        self,
        request: JobRequest,
        report: ProgressCallback,
        should_cancel: CancelCheck | None,
        holder: object,
        lookahead: list[Prefetch],
        start_image: bytes | None = None,
    ) -> GenerationResult:
        """Make the images of one job; retry once under a leaner plan if the GPU runs out of memory. The safety
        check looks at them before they are returned (`checked`), so nothing unchecked is stored or posted.
        `start_image` (the stored bytes of request.start_image) makes it image-to-image or an upscale."""
        import torch

        from engine.quant8 import KernelFailed
        from engine.runner import Cancelled

        self.plans.require_runner()
        seed = request.seed if request.seed is not None else new_seed()
        try:
            checker = self.load_safety()
        except EngineUnavailable:
            self._failed(holder)
            raise
        if request.upscale and start_image is not None and self.plans.config.upscaler_model is not None:
            return checked(self._upscale(request, start_image, seed, report, should_cancel, holder), checker)
        try:
            start = self._start(request, start_image)
        except Exception:
            self._failed(holder)
            raise
        if start is not None:
            request = replace(request, width=start.size[0], height=start.size[1])  # what is made: sizes, ETA
        notes = [note] if (note := self.plans.step_down_if_tight(request)) else []
        for attempt in (1, 2):
            try:
                result = self._make_images(request, seed, report, should_cancel, holder, lookahead, start)
            except Cancelled:
                self.release([holder])
                raise JobCancelled() from None
            except KernelFailed as exc:
                log.warning("The 8-bit matmul failed under plan %s", self.plans.plan_name, exc_info=True)
                note = self.plans.recover_from_kernel_failure(exc.kernel, str(exc.__cause__ or exc)[:200])
                if note is None:
                    self._failed(holder)
                    raise
                notes.append(note)
            except torch.OutOfMemoryError:
                log.warning("CUDA out of memory under plan %s", self.plans.plan_name, exc_info=True)
                note = self.plans.recover_from_oom(step_down=attempt == 1)
                if note is None:
                    self._failed(holder)
                    raise OutOfMemory(code="engine.oom", plan=self.plans.plan_name) from None
                notes.append(note)
            except Exception:
                self._failed(holder)
                raise
            else:
                result.notes = notes + result.notes
                self.jobs_done += 1
                return checked(result, checker)
        raise AssertionError("unreachable")

    def _start(self, request: JobRequest, data: bytes | None) -> StartImage | None:
        if data is None:
            if request.start_image is not None:
                raise InvalidRequest(code="request.start_image_missing")
            return None
        return start_image(request, data, self.plans.limits)

    def _upscale(
        self,
        request: JobRequest,
        data: bytes,
        seed: int,
        report: ProgressCallback,
        should_cancel: CancelCheck | None,
        holder: object,
    ) -> GenerationResult:
        """An upscale job with the configured upscaler model (loaded at the first such job, then kept)."""
        from engine.runner import Cancelled
        from engine.upscaler import Upscaler

        path = self.plans.config.upscaler_model
        started = time.perf_counter()

        def on_tile(done: int, total: int) -> None:
            if should_cancel is not None and should_cancel():
                raise Cancelled
            elapsed = time.perf_counter() - started
            report(Progress(done, total, 1, 1, elapsed, elapsed / done * (total - done)))

        try:
            if self._upscaler is None:
                self._upscaler = Upscaler(path, self.plans.device)
            image = self._upscaler.upscale(open_image(data), request.upscale, on_tile)
        except Cancelled:
            self.release([holder])
            raise JobCancelled() from None
        except Exception:
            self._failed(holder)
            raise
        self.jobs_done += 1
        self.release([holder])
        timings = {"upscale_s": time.perf_counter() - started, "total_s": time.perf_counter() - started}
        return GenerationResult(images=[image], seed=seed, plan=f"upscaler {path.name}", timings=timings)

    def release(self, holders: Iterable[object]) -> None:
        """Drop the embeddings these jobs held (finished, cancelled, purged)."""
        runner = self.plans.runner
        if runner is not None:
            for holder in holders:
                runner.embeddings.release(holder)

    def _failed(self, holder: object) -> None:
        self.jobs_failed += 1
        self.release([holder])

    def _make_images(
        self,
        request: JobRequest,
        seed: int,
        report: ProgressCallback,
        should_cancel: CancelCheck | None,
        holder: object,
        lookahead: list[Prefetch],
        start: StartImage | None,
    ) -> GenerationResult:
        from engine.runner import Cancelled

        runner = self.plans.require_runner()
        cfg = uses_cfg(request.guidance)
        texts = [request.prompt, request.negative_prompt] if cfg else [request.prompt]
        runner.embeddings.hold(holder, texts)
        for item in lookahead:
            runner.embeddings.hold(item.holder, list(item.texts))
        started = time.perf_counter()
        if not all(runner.embeddings.has(t) for t in texts):
            # One encoder visit for this job and the queued ones behind it; later jobs find theirs ready.
            runner.encode(texts + [t for item in lookahead for t in item.texts])
        encode_s = time.perf_counter() - started
        strength = 1.0 if start is None else start.strength
        total = img2img_steps(request.steps, strength) * request.count
        images, timings = [], []
        previewer = self._previewer(runner)
        for index in range(request.count):

            def on_step(step: int, steps: int, index: int = index) -> None:
                if should_cancel is not None and should_cancel():
                    raise Cancelled
                done = index * steps + step
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (total - done) if done else None
                preview = previewer.take() if previewer is not None else None
                report(Progress(done, total, index + 1, request.count, elapsed, eta, preview))

            if should_cancel is not None and should_cancel():
                raise Cancelled
            image, timing = runner.generate(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                steps=request.steps,
                guidance=request.guidance,
                seed=image_seed(seed, index),
                on_step=on_step,
                init_image=None if start is None else start.image,
                strength=strength,
                preview=previewer,
                cache_threshold=DRAFT_THRESHOLD if request.draft else None,
            )
            images.append(image)
            timings.append(timing)
        runner.embeddings.release(holder)
        self._record_speed(request, timings)
        summary = {
            "encode_s": encode_s + sum(t.encode_s for t in timings),
            "denoise_s": sum(t.denoise_s for t in timings),
            "decode_s": sum(t.decode_s for t in timings),
            "step_s": sum(t.denoise_s for t in timings) / max(1, sum(t.steps for t in timings)),
            "steady_step_s": sum((t.steady_step_s or t.step_s) for t in timings) / max(1, len(timings)),
            "total_s": time.perf_counter() - started,
        }
        if request.draft:
            summary["passes"] = sum(t.passes for t in timings)
            summary["skipped_passes"] = sum(t.skipped_passes for t in timings)
        return GenerationResult(images=images, seed=seed, plan=runner.plan.name, timings=summary)

    def _previewer(self, runner: Any) -> Previewer | None:
        """A previewer for one job, or None with PREVIEWS=off (or if the colour map could not be made)."""
        config = self.plans.config
        if not config.previews:
            return None
        try:
            return Previewer(runner.preview_map(config.preview_cache_dir))
        except Exception:
            log.warning("No live previews: the preview colour map could not be made", exc_info=True)
            return None

    def _record_speed(self, request: JobRequest, timings: list[Any]) -> None:
        """Smooth the measured seconds per step (scaled to the native size) into the ETA's rate: the rate of
        full steps, so a draft's cached steps do not count (the ETA divides by jobrequest.DRAFT_SPEEDUP)."""
        steps = sum(t.steps for t in timings)
        if not steps or request.draft:
            return
        area = request.width * request.height / (self.plans.limits.native_size**2)
        step_s = sum(t.denoise_s for t in timings) / steps / max(area, 1e-6)
        previous = self.step_s
        self._step_s = step_s if previous is None else 0.7 * previous + 0.3 * step_s
        self._step_s_load = self.plans.model_loads


def checked(result: GenerationResult, checker: Any) -> GenerationResult:
    """The result with the safety check's verdict on its images (`checker` None: the check is off)."""
    if checker is not None and result.images:
        started = time.perf_counter()
        result.flagged = any(checker.flags(result.images))
        result.timings["safety_s"] = time.perf_counter() - started
    return result


def _log_progress(message: str, fraction: float) -> None:
    log.info("Safety check: %s (%.0f%%)", message, 100 * fraction)
