"""`auto`: the fastest measured plan that fits the free VRAM, from the committed table."""

from __future__ import annotations

import pytest

from engine import plans as catalog
from engine.plans import Measurement, choose_auto, leaner_plans, load_table

SYNTHETIC = {
    m.plan: m
    for m in (
        Measurement("bf16_fast", 34.7, 0.20, 0.1, 0.2),
        Measurement("bf16_resident", 34.7, 0.32, 0.1, 0.2),
        Measurement("mixed_swap", 15.7, 0.30, 0.1, 0.4, measured_cap_gib=16),
        Measurement("nf4_resident", 15.3, 0.35, 0.1, 0.2),
        Measurement("nf4_swap", 5.9, 0.36, 0.1, 1.2, measured_cap_gib=6),
        Measurement("nf4_model_offload", 6.5, 0.36, 0.1, 3.3),
        Measurement("bf16_sequential", 5.7, 6.5, 11.5, 0.4),
        Measurement("nf4_sequential", 0, 0, 0, 0, ok=False),
    )
}


@pytest.mark.parametrize(
    ("free_gib", "compile_ok", "expected", "warns"),
    [
        (80.0, True, "bf16_fast", False),
        (80.0, False, "mixed_swap", False),  # without torch.compile the fast plan is not offered
        (40.0, True, "bf16_fast", False),
        (34.8, True, "mixed_swap", False),  # 34.7 GiB peak + headroom does not fit in 34.8
        (24.0, True, "mixed_swap", False),
        (16.0, True, "mixed_swap", False),
        # Below that only 4-bit transformers fit; the bf16 swap plan proven at 16 GiB is tried first (within 15 %).
        (15.9, True, "mixed_swap", True),
        (15.0, True, "mixed_swap", True),
        (13.5, True, "nf4_swap", False),
        (8.0, True, "nf4_swap", False),
        (6.0, True, "nf4_swap", False),
        (5.6, True, "nf4_swap", True),  # within 15 %: still the best bet, with a warning
        (5.3, True, "nf4_swap", True),  # a real 6 GB card (its CUDA context takes 0.7 GiB)
        (4.0, True, "bf16_sequential", True),  # nothing close: the leanest, with a warning
    ],
)
def test_auto_picks_the_fastest_plan_that_fits(free_gib: float, compile_ok: bool, expected: str, warns: bool) -> None:
    chosen = choose_auto(free_gib, SYNTHETIC, allow_compile=compile_ok)
    assert chosen.plan.name == expected
    assert (chosen.note is not None) == warns


@pytest.mark.parametrize(("free_gib", "expected"), [(15.9, "nf4_resident"), (15.0, "nf4_swap")])
def test_fastest_quality_takes_the_4_bit_plan_that_fits_rather_than_a_near_fit(free_gib: float, expected: str) -> None:
    chosen = choose_auto(free_gib, SYNTHETIC, quality="fastest")
    assert chosen.plan.name == expected and chosen.note is None


def test_no_gpu_means_the_cpu_plan() -> None:
    chosen = choose_auto(None, SYNTHETIC)
    assert chosen.plan.name == "bf16_resident" and chosen.note and "CPU" in chosen.note


def test_broken_plans_are_never_chosen_or_stepped_down_to() -> None:
    for free in (0.5, 3.0, 6.0, 100.0):
        assert choose_auto(free, SYNTHETIC).plan.name != "nf4_sequential"
    assert "nf4_sequential" not in leaner_plans("bf16_resident", SYNTHETIC)
    assert leaner_plans("mixed_swap", SYNTHETIC)[0] == "nf4_resident"
    assert leaner_plans("nf4_swap", SYNTHETIC) == ["bf16_sequential"]


def test_the_committed_table_is_measured_data_for_known_plans() -> None:
    table = load_table()
    meta = catalog.table_meta()
    assert "bench/plans.py" in meta["source"] and meta["gpu"]
    assert set(table) <= set(catalog.PLANS)
    assert not table["nf4_sequential"].ok
    for m in table.values():
        if m.ok:
            assert m.peak_gib > 0 and m.step_s > 0
    # What the measured table implies for common cards (fails if a new measurement changes the picture).
    # An RTX 40/50 card from 6 GB up gets the FP8 stream plan (8-bit quality, measured on a real 6 GB card's
    # room: its CUDA context takes 0.68 GiB; as fast there as the 4-bit plan, and a larger card streams less).
    for card_gib in (6.0, 8.0, 12.0):
        real = choose_auto(card_gib - 0.68, table, capability=(8, 9))
        assert real.plan.name == "fp8mm_stream" and real.note is None, card_gib
    # An RTX 30 card has no FP8 and no measured int8 stream plan: 4-bit up to 8 GB, int8 matmuls at 12 GB.
    assert choose_auto(6.0 - 0.68, table, capability=(8, 6)).plan.name == "nf4_swap"
    assert choose_auto(8.0 - 0.68, table, capability=(8, 6)).plan.name == "nf4_swap"
    assert choose_auto(12.0 - 0.68, table, capability=(8, 6)).plan.name == "int8mm_swap"
    # An 8 GB card beside a desktop that holds 0.8 GiB keeps the stream plan with no warning (it was proven with
    # less); `fastest` takes the 4-bit plan.
    desktop_8gb = choose_auto(8.0 - 0.68 - 0.8, table, capability=(8, 9))
    assert desktop_8gb.plan.name == "fp8mm_stream" and desktop_8gb.note is None
    assert choose_auto(8.0 - 0.68 - 0.8, table, capability=(8, 9), quality="fastest").plan.name == "nf4_swap"
    assert choose_auto(8.0 - 0.68 - 0.8, table, capability=(8, 6)).plan.name == "nf4_swap", "no FP8 on Ampere"
    # Nothing faithful fits an RTX 30 12 GB card beside a desktop: the int8 swap plan proven on the whole card is
    # tried (it shrinks to fit), with a warning.
    desktop_12gb_ampere = choose_auto(12.0 - 0.68 - 0.8, table, capability=(8, 6))
    assert desktop_12gb_ampere.plan.name == "int8mm_swap" and desktop_12gb_ampere.note, "int8 matmuls on RTX 30"
    assert "may run out of memory" in desktop_12gb_ampere.note
    assert choose_auto(24.0, table).plan.name == "mixed_swap"
    assert choose_auto(79.0, table, allow_compile=True).plan.name == "bf16_fast"


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((8, 9), "fp8mm_stream"), ((12, 0), "fp8mm_stream"), ((8, 6), "int8mm_stream"), ((7, 5), "bf16_sequential")],
)
def test_a_card_too_small_for_every_measured_plan_gets_the_stream_plan_its_kernels_run(
    capability: tuple[int, int], expected: str
) -> None:
    """4 GiB: nothing measured fits, not even within 15 %. An RTX 40/50 card gets the FP8 stream plan and an
    RTX 30 the int8 one, with a note that they are not measured yet; an older card keeps the leanest measured
    plan. Once a stream plan has a row, it is chosen by its measurement like every other plan."""
    chosen = choose_auto(4.0, SYNTHETIC, capability=capability)
    assert chosen.plan.name == expected and chosen.note is not None
    if expected.endswith("_stream"):
        assert "not measured on a GPU yet" in chosen.note and "4.0 GiB" in chosen.note
    measured = {**SYNTHETIC, "fp8mm_stream": Measurement("fp8mm_stream", 3.0, 0.4, 0.1, 0.3, measured_cap_gib=3.32)}
    if capability >= (8, 9):
        again = choose_auto(4.0, measured, capability=capability)
        assert again.plan.name == "fp8mm_stream" and again.note is None


@pytest.mark.parametrize(("capability", "expected"), [((8, 9), "fp8mm_stream"), ((8, 6), "int8mm_stream")])
def test_a_card_smaller_than_a_stream_plan_was_measured_on_still_gets_it_streaming_more(
    capability: tuple[int, int], expected: str
) -> None:
    """A stream plan measured on a 6 GiB card (5.32 free) is what a 4 GiB card (3.32 free) gets too, more of its
    blocks streamed, with a note saying so: not an unmeasured plan, and not a leaner plan of another kind. An
    RTX 30 card cannot run the measured FP8 plan, so it gets the int8 one, unmeasured."""
    measured = {
        **SYNTHETIC,
        "fp8mm_stream": Measurement("fp8mm_stream", 5.1, 0.31, 0.1, 0.3, measured_cap_gib=5.32, stream_gib=4.3),
    }
    chosen = choose_auto(3.32, measured, capability=capability)
    assert chosen.plan.name == expected and chosen.note is not None
    if expected == "fp8mm_stream":
        assert "Only 3.3 GiB free" in chosen.note and "measured with 5.3 GiB" in chosen.note
    else:
        assert "not measured on a GPU yet" in chosen.note
