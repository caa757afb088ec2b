"""What decides the plan on this card, measured here in seconds on the first start and kept.

The plan table is measured on one data-centre GPU; a home card differs in how fast it multiplies (bf16,
FP8, int8) and how fast its bus moves weights. So on its first start the engine times one CogView4
transformer block at the native size (a CFG batch of 2) in bf16 and in each 8-bit kernel the card runs,
and the host-to-device copy speed from page-locked memory. The figures are kept in a small JSON file,
keyed by the GPU, its driver and the library versions (re-measured when any of them changes), and
`engine.plans` projects every plan's time per image onto this card from them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from engine.plans import CardProfile
from engine.quant8 import KERNELS, MIN_CAPABILITY, probe, quantize_block

log = logging.getLogger(__name__)

FILE_NAME = "card-profile.json"
# The timed shape: a 1024² image is 4096 tokens, a short prompt one 64-token text bucket, CFG a batch of 2.
IMAGE_TOKENS, TEXT_TOKENS, BATCH = 4096, 64, 2
_TIMED_RUNS, _WARM_RUNS = 5, 2
_COPY_BYTES = 256 * 1024**2
# CogView4-6B's block (its transformer config.json), for a report made before the model is downloaded.
COGVIEW4_6B_BLOCK = {"dim": 4096, "num_attention_heads": 32, "attention_head_dim": 128, "time_embed_dim": 512}


def card_key(device: torch.device) -> str:
    """The GPU, its CUDA driver and the libraries whose kernels are timed: a change re-measures."""
    name = torch.cuda.get_device_name(device)
    driver = torch._C._cuda_getDriverVersion() if hasattr(torch._C, "_cuda_getDriverVersion") else "unknown"
    versions = []
    for package in ("torch", "diffusers"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    return f"{name} | driver {driver} | " + ", ".join(versions)


def load_or_measure(device: torch.device, block_config: dict[str, int], folder: Path | None) -> CardProfile:
    """The kept profile of this card if its key still matches, else a fresh measurement (then kept)."""
    key = card_key(device)
    path = folder / FILE_NAME if folder is not None else None
    if path is not None and path.is_file():
        try:
            kept = CardProfile.from_json(json.loads(path.read_text(encoding="utf-8")))
            if kept.key == key:
                return kept
            log.info("GPU, driver or libraries changed since the card was measured: measuring again")
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("Unreadable card profile %s: measuring again", path)
    profile = measure(device, block_config, key)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(profile), indent=1), encoding="utf-8")
            tmp.replace(path)
        except OSError:
            log.warning("Could not keep the card profile in %s", path, exc_info=True)
    return profile


def block_config_of(transformer_config: dict[str, Any]) -> dict[str, int]:
    """CogView4TransformerBlock's arguments from the transformer's config.json."""
    heads, head_dim = transformer_config["num_attention_heads"], transformer_config["attention_head_dim"]
    return {
        "dim": heads * head_dim,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "time_embed_dim": transformer_config["time_embed_dim"],
    }


def measure(device: torch.device, block_config: dict[str, int], key: str | None = None) -> CardProfile:
    """Time one block per kernel and the host-to-device copy; a few seconds on a home card."""
    capability = tuple(torch.cuda.get_device_capability(device))
    refused: dict[str, str] = {}
    kernels = []
    for kernel in KERNELS:
        if capability < MIN_CAPABILITY[kernel]:
            refused[kernel] = "no tensor cores for it"
        elif (error := probe(kernel, device)) is not None:
            refused[kernel] = error
        else:
            kernels.append(kernel)
    block_s = {"bf16": time_block(device, block_config, None)}
    for kernel in kernels:
        try:
            block_s[kernel] = time_block(device, block_config, kernel)
        except RuntimeError as exc:  # KernelFailed included: refused at the real shapes, not on the probe's
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            refused[kernel] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    profile = CardProfile(
        key=key or card_key(device),
        gpu=torch.cuda.get_device_name(device),
        capability=capability,  # type: ignore[arg-type]
        block_s={k: round(v, 6) for k, v in block_s.items()},
        h2d_gbps=round(copy_speed_gbps(device), 2),
        refused=refused,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    log.info("Card measured: %s", profile)
    return profile


def make_block(device: torch.device, block_config: dict[str, int], kernel: str | None) -> torch.nn.Module:
    """A CogView4 block with random weights (speed does not depend on their values), quantized for `kernel`."""
    from diffusers.models.transformers.transformer_cogview4 import CogView4TransformerBlock

    with torch.device("meta"):
        block = CogView4TransformerBlock(**block_config)
    block = block.to_empty(device=device).to(torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(0)
    for parameter in block.parameters():
        parameter.data.normal_(0.0, 0.02, generator=generator)
    if kernel is not None:
        quantize_block(block, kernel)  # type: ignore[arg-type]
    return block.eval()


def block_inputs(device: torch.device, block_config: dict[str, int]) -> tuple[Any, ...]:
    """A block's inputs at the timed shape: image tokens, text tokens, the time embedding, RoPE."""
    generator = torch.Generator(device=device).manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=torch.bfloat16)

    freqs = torch.rand(IMAGE_TOKENS, block_config["attention_head_dim"], generator=generator, device=device)
    dim = block_config["dim"]
    temb = rand(BATCH, block_config["time_embed_dim"])
    return rand(BATCH, IMAGE_TOKENS, dim), rand(BATCH, TEXT_TOKENS, dim), temb, (freqs.cos(), freqs.sin())


@torch.inference_mode()
def time_block(device: torch.device, block_config: dict[str, int], kernel: str | None) -> float:
    """Seconds per forward of one block (mean of a few, after warm-up), on the GPU clock."""
    block = make_block(device, block_config, kernel)
    inputs = block_inputs(device, block_config)
    try:
        for _ in range(_WARM_RUNS):
            block(*inputs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(_TIMED_RUNS):
            block(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / _TIMED_RUNS
    finally:
        del block
        torch.cuda.empty_cache()


def copy_speed_gbps(device: torch.device) -> float:
    """Host → device from page-locked memory, GB/s (10^9 bytes): what streamed weights move at."""
    host = torch.empty(_COPY_BYTES, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(_COPY_BYTES, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(4):
        target.copy_(host, non_blocking=True)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1000
    del host, target
    torch.cuda.empty_cache()
    return 4 * _COPY_BYTES / seconds / 1e9
