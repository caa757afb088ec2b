"""8-bit matmuls (engine.quant8) on the CPU, where torch runs both kernels: FP8 `_scaled_mm` and int8
`_int_mm` are the same calls a GPU makes. Accuracy, the shared activation, a quantized CogView4 block,
the kernel probe, and a refusing kernel turned into KernelFailed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine import card_profile, quant8
from engine import plans as catalog
from engine.quant8 import InputShare, KernelFailed, Linear8, WeightOnly8, kernel_of, probe, quantize_block

TINY_BLOCK = {"dim": 128, "num_attention_heads": 2, "attention_head_dim": 64, "time_embed_dim": 32}
CPU = torch.device("cpu")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def linear(in_features: int = 256, out_features: int = 384, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    layer.weight.data.normal_(0.0, 0.02)
    if bias:
        layer.bias.data.normal_(0.0, 0.1)
    return layer


@pytest.mark.parametrize(("kernel", "dtype", "limit"), [("fp8", torch.float8_e4m3fn, 0.06), ("int8", torch.int8, 0.02)])
@pytest.mark.parametrize("bias", [True, False])
@torch.inference_mode()
def test_an_8_bit_linear_matches_bf16_within_its_format(
    kernel: str, dtype: torch.dtype, limit: float, bias: bool
) -> None:
    reference = linear(bias=bias)
    layer = Linear8.from_linear(reference, kernel)  # type: ignore[arg-type]
    assert layer.weight.dtype == dtype and layer.weight.shape == reference.weight.shape
    x = torch.randn(2, 37, 256, dtype=torch.bfloat16)  # 3-D, an odd token count
    got, want = layer(x), reference(x)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    error = relative_error(got, want)
    assert 0 < error < limit  # quantized (not a bf16 pass-through), and as close as 8 bits allow


@torch.inference_mode()
def test_int8_is_closer_than_fp8_on_gaussian_weights() -> None:
    reference = linear()
    x = torch.randn(64, 256, dtype=torch.bfloat16)
    fp8 = relative_error(Linear8.from_linear(reference, "fp8")(x), reference(x))
    int8 = relative_error(Linear8.from_linear(reference, "int8")(x), reference(x))
    assert int8 < fp8  # 7 bits of mantissa per channel against e4m3's 3 bits


@pytest.mark.parametrize("kernel", ["fp8", "int8"])
@torch.inference_mode()
def test_weight_only_storage_keeps_bf16_compute_close(kernel: str) -> None:
    reference = linear(512, 1024)
    layer = WeightOnly8.from_linear(reference, kernel)  # type: ignore[arg-type]
    x = torch.randn(2, 512, dtype=torch.bfloat16)
    assert relative_error(layer(x), reference(x)) < 0.04


@pytest.mark.parametrize("kernel", ["fp8", "int8"])
@torch.inference_mode()
def test_query_key_and_value_quantize_their_shared_input_once(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    layers = [Linear8.from_linear(linear(seed=i), kernel) for i in range(3)]  # type: ignore[arg-type]
    x = torch.randn(2, 16, 256, dtype=torch.bfloat16)
    alone = [layer(x) for layer in layers]
    share = InputShare()
    for layer, role in zip(layers, ("first", "middle", "last"), strict=True):
        layer.share, layer.share_role = share, role
    calls = []
    real = quant8._quantize
    monkeypatch.setattr(quant8, "_quantize", lambda t, k: calls.append(t.shape) or real(t, k))
    shared = [layer(x) for layer in layers]
    assert len(calls) == 1, "one quantization for three linears"
    assert all(torch.equal(a, b) for a, b in zip(alone, shared, strict=True)), "the very same numbers"
    assert share.source is None, "the last of the group lets the activation go"
    # A different input reaching a reader is quantized afresh, never mixed up with the shared one.
    layers[0](x)
    other = torch.randn(2, 16, 256, dtype=torch.bfloat16)
    assert torch.equal(layers[1](other), Linear8.from_linear(linear(seed=1), kernel)(other))  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel", ["fp8", "int8"])
@torch.inference_mode()
def test_a_quantized_cogview4_block_stays_close_to_bf16(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(card_profile, "IMAGE_TOKENS", 64)
    reference = card_profile.make_block(CPU, TINY_BLOCK, None)
    quantized = card_profile.make_block(CPU, TINY_BLOCK, kernel)
    computed = [n for n, m in quantized.named_modules() if isinstance(m, Linear8)]
    stored = [n for n, m in quantized.named_modules() if isinstance(m, WeightOnly8)]
    assert sorted(computed) == sorted(quant8.COMPUTE_LINEARS) and stored == list(quant8.STORED_LINEARS)
    assert kernel_of(quantized) == kernel and kernel_of(reference) is None
    inputs = card_profile.block_inputs(CPU, TINY_BLOCK)
    hidden, text = reference(*inputs)
    hidden8, text8 = quantized(*inputs)
    assert relative_error(hidden8, hidden) < 0.02 and relative_error(text8, text) < 0.02


def test_a_meta_block_gets_empty_8_bit_modules_for_loading_a_cache() -> None:
    from diffusers.models.transformers.transformer_cogview4 import CogView4TransformerBlock

    with torch.device("meta"):
        block = CogView4TransformerBlock(**TINY_BLOCK)
    quantize_block(block, "int8")
    assert isinstance(block.attn1.to_q, Linear8) and block.attn1.to_q.weight.is_meta
    assert block.attn1.to_q.weight.dtype == torch.int8 and block.attn1.to_q.weight_scale.shape == (128,)


@pytest.mark.parametrize("kernel", ["fp8", "int8"])
def test_the_probe_runs_each_kernel_here(kernel: str) -> None:
    assert probe(kernel, CPU) is None  # type: ignore[arg-type]


def test_a_refusing_kernel_is_a_kernel_failure_and_the_probe_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")

    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    layer = Linear8.from_linear(linear(), "fp8")
    with pytest.raises(KernelFailed) as failed, torch.inference_mode():
        layer(torch.randn(4, 256, dtype=torch.bfloat16))
    assert failed.value.kernel == "fp8"
    said = probe("fp8", CPU)
    assert said is not None and "CUBLAS_STATUS_NOT_SUPPORTED" in said and "\n" not in said
    assert probe("int8", CPU) is None, "the other kernel is not affected"


@pytest.mark.parametrize("plan", ["fp8mm_resident", "int8mm_resident"])
async def test_the_engine_makes_images_with_8_bit_matmuls_and_reloads_them_from_the_cache(
    tiny_model: Path, tmp_path: Path, plan: str
) -> None:
    """The whole path on the tiny model: quantize while loading, denoise, keep the weights in the cache, and a
    second start from the cache makes the very same pixels; close to bf16 (the tiny model's own noise)."""
    import numpy as np

    from engine.loader import load_transformer
    from engine.weight_cache import WeightCache
    from tests.test_engine import request, started_engine

    cache = tmp_path / "quantized"
    images = []
    for _start in range(2):
        engine = await started_engine(tiny_model, memory_mode=plan, quantized_cache_dir=cache)
        try:
            result = await engine.generate(request(seed=5))
        finally:
            await engine.stop()
        assert result.plan == plan
        images.append(np.asarray(result.images[0]).astype(np.float64))
    assert np.array_equal(images[0], images[1]), "the cached weights are the quantized ones, bit for bit"
    assert any(p.name.startswith(f"transformer-{plan.split('_')[0]}-") for p in cache.iterdir())
    transformer = load_transformer(tiny_model, plan.split("_")[0], CPU, True, WeightCache(cache))  # type: ignore[arg-type]
    assert kernel_of(transformer) == catalog.COMPUTE_KERNEL[plan.split("_")[0]]
    bf16 = await started_engine(tiny_model)
    try:
        reference = np.asarray((await bf16.generate(request(seed=5))).images[0]).astype(np.float64)
    finally:
        await bf16.stop()
    mse = float(np.mean((images[0] - reference) ** 2))
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 25  # not bf16 itself, but the same picture


async def test_a_kernel_that_fails_in_a_job_steps_down_like_running_out_of_memory(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver whose FP8 matmul refuses mid-job: the job is made under the next leaner plan, with a note."""
    from engine.plans import Measurement
    from engine.service import Engine, EngineConfig
    from tests.test_engine import request

    table = {
        "bf16_resident": Measurement("bf16_resident", 37.0, 0.34, 0.5, 0.2),
        "fp8mm_resident": Measurement("fp8mm_resident", 20.0, 0.20, 0.5, 0.2),
        "mixed_resident": Measurement("mixed_resident", 15.0, 0.34, 0.5, 0.2),
    }
    engine = Engine(EngineConfig(model_id=str(tiny_model), device="cpu", memory_mode="fp8mm_resident"), table=table)
    engine.start()
    assert await engine.wait_ready(60)
    try:
        assert engine.status().plan == "fp8mm_resident"

        def refuse(*args: object, **kwargs: object) -> torch.Tensor:
            raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

        monkeypatch.setattr(torch, "_scaled_mm", refuse)
        result = await engine.generate(request(seed=3))
    finally:
        await engine.stop()
    assert result.plan == "mixed_resident" and result.images
    assert any("fp8 matmul failed under fp8mm_resident; using mixed_resident" in n for n in result.notes)


@pytest.mark.parametrize("quant", ["fp8mm", "int8mm"])
def test_building_block_by_block_gives_the_weights_of_quantizing_the_whole_model(tiny_model: Path, quant: str) -> None:
    """The first start reads one block at a time from the model files instead of the whole bf16 model."""
    from diffusers import CogView4Transformer2DModel

    from engine.loader import load_8bit_by_block
    from engine.quant8 import quantize_blocks

    whole = quantize_blocks(
        CogView4Transformer2DModel.from_pretrained(tiny_model / "transformer", dtype=torch.bfloat16),
        catalog.COMPUTE_KERNEL[quant],  # type: ignore[arg-type]
    )
    by_block = load_8bit_by_block(CogView4Transformer2DModel, tiny_model / "transformer", quant, CPU)  # type: ignore[arg-type]
    want, got = whole.state_dict(), by_block.state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].device == CPU, name
        assert torch.equal(got[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name


def test_a_compiler_failure_while_warming_up_leaves_the_blocks_eager() -> None:
    """torch.compile that cannot lower a kernel on some GPU must not leave the bot without a model."""
    from engine.plan_manager import _warm_up_compiled

    block = nn.Linear(4, 4)
    block.compile()
    transformer = nn.Module()
    transformer.transformer_blocks = nn.ModuleList([block])

    class FailingRunner:
        def warm_up(self, size: int) -> None:
            raise RuntimeError("InductorError: LoweringException: AssertionError")

    assert block._compiled_call_impl is not None
    assert _warm_up_compiled(FailingRunner(), transformer, 64) is False
    assert block._compiled_call_impl is None
    with torch.inference_mode():
        assert block(torch.ones(1, 4)).shape == (1, 4)  # eager again
