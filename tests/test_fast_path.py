"""The big-card fast path must not change the picture: batched CFG and bucketed text are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attention import install
from engine.loader import load_components
from engine.placement import apply_placement
from engine.plans import PLANS
from engine.runner import Runner, RunnerOptions
from engine.tiny import write_tiny_model

PROMPTS = ["a cat", "a much longer prompt about a red cat asleep on a sunny windowsill in spring"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    from diffusers import CogView4Pipeline

    folder = write_tiny_model(tmp_path_factory.mktemp("tiny-cogview4"))
    device = torch.device("cpu")
    c = load_components(folder, PLANS["bf16_resident"], device)
    pipe = CogView4Pipeline(
        tokenizer=c.tokenizer, text_encoder=c.text_encoder, vae=c.vae, transformer=c.transformer, scheduler=c.scheduler
    )
    apply_placement(pipe, PLANS["bf16_resident"], device)
    return Runner(pipe, PLANS["bf16_resident"], device)


def pixels(runner: Runner, prompt: str, guidance: float, **options: object) -> np.ndarray:
    runner.options = RunnerOptions(**options)  # type: ignore[arg-type]
    image, _ = runner.generate(
        prompt=prompt, negative_prompt="", width=64, height=64, steps=4, guidance=guidance, seed=9
    )
    return np.asarray(image)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_batched_cfg_and_text_buckets_give_the_same_image(runner: Runner, prompt: str) -> None:
    plain = pixels(runner, prompt, 5.0)
    install(runner.pipe.transformer)  # the key-padding processor, as the fast plan uses
    assert np.array_equal(pixels(runner, prompt, 5.0), plain), "the processor alone changes nothing"
    assert np.array_equal(pixels(runner, prompt, 5.0, batched_cfg=True), plain)
    assert np.array_equal(pixels(runner, prompt, 5.0, batched_cfg=True, text_bucket=64), plain)
    no_cfg = pixels(runner, prompt, 1.0)
    assert np.array_equal(pixels(runner, prompt, 1.0, text_bucket=64), no_cfg)
    assert not np.array_equal(no_cfg, plain)


def test_bucketed_pads_on_the_left_and_hides_only_the_padding() -> None:
    from engine.attention import bucketed

    short, long = torch.ones(1, 16, 8), torch.full((1, 80, 8), 2.0)
    stacked, bias = bucketed([short, long], image_tokens=10, bucket=64)
    assert stacked.shape == (2, 128, 8)
    assert bias is not None and bias.shape == (2, 1, 1, 138)
    assert torch.isinf(bias[0, 0, 0, :112]).all() and (bias[0, 0, 0, 112:] == 0).all()
    assert torch.isinf(bias[1, 0, 0, :48]).all() and (bias[1, 0, 0, 48:] == 0).all()
    assert (stacked[0, :112] == 0).all() and (stacked[0, 112:] == 1).all()
    same, none = bucketed([torch.ones(1, 64, 8), torch.ones(1, 64, 8)], image_tokens=10, bucket=64)
    assert none is None and same.shape == (2, 64, 8)
