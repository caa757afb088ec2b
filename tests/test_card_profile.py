"""The per-card choice: a card's measured figures are kept by key and re-measured when the key changes or the
file is damaged; `auto` projects each plan onto the card from them and says why it chose. The timing itself
needs CUDA (bench/quant8_probe.py runs it on a GPU); here `measure` is replaced by a recorder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine import card_profile
from engine import plans as catalog
from engine.plans import CardProfile, Measurement, choose_auto, plan_kernel, plan_rows
from engine.projection import projected_image_s

H100 = CardProfile("ref", "NVIDIA H100", (9, 0), {"bf16": 0.010, "fp8": 0.006, "int8": 0.007}, 55.0)
# A 4060 Ti-like card: 8x slower in bf16, FP8 1.6x faster than bf16 there, int8 refused by its driver.
ADA_HOME = CardProfile(
    "home", "RTX 4060 Ti", (8, 9), {"bf16": 0.080, "fp8": 0.050}, 12.0, refused={"int8": "RuntimeError: no"}
)
# An RTX 3060-like card: no FP8, int8 2x bf16.
AMPERE_HOME = CardProfile("3060", "RTX 3060", (8, 6), {"bf16": 0.120, "int8": 0.060}, 12.0, refused={"fp8": "old"})

TABLE = {
    m.plan: m
    for m in (
        Measurement("mixed_swap", 15.7, 0.30, 0.1, 0.4, measured_cap_gib=16, psnr_db=45.0),
        Measurement("fp8mm_swap", 7.0, 0.20, 0.1, 0.4, measured_cap_gib=8, psnr_db=44.6),
        Measurement("int8mm_swap", 7.0, 0.21, 0.1, 0.4, measured_cap_gib=8, psnr_db=43.2),
        Measurement("nf4_swap", 5.9, 0.22, 0.1, 0.4, measured_cap_gib=6, psnr_db=33.0),
    )
}


def test_projection_scales_the_step_by_the_plans_kernel_and_the_rest_by_bf16() -> None:
    m = TABLE["fp8mm_swap"]
    assert projected_image_s(m, plan_kernel(m.plan), None, None) == pytest.approx(m.image_s(50))
    here = projected_image_s(m, plan_kernel(m.plan), ADA_HOME, H100)
    assert here == pytest.approx((0.1 + 0.4) * 8.0 + 50 * 0.20 * (0.050 / 0.006))
    nf4 = projected_image_s(TABLE["nf4_swap"], "bf16", ADA_HOME, H100)
    assert nf4 == pytest.approx(0.5 * 8.0 + 50 * 0.22 * 8.0)  # 4-bit weights still multiply in bf16


def test_auto_picks_the_kernel_this_card_runs_fastest() -> None:
    # On the H100 itself FP8 is the fastest faithful plan; on the 3060 FP8 is refused and int8 wins.
    assert choose_auto(12.0, TABLE, capability=(9, 0), card=H100, reference=H100).plan.name == "fp8mm_swap"
    chosen = choose_auto(12.0, TABLE, capability=(8, 6), card=AMPERE_HOME, reference=H100)
    assert chosen.plan.name == "int8mm_swap"
    # The 4060 Ti's driver refused int8 when measured: never chosen there, even when asked for speed.
    assert choose_auto(12.0, TABLE, capability=(8, 9), card=ADA_HOME, reference=H100, quality="fastest").plan.name == (
        "fp8mm_swap"
    )
    with pytest.raises(catalog.PlanError, match="int8 matmul failed"):
        catalog.resolve("int8mm_swap", has_gpu=True, capability=(8, 9), card=ADA_HOME)


def test_a_card_where_8_bit_is_no_faster_keeps_4_bit_only_for_fastest() -> None:
    slow8 = CardProfile("s", "odd card", (8, 9), {"bf16": 0.05, "fp8": 0.06, "int8": 0.09}, 20.0)
    assert choose_auto(12.0, TABLE, capability=(8, 9), card=slow8, reference=H100, quality="fastest").plan.name == (
        "nf4_swap"
    )
    assert choose_auto(12.0, TABLE, capability=(8, 9), card=slow8, reference=H100).plan.name == "fp8mm_swap"


def test_rows_and_reason_say_measured_here_or_projected() -> None:
    rows = {
        r.name: r
        for r in plan_rows(
            TABLE, has_gpu=True, capability=(8, 9), card=ADA_HOME, reference=H100, seen_here={"fp8mm_swap": 99.0}
        )
    }
    assert rows["fp8mm_swap"].here_s == 99.0 and rows["fp8mm_swap"].here_measured
    assert rows["nf4_swap"].here_s == pytest.approx(projected_image_s(TABLE["nf4_swap"], "bf16", ADA_HOME, H100))
    assert not rows["nf4_swap"].here_measured
    assert not rows["int8mm_swap"].available and "int8 matmul failed" in (rows["int8mm_swap"].why_not or "")
    said = catalog.auto_reason("fp8mm_swap", "balanced", ADA_HOME, H100)
    assert "auto chose fp8mm_swap (QUALITY=balanced)" in said[0] and "43 dB" in said[0]
    assert "RTX 4060 Ti" in said[1] and "8.33x" in said[1] and "12 GB/s" in said[1]
    assert len(catalog.auto_reason("nf4_swap", "fastest", None, None)) == 1


def profile(key: str) -> CardProfile:
    return CardProfile(key, "Fake GPU", (8, 9), {"bf16": 0.1, "fp8": 0.05}, 20.0, measured_at="now")


def test_the_profile_is_kept_by_key_and_measured_again_when_the_key_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[str] = []
    key = {"now": "Fake GPU | driver 1 | torch 2"}

    def fake_measure(device: torch.device, config: dict, k: str | None = None) -> CardProfile:
        measured.append(k or "")
        return profile(k or "")

    monkeypatch.setattr(card_profile, "measure", fake_measure)
    monkeypatch.setattr(card_profile, "card_key", lambda device: key["now"])
    first = card_profile.load_or_measure(torch.device("cpu"), {}, tmp_path)
    again = card_profile.load_or_measure(torch.device("cpu"), {}, tmp_path)
    assert first == again and measured == [key["now"]], "measured once, then read back"
    assert json.loads((tmp_path / card_profile.FILE_NAME).read_text())["key"] == key["now"]
    key["now"] = "Fake GPU | driver 2 | torch 2"  # a driver update
    assert card_profile.load_or_measure(torch.device("cpu"), {}, tmp_path).key == key["now"]
    assert len(measured) == 2
    (tmp_path / card_profile.FILE_NAME).write_text("{not json")  # damaged: measured again, not trusted
    assert card_profile.load_or_measure(torch.device("cpu"), {}, tmp_path).key == key["now"]
    assert len(measured) == 3


def test_block_config_comes_from_the_transformer_config() -> None:
    config = {"num_attention_heads": 32, "attention_head_dim": 128, "time_embed_dim": 512, "num_layers": 28}
    assert card_profile.block_config_of(config) == {
        "dim": 4096,
        "num_attention_heads": 32,
        "attention_head_dim": 128,
        "time_embed_dim": 512,
    }


def test_memory_shows_each_plans_time_here_and_why_auto_chose_in_both_languages() -> None:
    from cogs.utils.reports import memory_report
    from tests.test_bot_messages import engine_status

    rows = plan_rows(TABLE, has_gpu=True, capability=(8, 9), card=ADA_HOME, reference=H100)
    status = engine_status(
        plan="fp8mm_swap",
        device_name="RTX 4060 Ti",
        free_vram_gib=7.3,
        plan_reason=catalog.auto_reason("fp8mm_swap", "balanced", ADA_HOME, H100),
    )
    english = memory_report(status, rows)
    line = next(line for line in english.splitlines() if "`fp8mm_swap`" in line)
    expected = projected_image_s(TABLE["fp8mm_swap"], "fp8", ADA_HOME, H100)
    assert f"here ~{expected:.0f} s/image (projected)" in line and "45 dB" in line
    assert "auto chose fp8mm_swap (QUALITY=balanced)" in english and "RTX 4060 Ti" in english
    chinese = memory_report(status, rows, "zh-CN")
    assert "auto 选择了 fp8mm_swap" in chinese and f"本机约 {expected:.0f} 秒/张（推算）" in chinese


def test_a_streamed_plan_is_projected_as_the_larger_of_its_compute_and_its_copies() -> None:
    """On a slow-compute card the copies hide behind the step; on a slow bus they set it — and auto says so."""
    streamed = Measurement(
        "fp8mm_stream", 3.0, 0.30, 0.5, 0.5, measured_cap_gib=4.0, stream_gib=2.0, compute_step_s=0.20
    )
    copies_s = 2.0 * 1024**3 / 1e9 / ADA_HOME.h2d_gbps
    compute_s = 0.20 * ADA_HOME.block_s["fp8"] / H100.block_s["fp8"]
    assert projected_image_s(streamed, "fp8", ADA_HOME, H100) == pytest.approx(
        1.0 * ADA_HOME.block_s["bf16"] / H100.block_s["bf16"] + 50 * max(compute_s, copies_s)
    )
    slow_bus = CardProfile("bus", "RTX 4060 on x4", (8, 9), dict(ADA_HOME.block_s), 0.5)
    assert projected_image_s(streamed, "fp8", slow_bus, H100) == pytest.approx(
        1.0 * ADA_HOME.block_s["bf16"] / H100.block_s["bf16"] + 50 * 2.0 * 1024**3 / 1e9 / 0.5
    )
    said = catalog.auto_reason("fp8mm_stream", "balanced", ADA_HOME, H100, streamed)
    assert any("streams 2.1 GB of weights a step" in s and f"({copies_s:.2f} s)" in s for s in said)


def test_a_streamed_plan_copies_less_on_a_card_with_more_free_memory_and_auto_times_it_so() -> None:
    """Measured on a 4 GiB card (3.3 free, 2 GiB a step); on a card with 1 GiB more free that GiB stays resident,
    with 3 GiB more nothing streams, with 1.3 GiB less 1.3 GiB more streams. The slow bus makes the copies decide,
    so the free memory decides the time."""
    streamed = Measurement(
        "fp8mm_stream", 3.0, 0.30, 0.5, 0.5, measured_cap_gib=3.3, stream_gib=2.0, compute_step_s=0.20, psnr_db=44.5
    )
    slow_bus = CardProfile("bus", "RTX 4060 on x4", (8, 9), dict(ADA_HOME.block_s), 0.5)
    phases = 1.0 * ADA_HOME.block_s["bf16"] / H100.block_s["bf16"]
    compute = 0.20 * ADA_HOME.block_s["fp8"] / H100.block_s["fp8"]
    for free, copied in ((None, 2.0), (3.3, 2.0), (2.0, 3.3), (4.3, 1.0), (6.3, 0.0), (9.0, 0.0)):
        expected = phases + 50 * max(compute, copied * 1024**3 / 1e9 / 0.5)
        assert projected_image_s(streamed, "fp8", slow_bus, H100, free_gib=free) == pytest.approx(expected)
    rows = plan_rows({"fp8mm_stream": streamed}, has_gpu=True, card=slow_bus, reference=H100, free_gib=4.3)
    here = next(r for r in rows if r.name == "fp8mm_stream").here_s
    assert here == pytest.approx(projected_image_s(streamed, "fp8", slow_bus, H100, free_gib=4.3))
    said = catalog.auto_reason("fp8mm_stream", "balanced", slow_bus, H100, streamed, free_gib=4.3)
    assert any(f"streams {1.0 * 1024**3 / 1e9:.1f} GB of weights a step" in s for s in said)
    # auto times it with the free memory it sees: a swap plan whose step (3.3 s here) lies between the stream
    # plan's with 2 GiB copied (4.3 s) and with 1 GiB copied (2.1 s) wins on the measured card, loses with 1 GiB more.
    swap = Measurement("fp8mm_swap", 3.0, 0.4, 0.1, 0.4, measured_cap_gib=3.3, psnr_db=44.5)
    table = {"fp8mm_stream": streamed, "fp8mm_swap": swap}
    for free, expected_plan in ((3.3, "fp8mm_swap"), (4.3, "fp8mm_stream")):
        chosen = choose_auto(free, table, capability=(8, 9), card=slow_bus, reference=H100)
        assert chosen.plan.name == expected_plan
