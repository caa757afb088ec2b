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
from tools.tiny import write_tiny_model

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


def test_bucketed_pads_on_the_left_and_says_where_the_real_tokens_start() -> None:
    from engine.attention import bucketed

    short, long = torch.ones(1, 16, 8), torch.full((1, 80, 8), 2.0)
    stacked, starts = bucketed([short, long], bucket=64)
    assert stacked.shape == (2, 128, 8)
    assert starts is not None and starts.tolist() == [112, 48]
    assert (stacked[0, :112] == 0).all() and (stacked[0, 112:] == 1).all()
    assert (stacked[1, :48] == 0).all() and (stacked[1, 48:] == 2).all()
    same, zeros = bucketed([torch.ones(1, 64, 8), torch.ones(1, 64, 8)], bucket=64)
    assert zeros.tolist() == [0, 0] and same.shape == (2, 64, 8)


def test_unpadded_attention_matches_attention_over_each_rows_real_keys() -> None:
    """Each row attends to its own real keys only: the same numbers as that row run alone."""
    import torch.nn.functional as F

    from engine.attention import attend_unpadded

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 40, 16, generator=gen) for _ in range(3))
    starts = torch.tensor([24, 0])
    out = attend_unpadded(q, k, v, starts)
    assert out.shape == q.shape
    alone = F.scaled_dot_product_attention(q[:1], k[:1, :, 24:], v[:1, :, 24:])
    assert torch.equal(out[:1], alone)
    assert torch.equal(out[1:], F.scaled_dot_product_attention(q[1:], k[1:], v[1:]))
    biased = torch.zeros(2, 1, 1, 40)
    biased[0, ..., :24] = float("-inf")
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=biased), atol=1e-5)


def test_unpadded_attention_compiles_once_for_any_padding() -> None:
    """The starts are data to torch.compile: new paddings reuse the compiled graph."""
    import torch._dynamo.testing

    from engine.attention import attend_unpadded

    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(lambda q, k, v, s: attend_unpadded(q * 2, k, v, s) + 1, backend=counter, dynamic=False)
    q, k, v = (torch.randn(2, 2, 32, 8) for _ in range(3))
    outs = [fn(q, k, v, torch.tensor(s)) for s in ([0, 16], [8, 0], [4, 4])]
    assert counter.frame_count == 1
    assert torch.equal(outs[0], attend_unpadded(q * 2, k, v, torch.tensor([0, 16])) + 1)


def test_warm_up_keeps_nothing_and_leaves_later_images_unchanged(runner: Runner) -> None:
    before = pixels(runner, PROMPTS[1], 5.0)
    runner.warm_up(64)
    assert len(runner.embeddings) == 0, "the warm-up's embeddings are not kept"
    assert runner.encoder_calls == 0 and runner.encoder_visits == 0, "counters describe real jobs only"
    assert np.array_equal(pixels(runner, PROMPTS[1], 5.0), before)
