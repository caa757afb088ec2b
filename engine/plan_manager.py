"""The memory plan in place: resolve, load, switch, and step down to a leaner plan.

Everything here except the read-only properties runs on the GPU thread. A plan is
placed by loading the components it needs (reusing weights whose quantization does
not change), building the pipeline, and applying the placement; running out of
memory while doing so moves to the next leaner plan when that is allowed.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any

from db.models import JobRequest
from engine import plans as plan_catalog
from engine.device import host_ram
from engine.notes import note
from engine.plans import CardProfile, Measurement, Plan, PlanError, Resolved
from engine.rules import ModelLimits, limits_for_model, limits_from_folder
from engine.types import EngineConfig, EngineError, EngineState, EngineUnavailable, OutOfMemory, PlanSwitchFailed

log = logging.getLogger(__name__)


class PlanManager:
    def __init__(self, config: EngineConfig, table: dict[str, Measurement]) -> None:
        self.config = config
        self.table = table
        self.limits: ModelLimits = limits_for_model(config.model_id)
        self.requested_mode = config.memory_mode
        self.state = EngineState.STARTING
        self.plan_note: str | None = None
        self.load_message = note("load.waiting")
        self.load_fraction = 0.0
        self.error: str | None = None
        self.device_name = "unknown"
        # This card's measured figures (engine.card_profile) and those of the GPU the table was measured on:
        # auto projects every plan's time onto this card from the two.
        self.card: CardProfile | None = None
        self.reference = plan_catalog.table_card()
        self.auto_reason: tuple[str, ...] = ()  # why auto chose the plan it chose, in a sentence or two
        self.chosen_with_free_gib: float | None = None  # the free VRAM auto chose with (streamed plans' copies)
        self.model_loads = 0  # times weights were placed on the device: 1 unless the plan changed
        self.loaded = threading.Event()  # set once the first load succeeded or failed
        # Set on the GPU thread only:
        self.runner: Any = None
        self.components: Any = None
        self.device: Any = None
        self._folder: Path | None = None
        # Room kept free beyond a step's measured working memory when a stream plan places its blocks:
        # grows each time that plan runs out of memory, so fewer blocks stay resident.
        self._stream_margin_bytes = 0

    # --- read from any thread ------------------------------------------------------------------
    @property
    def plan_name(self) -> str | None:
        return self.runner.plan.name if self.runner is not None else None

    @property
    def has_gpu(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def free_gib(self) -> float | None:
        if not self.has_gpu:
            return None
        from engine.device import free_gib

        return free_gib()

    @property
    def capability(self) -> tuple[int, int] | None:
        """The GPU's CUDA compute capability (FP8 plans need 8.9); None without a GPU."""
        if not self.has_gpu:
            return None
        import torch

        major, minor = torch.cuda.get_device_capability(self.device)
        return (major, minor)

    def plan_rows(self, seen_here: dict[str, float] | None = None) -> list[Any]:
        return plan_catalog.plan_rows(
            self.table,
            has_gpu=self.has_gpu,
            capability=self.capability,
            card=self.card,
            reference=self.reference,
            seen_here=seen_here,
            free_gib=self.chosen_with_free_gib,
        )

    def require_runner(self) -> Any:
        if self.state is EngineState.FAILED or self.runner is None:
            raise EngineUnavailable(code="engine.unavailable", reason=self.error or "not loaded")
        return self.runner

    def max_area(self) -> int:
        """The most pixels per image the current plan can make in this GPU's memory (what a cluster
        worker advertises). Memory grows with the image area, as `step_down_if_tight` assumes."""
        limit = self.limits.max_area
        measured = self.table.get(self.plan_name) if self.plan_name else None
        free = self.free_gib()
        if measured is None or free is None:
            return limit
        factor = (free + _held_gib()) / measured.need_gib()
        return max(self.limits.min_size**2, min(limit, int(factor * self.limits.native_size**2)))

    # --- loading (GPU thread) ----------------------------------------------------------------
    def load(self, mode: str) -> None:
        """Pick the device, find the model, and place the plan `mode` resolves to; never raises."""
        from engine.loader import resolve_model_folder

        self.state = EngineState.LOADING
        try:
            self.device = self._pick_device()
            self._folder = resolve_model_folder(self.config.model_id, self._on_load_progress)
            self.limits = limits_from_folder(self._folder)
            self.card = self._measure_card()
            self._install(self._resolve(mode), allow_step_down=True)
        except EngineError as exc:
            self._fail_load(str(exc))
        except Exception as exc:
            log.exception("Loading the model failed")
            self._fail_load(f"Loading the model failed: {exc.__class__.__name__}: {exc}")
        else:
            self.state = EngineState.READY
            self.error = None
            freeze_long_lived_objects()
            self.loaded.set()

    def _fail_load(self, message: str) -> None:
        self.state = EngineState.FAILED
        self.error = message
        self.load_message = message
        self.loaded.set()

    def _on_load_progress(self, message: str, fraction: float) -> None:
        self.load_message = message
        self.load_fraction = fraction

    def _pick_device(self) -> Any:
        from engine.device import configure_allocator

        configure_allocator()
        import torch

        if self.config.device == "cpu" or (self.config.device == "auto" and not torch.cuda.is_available()):
            self.device_name = "CPU"
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise EngineUnavailable(code="engine.no_cuda")
        from engine.device import set_memory_cap

        set_memory_cap(self.config.memory_cap_gib)
        self.device_name = torch.cuda.get_device_name(0)
        return torch.device("cuda", 0)

    def _measure_card(self) -> CardProfile | None:
        """This card's figures, measured on its first start (seconds) and kept beside the quantized weights."""
        if not self.has_gpu or self._folder is None:
            return None
        import json

        from engine import card_profile

        self._on_load_progress(note("load.measuring_card"), 0.01)
        try:
            config = json.loads((self._folder / "transformer" / "config.json").read_text(encoding="utf-8"))
            return card_profile.load_or_measure(
                self.device, card_profile.block_config_of(config), self.config.quantized_cache_dir
            )
        except Exception:  # the table's figures still stand: auto then chooses as measured there
            log.warning("Could not measure this card; plans are timed as on the table's GPU", exc_info=True)
            return None

    def _resolve(self, mode: str) -> Resolved:
        if mode == "auto":
            self.chosen_with_free_gib = self.free_gib()
            resolved = plan_catalog.choose_auto(
                self.chosen_with_free_gib,
                self.table,
                allow_compile=self.config.torch_compile,
                quality=self.config.quality,
                ram_gib=host_ram(self.config.host_ram_gib),
                capability=self.capability,
                card=self.card,
                reference=self.reference,
            )
            self.auto_reason = plan_catalog.auto_reason(
                resolved.plan.name,
                self.config.quality,
                self.card,
                self.reference,
                self.table.get(resolved.plan.name),
                self.chosen_with_free_gib,
            )
            log.info("%s", " ".join(self.auto_reason))
            return resolved
        return plan_catalog.resolve(mode, has_gpu=self.has_gpu, capability=self.capability, card=self.card)

    def _install(self, resolved: Resolved, *, allow_step_down: bool) -> None:
        """Place the plan; on OOM while loading, step down to leaner plans if allowed."""
        import torch

        plan = resolved.plan
        notes = [resolved.note] if resolved.note else []
        while True:
            try:
                if not self._place(plan):
                    notes.append(note("plan.compile_failed", plan=plan.name))
                break
            except torch.OutOfMemoryError:
                log.warning("Out of GPU memory while loading plan %s", plan.name, exc_info=True)
                self._teardown()
                leaner = self.leaner(plan.name)
                if not allow_step_down or not leaner:
                    raise OutOfMemory(code="engine.oom_loading", plan=plan.name) from None
                notes.append(note("plan.step_down_loading", plan=plan.name, leaner=leaner[0]))
                plan = plan_catalog.PLANS[leaner[0]]
        self.plan_note = " ".join(notes) or None
        if self.plan_note:
            log.warning("%s", self.plan_note)

    def _place(self, plan: Plan) -> bool:
        """Load and place the plan; False where torch.compile failed on this GPU and it runs eager instead."""
        from diffusers import CogView4Pipeline

        from engine.loader import load_components
        from engine.placement import apply_placement, strip_placement
        from engine.runner import Runner, RunnerOptions

        old_runner = self.runner
        reloading_te = self.components is None or self.components.text_encoder_quant != plan.text_encoder
        embeddings = old_runner.embeddings if old_runner is not None and not reloading_te else None
        if old_runner is not None:
            if old_runner.residency is not None:
                old_runner.residency.strip()
            strip_placement(old_runner.pipe)
            # Drop the old pipeline so weights being replaced can be freed before the new ones load.
            self.runner = old_runner = None
        assert self._folder is not None
        self.components = c = load_components(
            self._folder,
            plan,
            self.device,
            progress=self._on_load_progress,
            reuse=self.components,
            cache_dir=self.config.quantized_cache_dir,
        )
        pipe = CogView4Pipeline(
            tokenizer=c.tokenizer,
            text_encoder=c.text_encoder,
            vae=c.vae,
            transformer=c.transformer,
            scheduler=c.scheduler,
        )
        ram_gib = host_ram(self.config.host_ram_gib)
        residency = apply_placement(
            pipe,
            plan,
            self.device,
            ram_bytes=None if ram_gib is None else int(ram_gib * plan_catalog.GIB),
            work_bytes=self._step_work_bytes(plan),
            mapped=c.mapped,
        )
        compiled = plan.fast and self.config.torch_compile and self.has_gpu
        compiled_ok = True
        if plan.fast:
            from engine.attention import install

            install(c.transformer)
        if compiled:
            # Regional compilation: the 28 blocks share one compiled graph, so compiling takes
            # seconds instead of minutes; the first image pays it, once per process.
            import torch._dynamo

            # Static shapes per (text bucket, image size): a few compiles, each reused for good.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
            for block in c.transformer.transformer_blocks:
                block.compile(dynamic=False)
        measured = self.table.get(plan.name)
        options = RunnerOptions(
            step_delay_s=self.config.step_delay_s,
            batched_cfg=plan.fast,
            text_bucket=64 if plan.fast else 0,
            **({"work_gib": measured.work_gib} if measured is not None and measured.work_gib > 0 else {}),
        )
        runner = Runner(pipe, plan, self.device, options, residency=residency)
        if compiled:
            self._on_load_progress(note("load.compiling"), 0.97)
            compiled_ok = _warm_up_compiled(runner, c.transformer, self.limits.native_size)
        if embeddings is not None:
            runner.embeddings = embeddings  # same encoder weights: the embeddings stay valid
        self.runner = runner
        self.model_loads += 1
        return compiled_ok

    def _step_work_bytes(self, plan: Plan) -> int:
        """Working memory of one step at the native size with CFG as one batch: the plan's measured pass
        memory, else that of a measured plan with the same transformer, else the runner's cautious figure."""
        from engine.runner import RunnerOptions

        same = [m for m in self.table.values() if m.work_gib > 0 and plan_catalog.PLANS.get(m.plan) is not None]
        own = self.table.get(plan.name)
        twin = next((m for m in same if plan_catalog.PLANS[m.plan].transformer == plan.transformer), None)
        per_megapixel = (
            own.work_gib if own is not None and own.work_gib > 0 else twin.work_gib if twin else RunnerOptions.work_gib
        )
        megapixels = self.limits.native_size**2 / (1024 * 1024)
        return int(2 * per_megapixel * megapixels * plan_catalog.GIB) + self._stream_margin_bytes

    def stop_streaming(self) -> None:
        """On the GPU thread, as the engine stops: end the streamed plan's copier threads."""
        if self.runner is not None and self.runner.residency is not None:
            self.runner.residency.stop_streams()

    def _teardown(self) -> None:
        from engine.device import release_memory

        self.runner = None
        self.components = None
        release_memory()

    def leaner(self, current: str) -> list[str]:
        """Plans that need less memory than `current` and can run here, leanest last."""
        result = []
        for name in plan_catalog.leaner_plans(current, self.table):
            try:
                plan_catalog.resolve(name, has_gpu=self.has_gpu, capability=self.capability, card=self.card)
            except PlanError:
                continue
            result.append(name)
        return result

    # --- switching (GPU thread) -----------------------------------------------------------------
    def switch(self, mode: str) -> str:
        """Apply a plan between jobs; on failure restore the previous one. Returns a sentence for the admin."""
        if self.device is None or self._folder is None:
            self.load(mode)
            if self.state is not EngineState.READY:
                raise PlanSwitchFailed(self.error or "The model failed to load.")
            return note("plan.loaded", plan=self.plan_name)
        try:
            resolved = self._resolve(mode)
        except PlanError as exc:
            raise PlanSwitchFailed(str(exc)) from None
        previous = self.runner.plan if self.runner is not None else None
        if previous is not None and previous.name == resolved.plan.name:
            return note("plan.already", plan=previous.name) + (f" {resolved.note}" if resolved.note else "")
        self.state = EngineState.SWITCHING
        try:
            self._install(resolved, allow_step_down=False)
        except Exception as exc:
            log.exception("Switching to %s failed", resolved.plan.name)
            reason = str(exc) if isinstance(exc, EngineError) else f"{exc.__class__.__name__}: {exc}"
            reason = reason if reason.endswith(".") else reason + "."  # a sentence of its own
            if previous is None:
                self.state = EngineState.FAILED
                failed = note("plan.switch_failed_none", plan=resolved.plan.name, reason=reason)
                raise PlanSwitchFailed(failed) from None
            self._restore(previous, resolved.plan.name)
            failed = note("plan.switch_failed", plan=resolved.plan.name, reason=reason, current=self.plan_name)
            raise PlanSwitchFailed(failed) from None
        self.state = EngineState.READY
        message = note("plan.now", plan=self.plan_name)
        return message + (f" {self.plan_note}" if self.plan_note else "")

    def _restore(self, previous: Plan, wanted: str) -> None:
        try:
            self._install(Resolved(previous), allow_step_down=True)
        except Exception:
            log.exception("Falling back to %s failed too", previous.name)
            self.state = EngineState.FAILED
            self.error = note("plan.restore_failed", wanted=wanted, previous=previous.name)
            raise PlanSwitchFailed(self.error) from None
        self.state = EngineState.READY

    # --- stepping down for a job (GPU thread) ------------------------------------------------------
    def recover_from_oom(self, *, step_down: bool) -> str | None:
        """After a job ran out of memory: free cached blocks and, if allowed, move to the next leaner
        plan. Returns a note for the user, or None when the job cannot be retried."""
        from engine.device import release_memory

        release_memory()
        if step_down and self._streams_fewer():
            return note("plan.stream_fewer_resident", plan=self.plan_name)
        leaner = self.leaner(self.plan_name or "") if step_down else []
        if not leaner:
            return None
        previous = self.plan_name
        self._install(Resolved(plan_catalog.PLANS[leaner[0]]), allow_step_down=True)
        return f"The GPU ran out of memory with plan {previous}; switched to {self.plan_name} and retried."

    def _streams_fewer(self) -> bool:
        """A stream plan that ran out of memory with transformer blocks resident places itself again keeping
        one step's working memory more free (fewer blocks resident, more streamed). False where every block
        already streams (then the next leaner plan is the way down)."""
        runner = self.runner
        if runner is None or runner.plan.placement is not plan_catalog.Placement.STREAM:
            return False
        stream = runner.residency.streams.get("transformer") if runner.residency is not None else None
        if stream is not None and len(stream.order) == len(stream.layers):
            return False
        plan = runner.plan
        self._stream_margin_bytes += max(plan_catalog.GIB, self._step_work_bytes(plan) - self._stream_margin_bytes)
        self._install(Resolved(plan), allow_step_down=True)
        return True

    def recover_from_kernel_failure(self, kernel: str, error: str) -> str | None:
        """After the card's 8-bit matmul failed in a job: rule its plans out on this card (as if it had
        failed when the card was measured) and step down as after running out of memory."""
        from dataclasses import replace

        if self.card is not None:
            self.card = replace(self.card, refused={**self.card.refused, kernel: error})
        previous = self.plan_name
        leaner = self.leaner(previous or "")
        if not leaner:
            return None
        self._install(Resolved(plan_catalog.PLANS[leaner[0]]), allow_step_down=True)
        return note("plan.kernel_step_down", kernel=kernel, plan=previous, leaner=self.plan_name)

    def step_down_if_tight(self, request: JobRequest) -> str | None:
        """In auto mode, move to a leaner plan before a job that would not fit in free VRAM."""
        if self.requested_mode != "auto" or not self.has_gpu or self.plan_name is None:
            return None
        free = self.free_gib()
        measured = self.table.get(self.plan_name)
        if free is None or measured is None:
            return None
        available = free + _held_gib()
        area = max(1.0, request.width * request.height / (self.limits.native_size**2))
        if available >= measured.need_gib() * area:
            return None
        for name in self.leaner(self.plan_name):
            if self.table[name].need_gib() * area <= available:
                previous = self.plan_name
                self._install(Resolved(plan_catalog.PLANS[name]), allow_step_down=True)
                return f"Only {free:.1f} GiB of GPU memory was free; switched from {previous} to {name}."
        return None


def _warm_up_compiled(runner: Any, transformer: Any, size: int) -> bool:
    """Compile by making the warm-up image; where the compiler fails on this GPU (a kernel it cannot lower),
    the blocks go back to eager, so the plan still runs. False then."""
    import torch

    try:
        runner.warm_up(size)
        return True
    except torch.OutOfMemoryError:
        raise
    except Exception:
        log.warning("torch.compile failed on this GPU; the transformer runs eager", exc_info=True)
        for block in transformer.transformer_blocks:
            block._compiled_call_impl = None  # what nn.Module.compile() set
        torch._dynamo.reset()
        return False


_frozen = threading.Event()


def freeze_long_lived_objects() -> None:
    """Once per process, after the first load: torch, diffusers and transformers leave ~0.5 million objects that
    live as long as the process, and every full garbage collection walks them all: pauses of ~0.5 s (measured)
    on the bot's event loop, in the middle of answering Discord. Frozen, the collector skips them."""
    if not _frozen.is_set():
        _frozen.set()
        gc.collect()
        gc.freeze()


def _held_gib() -> float:
    """GPU memory this process already holds in its caching allocator (reusable by the next job)."""
    import torch

    return torch.cuda.memory_reserved() / plan_catalog.GIB
