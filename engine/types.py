"""What the engine reports to the rest of the bot. No torch here: the cogs import these."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EngineState(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    SWITCHING = "switching"
    FAILED = "failed"
    STOPPED = "stopped"


class EngineError(Exception):
    """A failure the user may read: the message says what happened and what to do."""


class EngineUnavailable(EngineError):
    pass


class JobCancelled(EngineError):
    def __init__(self) -> None:
        super().__init__("Cancelled.")


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
    preview_png: bytes | None = None


@dataclass
class GenerationResult:
    images: list[Any]  # PIL images
    seed: int
    plan: str
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)


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
