"""What was measured: one plan's costs on the GPU the plan table was measured on (`Measurement`), and one
card's own figures, measured on its first start (`CardProfile`). Plain data, no torch: the Discord side and
the doctor read them too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
# Headroom on top of a peak measured without a cap: other processes, driver fragmentation.
SAFETY_GIB = 0.25


@dataclass(frozen=True)
class Measurement:
    """One plan's measured cost at the native size (1024² for CogView4-6B), one image, CFG on."""

    plan: str
    peak_gib: float  # the most the process held on the GPU (reserved), at load or while generating
    step_s: float
    encode_s: float
    decode_s: float
    ok: bool = True
    note: str = ""
    measured_cap_gib: float = 0.0  # > 0: proven to run under a hard cap of this size
    # Final image PSNR (dB) against bf16_resident, same prompt and seed; None: not measured.
    psnr_db: float | None = None
    # Host RAM the OS can neither page out nor drop (anonymous + pinned), after loading and at its
    # peak while loading or generating, GiB; None: not measured.
    host_gib: float | None = None
    host_peak_gib: float | None = None
    # Working memory of one image pass at the native size, GiB (0: not measured). The runner batches
    # cond+uncond only where twice this fits beside the weights.
    work_gib: float = 0.0
    # Streamed plans: GiB copied to the GPU per step as measured (on the card size of `measured_cap_gib`),
    # and the step's compute alone (the same format resident, same run); a card's step is then
    # max(compute there, copies ÷ its bus speed).
    stream_gib: float = 0.0
    compute_step_s: float = 0.0

    def image_s(self, steps: int = 50) -> float:
        return self.encode_s + steps * self.step_s + self.decode_s

    def need_gib(self) -> float:
        """VRAM this plan needs: the cap it was proven under, else its measured peak plus headroom."""
        return self.measured_cap_gib if self.measured_cap_gib else self.peak_gib + SAFETY_GIB

    def ram_need_gib(self) -> float | None:
        known = [g for g in (self.host_gib, self.host_peak_gib) if g is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class CardProfile:
    """What decides the plan on one card, measured there (engine.card_profile): seconds for one transformer
    block at the native size per matmul kernel ("bf16", "fp8", "int8": those that ran), the host → device copy
    speed from page-locked memory, and the kernels that failed with their error."""

    key: str
    gpu: str
    capability: tuple[int, int]
    block_s: dict[str, float]
    h2d_gbps: float
    refused: dict[str, str] = field(default_factory=dict)
    measured_at: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CardProfile:
        fields_ = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**fields_, "capability": tuple(data["capability"])})
