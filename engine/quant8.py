"""8-bit matmuls for the transformer's linears: FP8 on cards with FP8 tensor cores, int8 on the others.

A home card's CogView4 step is compute-bound, so the weight format is chosen for the card's matmul
kernels, not only for memory:
- `fp8` (compute capability 8.9+, RTX 40/50): weights e4m3 with one scale per tensor, activations
  quantized on the fly with one scale per image; `torch._scaled_mm` multiplies, scales and adds the bias in
  one kernel. Tensor-wise scales are what cuBLAS runs on sm_89, sm_90 and sm_120 (row-wise are refused there).
- `int8` (8.0+, RTX 30): weights with one scale per output channel, activations one per token;
  `torch._int_mm` multiplies into int32 and one rescale follows.

What is quantized: the attention projections and the feed-forward inside the 28 blocks, where almost all of
the compute is (both kernels measured above 44 dB on the random full-size model, first and last blocks
included: bench/RESULTS.md). The adaLN
modulation linears take a vector per image (no compute to speak of) but hold 11 % of the weights: they are
stored 8-bit and dequantized to bf16 for their matmul (`WeightOnly8`). Embeddings, norms, the output
projection and its modulation stay bf16.

Eager speed matters (Windows users often run without torch.compile): an activation is quantized once for
the query, key and value projections that share it (`InputShare`), and each quantization is a reduction
plus one fused multiply-and-cast; under torch.compile the compiler fuses all of it.
"""

from __future__ import annotations

from typing import Literal, Self

import torch
from torch import nn

Kernel = Literal["fp8", "int8"]
KERNELS: tuple[Kernel, ...] = ("fp8", "int8")

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
INT8_MAX = 127.0
# torch._int_mm on CUDA needs more than 16 rows: shorter inputs (a short text's tokens) are padded.
_INT_MM_MIN_ROWS = 17
_TINY = 1e-12
BF16 = torch.bfloat16


class KernelFailed(RuntimeError):
    """The card's 8-bit matmul refused to run (an old driver or cuBLAS): the engine steps down to a plan
    without it, as after running out of memory."""

    def __init__(self, kernel: str, message: str) -> None:
        super().__init__(message)
        self.kernel = kernel


# --- quantizing ---------------------------------------------------------------------------------


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (batch, tokens, features) in e4m3 with one float32 scale per batch item: x[b] ≈ q[b] · scale[b].

    Per item, not per batch: the conditional and unconditional passes of CFG get the scales they would get
    run one after the other, so batching them does not change the image."""
    amax = torch.linalg.vector_norm(x.flatten(1), float("inf"), dim=1).float().clamp(min=_TINY)
    factor = (FP8_MAX / amax).view(-1, *([1] * (x.dim() - 1)))
    # |x · 448/amax| ≤ 448, e4m3's largest finite value: no clamp needed.
    if torch.compiler.is_compiling():
        return (x * factor).to(FP8), amax / FP8_MAX  # the compiler fuses it into one kernel
    q = torch.empty(x.shape, dtype=FP8, device=x.device)
    torch.mul(x, factor, out=q)  # eager: multiply and cast in one kernel
    return q, amax / FP8_MAX


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (2-D) in int8 with one float32 scale per row: x ≈ q · scale[:, None]."""
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).float().clamp(min=_TINY)
    q = (x * (INT8_MAX / amax)).round_().to(torch.int8)
    return q, amax / INT8_MAX


def _quantize(x: torch.Tensor, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """An activation in the layout its kernel takes: (batch, tokens, features) for FP8, token rows for int8."""
    features = x.shape[-1]
    if kernel == "fp8":
        return quantize_fp8(x.reshape(1 if x.dim() < 3 else x.shape[0], -1, features))
    return quantize_int8_rows(x.reshape(-1, features))


@torch.library.custom_op("cogview_bot::fp8_matmul", mutates_args=())
def fp8_matmul(
    q: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """(batch, tokens, in) e4m3 × weightᵀ → (batch, tokens, out) bf16: one cuBLAS matmul per batch item, each
    with its own activation scale. An opaque op for torch.compile, which fuses the quantization around it
    and calls cuBLAS as it is (the compiler's own lowering of `_scaled_mm` asserted on this shape)."""
    out = q.new_empty((q.shape[0], q.shape[1], weight.shape[0]), dtype=BF16)
    for b in range(q.shape[0]):
        # A scale of its own per item (cuBLAS reads it through a pointer that must be aligned), written straight
        # into its place in the batch's output.
        torch._scaled_mm(q[b], weight.t(), scale[b].clone(), weight_scale, bias=bias, out_dtype=BF16, out=out[b])
    return out


@fp8_matmul.register_fake
def _(
    q: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return q.new_empty((q.shape[0], q.shape[1], weight.shape[0]), dtype=BF16)


class InputShare:
    """One quantized activation for a group of linears called one after the other on the same input (the
    query, key and value projections): the first quantizes it, the others reuse it, the last lets it go.
    Eager only; torch.compile merges the identical quantizations by itself."""

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.quantized: tuple[torch.Tensor, torch.Tensor] | None = None

    def put(self, x: torch.Tensor, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
        self.source, self.quantized = x, _quantize(x, kernel)
        return self.quantized

    def take(self, x: torch.Tensor, kernel: Kernel, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        quantized = self.quantized if self.source is x and self.quantized is not None else None
        if quantized is None:
            quantized = _quantize(x, kernel)
        if last:
            self.source = self.quantized = None
        return quantized


# --- modules ------------------------------------------------------------------------------------


class _Stored8(nn.Module):
    """A linear layer's weight in 8 bits with its scales, and its bias in bf16."""

    def __init__(self, in_features: int, out_features: int, bias: bool, kernel: Kernel) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        dtype = FP8 if kernel == "fp8" else torch.int8
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=dtype))
        self.register_buffer("weight_scale", torch.empty(self._scale_shape(), dtype=torch.float32))
        self.register_buffer("bias", torch.empty(out_features, dtype=BF16) if bias else None)

    def _scale_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def _quantized(cls, weight: torch.Tensor, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: Kernel) -> Self:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel)
        module.weight, module.weight_scale = cls._quantized(linear.weight.detach().float(), kernel)
        if linear.bias is not None:
            module.bias = linear.bias.detach().to(BF16)
        return module

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


class Linear8(_Stored8):
    """A linear layer whose matmul runs in 8 bits on the card's tensor cores; bf16 in and out."""

    def __init__(self, in_features: int, out_features: int, bias: bool, kernel: Kernel) -> None:
        super().__init__(in_features, out_features, bias, kernel)
        self.share: InputShare | None = None
        self.share_role = ""  # "first", "middle" or "last" of the linears that share one input

    def _scale_shape(self) -> tuple[int, ...]:
        return () if self.kernel == "fp8" else (self.out_features,)

    @classmethod
    def _quantized(cls, weight: torch.Tensor, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
        if kernel == "fp8":
            q, scale = quantize_fp8(weight[None])  # the whole matrix as one item: one scale
            return q[0], scale[0]
        q, scale = quantize_int8_rows(weight)
        return q, scale.squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.share is not None and not torch.compiler.is_compiling():
            if self.share_role == "first":
                q, scale = self.share.put(x, self.kernel)
            else:
                q, scale = self.share.take(x, self.kernel, last=self.share_role == "last")
        else:
            q, scale = _quantize(x, self.kernel)
        if torch.compiler.is_compiling():
            out = self._matmul(q, scale)
        else:
            try:
                out = self._matmul(q, scale)
            except RuntimeError as exc:
                if isinstance(exc, torch.OutOfMemoryError):
                    raise
                raise KernelFailed(self.kernel, f"{self.kernel} matmul failed: {exc}") from exc
        return out.reshape(*shape[:-1], self.out_features)

    def _matmul(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self._fp8_mm(q, scale) if self.kernel == "fp8" else self._int8_mm(q, scale)

    def _fp8_mm(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return fp8_matmul(q, scale, self.weight, self.weight_scale, self.bias)

    def _int8_mm(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        rows = q.shape[0]
        if rows < _INT_MM_MIN_ROWS and q.is_cuda:
            q = torch.nn.functional.pad(q, (0, 0, 0, _INT_MM_MIN_ROWS - rows))
        acc = torch._int_mm(q, self.weight.t())[:rows]
        scaled = acc * scale  # int32 · float32 per row → float32
        out = torch.empty(scaled.shape, dtype=BF16, device=scaled.device)
        if self.bias is None:
            return torch.mul(scaled, self.weight_scale, out=out)  # per column, cast to bf16 in the same pass
        return torch.addcmul(self.bias, scaled, self.weight_scale, out=out)


class WeightOnly8(_Stored8):
    """A linear layer stored in 8 bits (one scale per output channel) and computed in bf16: for the
    modulation linears, which hold many weights but multiply one vector per image."""

    def _scale_shape(self) -> tuple[int, ...]:
        return (self.out_features, 1)

    @classmethod
    def _quantized(cls, weight: torch.Tensor, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
        amax = torch.linalg.vector_norm(weight, float("inf"), dim=-1, keepdim=True).clamp(min=_TINY)
        top = FP8_MAX if kernel == "fp8" else INT8_MAX
        scaled = weight * (top / amax)
        return (scaled.to(FP8) if kernel == "fp8" else scaled.round_().to(torch.int8)), amax / top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight.to(BF16) * self.weight_scale.to(BF16)).to(x.dtype)
        return nn.functional.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))


# --- the transformer ----------------------------------------------------------------------------

# Inside each transformer block: the linears whose matmuls run in 8 bits, and those only stored in 8 bits.
COMPUTE_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
SHARED_INPUT = ("attn1.to_q", "attn1.to_k", "attn1.to_v")
STORED_LINEARS = ("norm1.linear",)


def quantize_blocks(transformer: nn.Module, kernel: Kernel) -> nn.Module:
    """Replace the block linears of a CogView4 transformer, one block at a time (so a bf16 model on the
    host never needs a second full copy). Works on meta tensors too: the structure for loading a cache."""
    for block in transformer.transformer_blocks:
        quantize_block(block, kernel)
    return transformer


def quantize_block(block: nn.Module, kernel: Kernel) -> nn.Module:
    """One CogView4TransformerBlock's linears in 8 bits, in place."""
    share = InputShare()
    for path in COMPUTE_LINEARS + STORED_LINEARS:
        parent_path, _, name = path.rpartition(".")
        parent = block.get_submodule(parent_path)
        linear = parent.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            continue
        if linear.weight.is_meta:
            cls = Linear8 if path in COMPUTE_LINEARS else WeightOnly8
            with torch.device("meta"):
                module: nn.Module = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel)
        elif path in COMPUTE_LINEARS:
            module = Linear8.from_linear(linear, kernel)
        else:
            module = WeightOnly8.from_linear(linear, kernel)
        if isinstance(module, Linear8) and path in SHARED_INPUT:
            index = SHARED_INPUT.index(path)
            module.share = share
            module.share_role = "first" if index == 0 else "last" if index == len(SHARED_INPUT) - 1 else "middle"
        setattr(parent, name, module)
    return block


def kernel_of(transformer: nn.Module) -> Kernel | None:
    """The 8-bit kernel a transformer's blocks were quantized for (None: not quantized this way)."""
    for module in transformer.modules():
        if isinstance(module, Linear8):
            return module.kernel
    return None


# --- what the card can run ------------------------------------------------------------------------

# The oldest compute capability with the kernel's tensor cores: FP8 from Ada (RTX 40) on, int8 from Ampere.
MIN_CAPABILITY: dict[Kernel, tuple[int, int]] = {"fp8": (8, 9), "int8": (8, 0)}


def probe(kernel: Kernel, device: torch.device) -> str | None:
    """Run the kernel once on a small matrix here; None if it works, else the error in one line."""
    try:
        return _probe(kernel, device)
    except (KernelFailed, RuntimeError, TypeError) as exc:
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"


@torch.inference_mode()
def _probe(kernel: Kernel, device: torch.device) -> str | None:
    generator = torch.Generator(device="cpu").manual_seed(0)
    linear = nn.Linear(64, 64, bias=True).to(BF16)
    linear.weight.data = torch.randn(64, 64, generator=generator).to(BF16)
    layer = Linear8.from_linear(linear, kernel).to(device)
    x = torch.randn(32, 64, generator=generator).to(device, BF16)
    want = linear.to(device)(x).float()
    error = float((layer(x).float() - want).norm() / want.norm())
    return None if error < 0.1 else f"{kernel} matmul gave wrong results (relative error {error:.2f})"
