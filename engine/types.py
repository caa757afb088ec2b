"""What the engine reports to the rest of the bot. No torch here: the cogs import these."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jobrequest import CodedError

if TYPE_CHECKING:
    from db.workers import WorkerInfo
    from jobrequest import JobRequest, ModelLimits


class EngineState(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    SWITCHING = "switching"
    FAILED = "failed"
    STOPPED = "stopped"


# The English of every engine failure a job may end with, by code (cogs.utils.catalogue has the Chinese: a
# job's stored error is matched back to its code there, so a channel post speaks the requester's language).
ENGINE_TEXTS: dict[str, str] = {
    "engine.oom": (
        "The GPU ran out of memory (plan {plan}). Try a smaller size or fewer images, or close other programs that "
        "use the GPU."
    ),
    "engine.oom_loading": (
        "The GPU ran out of memory while loading plan {plan}. Close other GPU programs or pick a leaner plan with "
        "/memory."
    ),
    "engine.unavailable": "The image engine is not available: {reason}",
    "engine.not_started": "The engine is not started.",
    "engine.no_cuda": (
        "DEVICE=cuda but PyTorch sees no CUDA GPU. Install the CUDA build of torch (see README → Requirements) or "
        "set DEVICE=auto."
    ),
    "engine.download": (
        "Could not get {model} from Hugging Face ({reason}). Check the internet connection and the MODEL_ID "
        "spelling, or set MODEL_ID to a local folder; a half-finished download resumes on the next start."
    ),
    "engine.safety_load": (
        "The image safety check could not load {model} ({reason}). No image is posted unchecked: set SAFETY_MODEL "
        "to an image classifier (a folder or a Hugging Face id) or to off, then restart the bot."
    ),
    "engine.start_image_gone": (
        "The picture this job starts from is no longer stored (it may have been purged); send it again."
    ),
    "engine.unexpected": (
        "Something went wrong while making your image (logged as job #{id}). Try again; if it keeps happening, "
        "tell the bot owner."
    ),
    "engine.disk_full": (
        "The bot's disk is full, so the image could not be saved; the bot owner needs to free some space."
    ),
    "engine.save_failed": "The image could not be saved ({reason}).",
    "engine.cancelled": "Cancelled.",
}


class EngineError(CodedError):
    """A failure the user may read: the message says what happened and what to do (a code of ENGINE_TEXTS)."""

    TEXTS = ENGINE_TEXTS


class EngineUnavailable(EngineError):
    pass


class JobCancelled(EngineError):
    code = "engine.cancelled"

    def __init__(self) -> None:
        super().__init__()


class OutOfMemory(EngineError):
    pass


class PlanSwitchFailed(EngineError):
    pass


@dataclass(frozen=True)
class Progress:
    step: int  # steps done over all images of the job
    total: int
    image: int  # 1-based image being made
    images: int
    elapsed_s: float
    eta_s: float | None
    preview: bytes | None = None  # a small JPEG of the image forming (engine.preview), when one is new


@dataclass
class GenerationResult:
    images: list[Any]  # PIL images
    seed: int
    plan: str
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    flagged: bool = False  # the safety check found adult content in one of the images


@dataclass(frozen=True)
class PlanRow:
    """One line of the per-plan table that `auto` and /memory show."""

    name: str
    summary: str
    peak_gib: float | None
    step_s: float | None
    image_s: float | None
    available: bool
    why_not: str | None = None
    fidelity_db: float | None = None  # final-image PSNR against bf16 resident; None: bf16 itself
    need_gib: float | None = None  # VRAM it needs: the card it was proven on, else its peak plus headroom
    here_s: float | None = None  # s/image on this card: measured here, or projected from its card profile
    here_measured: bool = False


@dataclass(frozen=True)
class EngineStatus:
    state: EngineState
    requested_mode: str
    plan: str | None
    plan_note: str | None
    load_message: str
    load_fraction: float
    device_name: str
    free_vram_gib: float | None
    step_s: float | None  # measured on this machine, seconds per step at the native size
    jobs_done: int
    jobs_failed: int
    started_at: float
    error: str | None = None
    current_job: int | None = None  # the job the local engine is making now; a cluster view leaves it None
    plan_reason: tuple[str, ...] = ()  # why auto chose the plan in place, figures of this card included


@dataclass(frozen=True)
class EngineConfig:
    model_id: str
    memory_mode: str = "auto"
    device: str = "auto"  # auto | cuda | cpu
    torch_compile: bool = False
    step_delay_s: float = 0.0
    memory_cap_gib: float | None = None  # benchmarks: behave like a smaller card
    quality: str = "balanced"  # QUALITY: how much fidelity `auto` may trade for speed (engine.plans)
    quantized_cache_dir: Path | None = None  # quantized weights kept between starts; None: quantize each start
    upscaler_model: Path | None = None  # UPSCALER_MODEL: an ESRGAN-family file; None: Upscale is a hires pass
    previews: bool = False  # PREVIEWS (on in the bot): render a small preview of the image forming now and then
    preview_cache_dir: Path | None = None  # the fitted latent → RGB maps (engine.preview); None: fit each start
    host_ram_gib: float | None = None  # HOST_RAM_GIB: RAM the bot may count on; None: the machine's
    safety_model: str | None = None  # SAFETY_MODEL: an image classifier folder or Hub id; None: no safety check
    safety_threshold: float = 0.5  # SAFETY_THRESHOLD: an image scoring above it is flagged (engine.safety)

    @classmethod
    def from_settings(cls, settings: Any) -> EngineConfig:
        return cls(
            model_id=settings.model_id,
            memory_mode=settings.memory_mode,
            device=settings.device,
            torch_compile=settings.torch_compile,
            step_delay_s=settings.engine_step_delay,
            quality=settings.quality,
            quantized_cache_dir=settings.quantized_cache_dir,
            upscaler_model=settings.upscaler_model,
            previews=settings.previews,
            preview_cache_dir=settings.quantized_cache_dir / "latent_rgb",
            host_ram_gib=settings.host_ram_gib,
            safety_model=settings.safety_model,
            safety_threshold=settings.safety_threshold,
        )


@dataclass(frozen=True)
class Prefetch:
    """Texts a queued job will need, so the look-ahead can encode them in the same encoder visit."""

    holder: object
    texts: tuple[str, ...]


class EngineView(Protocol):
    """What the cogs see of the engine: the local GPU engine, or the cluster's remote workers."""

    @property
    def limits(self) -> ModelLimits: ...
    @property
    def ready(self) -> bool: ...
    def status(self) -> EngineStatus: ...
    def plan_rows(self) -> list[PlanRow]: ...
    def estimate_seconds(self, request: JobRequest) -> float: ...
    async def switch_plan(self, mode: str) -> str:
        """Apply a memory plan; raises PlanSwitchFailed with a sentence for the admin."""
        ...

    def workers(self) -> list[WorkerInfo]:
        """GPU workers for /status; [] on a single machine."""
        ...

    async def stop(self) -> None: ...
