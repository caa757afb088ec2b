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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Literal

from engine.measurement import GIB, CardProfile, Measurement
from engine.notes import note as engine_note
from engine.projection import projected_image_s, speed_ratio, streamed_gib
from engine.types import PlanRow

# fp8: stored in float8 e4m3, computed in bf16 (diffusers layerwise casting), 8-bit quality at half of bf16.
# fp8mm / int8mm: stored in 8 bits and multiplied in 8 bits on the card's FP8 or int8 tensor cores
# (engine.quant8; the transformer only).
Quant = Literal["bf16", "nf4", "fp8", "fp8mm", "int8mm"]
# The matmul kernel a transformer format runs on: what a card is timed in (engine.card_profile).
COMPUTE_KERNEL: dict[str, str] = {"bf16": "bf16", "nf4": "bf16", "fp8": "bf16", "fp8mm": "fp8", "int8mm": "int8"}


class Placement(StrEnum):
    RESIDENT = "resident"  # every component on the GPU
    MODEL_OFFLOAD = "model_offload"  # diffusers enable_model_cpu_offload: whole models move in turn
    SEQUENTIAL = "sequential"  # diffusers enable_sequential_cpu_offload: every layer streams in
    GROUP_BLOCK = "group_block"  # diffusers group offload, block level, overlapped on a CUDA stream
    GROUP_LEAF = "group_leaf"  # diffusers group offload, leaf level, overlapped on a CUDA stream
    SWAP = "swap"  # transformer + VAE resident; the text encoder visits once per batch of prompts
    # as SWAP, but only the transformer blocks the card holds stay resident: the others stream in every pass,
    # behind the compute (engine.streaming)
    STREAM = "stream"


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
    fast = placement in (Placement.RESIDENT, Placement.SWAP, Placement.STREAM)
    return Plan(name, te, tr, placement, summary, fast, compile_only)


P = Placement
PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        _plan("bf16_fast", "bf16", "bf16", P.RESIDENT, "Everything on the GPU in bf16, batched CFG, compiled", True),
        _plan("bf16_resident", "bf16", "bf16", P.RESIDENT, "Everything on the GPU in bf16 (best quality, ~34 GiB)"),
        _plan("fp8mm_resident", "nf4", "fp8mm", P.RESIDENT, "FP8 matmuls, 4-bit text encoder, all on the GPU"),
        _plan("fp8mm_swap", "nf4", "fp8mm", P.SWAP, "FP8 matmuls (RTX 40/50), 4-bit text encoder visits per batch"),
        _plan("int8mm_resident", "nf4", "int8mm", P.RESIDENT, "int8 matmuls, 4-bit text encoder, all on the GPU"),
        _plan("int8mm_swap", "nf4", "int8mm", P.SWAP, "int8 matmuls (RTX 30), 4-bit text encoder visits per batch"),
        _plan("fp8mm_stream", "nf4", "fp8mm", P.STREAM, "FP8 matmuls, blocks that do not fit stream in each step"),
        _plan("int8mm_stream", "nf4", "int8mm", P.STREAM, "int8 matmuls, blocks that do not fit stream in each step"),
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


def plan_kernel(name: str) -> str:
    """The matmul kernel of a plan's transformer step ("bf16", "fp8" or "int8")."""
    return COMPUTE_KERNEL[PLANS[name].transformer]


# Plans that must never be attempted as asked, with the plan used instead and why.
REMAPS: dict[str, tuple[str, str]] = {
    "nf4_sequential": ("nf4_model_offload", engine_note("plan.sequential_nf4_crashes")),
}

# What works on a machine without a CUDA GPU (tests, CPU-only PCs): the plans whose transformer is bf16,
# FP8 or 8-bit matmuls, resident (diffusers quantizes with bitsandbytes only on a GPU); a streamed plan
# there streams half the blocks from one host buffer into another (nothing saved: the path, tested).
CPU_PLANS = (
    "bf16_resident",
    "mixed_resident",
    "fp8_resident",
    "fp8mm_resident",
    "int8mm_resident",
    "fp8mm_stream",
    "int8mm_stream",
)


class PlanError(ValueError):
    """An unknown or impossible plan; the message says what to pick instead."""


@dataclass(frozen=True)
class Resolved:
    plan: Plan
    note: str | None = None  # why the engine uses another plan than the one asked for


# The oldest GPUs each format runs on (compute capability): FP8 (storage or matmuls) from Ada (RTX 40xx, L4)
# and Hopper on, int8 matmuls from Ampere (RTX 30xx) on.
MIN_CAPABILITY: dict[str, tuple[int, int]] = {"fp8": (8, 9), "fp8mm": (8, 9), "int8mm": (8, 0)}


def kernel_refusal(name: str, capability: tuple[int, int] | None, card: CardProfile | None = None) -> str | None:
    """Why plan `name` cannot run on this GPU (None: it can, or the GPU is not known): its format needs a
    newer card, or the card's 8-bit matmul failed when it was measured here."""
    if capability is None:
        return None
    plan = PLANS[name]
    for quant in (plan.text_encoder, plan.transformer):
        needed = MIN_CAPABILITY.get(quant)
        if needed is not None and tuple(capability) < needed:
            major, minor = capability
            return engine_note(
                "plan.needs_capability",
                name=name,
                quant=quant,
                capability=f"{major}.{minor}",
                needed=f"{needed[0]}.{needed[1]}",
            )
    kernel = COMPUTE_KERNEL[plan.transformer]
    if card is not None and kernel in card.refused:
        return engine_note("plan.kernel_failed", name=name, kernel=kernel, error=card.refused[kernel])
    return None


def resolve(
    name: str, *, has_gpu: bool, capability: tuple[int, int] | None = None, card: CardProfile | None = None
) -> Resolved:
    """Map a requested plan name to one that can run here, explaining any change.

    `capability`: the GPU's CUDA compute capability when known (see MIN_CAPABILITY); `card`: its measured
    profile, whose failed 8-bit kernels rule their plans out."""
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
    refusal = kernel_refusal(name, capability, card) if has_gpu else None
    if refusal:
        raise PlanError(refusal)
    return Resolved(plan, note)


# --- the measured table -----------------------------------------------------------------------


# --- fidelity ---------------------------------------------------------------------------------

# Final-image PSNR against bf16 everywhere for one component in each format (same prompt and seed,
# 20 steps, full-size CogView4-6B with random weights on an H200). They stand in for a plan whose
# own PSNR was not measured. Random weights flatter 4-bit: real weights have outliers.
FORMAT_PSNR_DB: dict[tuple[str, str], float] = {
    ("transformer", "nf4"): 33.2,
    ("transformer", "fp8"): 44.1,
    ("transformer", "fp8mm"): 44.6,  # the same per-tensor FP8 recipe through torchao, same layers, 20 steps
    ("transformer", "int8mm"): 44.8,  # int8mm_swap as measured, its 4-bit text encoder included: a lower bound
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


# auto's rule, set by QUALITY, over the plans that fit the free VRAM and the machine's RAM, each timed as it
# would run on this card (`projected_image_s`):
#   balanced: the fastest plan of at least 43 dB (8-bit quality), unless it is more than 2x slower than the
#             fastest (a card whose only faithful plans stream every layer every step); else the fastest.
#   best:     the most faithful plan within 1.15x of the fastest (bf16 everywhere where it is that close).
#   fastest:  the fastest, whatever its fidelity (4-bit only where it is faster here or nothing else fits).
# Where that settles below 43 dB, swap plans proven on a card up to 15 % larger (NEAR_FIT) count too, with
# a note that they may run out of memory. bf16 everywhere is the reference (infinite dB).
FIDELITY_FLOOR_DB = 43.0
BALANCED_PATIENCE = 2.0
BEST_PATIENCE = 1.15
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


def table_card() -> CardProfile | None:
    """The figures of the GPU the committed table was measured on (None: not recorded)."""
    card = table_meta().get("card")
    return CardProfile.from_json(card) if card else None


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
    card: CardProfile | None = None,
    reference: CardProfile | None = None,
) -> Resolved:
    """The plan QUALITY's rule picks among those that fit in free VRAM and host RAM, timed on this card.

    `free_gib` None means no CUDA GPU: the CPU plan. `ram_gib`: the machine's RAM (None: unknown, not
    checked); `capability`: the GPU's compute capability (see MIN_CAPABILITY); `card` and `reference`: this
    card's measured profile and the table's GPU's, to project each plan's time here. If nothing fits the
    VRAM, the fastest plan within 15 % of it is tried, else the leanest, with a note saying why.
    """
    if free_gib is None:
        return Resolved(PLANS["bf16_resident"], engine_note("plan.cpu"))
    if quality not in Quality.__members__.values():
        raise PlanError(engine_note("plan.unknown_quality", quality=repr(quality), choices=", ".join(Quality)))
    rule = Quality(quality)
    candidates = [m for m in _usable(table, allow_compile) if kernel_refusal(m.plan, capability, card) is None]
    if not candidates:
        raise PlanError(engine_note("plan.none_measured"))
    candidates = [m for m in candidates if _fits_ram(m, ram_gib)]
    if not candidates:
        raise PlanError(engine_note("plan.no_ram", ram=f"{ram_gib:.1f}", reserve=f"{HOST_RESERVE_GIB:.0f}"))

    def seconds(m: Measurement) -> float:
        return projected_image_s(m, plan_kernel(m.plan), card, reference, steps, free_gib)

    fitting = [m for m in candidates if m.need_gib() <= free_gib]
    near = [m for m in candidates if m.need_gib() <= free_gib * NEAR_FIT]
    if fitting:
        pick = _by_quality(fitting, table, rule, seconds)
        if _db(pick, table) < FIDELITY_FLOOR_DB and rule is not Quality.FASTEST:
            # Below 8-bit quality: a swap plan proven on a card up to 15 % larger is tried first (a 12 GB card
            # beside a desktop keeps the 8-bit tier). Swap plans shrink to fit; an OOM steps down.
            swaps = [m for m in near if m not in fitting and PLANS[m.plan].placement is Placement.SWAP]
            pick = _by_quality(fitting + swaps, table, rule, seconds)
    elif near:
        pick = min(near, key=seconds)
    else:
        # Stream plans shrink further than any other: more blocks stream on a smaller card. A measured one
        # first (the fastest here), else one this card's kernels run that has no row yet.
        measured = [m for m in candidates if PLANS[m.plan].placement is Placement.STREAM]
        if measured:
            pick = min(measured, key=seconds)
            note = engine_note(
                "plan.stream_smaller", free=f"{free_gib:.1f}", plan=pick.plan, need=f"{pick.need_gib():.1f}"
            )
            return Resolved(PLANS[pick.plan], note)
        streamed = _unmeasured_stream_plan(table, capability, card)
        if streamed is not None:
            return Resolved(
                PLANS[streamed], engine_note("plan.stream_unmeasured", free=f"{free_gib:.1f}", plan=streamed)
            )
        pick = min(candidates, key=lambda m: m.need_gib())
    if pick.need_gib() <= free_gib:
        return Resolved(PLANS[pick.plan])
    return Resolved(
        PLANS[pick.plan],
        engine_note("plan.tight", free=f"{free_gib:.1f}", plan=pick.plan, need=f"{pick.need_gib():.1f}"),
    )


# Built for cards too small for every measured plan; used there before any row of theirs is measured.
STREAM_PLANS = ("fp8mm_stream", "int8mm_stream")


def _unmeasured_stream_plan(
    table: dict[str, Measurement], capability: tuple[int, int] | None, card: CardProfile | None
) -> str | None:
    """The 8-bit stream plan this card's kernels run, where it has no table row yet (None: the card's
    capability is unknown, or neither runs here)."""
    if capability is None:
        return None
    for name in STREAM_PLANS:
        if name not in table and kernel_refusal(name, capability, card) is None:
            return name
    return None


def _db(m: Measurement, table: dict[str, Measurement]) -> float:
    value = fidelity_db(m.plan, table)
    return math.inf if value is None else value


def _by_quality(
    fitting: list[Measurement], table: dict[str, Measurement], quality: Quality, seconds: Callable[[Measurement], float]
) -> Measurement:
    def speed(m: Measurement) -> tuple[float, float]:
        return (seconds(m), m.need_gib())

    fastest = min(fitting, key=speed)
    if quality is Quality.FASTEST:
        return fastest
    if quality is Quality.BEST:
        close = [m for m in fitting if seconds(m) <= BEST_PATIENCE * seconds(fastest)]
        return max(close, key=lambda m: (_db(m, table), -seconds(m)))
    faithful = [m for m in fitting if _db(m, table) >= FIDELITY_FLOOR_DB]
    if not faithful:
        return fastest
    pick = min(faithful, key=speed)
    return pick if seconds(pick) <= BALANCED_PATIENCE * seconds(fastest) else fastest


def plan_rows(
    table: dict[str, Measurement],
    *,
    has_gpu: bool | None,
    capability: tuple[int, int] | None = None,
    card: CardProfile | None = None,
    reference: CardProfile | None = None,
    seen_here: dict[str, float] | None = None,
    free_gib: float | None = None,
) -> list[PlanRow]:
    """Every plan with its measured cost, fidelity, its time per image on this card and, if it cannot be
    used, why (what /memory and the doctor show).

    `has_gpu` None: the machine is not known here (a bot whose workers run elsewhere). `seen_here`: s/image
    the engine measured here, by plan (the plan in use); the others are projected from `card` and the free
    memory auto chose with (`free_gib`)."""
    rows = []
    for name, plan in PLANS.items():
        m = table.get(name)
        why = None
        if has_gpu is not None:
            try:
                resolve(name, has_gpu=has_gpu, capability=capability, card=card)
            except PlanError as exc:
                why = str(exc)
        if name in REMAPS:
            why = REMAPS[name][1]
        elif m is not None and not m.ok:
            why = m.note or "failed when measured"
        here = (seen_here or {}).get(name)
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
                need_gib=m.need_gib() if m else None,
                here_s=(
                    here
                    if here is not None
                    else projected_image_s(m, plan_kernel(name), card, reference, free_gib=free_gib)
                    if m and card
                    else None
                ),
                here_measured=here is not None,
            )
        )
    return rows


def auto_reason(
    chosen: str,
    quality: str,
    card: CardProfile | None,
    reference: CardProfile | None,
    measured: Measurement | None = None,
    free_gib: float | None = None,
) -> tuple[str, ...]:
    """Why auto chose this plan, in a sentence or two: QUALITY's rule and, where the card was measured,
    what its times here rest on (for a streamed plan, its compute against its copies at this card's bus
    speed; `measured`: the plan's table row; `free_gib`: the free memory it was chosen with)."""
    rule = Quality(quality)
    if rule is Quality.BEST:
        said = [engine_note("plan.reason.best", plan=chosen, patience=BEST_PATIENCE)]
    elif rule is Quality.FASTEST:
        said = [engine_note("plan.reason.fastest", plan=chosen)]
    else:
        said = [engine_note("plan.reason.balanced", plan=chosen, floor=f"{FIDELITY_FLOOR_DB:.0f}")]
    if card is not None and reference is not None:
        step, bf16 = speed_ratio(plan_kernel(chosen), card, reference)
        said.append(
            engine_note(
                "plan.projected",
                gpu=card.gpu,
                kernel=plan_kernel(chosen),
                ratio=f"{step:.2f}",
                bf16=f"{bf16:.2f}",
                reference=reference.gpu,
                gbps=f"{card.h2d_gbps:.0f}",
            )
        )
        if measured is not None and measured.stream_gib:
            gigabytes = streamed_gib(measured, free_gib) * GIB / 1e9
            said.append(
                engine_note(
                    "plan.streamed",
                    plan=chosen,
                    gb=f"{gigabytes:.1f}",
                    compute=f"{(measured.compute_step_s or measured.step_s) * step:.2f}",
                    copies=f"{gigabytes / card.h2d_gbps:.2f}",
                )
            )
    return tuple(said)
