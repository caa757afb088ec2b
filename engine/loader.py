"""Load CogView4 one component at a time, each parked where its plan wants it before the next loads.

Why not `CogView4Pipeline.from_pretrained(quantization_config=PipelineQuantizationConfig(...))`:
pipeline-level NF4 quantizes every component onto the GPU at once and runs out of
memory *while loading* on a 6–8 GiB card (measured: shared/README.md). Loading the
text encoder, parking it on the CPU, then loading the transformer keeps the GPU
peak at one component, and host RAM never holds both bf16 models at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.plans import Placement, Plan, Quant

log = logging.getLogger(__name__)

DTYPE = torch.bfloat16
LoadProgress = Callable[[str, float], None]


def resolve_model_folder(model_id: str, progress: LoadProgress | None = None) -> Path:
    """A local folder as is; a Hub id downloaded into the normal HF cache (resumable, with progress bars)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    from engine.types import EngineUnavailable

    if progress:
        progress(f"Downloading {model_id} (first start only; resumable)", 0.0)
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:  # offline, unknown repo, gated model, disk full: all say the same to the user
        raise EngineUnavailable(
            f"Could not get {model_id} from Hugging Face ({exc.__class__.__name__}: {str(exc)[:200]}). "
            "Check the internet connection and the MODEL_ID spelling, or set MODEL_ID to a local folder; "
            "a half-finished download resumes on the next start."
        ) from exc


def nf4_config(library: str) -> Any:
    """bitsandbytes 4-bit NF4 with bf16 compute, from diffusers or transformers."""
    if library == "diffusers":
        from diffusers import BitsAndBytesConfig
    else:
        from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPE)


def parks_on_gpu(plan: Plan, component: str) -> bool:
    """Where a component waits between uses under this plan (offload plans keep it on the CPU)."""
    if plan.placement is Placement.RESIDENT:
        return True
    if plan.placement is Placement.SWAP:
        return component != "text_encoder"
    return False


@dataclass
class Components:
    """The loaded parts of the pipeline and the quantization they were loaded with."""

    folder: Path
    tokenizer: Any
    text_encoder: torch.nn.Module
    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler: Any
    text_encoder_quant: Quant
    transformer_quant: Quant


def _park(module: torch.nn.Module, on_gpu: bool, device: torch.device) -> torch.nn.Module:
    target = device if on_gpu else torch.device("cpu")
    if next(module.parameters()).device != target:
        module.to(target)
    if not on_gpu and device.type == "cuda":
        torch.cuda.empty_cache()
    return module


def _load_kwargs(library: str, quant: Quant, device: torch.device, on_gpu: bool) -> dict[str, Any]:
    """NF4 quantizes while weights land on the GPU; bf16 goes straight to where it will live."""
    kwargs: dict[str, Any] = {"dtype": DTYPE}
    if quant == "nf4":
        kwargs["quantization_config"] = nf4_config(library)
        kwargs["device_map"] = {"": device}
    elif on_gpu and device.type == "cuda":
        kwargs["device_map"] = {"": device}  # no detour through host RAM
    return kwargs


def load_text_encoder(folder: Path, quant: Quant, device: torch.device, on_gpu: bool) -> torch.nn.Module:
    from transformers import GlmModel

    return GlmModel.from_pretrained(folder / "text_encoder", **_load_kwargs("transformers", quant, device, on_gpu))


def load_transformer(folder: Path, quant: Quant, device: torch.device, on_gpu: bool) -> torch.nn.Module:
    from diffusers import CogView4Transformer2DModel

    return CogView4Transformer2DModel.from_pretrained(
        folder / "transformer", **_load_kwargs("diffusers", quant, device, on_gpu)
    )


def load_components(
    folder: Path,
    plan: Plan,
    device: torch.device,
    *,
    progress: LoadProgress | None = None,
    reuse: Components | None = None,
) -> Components:
    """Load what the plan needs, reusing components of `reuse` whose quantization matches."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    def report(message: str, fraction: float) -> None:
        log.info("%s", message)
        if progress:
            progress(message, fraction)

    if reuse is not None and reuse.folder != folder:
        reuse = None

    def reusable(name: str, quant: Quant) -> bool:
        return reuse is not None and getattr(reuse, name) is not None and getattr(reuse, f"{name}_quant") == quant

    report("Loading tokenizer and scheduler", 0.02)
    tokenizer = reuse.tokenizer if reuse else AutoTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = reuse.scheduler if reuse else FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")

    if reusable("text_encoder", plan.text_encoder):
        text_encoder = reuse.text_encoder
    else:
        if reuse is not None:
            reuse.text_encoder = None  # type: ignore[assignment]  # free before loading the replacement
            _free(device)
        report(f"Loading text encoder ({plan.text_encoder})", 0.05)
        text_encoder = load_text_encoder(folder, plan.text_encoder, device, parks_on_gpu(plan, "text_encoder"))
    _park(text_encoder, parks_on_gpu(plan, "text_encoder"), device)
    text_encoder.eval()

    if reusable("transformer", plan.transformer):
        transformer = reuse.transformer
    else:
        if reuse is not None:
            reuse.transformer = None  # type: ignore[assignment]
            _free(device)
        report(f"Loading transformer ({plan.transformer})", 0.55)
        transformer = load_transformer(folder, plan.transformer, device, parks_on_gpu(plan, "transformer"))
    _park(transformer, parks_on_gpu(plan, "transformer"), device)
    transformer.eval()

    report("Loading VAE", 0.92)
    if reuse is not None and reuse.vae is not None:
        vae = reuse.vae
    else:
        vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=DTYPE)
    _park(vae, parks_on_gpu(plan, "vae"), device)
    vae.eval()
    report("Loaded", 1.0)
    return Components(
        folder=folder,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_quant=plan.text_encoder,
        transformer_quant=plan.transformer,
    )


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
