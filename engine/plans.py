"""Memory plans: which precision each component has and where it lives.

A plan is data: quantization per component plus a placement. The loader and the
placement code read it; `auto` picks from the table of measured peak memory and
speed in `plan_table.json` (written by bench/plans.py on a real GPU, not guessed).
No torch here: the Discord side lists plans and the doctor explains choices
without touching CUDA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Literal

from engine.types import PlanRow

Quant = Literal["bf16", "nf4"]

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
    # Fast path for big cards: cond+uncond in one batched forward, cuDNN/flash attention, torch.compile.
    fast: bool = False

    @property
    def uses_nf4(self) -> bool:
        return "nf4" in (self.text_encoder, self.transformer)

    @property
    def needs_gpu(self) -> bool:
        return self.placement is not Placement.RESIDENT or self.transformer == "nf4" or self.fast

    def quant_key(self) -> tuple[Quant, Quant]:
        """Two plans with the same key share loaded weights: switching needs no reload."""
        return (self.text_encoder, self.transformer)


def _plan(name: str, te: Quant, tr: Quant, placement: Placement, summary: str, fast: bool = False) -> Plan:
    return Plan(name, te, tr, placement, summary, fast)


P = Placement
PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        _plan("bf16_fast", "bf16", "bf16", P.RESIDENT, "Everything on the GPU in bf16, batched CFG, compiled", True),
        _plan("bf16_resident", "bf16", "bf16", P.RESIDENT, "Everything on the GPU in bf16 (best quality, ~34 GiB)"),
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
    "nf4_sequential": (
        "nf4_model_offload",
        "4-bit weights with sequential CPU offload crash inside diffusers/accelerate "
        '("Cannot copy out of meta tensor; no data!"); 4-bit with model offload fits the same '
        "small cards and is much faster",
    ),
}

# What works on a machine without a CUDA GPU (tests, CPU-only PCs): the resident plans whose
# transformer is bf16 (diffusers quantizes transformers with bitsandbytes only on a GPU).
CPU_PLANS = ("bf16_resident", "mixed_resident")


class PlanError(ValueError):
    """An unknown or impossible plan; the message says what to pick instead."""


@dataclass(frozen=True)
class Resolved:
    plan: Plan
    note: str | None = None  # why the engine uses another plan than the one asked for


def resolve(name: str, *, has_gpu: bool) -> Resolved:
    """Map a requested plan name to one that can run here, explaining any change."""
    if name not in PLANS:
        raise PlanError(f"Unknown memory plan {name!r}. Choose auto or one of: {', '.join(PLANS)}.")
    note = None
    if name in REMAPS:
        target, why = REMAPS[name]
        note = f"{name} is not used: {why}. Using {target} instead."
        name = target
    plan = PLANS[name]
    if not has_gpu and name not in CPU_PLANS:
        raise PlanError(
            f"{name} needs an NVIDIA GPU with CUDA, and none is available here. "
            f"On this machine use one of: {', '.join(CPU_PLANS)}."
        )
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

    def image_s(self, steps: int = 50) -> float:
        return self.encode_s + steps * self.step_s + self.decode_s

    def need_gib(self) -> float:
        """VRAM this plan needs: the cap it was proven under, else its measured peak plus headroom."""
        return self.measured_cap_gib if self.measured_cap_gib else self.peak_gib + SAFETY_GIB


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
        if m.ok and m.plan in PLANS and m.plan not in REMAPS and (allow_compile or not PLANS[m.plan].fast)
    ]


# A plan measured a little above the free memory is still worth trying before a much slower one:
# swap plans shrink to fit, and an OOM steps down anyway.
NEAR_FIT = 1.1


def choose_auto(
    free_gib: float | None,
    table: dict[str, Measurement],
    *,
    steps: int = 50,
    allow_compile: bool = True,
) -> Resolved:
    """The fastest measured plan that fits in free VRAM.

    `free_gib` None means no CUDA GPU: the CPU plan. If nothing fits, the fastest plan
    within 10 % of the free memory is tried, else the leanest, with a note saying why.
    """
    if free_gib is None:
        return Resolved(PLANS["bf16_resident"], "No CUDA GPU found: running on the CPU (very slow).")
    candidates = _usable(table, allow_compile)
    if not candidates:
        raise PlanError("No measured plan is available; run bench/plans.py or pick a plan by name.")
    fitting = [m for m in candidates if m.need_gib() <= free_gib]
    if fitting:
        best = min(fitting, key=lambda m: (m.image_s(steps), m.need_gib()))
        return Resolved(PLANS[best.plan])
    near = [m for m in candidates if m.need_gib() <= free_gib * NEAR_FIT]
    pick = min(near, key=lambda m: m.image_s(steps)) if near else min(candidates, key=lambda m: m.need_gib())
    return Resolved(
        PLANS[pick.plan],
        f"Only {free_gib:.1f} GiB of GPU memory is free; {pick.plan} was measured needing "
        f"{pick.need_gib():.1f} GiB, so it may run out of memory. Close other GPU programs.",
    )


def plan_rows(table: dict[str, Measurement], *, has_gpu: bool | None) -> list[PlanRow]:
    """Every plan with its measured cost and, if it cannot be used, why (what /memory shows).

    `has_gpu` None: the machine is not known here (a bot whose workers run elsewhere)."""
    rows = []
    for name, plan in PLANS.items():
        m = table.get(name)
        why = None
        if has_gpu is not None:
            try:
                resolve(name, has_gpu=has_gpu)
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
            )
        )
    return rows
