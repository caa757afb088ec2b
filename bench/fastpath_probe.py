"""Time one denoising step of the full-size CogView4 transformer in each fast-path variant.

Why: the fast path's s/step depends on details that only a big GPU shows (which SDPA kernel a
key-padding bias selects, static vs dynamic compiled shapes, batched vs separate CFG passes).
This builds the transformer alone from its published config with random bf16 weights straight
on the GPU (no 31 GB model on disk) and times a step — the cond and uncond forwards — per variant:

    python bench/fastpath_probe.py --config CONFIG_DIR/transformer_config.json --out probe.jsonl

A step here is what the engine's loop does per step minus the scheduler (negligible).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(config_path: Path) -> Any:
    from diffusers import CogView4Transformer2DModel

    config = json.loads(config_path.read_text())
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = CogView4Transformer2DModel.from_config(config)
    torch.set_default_dtype(torch.float32)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def inputs(model: Any, batch: int, text_len: int, size: int = 1024) -> dict[str, Any]:
    latent = size // 8
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(dev).manual_seed(0)
    return {
        "hidden_states": torch.randn(
            batch, model.config.in_channels, latent, latent, generator=g, device=dev, dtype=dt
        ),
        "encoder_hidden_states": torch.randn(
            batch, text_len, model.config.text_embed_dim, generator=g, device=dev, dtype=dt
        ),
        "timestep": torch.full((batch,), 500.0, device=dev),
        "original_size": torch.tensor([[size, size]] * batch, device=dev, dtype=dt),
        "target_size": torch.tensor([[size, size]] * batch, device=dev, dtype=dt),
        "crop_coords": torch.tensor([[0, 0]] * batch, device=dev, dtype=dt),
        "return_dict": False,
    }


def bias_processor() -> Any:
    """The alternative the engine does not use: hide the padding with an additive -inf key bias."""
    import torch.nn.functional as F

    from engine.attention import KeyPaddingAttnProcessor

    class BiasProcessor(KeyPaddingAttnProcessor):
        @staticmethod
        def attend(query: Any, key: Any, value: Any, bias: Any) -> Any:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)

    return BiasProcessor()


def key_bias(starts: list[int], length: int, image_tokens: int) -> torch.Tensor:
    bias = torch.zeros(len(starts), 1, 1, length + image_tokens, device="cuda", dtype=torch.bfloat16)
    for row, start in enumerate(starts):
        bias[row, ..., :start] = float("-inf")
    return bias


def backend(name: str) -> Any:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION],
        "default": None,
    }[name]
    if order is None:
        import contextlib

        return contextlib.nullcontext()
    return sdpa_kernel(order, set_priority=True)


def timed(step: Any, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def attention_kernels(step: Any) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    marks = ("fmha", "flash", "cudnn", "attention", "sdpa")
    names = {e.key for e in prof.key_averages() if any(k in e.key.lower() for k in marks)}
    return sorted(n[:80] for n in names)


def uncompile(model: Any) -> None:
    import torch._dynamo

    for block in model.transformer_blocks:
        block._compiled_call_impl = None
    model._compiled_call_impl = None
    torch._dynamo.reset()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cond", type=int, default=32, help="prompt tokens (CogView4 pads to 16s)")
    parser.add_argument("--uncond", type=int, default=16, help="negative prompt tokens")
    parser.add_argument("--bucket", type=int, default=64)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--variants", default="")
    args = parser.parse_args()

    import torch._dynamo

    from engine.attention import install

    torch._dynamo.config.cache_size_limit = 64
    model = build(args.config)
    image_tokens = (1024 // 8 // model.config.patch_size) ** 2
    lc, lu = args.cond, args.uncond
    length = -(-max(lc, lu) // args.bucket) * args.bucket
    cond, uncond = inputs(model, 1, lc), inputs(model, 1, lu)
    stock_processor = model.transformer_blocks[0].attn1.processor

    def separate() -> None:
        model(**cond)
        model(**uncond)

    def batched(mask: str) -> Any:
        kw = inputs(model, 2, length)
        starts = [length - lc, length - lu]
        kw["attention_mask"] = {
            "nomask": None,
            "starts": torch.tensor(starts),
            "bias": key_bias(starts, length, image_tokens),
        }[mask]
        return lambda: model(**kw)

    # name: (compile mode, attention backend, processor, step)
    variants: dict[str, tuple[str, str, str, str]] = {
        "eager_separate_default": ("none", "default", "stock", "separate"),
        "eager_separate_cudnn": ("none", "cudnn", "stock", "separate"),
        "eager_batched_nomask_cudnn": ("none", "cudnn", "engine", "nomask"),
        "eager_batched_bias_cudnn": ("none", "cudnn", "bias", "bias"),
        "eager_batched_unpadded_cudnn": ("none", "cudnn", "engine", "starts"),
        "regional_static_separate_cudnn": ("regional_static", "cudnn", "stock", "separate"),
        "regional_static_nomask_cudnn": ("regional_static", "cudnn", "engine", "nomask"),
        "regional_static_bias_cudnn": ("regional_static", "cudnn", "bias", "bias"),
        "regional_static_unpadded_cudnn": ("regional_static", "cudnn", "engine", "starts"),
        "regional_static_unpadded_flash": ("regional_static", "flash", "engine", "starts"),
    }
    wanted = [v for v in args.variants.split(",") if v] or list(variants)
    for name in wanted:
        mode, attn, processor, kind = variants[name]
        uncompile(model)
        if processor == "stock":
            for block in model.transformer_blocks:
                block.attn1.set_processor(stock_processor)
        elif processor == "bias":
            biased = bias_processor()
            for block in model.transformer_blocks:
                block.attn1.set_processor(biased)
        else:
            install(model)
        step = separate if kind == "separate" else batched(kind)
        if mode == "regional_static":
            for block in model.transformer_blocks:
                block.compile(dynamic=False)
        row: dict[str, Any] = {"variant": name, "cond": lc, "uncond": lu, "bucket": length}
        try:
            with torch.no_grad(), backend(attn):
                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - t0, 2)
                row["step_s"] = round(timed(step, 2, args.iters), 4)
                row["kernels"] = attention_kernels(step)
        except Exception as exc:  # a probe reports every failure and goes on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(json.dumps(row), flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
