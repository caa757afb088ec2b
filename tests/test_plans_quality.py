"""The 8-bit tier and the fidelity rule: which plans may run where, and what `auto` picks for a
(VRAM, RAM, QUALITY, GPU generation) case. Table-driven, no GPU needed."""

from __future__ import annotations

import pytest

from engine import plans as catalog
from engine.plans import Measurement, PlanError, choose_auto, estimated_psnr, load_table, plan_rows, resolve

ADA, AMPERE, TURING = (8, 9), (8, 6), (7, 5)

TABLE = {
    m.plan: m
    for m in (
        Measurement("bf16_fast", 34.7, 0.20, 0.1, 0.2, psnr_db=45.1),
        Measurement("bf16_resident", 34.7, 0.32, 0.1, 0.2),
        Measurement("mixed_resident", 23.9, 0.31, 0.1, 0.2, psnr_db=45.0),
        Measurement("mixed_swap", 15.7, 0.30, 0.1, 0.4, measured_cap_gib=16, psnr_db=45.0, host_gib=20.0),
        Measurement("fp8mm_resident", 14.5, 0.22, 0.1, 0.4, psnr_db=44.6),
        Measurement("fp8mm_swap", 7.0, 0.25, 0.1, 0.4, measured_cap_gib=8, psnr_db=44.6, host_gib=9.0),
        Measurement("int8mm_swap", 7.0, 0.32, 0.1, 0.4, measured_cap_gib=8, psnr_db=43.5, host_gib=9.0),
        Measurement("fp8_resident", 18.9, 0.40, 0.1, 0.2, psnr_db=44.1),
        Measurement("fp8_swap", 9.5, 0.42, 0.1, 1.2, measured_cap_gib=12, psnr_db=44.1, host_gib=9.0),
        Measurement("nf4_resident", 15.3, 0.35, 0.1, 0.2, psnr_db=32.9),
        Measurement("nf4_swap", 5.9, 0.36, 0.1, 1.2, measured_cap_gib=6, psnr_db=32.9, host_gib=8, host_peak_gib=11),
        Measurement("bf16_group_block", 6.5, 1.09, 0.1, 0.3, measured_cap_gib=8, host_gib=4.0),
        Measurement("bf16_sequential", 5.7, 6.5, 11.5, 0.4, host_gib=3.0),
    )
}


@pytest.mark.parametrize(
    ("free_gib", "ram_gib", "quality", "capability", "expected"),
    [
        (80.0, 64.0, "balanced", ADA, "bf16_fast"),  # the fastest plan that fits is also faithful
        (80.0, 64.0, "best", ADA, "bf16_fast"),  # bf16 within 1.15x of the fastest: best keeps it
        (24.0, 64.0, "balanced", ADA, "fp8mm_resident"),  # FP8 matmuls: faster than bf16, 44.6 dB
        (24.0, 64.0, "best", ADA, "fp8mm_resident"),  # mixed_swap (45 dB) is 1.35x slower
        (24.0, 64.0, "balanced", AMPERE, "mixed_swap"),  # no FP8 here; int8 (43.5 dB) is slower than bf16 here
        (12.0, 64.0, "balanced", ADA, "fp8mm_swap"),
        (12.0, 64.0, "fastest", ADA, "fp8mm_swap"),  # 8-bit is also the fastest: 4-bit only where it is faster
        (12.0, 64.0, "best", ADA, "fp8mm_swap"),
        (12.0, 64.0, "balanced", AMPERE, "int8mm_swap"),  # RTX 30: int8 matmuls instead of FP8
        (12.0, 64.0, "balanced", TURING, "nf4_swap"),  # no 8-bit tensor cores; bf16 streaming is 3x slower
        (12.0, 64.0, "balanced", None, "fp8mm_swap"),  # GPU generation unknown: not held against FP8
        (8.0, 64.0, "balanced", ADA, "fp8mm_swap"),  # 8-bit where only 4-bit fitted before
        (8.0, 64.0, "best", ADA, "fp8mm_swap"),
        (6.0, 64.0, "balanced", ADA, "nf4_swap"),  # nothing 8-bit fits: 4-bit as the last resort
        (6.0, 64.0, "best", ADA, "nf4_swap"),  # the only faithful plan that fits is 17x slower
        (12.0, 10.5, "balanced", ADA, "bf16_group_block"),  # no plan needing more RAM than there is
        (12.0, 12.5, "fastest", ADA, "fp8mm_swap"),  # nf4_swap peaks at 11 GiB, + 2 GiB left to the OS
        (24.0, 21.0, "balanced", AMPERE, "int8mm_swap"),  # mixed_swap holds 20 GiB of host RAM, int8mm_swap 9
        (24.0, None, "balanced", AMPERE, "mixed_swap"),  # RAM unknown: not checked
    ],
)
def test_auto_trades_fidelity_only_as_quality_allows(
    free_gib: float, ram_gib: float | None, quality: str, capability: tuple[int, int] | None, expected: str
) -> None:
    chosen = choose_auto(free_gib, TABLE, quality=quality, ram_gib=ram_gib, capability=capability)
    assert chosen.plan.name == expected
    assert chosen.note is None


def test_without_compile_the_compiled_measurement_is_not_offered() -> None:
    assert choose_auto(80.0, TABLE, allow_compile=False).plan.name == "fp8mm_resident"
    assert choose_auto(80.0, TABLE, allow_compile=False, capability=AMPERE).plan.name == "mixed_swap"


def test_quality_is_checked_and_ram_can_rule_out_everything() -> None:
    with pytest.raises(PlanError, match="QUALITY"):
        choose_auto(24.0, TABLE, quality="ultra")
    measured_ram = {name: m for name, m in TABLE.items() if m.ram_need_gib() is not None}
    with pytest.raises(PlanError, match="RAM"):
        choose_auto(24.0, measured_ram, ram_gib=4.0)


@pytest.mark.parametrize(
    ("name", "has_gpu", "capability", "refused"),
    [
        ("fp8_swap", True, ADA, None),
        ("fp8_swap", True, (9, 0), None),
        ("fp8_swap", True, (12, 0), None),
        ("fp8_swap", True, None, None),
        ("fp8_swap", True, AMPERE, "8.9"),
        ("fp8_resident", True, TURING, "8.9"),
        ("fp8_swap", False, None, "NVIDIA GPU"),
        ("fp8_resident", False, None, None),  # FP8 storage also runs on the CPU
        ("nf4_swap", True, TURING, None),
        ("mixed_swap", True, AMPERE, None),
    ],
)
def test_fp8_plans_are_refused_on_gpus_without_fp8(
    name: str, has_gpu: bool, capability: tuple[int, int] | None, refused: str | None
) -> None:
    if refused is None:
        assert resolve(name, has_gpu=has_gpu, capability=capability).plan.name == name
    else:
        with pytest.raises(PlanError, match=refused):
            resolve(name, has_gpu=has_gpu, capability=capability)


def test_plan_rows_show_fidelity_and_why_fp8_is_unavailable() -> None:
    rows = {row.name: row for row in plan_rows(TABLE, has_gpu=True, capability=AMPERE)}
    assert not rows["fp8_swap"].available and "FP8" in (rows["fp8_swap"].why_not or "")
    assert rows["mixed_swap"].available
    assert rows["nf4_swap"].fidelity_db == 32.9
    assert rows["bf16_resident"].fidelity_db is None, "the reference itself"
    assert rows["bf16_model_offload"].fidelity_db is None
    assert rows["nf4_model_offload"].fidelity_db == estimated_psnr(catalog.PLANS["nf4_model_offload"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bf16_resident", None), ("mixed_swap", 45.0), ("nf4_swap", 32.9), ("fp8_swap", 41.5), ("fp8mm_swap", 41.8)],
)
def test_estimated_fidelity_adds_the_errors_of_each_component(name: str, expected: float | None) -> None:
    assert estimated_psnr(catalog.PLANS[name]) == expected


def test_the_committed_table_carries_fidelity_and_says_where_it_came_from() -> None:
    table = load_table()
    meta = catalog.table_meta()
    # The noise floor (a kernel change alone) is the compiled bf16 plan's PSNR against bf16_resident.
    assert meta["fidelity"]["noise_floor_db"] == table["bf16_fast"].psnr_db
    assert "estimated" in meta["fidelity"]
    assert table["fp8_swap"].psnr_db and table["fp8_swap"].psnr_db >= 40
    assert table["nf4_swap"].psnr_db and table["nf4_swap"].psnr_db < 40
    for eight_bit in ("fp8mm_swap", "int8mm_swap", "fp8mm_stream"):
        assert (table[eight_bit].psnr_db or 0) >= catalog.FIDELITY_FLOOR_DB
    # What the rule implies for common cards with the committed table: 8-bit matmuls where the card has them.
    assert choose_auto(12.0, table, capability=ADA).plan.name == "fp8mm_stream"
    assert choose_auto(8.0 - 0.68, table, capability=ADA).plan.name == "fp8mm_stream"
    assert choose_auto(6.0 - 0.68, table, capability=ADA).plan.name == "fp8mm_stream"
    assert choose_auto(12.0 - 0.68, table, capability=AMPERE).plan.name == "int8mm_swap"
    assert choose_auto(8.0 - 0.68, table, capability=AMPERE).plan.name == "nf4_swap", "int8 not proven at 8 GiB"
    assert choose_auto(8.0, table, quality="fastest").plan.name == "nf4_swap"
    # Eager, the 4-bit plan with batched CFG is a little faster (its passes need less room): `fastest` takes it,
    # `balanced` keeps the 8-bit transformer, being well within 2x of it.
    assert table["nf4_swap"].image_s(50) < table["fp8_swap"].image_s(50) < 2 * table["nf4_swap"].image_s(50)
    assert choose_auto(12.0, table, quality="fastest", capability=ADA).plan.name == "nf4_swap"


def test_doctor_without_a_gpu_says_so_instead_of_naming_a_gpu_plan() -> None:
    from tools.doctor import report

    doctor = report("THUDM/CogView4-6B")
    assert "would use" not in doctor
    assert "auto (QUALITY=balanced): no CUDA GPU here, so the engine would run bf16_resident on the CPU" in doctor


def test_doctor_and_memory_show_fidelity_beside_speed_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import tools.doctor
    from cogs.utils.reports import memory_report
    from engine import device
    from engine.types import EngineState, EngineStatus
    from tools.doctor import report

    # A 12 GiB RTX 40-class card whose blocks run 8x slower than the table's GPU (the timing needs CUDA).
    here = catalog.CardProfile("k", "RTX 4070", (8, 9), {"bf16": 0.08, "fp8": 0.05}, 24.0)
    reference = catalog.CardProfile("r", "NVIDIA H100", (9, 0), {"bf16": 0.01, "fp8": 0.006, "int8": 0.007}, 55.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device, "gpu_info", lambda: device.GpuInfo("RTX 4070", 12.0, 11.3, (8, 9)))
    monkeypatch.setattr(tools.doctor, "measure_card", lambda model_id, cache_dir: here)
    monkeypatch.setattr(catalog, "table_card", lambda: reference)
    doctor = report("THUDM/CogView4-6B", quality="best")
    assert "auto (QUALITY=best) would use:" in doctor
    assert "auto chose" in doctor and "projected from one transformer block timed here" in doctor
    assert "This card, one transformer block at 1024²: bf16 80.0 ms, fp8 50.0 ms; host → GPU 24.0 GB/s" in doctor
    assert "here (projected)" in doctor
    fp8 = next(line for line in doctor.splitlines() if line.strip().startswith("fp8_swap"))
    nf4 = next(line for line in doctor.splitlines() if line.strip().startswith("nf4_swap"))
    assert "44.1 dB" in fp8 and "GiB" in fp8 and " s " in fp8
    assert "33.1 dB" in nf4
    status = EngineStatus(
        state=EngineState.READY,
        requested_mode="auto",
        plan="fp8_swap",
        plan_note=None,
        load_message="",
        load_fraction=1.0,
        device_name="GPU",
        free_vram_gib=None,
        step_s=None,
        jobs_done=0,
        jobs_failed=0,
        started_at=0.0,
    )
    text = memory_report(status, catalog.plan_rows(load_table(), has_gpu=None))
    line = next(line for line in text.splitlines() if "`fp8_swap`" in line)
    assert "44 dB" in line and "GiB" in line
    assert "reference" in next(line for line in text.splitlines() if "`bf16_resident`" in line)
