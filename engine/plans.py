"""Memory plans: which precision each component has and where it lives.

A plan is data: quantization per component plus a placement. The loader and the
placement code read it; `auto` picks from the table of measured peak memory and
speed in `plan_table.json` (written by bench/plans.py on a real GPU, not guessed).
No torch here: the Discord side lists plans and the doctor explains choices
without touching CUDA.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Literal

from engine.notes import note as engine_note
from engine.types import PlanRow

# fp8: stored in float8 e4m3, computed in bf16 (diffusers layerwise casting), 8-bit quality at half of bf16.
Quant = Literal["bf16", "nf4", "fp8"]

GIB = 1024**3


class Placement(StrEnum):
    RESIDENT = "resident"  # every component on the GPU
    MODEL_OFFLOAD = "model_offload"  # diffusers enable_model_cpu_offload: whole models move in turn
    SEQUENTIAL = "sequential"  # diffusers enable_sequential_cpu_offload: every layer streams in
    GROUP_BLOCK = "group_block"  # diffusers group offload, block level, overlapped on a CUDA stream
    GROUP_LEAF = "group_leaf"  # diffusers group offload, leaf level, overlapped on a CUDA stream
    SWAP = "swap"  # transformer + VAE resident; the text encoder visits once per batch of prompts


@dataclass(frozen=True)
class Plan:
    name: str
    text_encoder: Quant
    transformer: Quant
    placement: Placement
    summary: str
    # The fast path: cond+uncond in one batched forward (two passes where a batch of 2 does not fit),
    # text in buckets with the padding hidden per row, cuDNN/flash attention, torch.compile if enabled.
    fast: bool = False
    # Measured compiled only (its table row is a compiled number): offered only with TORCH_COMPILE=true.
    compile_only: bool = False


def _plan(name: str, te: Quant, tr: Quant, placement: Placement, summary: str, compile_only: bool = False) -> Plan:
    """Every plan that keeps the transformer on the GPU gets the fast path; the offloading plans keep
    diffusers' own hooks and two passes (the fast path was never measured with them)."""
    fast = placement in (Placement.RESIDENT, Placement.SWAP)
    return Plan(name, te, tr, placement, summary, fast, compile_only)


P = Placement
PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        _plan("bf16_fast", "bf16", "bf16", P.RESIDENT, "Everything on the GPU in bf16, batched CFG, compiled", True),
        _plan("bf16_resident", "bf16", "bf16", P.RESIDENT, "Everything on the GPU in bf16 (best quality, ~34 GiB)"),
        _plan("fp8_resident", "nf4", "fp8", P.RESIDENT, "8-bit transformer, 4-bit text encoder, all on the GPU"),
        _plan("fp8_swap", "nf4", "fp8", P.SWAP, "8-bit transformer resident, 4-bit text encoder visits per batch"),
        _plan("mixed_resident", "nf4", "bf16", P.RESIDENT, "bf16 transformer, 4-bit text encoder, all on the GPU"),
        _plan("mixed_swap", "nf4", "bf16", P.SWAP, "bf16 transformer resident, 4-bit text encoder visits per batch"),
        _plan("nf4_resident", "nf4", "nf4", P.RESIDENT, "4-bit transformer and text encoder, all on the GPU"),
        _plan("nf4_swap", "nf4", "nf4", P.SWAP, "4-bit transformer resident, text encoder visits once per batch"),
        _plan("bf16_model_offload", "bf16", "bf16", P.MODEL_OFFLOAD, "bf16, whole models moved to the GPU in turn"),
        _plan("nf4_model_offload", "nf4", "nf4", P.MODEL_OFFLOAD, "4-bit, whole models moved to the GPU in turn"),
        _plan("bf16_group_block", "bf16", "bf16", P.GROUP_BLOCK, "bf16, blocks streamed to the GPU (CUDA streams)"),
        _plan("bf16_group_leaf", "bf16", "bf16", P.GROUP_LEAF, "bf16, layers streamed to the GPU (CUDA streams)"),
        _plan("bf16_sequential", "bf16", "bf16", P.SEQUENTIAL, "bf16, every layer streamed in (slowest, ~5 GiB)"),
        _plan("nf4_sequential", "nf4", "nf4", P.SEQUENTIAL, "4-bit with sequential offload (broken upstream)"),
    )
}

# Plans that must never be attempted as asked, with the plan used instead and why.
REMAPS: dict[str, tuple[str, str]] = {
    "nf4_sequential": ("nf4_model_offload", engine_note("plan.sequential_nf4_crashes")),
}

# What works on a machine without a CUDA GPU (tests, CPU-only PCs): the resident plans whose
# transformer is bf16 or FP8 (diffusers quantizes transformers with bitsandbytes only on a GPU).
CPU_PLANS = ("bf16_resident", "mixed_resident", "fp8_resident")


class PlanError(ValueError):
    """An unknown or impossible plan; the message says what to pick instead."""


@dataclass(frozen=True)
class Resolved:
    plan: Plan
    note: str | None = None  # why the engine uses another plan than the one asked for


# FP8 storage needs float8 support in the GPU: Ada (RTX 40xx, L4) and Hopper, compute capability 8.9+.
FP8_MIN_CAPABILITY = (8, 9)


def uses_fp8(plan: Plan) -> bool:
    return "fp8" in (plan.text_encoder, plan.transformer)


def fp8_refusal(name: str, capability: tuple[int, int] | None) -> str | None:
    """Why plan `name` cannot run on a GPU of this compute capability (None: it can, or unknown GPU)."""
    if capability is None or not uses_fp8(PLANS[name]) or tuple(capability) >= FP8_MIN_CAPABILITY:
        return None
    major, minor = capability
    return engine_note("plan.needs_fp8", name=name, capability=f"{major}.{minor}")


def resolve(name: str, *, has_gpu: bool, capability: tuple[int, int] | None = None) -> Resolved:
    """Map a requested plan name to one that can run here, explaining any change.

    `capability`: the GPU's CUDA compute capability when known; FP8 plans are refused below 8.9."""
    if name not in PLANS:
        raise PlanError(engine_note("plan.unknown", name=repr(name), plans=", ".join(PLANS)))
    note = None
    if name in REMAPS:
        target, why = REMAPS[name]
        note = engine_note("plan.remapped", name=name, why=why, target=target)
        name = target
    plan = PLANS[name]
    if not has_gpu and name not in CPU_PLANS:
        raise PlanError(engine_note("plan.needs_cuda", name=name, plans=", ".join(CPU_PLANS)))
    refusal = fp8_refusal(name, capability) if has_gpu else None
    if refusal:
        raise PlanError(refusal)
    return Resolved(plan, note)


# --- the measured table -----------------------------------------------------------------------

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

    def image_s(self, steps: int = 50) -> float:
        return self.encode_s + steps * self.step_s + self.decode_s

    def need_gib(self) -> float:
        """VRAM this plan needs: the cap it was proven under, else its measured peak plus headroom."""
        return self.measured_cap_gib if self.measured_cap_gib else self.peak_gib + SAFETY_GIB

    def ram_need_gib(self) -> float | None:
        known = [g for g in (self.host_gib, self.host_peak_gib) if g is not None]
        return max(known) if known else None


# --- fidelity ---------------------------------------------------------------------------------

# Final-image PSNR against bf16 everywhere for one component in each format (same prompt and seed,
# 20 steps, full-size CogView4-6B with random weights on an H200). They stand in for a plan whose
# own PSNR was not measured. Random weights flatter 4-bit: real weights have outliers.
FORMAT_PSNR_DB: dict[tuple[str, str], float] = {
    ("transformer", "nf4"): 33.2,
    ("transformer", "fp8"): 44.1,
    ("text_encoder", "nf4"): 45.0,
    ("text_encoder", "fp8"): 45.2,
}


def estimated_psnr(plan: Plan) -> float | None:
    """A plan's fidelity from its formats: independent errors add as noise powers. None: all bf16."""
    parts = [("text_encoder", plan.text_encoder), ("transformer", plan.transformer)]
    powers = [10 ** (-FORMAT_PSNR_DB[p] / 10) for p in parts if p in FORMAT_PSNR_DB]
    return round(-10 * math.log10(sum(powers)), 1) if powers else None


def fidelity_db(name: str, table: dict[str, Measurement]) -> float | None:
    """Measured PSNR against bf16_resident, else the estimate; None means the bf16 reference itself."""
    m = table.get(name)
    return m.psnr_db if m is not None and m.psnr_db is not None else estimated_psnr(PLANS[name])


class Quality(StrEnum):
    BEST = "best"
    BALANCED = "balanced"
    FASTEST = "fastest"


# auto's rule, set by QUALITY. Among the plans that fit the free VRAM and the machine's RAM:
#   fastest:  the fastest, whatever its fidelity.
#   balanced: the fastest of at least 40 dB, unless it is more than 2x slower than the fastest plan
#             (a small card whose only faithful plans stream weights every step): then the fastest.
#   best:     the fastest of at least 43 dB however slow; if none fits, the most faithful.
# Where that settles below the floor, swap plans proven on a card up to 15 % larger (NEAR_FIT) count
# too, with a note that they may run out of memory.
# bf16 everywhere is the reference (infinite dB). The default is balanced: an 8 GiB card keeps
# 4-bit (33 dB), a 12–16 GiB card gets the 8-bit transformer (44 dB measured with a 4-bit text encoder).
QUALITY_RULES: dict[Quality, tuple[float, float]] = {
    Quality.BEST: (43.0, math.inf),
    Quality.BALANCED: (40.0, 2.0),
    Quality.FASTEST: (0.0, 1.0),
}
# RAM left for the OS and everything else running beside the bot (Discord, a browser), GiB.
HOST_RESERVE_GIB = 2.0


def load_table(data: dict[str, Any] | None = None) -> dict[str, Measurement]:
    """The committed measurements (engine/plan_table.json), keyed by plan name."""
    if data is None:
        text = resources.files("engine").joinpath("plan_table.json").read_text(encoding="utf-8")
        data = json.loads(text)
    table = {}
    for row in data["plans"]:
        fields = {k: row[k] for k in Measurement.__dataclass_fields__ if k in row}
        table[row["plan"]] = Measurement(**fields)
    return table


def table_meta() -> dict[str, Any]:
    text = resources.files("engine").joinpath("plan_table.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if k != "plans"}


def leaner_plans(current: str, table: dict[str, Measurement]) -> list[str]:
    """Plans that need less memory than `current`, most memory-hungry (i.e. fastest) first."""
    if current not in table:
        return []
    need = table[current].need_gib()
    lean = [m for m in _usable(table) if m.need_gib() < need]
    return [m.plan for m in sorted(lean, key=lambda m: m.need_gib(), reverse=True)]


def _usable(table: dict[str, Measurement], allow_compile: bool = True) -> list[Measurement]:
    return [
        m
        for m in table.values()
        if m.ok and m.plan in PLANS and m.plan not in REMAPS and (allow_compile or not PLANS[m.plan].compile_only)
    ]


def _fits_ram(m: Measurement, ram_gib: float | None) -> bool:
    need = m.ram_need_gib()
    return ram_gib is None or need is None or need + HOST_RESERVE_GIB <= ram_gib


# A plan measured a little above the free memory is still worth trying before a much slower one:
# swap plans shrink to fit (the VAE leaves while denoising, CFG runs as two passes), and an OOM steps
# down anyway. 15 %: a plan proven on one card is worth trying on a slightly smaller one (or beside another
# program's memory) before a plan many times slower (the sequential plan is ~17x slower than the swap plan).
NEAR_FIT = 1.15


def choose_auto(
    free_gib: float | None,
    table: dict[str, Measurement],
    *,
    steps: int = 50,
    allow_compile: bool = True,
    quality: str = Quality.BALANCED,
    ram_gib: float | None = None,
    capability: tuple[int, int] | None = None,
) -> Resolved:
    """The fastest measured plan that fits in free VRAM and host RAM, within the QUALITY rule above.

    `free_gib` None means no CUDA GPU: the CPU plan. `ram_gib`: the machine's RAM (None: unknown,
    not checked); `capability`: the GPU's compute capability (FP8 plans need 8.9). If nothing fits
    the VRAM, the fastest plan within 15 % of it is tried, else the leanest, with a note saying why.
    """
    if free_gib is None:
        return Resolved(PLANS["bf16_resident"], engine_note("plan.cpu"))
    if quality not in Quality.__members__.values():
        raise PlanError(engine_note("plan.unknown_quality", quality=repr(quality), choices=", ".join(Quality)))
    candidates = [m for m in _usable(table, allow_compile) if fp8_refusal(m.plan, capability) is None]
    if not candidates:
        raise PlanError(engine_note("plan.none_measured"))
    candidates = [m for m in candidates if _fits_ram(m, ram_gib)]
    if not candidates:
        raise PlanError(engine_note("plan.no_ram", ram=f"{ram_gib:.1f}", reserve=f"{HOST_RESERVE_GIB:.0f}"))
    fitting = [m for m in candidates if m.need_gib() <= free_gib]
    near = [m for m in candidates if m.need_gib() <= free_gib * NEAR_FIT]
    if fitting:
        pick = _by_quality(fitting, table, Quality(quality), steps)
        if _db(pick, table) < QUALITY_RULES[Quality(quality)][0]:
            # The rule settled below its floor: a swap plan proven on a card up to 15 % larger is tried first
            # (a 12 GB card beside a desktop keeps the 8-bit tier). Swap plans shrink to fit; an OOM steps down.
            swaps = [m for m in near if m not in fitting and PLANS[m.plan].placement is Placement.SWAP]
            pick = _by_quality(fitting + swaps, table, Quality(quality), steps)
    else:
        pick = min(near, key=lambda m: m.image_s(steps)) if near else min(candidates, key=lambda m: m.need_gib())
    if pick.need_gib() <= free_gib:
        return Resolved(PLANS[pick.plan])
    return Resolved(
        PLANS[pick.plan],
        engine_note("plan.tight", free=f"{free_gib:.1f}", plan=pick.plan, need=f"{pick.need_gib():.1f}"),
    )


def _db(m: Measurement, table: dict[str, Measurement]) -> float:
    value = fidelity_db(m.plan, table)
    return math.inf if value is None else value


def _by_quality(fitting: list[Measurement], table: dict[str, Measurement], quality: Quality, steps: int) -> Measurement:
    def speed(m: Measurement) -> tuple[float, float]:
        return (m.image_s(steps), m.need_gib())

    floor, patience = QUALITY_RULES[quality]
    fastest = min(fitting, key=speed)
    faithful = [m for m in fitting if _db(m, table) >= floor]
    if not faithful:
        return max(fitting, key=lambda m: (_db(m, table), -m.image_s(steps))) if quality is Quality.BEST else fastest
    pick = min(faithful, key=speed)
    return pick if pick.image_s(steps) <= patience * fastest.image_s(steps) else fastest


def plan_rows(
    table: dict[str, Measurement], *, has_gpu: bool | None, capability: tuple[int, int] | None = None
) -> list[PlanRow]:
    """Every plan with its measured cost, fidelity and, if it cannot be used, why (what /memory shows).

    `has_gpu` None: the machine is not known here (a bot whose workers run elsewhere)."""
    rows = []
    for name, plan in PLANS.items():
        m = table.get(name)
        why = None
        if has_gpu is not None:
            try:
                resolve(name, has_gpu=has_gpu, capability=capability)
            except PlanError as exc:
                why = str(exc)
        if name in REMAPS:
            why = REMAPS[name][1]
        elif m is not None and not m.ok:
            why = m.note or "failed when measured"
        rows.append(
            PlanRow(
                name=name,
                summary=plan.summary,
                peak_gib=m.peak_gib if m else None,
                step_s=m.step_s if m else None,
                image_s=m.image_s() if m else None,
                available=why is None,
                why_not=why,
                fidelity_db=fidelity_db(name, table),
            )
        )
    return rows
