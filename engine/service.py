"""The engine: one thread owns the pipeline; the asyncio side talks to it through awaitables.

Every call (load, generate, switch plan, look-ahead encode) is a command run in
order on the GPU thread, so a plan switch requested mid-job naturally takes
effect between jobs, and the event loop never blocks on CUDA. Progress crosses
back with `loop.call_soon_threadsafe`. Torch is imported on the thread only, so
importing this module stays cheap for the Discord side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from db.models import MAX_SEED, JobRequest
from engine import plans as plan_catalog
from engine.plans import Measurement, PlanError, Resolved
from engine.rules import COGVIEW4_LIMITS, ModelLimits, limits_from_folder, validate_request
from engine.types import (
    EngineError,
    EngineState,
    EngineStatus,
    EngineUnavailable,
    GenerationResult,
    JobCancelled,
    OutOfMemory,
    PlanRow,
    PlanSwitchFailed,
    Progress,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class EngineConfig:
    model_id: str
    memory_mode: str = "auto"
    device: str = "auto"  # auto | cuda | cpu
    torch_compile: bool = False
    step_delay_s: float = 0.0
    memory_cap_gib: float | None = None  # benchmarks: behave like a smaller card

    @classmethod
    def from_settings(cls, settings: Any) -> EngineConfig:
        return cls(
            model_id=settings.model_id,
            memory_mode=settings.memory_mode,
            device=settings.device,
            torch_compile=settings.torch_compile,
            step_delay_s=settings.engine_step_delay,
        )


@dataclass(frozen=True)
class Prefetch:
    """Texts a queued job will need, so the look-ahead can encode them in the same encoder visit."""

    holder: object
    texts: tuple[str, ...]


class Engine:
    def __init__(self, config: EngineConfig, table: dict[str, Measurement] | None = None) -> None:
        self.config = config
        self.table = table if table is not None else plan_catalog.load_table()
        self.limits: ModelLimits = self._early_limits(config.model_id)
        self._commands: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._state = EngineState.STARTING
        self._requested_mode = config.memory_mode
        self._plan_note: str | None = None
        self._load_message = "Waiting to load the model"
        self._load_fraction = 0.0
        self._error: str | None = None
        self._ready = threading.Event()
        self._started_at = time.time()
        self._jobs_done = 0
        self._jobs_failed = 0
        self._step_s: float | None = None
        self._device_name = "unknown"
        self.model_loads = 0  # times weights were placed on the device: 1 unless the plan changed
        # Set on the GPU thread only:
        self._runner: Any = None
        self._components: Any = None
        self._device: Any = None
        self._folder: Path | None = None
        # Test hooks: replace to simulate a smaller card.
        self.free_vram_probe: Callable[[], float | None] | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the GPU thread and begin loading in the background (the bot comes online meanwhile)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._thread_main, name="gpu-engine", daemon=True)
        self._thread.start()
        self._submit(lambda: self._load(self._requested_mode))

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join, 30)
        self._state = EngineState.STOPPED

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self._ready.wait, timeout)

    @property
    def ready(self) -> bool:
        return self._state is EngineState.READY

    def _thread_main(self) -> None:
        while True:
            command = self._commands.get()
            if command is None:
                return
            fn, future = command
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # the thread survives every error a job can raise
                future.set_exception(exc)

    def _submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        if self._thread is None:
            raise EngineUnavailable("The engine is not started.")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, future))
        return future

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._submit(fn))

    # --- status ---------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        return EngineStatus(
            state=self._state,
            requested_mode=self._requested_mode,
            plan=self._runner.plan.name if self._runner is not None else None,
            plan_note=self._plan_note,
            load_message=self._load_message,
            load_fraction=self._load_fraction,
            device_name=self._device_name,
            free_vram_gib=self._free_gib(),
            step_s=self._step_s,
            jobs_done=self._jobs_done,
            jobs_failed=self._jobs_failed,
            started_at=self._started_at,
            error=self._error,
        )

    def estimate_seconds(self, request: JobRequest) -> float:
        """Expected run time of a job, from this machine's measured step rate (else the plan table)."""
        step_s = self._step_s
        encode_decode = 0.0
        plan = self._runner.plan.name if self._runner is not None else None
        if step_s is None and plan in self.table:
            step_s = self.table[plan].step_s
            encode_decode = self.table[plan].encode_s + self.table[plan].decode_s
        if step_s is None:
            step_s = 1.0
        area = request.width * request.height / (self.limits.native_size**2)
        return request.count * (request.steps * step_s * area + encode_decode)

    def plan_rows(self) -> list[PlanRow]:
        return plan_catalog.plan_rows(self.table, has_gpu=self._device is not None and self._device.type == "cuda")

    def _free_gib(self) -> float | None:
        if self.free_vram_probe is not None:
            return self.free_vram_probe()
        if self._device is None or self._device.type != "cuda":
            return None
        from engine.device import free_gib

        return free_gib()

    @staticmethod
    def _early_limits(model_id: str) -> ModelLimits:
        folder = Path(model_id).expanduser()
        if (folder / "transformer" / "config.json").exists():
            try:
                return limits_from_folder(folder)
            except (OSError, ValueError, KeyError):
                log.warning("Could not read limits from %s; using CogView4-6B's", folder, exc_info=True)
        return COGVIEW4_LIMITS

    # --- loading and plans (GPU thread) ------------------------------------------------------
    def _pick_device(self) -> Any:
        from engine.device import configure_allocator

        configure_allocator()
        import torch

        if self.config.device == "cpu" or (self.config.device == "auto" and not torch.cuda.is_available()):
            self._device_name = "CPU"
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise EngineUnavailable(
                "DEVICE=cuda but PyTorch sees no CUDA GPU. Install the CUDA build of torch "
                "(see README → Requirements) or set DEVICE=auto."
            )
        from engine.device import set_memory_cap

        set_memory_cap(self.config.memory_cap_gib)
        self._device_name = torch.cuda.get_device_name(0)
        return torch.device("cuda", 0)

    def _resolve(self, mode: str) -> Resolved:
        has_gpu = self._device.type == "cuda"
        if mode == "auto":
            return plan_catalog.choose_auto(
                self._free_gib() if has_gpu else None, self.table, allow_compile=self.config.torch_compile
            )
        return plan_catalog.resolve(mode, has_gpu=has_gpu)

    def _load(self, mode: str) -> None:
        from engine.loader import resolve_model_folder

        self._state = EngineState.LOADING
        try:
            self._device = self._pick_device()
            self._folder = resolve_model_folder(self.config.model_id, self._on_load_progress)
            self.limits = limits_from_folder(self._folder)
            resolved = self._resolve(mode)
            self._install(resolved, allow_step_down=True)
        except EngineError as exc:
            self._fail_load(str(exc))
        except Exception as exc:
            log.exception("Loading the model failed")
            self._fail_load(f"Loading the model failed: {exc.__class__.__name__}: {exc}")
        else:
            self._state = EngineState.READY
            self._error = None
            self._ready.set()

    def _fail_load(self, message: str) -> None:
        self._state = EngineState.FAILED
        self._error = message
        self._load_message = message
        self._ready.set()

    def _on_load_progress(self, message: str, fraction: float) -> None:
        self._load_message = message
        self._load_fraction = fraction

    def _install(self, resolved: Resolved, *, allow_step_down: bool) -> None:
        """Load (reusing matching weights) and place the plan; step down on OOM at load."""
        import torch

        plan = resolved.plan
        notes = [resolved.note] if resolved.note else []
        while True:
            try:
                self._place(plan)
                break
            except torch.OutOfMemoryError:
                log.warning("Out of GPU memory while loading plan %s", plan.name, exc_info=True)
                self._teardown()
                leaner = self._leaner(plan.name)
                if not allow_step_down or not leaner:
                    raise OutOfMemory(
                        f"The GPU ran out of memory while loading plan {plan.name}. Close other GPU programs "
                        "or pick a leaner plan with /memory."
                    ) from None
                notes.append(f"Ran out of GPU memory loading {plan.name}; using {leaner[0]} instead.")
                plan = plan_catalog.PLANS[leaner[0]]
        self._plan_note = " ".join(notes) or None
        if self._plan_note:
            log.warning("%s", self._plan_note)

    def _place(self, plan: Any) -> None:
        from diffusers import CogView4Pipeline

        from engine.loader import load_components
        from engine.placement import apply_placement, strip_placement
        from engine.runner import Runner, RunnerOptions

        old_runner = self._runner
        reloading_te = self._components is None or self._components.text_encoder_quant != plan.text_encoder
        embeddings = old_runner.embeddings if old_runner is not None and not reloading_te else None
        if old_runner is not None:
            if old_runner.residency is not None:
                old_runner.residency.strip()
            strip_placement(old_runner.pipe)
            # Drop the old pipeline so weights being replaced can be freed before the new ones load.
            self._runner = old_runner = None
        assert self._folder is not None
        self._components = load_components(
            self._folder, plan, self._device, progress=self._on_load_progress, reuse=self._components
        )
        c = self._components
        pipe = CogView4Pipeline(
            tokenizer=c.tokenizer,
            text_encoder=c.text_encoder,
            vae=c.vae,
            transformer=c.transformer,
            scheduler=c.scheduler,
        )
        residency = apply_placement(pipe, plan, self._device)
        if plan.fast:
            from engine.attention import install

            install(c.transformer)
        if plan.fast and self.config.torch_compile and self._device.type == "cuda":
            # Regional compilation: the 28 blocks share one compiled graph, so compiling takes
            # seconds instead of minutes; the first image pays it, once per process.
            import torch._dynamo

            # Static shapes per (text bucket, image size): a few compiles, each reused for good.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
            for block in c.transformer.transformer_blocks:
                block.compile(dynamic=False)
        options = RunnerOptions(
            step_delay_s=self.config.step_delay_s, batched_cfg=plan.fast, text_bucket=64 if plan.fast else 0
        )
        runner = Runner(pipe, plan, self._device, options, residency=residency)
        if plan.fast and self.config.torch_compile and self._device.type == "cuda":
            self._on_load_progress("Compiling the model for this GPU (once per start)…", 0.97)
            runner.warm_up(self.limits.native_size)
        if embeddings is not None:
            runner.embeddings = embeddings  # same encoder weights: the embeddings stay valid
        self._runner = runner
        self._step_s = None
        self.model_loads += 1

    def _teardown(self) -> None:
        from engine.device import release_memory

        self._runner = None
        self._components = None
        release_memory()

    def _leaner(self, current: str) -> list[str]:
        has_gpu = self._device is not None and self._device.type == "cuda"
        result = []
        for name in plan_catalog.leaner_plans(current, self.table):
            try:
                plan_catalog.resolve(name, has_gpu=has_gpu)
            except PlanError:
                continue
            result.append(name)
        return result

    # --- switching ---------------------------------------------------------------------------
    async def switch_plan(self, mode: str) -> str:
        """Apply a memory plan (or auto) between jobs. Returns a sentence for the admin."""
        if mode != "auto" and mode not in plan_catalog.PLANS:
            choices = ", ".join(plan_catalog.PLANS)
            raise PlanSwitchFailed(f"Unknown memory plan {mode!r}. Choose auto or one of: {choices}.")
        previous_mode, self._requested_mode = self._requested_mode, mode
        try:
            return await self._call(lambda: self._switch(mode))
        except BaseException:
            self._requested_mode = previous_mode
            raise

    def _switch(self, mode: str) -> str:
        if self._device is None or self._folder is None:
            self._load(mode)
            if self._state is not EngineState.READY:
                raise PlanSwitchFailed(self._error or "The model failed to load.")
            return f"Loaded with plan {self._runner.plan.name}."
        try:
            resolved = self._resolve(mode)
        except PlanError as exc:
            raise PlanSwitchFailed(str(exc)) from None
        previous = self._runner.plan if self._runner is not None else None
        if previous is not None and previous.name == resolved.plan.name:
            return f"Already using plan {previous.name}." + (f" {resolved.note}" if resolved.note else "")
        self._state = EngineState.SWITCHING
        try:
            self._install(resolved, allow_step_down=False)
        except Exception as exc:
            log.exception("Switching to %s failed", resolved.plan.name)
            reason = str(exc) if isinstance(exc, EngineError) else f"{exc.__class__.__name__}: {exc}"
            if previous is None:
                self._state = EngineState.FAILED
                raise PlanSwitchFailed(f"Could not switch to {resolved.plan.name}: {reason}") from None
            try:
                self._install(Resolved(previous), allow_step_down=True)
            except Exception:
                log.exception("Falling back to %s failed too", previous.name)
                self._state = EngineState.FAILED
                self._error = f"Switching to {resolved.plan.name} failed and {previous.name} could not be restored."
                raise PlanSwitchFailed(self._error) from None
            self._state = EngineState.READY
            raise PlanSwitchFailed(
                f"Could not switch to {resolved.plan.name}: {reason}. Still using {self._runner.plan.name}."
            ) from None
        self._state = EngineState.READY
        message = f"Now using plan {self._runner.plan.name}."
        return message + (f" {self._plan_note}" if self._plan_note else "")

    # --- generation ------------------------------------------------------------------------
    async def generate(
        self,
        request: JobRequest,
        *,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        holder: object | None = None,
        prefetch: Iterable[Prefetch] = (),
    ) -> GenerationResult:
        """Make the images of one job. Raises EngineError subclasses with user-facing messages."""
        validate_request(request, self.limits)
        if self._state is EngineState.FAILED:
            raise EngineUnavailable(f"The image engine is not available: {self._error}")
        loop = asyncio.get_running_loop()

        def report(progress: Progress) -> None:
            if on_progress is not None:
                loop.call_soon_threadsafe(on_progress, progress)

        holder = holder if holder is not None else object()
        lookahead = list(prefetch)
        return await self._call(lambda: self._generate(request, report, should_cancel, holder, lookahead))

    async def release(self, holders: Iterable[object]) -> None:
        """Drop look-ahead embeddings of jobs that will not run (cancelled, purged)."""
        held = list(holders)

        def drop() -> None:
            if self._runner is not None:
                for holder in held:
                    self._runner.embeddings.release(holder)

        await self._call(drop)

    def held_embeddings(self) -> int:
        return len(self._runner.embeddings) if self._runner is not None else 0

    def _require_runner(self) -> Any:
        if self._state is EngineState.FAILED or self._runner is None:
            raise EngineUnavailable(f"The image engine is not available: {self._error or 'not loaded'}")
        return self._runner

    def _generate(
        self,
        request: JobRequest,
        report: ProgressCallback,
        should_cancel: CancelCheck | None,
        holder: object,
        lookahead: list[Prefetch],
    ) -> GenerationResult:
        import torch

        from engine.runner import Cancelled

        self._require_runner()
        seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED)
        notes: list[str] = []
        self._step_down_if_tight(request, notes)
        for attempt in (1, 2):
            try:
                result = self._make_images(request, seed, report, should_cancel, holder, lookahead)
                result.notes = notes + result.notes
                self._jobs_done += 1
                return result
            except Cancelled:
                self._runner.embeddings.release(holder)
                raise JobCancelled() from None
            except torch.OutOfMemoryError:
                log.warning("CUDA out of memory under plan %s", self._runner.plan.name, exc_info=True)
                from engine.device import release_memory

                release_memory()
                leaner = self._leaner(self._runner.plan.name)
                if attempt == 2 or not leaner:
                    self._jobs_failed += 1
                    self._runner.embeddings.release(holder)
                    raise OutOfMemory(
                        f"The GPU ran out of memory (plan {self._runner.plan.name}). Try a smaller size or fewer "
                        "images, or close other programs that use the GPU."
                    ) from None
                previous = self._runner.plan.name
                self._install(Resolved(plan_catalog.PLANS[leaner[0]]), allow_step_down=True)
                notes.append(
                    f"The GPU ran out of memory with plan {previous}; switched to {self._runner.plan.name} and retried."
                )
            except EngineError:
                self._jobs_failed += 1
                self._runner.embeddings.release(holder)
                raise
            except Exception:
                self._jobs_failed += 1
                self._runner.embeddings.release(holder)
                raise
        raise AssertionError("unreachable")

    def max_area(self) -> int:
        """The most pixels per image the current plan can make in this GPU's memory (what a cluster
        worker advertises). Memory grows with the image area, as `_step_down_if_tight` assumes."""
        limit = self.limits.max_area
        plan = self._runner.plan.name if self._runner is not None else None
        measured = self.table.get(plan) if plan else None
        if self._device is None or self._device.type != "cuda" or measured is None:
            return limit
        free = self._free_gib()
        if free is None:
            return limit
        import torch

        held = torch.cuda.memory_reserved() / plan_catalog.GIB
        factor = (free + held) / measured.need_gib()
        return max(self.limits.min_size**2, min(limit, int(factor * self.limits.native_size**2)))

    def _step_down_if_tight(self, request: JobRequest, notes: list[str]) -> None:
        """In auto mode, move to a leaner plan before a job that would not fit in free VRAM."""
        if self._requested_mode != "auto" or self._device is None or self._device.type != "cuda":
            return
        free = self._free_gib()
        measured = self.table.get(self._runner.plan.name)
        if free is None or measured is None:
            return
        import torch

        held = torch.cuda.memory_reserved() / plan_catalog.GIB
        area = request.width * request.height / (self.limits.native_size**2)
        if free + held >= measured.need_gib() * max(1.0, area):
            return
        for name in self._leaner(self._runner.plan.name):
            if self.table[name].need_gib() * max(1.0, area) <= free + held:
                previous = self._runner.plan.name
                self._install(Resolved(plan_catalog.PLANS[name]), allow_step_down=True)
                notes.append(f"Only {free:.1f} GiB of GPU memory was free; switched from {previous} to {name}.")
                return

    def _make_images(
        self,
        request: JobRequest,
        seed: int,
        report: ProgressCallback,
        should_cancel: CancelCheck | None,
        holder: object,
        lookahead: list[Prefetch],
    ) -> GenerationResult:
        from engine.runner import Cancelled

        runner = self._require_runner()
        cfg = request.guidance > 1.0
        texts = [request.prompt, request.negative_prompt] if cfg else [request.prompt]
        runner.embeddings.hold(holder, texts)
        for item in lookahead:
            runner.embeddings.hold(item.holder, list(item.texts))
        started = time.perf_counter()
        if not all(runner.embeddings.has(t) for t in texts):
            # One encoder visit for this job and the queued ones behind it; later jobs find theirs ready.
            runner.encode(texts + [t for item in lookahead for t in item.texts])
        encode_s = time.perf_counter() - started
        total = request.steps * request.count
        images, timings = [], []
        for index in range(request.count):

            def on_step(step: int, steps: int, index: int = index) -> None:
                if should_cancel is not None and should_cancel():
                    raise Cancelled
                done = index * steps + step
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (total - done) if done else None
                report(Progress(done, total, index + 1, request.count, elapsed, eta))

            if should_cancel is not None and should_cancel():
                raise Cancelled
            image, timing = runner.generate(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                steps=request.steps,
                guidance=request.guidance,
                seed=(seed + index) % (MAX_SEED + 1),
                on_step=on_step,
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
        return GenerationResult(images=images, seed=seed, plan=runner.plan.name, timings=summary)

    def _record_speed(self, request: JobRequest, timings: list[Any]) -> None:
        steps = sum(t.steps for t in timings)
        if not steps:
            return
        area = request.width * request.height / (self.limits.native_size**2)
        step_s = sum(t.denoise_s for t in timings) / steps / max(area, 1e-6)
        self._step_s = step_s if self._step_s is None else 0.7 * self._step_s + 0.3 * step_s

    # --- test support -------------------------------------------------------------------------
    def replace_config(self, **changes: Any) -> None:
        self.config = replace(self.config, **changes)
