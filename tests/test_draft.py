"""Draft mode on the tiny CogView4 (CPU): the step cache changes nothing where it never skips, skips blocks at
a high threshold and still makes an image, and leaves the transformer as it was afterwards — with batched CFG
and with two passes, eager and under per-block torch.compile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.attention import install
from engine.runner import Runner, RunnerOptions
from engine.stepcache import DRAFT_THRESHOLD
from jobrequest import DRAFT_SPEEDUP, JobRequest, estimate_seconds
from tests.test_batched_cfg import make_runner

NEVER_SKIPS = -1.0  # the relative change is never below it
ALWAYS_SKIPS = 1e9


def draw(runner: Runner, threshold: float | None, steps: int = 4) -> tuple[np.ndarray, int, int]:
    image, timings = runner.generate(
        prompt="a lighthouse at dusk",
        negative_prompt="fog",
        width=64,
        height=64,
        steps=steps,
        guidance=5.0,
        seed=9,
        cache_threshold=threshold,
    )
    return np.asarray(image), timings.passes, timings.skipped_passes


@pytest.fixture(scope="module", params=["two passes", "batched"])
def runner(request: pytest.FixtureRequest, tiny_model: Path) -> Runner:
    runner = make_runner(tiny_model, "bf16_resident")
    if request.param == "batched":
        install(runner.pipe.transformer)
        runner.options = RunnerOptions(batched_cfg=True, text_bucket=64)
    return runner


def test_a_draft_that_never_skips_is_bit_identical(runner: Runner) -> None:
    plain, passes, _ = draw(runner, None)
    assert passes == 0, "no cache without a threshold"
    for threshold in (NEVER_SKIPS, 0.0):
        draft, passes, skipped = draw(runner, threshold)
        assert passes >= 4 and skipped == 0, threshold
        assert np.array_equal(draft, plain), threshold


def test_a_high_threshold_skips_blocks_and_the_cache_comes_off_afterwards(runner: Runner) -> None:
    plain, _, _ = draw(runner, None)
    batched = runner.options.batched_cfg
    draft, passes, skipped = draw(runner, ALWAYS_SKIPS, steps=6)
    assert passes == (6 if batched else 12), "one pass a step batched, two (cond, uncond) otherwise"
    assert skipped == passes - (1 if batched else 2), "every pass after each context's first is skipped"
    assert draft.shape == (64, 64, 3) and draft.std() > 0
    transformer = runner.pipe.transformer
    assert not transformer.is_cache_enabled
    assert all(
        not getattr(b, "_diffusers_hook", None) or not b._diffusers_hook.hooks for b in transformer.transformer_blocks
    )
    assert np.array_equal(draw(runner, None)[0], plain), "an image after a draft is untouched by the cache"


def test_the_cache_works_through_per_block_compile(tiny_model: Path) -> None:
    runner = make_runner(tiny_model, "bf16_resident")
    plain, _, _ = draw(runner, None)
    for block in runner.pipe.transformer.transformer_blocks:
        block.compile(dynamic=False, backend="eager")  # dynamo traces the hooked forward; no C++ compiler here
    assert np.array_equal(draw(runner, None)[0], plain)
    draft, _, skipped = draw(runner, NEVER_SKIPS)
    assert skipped == 0 and np.array_equal(draft, plain)
    _, passes, skipped = draw(runner, ALWAYS_SKIPS)
    assert skipped == passes - 2 > 0
    assert np.array_equal(draw(runner, None)[0], plain)


async def test_a_draft_request_runs_under_the_cache_and_its_eta_is_shorter(tiny_model: Path) -> None:
    from tests.test_engine import started_engine

    assert 0 < DRAFT_THRESHOLD < 1 and DRAFT_SPEEDUP > 1
    values: dict = {"prompt": "a cat", "width": 64, "height": 64, "steps": 4, "guidance": 4.0, "seed": 5}
    full, draft = JobRequest(**values), JobRequest(**values, draft=True)
    assert estimate_seconds(draft, 1.0, 0.0, 64) == pytest.approx(estimate_seconds(full, 1.0, 0.0, 64) / DRAFT_SPEEDUP)
    engine = await started_engine(tiny_model)
    try:
        made = await engine.generate(draft)
        finished = await engine.generate(full)
    finally:
        await engine.stop()
    assert made.timings["passes"] == 4, "4 steps, cond and uncond as one batch (the fast path)"
    assert "passes" not in finished.timings
    assert np.asarray(made.images[0]).shape == (64, 64, 3)


def test_cli_generate_draft_records_it_and_counts_skipped_passes(tiny_model: Path, tmp_path: Path, capsys) -> None:
    from tests.pngs import read_parameters
    from tools.cli import main

    out = tmp_path / "draft.png"
    args = ["generate", "a lighthouse", "--model", str(tiny_model), "--device", "cpu", "--out", str(out)]
    assert main([*args, "--steps", "3", "--seed", "4", "--size", "64x64", "--draft"]) == 0
    assert read_parameters(out)["draft"] is True
    assert "passes 3.00" in capsys.readouterr().out, "one batched pass a step, counted"
