"""Load CogView4 one component at a time, each parked where its plan wants it before the next loads.

Why not `CogView4Pipeline.from_pretrained(quantization_config=PipelineQuantizationConfig(...))`:
pipeline-level NF4 quantizes every component onto the GPU at once and runs out of
memory *while loading* on a 6–8 GiB card (measured). Loading the
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

from engine.device import trim_host_heap
from engine.notes import note
from engine.plans import COMPUTE_KERNEL, Placement, Plan, Quant
from engine.weight_cache import WeightCache, map_onto_files

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
        progress(note("load.download", model=model_id), 0.0)
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:  # offline, unknown repo, gated model, disk full: all say the same to the user
        reason = f"{exc.__class__.__name__}: {str(exc)[:200]}"
        raise EngineUnavailable(code="engine.download", model=model_id, reason=reason) from exc


def nf4_config(library: str) -> Any:
    """bitsandbytes 4-bit NF4 with bf16 compute, from diffusers or transformers."""
    if library == "diffusers":
        from diffusers import BitsAndBytesConfig
    else:
        from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPE)


def store_fp8(module: torch.nn.Module) -> torch.nn.Module:
    """Keep the weights in float8 e4m3 and compute in bf16, layer by layer (diffusers layerwise casting):
    half the memory of bf16 at 8-bit fidelity. Norms, embeddings and the output projection stay bf16."""
    if hasattr(module, "enable_layerwise_casting"):
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=DTYPE)
    else:
        from diffusers.hooks import apply_layerwise_casting

        apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=DTYPE)
    return module


# Quantizing the 4-bit text encoder on the GPU holds all of it there plus one bf16 weight: measured to run
# out of memory on a 6 GB card (5.3 GiB usable). Below this much free memory, a text encoder that waits on
# the host anyway is quantized there (slower, once: the result is cached) and loaded there from the cache.
QUANTIZE_ON_GPU_FROM_GIB = 6.5


def quantizes_on_host(device: torch.device, on_gpu: bool) -> bool:
    """Whether a component that waits on the host is better quantized and loaded there than on this GPU."""
    if on_gpu or device.type != "cuda":
        return False
    from engine.device import free_gib

    free = free_gib()
    return free is not None and free < QUANTIZE_ON_GPU_FROM_GIB


def parks_on_gpu(plan: Plan, component: str) -> bool:
    """Where a component waits between uses under this plan (offload plans keep it on the CPU)."""
    if plan.placement is Placement.RESIDENT:
        return True
    if plan.placement is Placement.SWAP:
        return component != "text_encoder"
    if plan.placement is Placement.STREAM:  # the transformer waits on the host; placement brings in what fits
        return component == "vae"
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
    # Components whose host weights are the memory-mapped cache files (file-backed, not anonymous memory).
    mapped: frozenset[str] = frozenset()


def _park(module: torch.nn.Module, on_gpu: bool, device: torch.device) -> torch.nn.Module:
    target = device if on_gpu else torch.device("cpu")
    if next(module.parameters()).device != target:
        module.to(target)
    if not on_gpu and device.type == "cuda":
        torch.cuda.empty_cache()
    return module


def load_8bit_by_block(
    cls: Any, source: Path, quant: Quant, where: torch.device, park: torch.device | None = None
) -> torch.nn.Module:
    """The transformer built straight into its 8-bit matmul form (engine.quant8), one block at a time from the
    model's safetensors files: the host holds one block's bf16 weights at a time, never the bf16 model
    (12.7 GB for CogView4-6B). Each block is quantized on `where` (the GPU: one bf16 block there at a time)
    and kept on `park` (default: `where`; the host for a plan that streams the blocks)."""
    park = park or where
    from accelerate import init_empty_weights
    from safetensors import safe_open

    from engine.quant8 import quantize_block

    with init_empty_weights():
        model = cls.from_config(cls.load_config(source))
    files = {}
    for path in sorted(source.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), path))

    def read(names: list[str], prefix: str) -> dict[str, torch.Tensor]:
        state = {}
        for path in dict.fromkeys(files[name] for name in names):
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in names:
                    if files[name] == path:
                        state[name[len(prefix) :]] = handle.get_tensor(name).to(where, DTYPE)
        return state

    blocks = "transformer_blocks."
    model.load_state_dict(read([n for n in files if not n.startswith(blocks)], ""), strict=False, assign=True)
    for index, block in enumerate(model.transformer_blocks):
        prefix = f"{blocks}{index}."
        block.load_state_dict(read([n for n in files if n.startswith(prefix)], prefix), strict=True, assign=True)
        quantize_block(block, COMPUTE_KERNEL[quant])  # type: ignore[arg-type]
        block.to(park)
    missing = [n for n, t in model.state_dict().items() if t.is_meta]
    if missing:
        raise ValueError(f"{source} lacks weights for {', '.join(missing[:5])}")
    return model.to(park)


def _load_kwargs(library: str, quant: Quant, device: torch.device, on_gpu: bool) -> dict[str, Any]:
    """NF4 quantizes while weights land on the GPU; FP8 storage is cast on the host (a bf16 copy on the GPU
    would need twice the room); bf16 goes straight to where it will live."""
    kwargs: dict[str, Any] = {"dtype": DTYPE}
    if quant == "fp8":
        return kwargs
    if quant == "nf4":
        kwargs["quantization_config"] = nf4_config(library)
        kwargs["device_map"] = {"": device}
    elif on_gpu and device.type == "cuda":
        kwargs["device_map"] = {"": device}  # no detour through host RAM
    return kwargs


def _load(
    cls: Any, library: str, source: Path, quant: Quant, device: torch.device, on_gpu: bool, cache: WeightCache | None
) -> torch.nn.Module:
    """Load one component, through the quantized cache for NF4 and FP8 when there is one."""

    eight_bit = quant in ("fp8mm", "int8mm")
    where = device if on_gpu else torch.device("cpu")

    def build() -> torch.nn.Module:
        if eight_bit:  # quantized on the GPU one block at a time, even when it waits on the host
            return load_8bit_by_block(cls, source, quant, device if device.type == "cuda" else where, where)
        model = cls.from_pretrained(source, **_load_kwargs(library, quant, device, on_gpu))
        return store_fp8(model) if quant == "fp8" else model

    if cache is None or quant == "bf16":
        return build()

    def save(model: torch.nn.Module, folder: Path) -> None:
        if quant == "nf4":
            model.save_pretrained(folder)  # bitsandbytes 4-bit weights serialize natively
            return
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / _weights_file(quant)))
        (model.save_config if library == "diffusers" else model.config.save_pretrained)(folder)

    def load(folder: Path) -> torch.nn.Module:
        if quant == "nf4":
            return cls.from_pretrained(folder, dtype=DTYPE, device_map={"": device})
        from accelerate import init_empty_weights
        from safetensors.torch import load_file

        config = cls.load_config(folder) if library == "diffusers" else cls.config_class.from_pretrained(folder)
        with init_empty_weights():
            model = cls.from_config(config) if library == "diffusers" else cls(config)
        if eight_bit:
            from engine.quant8 import quantize_blocks

            quantize_blocks(model, COMPUTE_KERNEL[quant])  # type: ignore[arg-type]  # the 8-bit modules, empty
            # Straight to where the weights live: no host copy of the whole component on the way.
            state = load_file(str(folder / _weights_file(quant)), device=str(where))
            model.load_state_dict(state, strict=True, assign=True)
            return model
        model.load_state_dict(load_file(str(folder / _weights_file(quant))), strict=True, assign=True)
        return store_fp8(model)

    # Waiting on the host, a component is read back from its cache entry once saved: its host copy is then
    # the memory-mapped file (the OS may drop and re-read it), not anonymous memory.
    return cache.load_or_build(source.name, quant, source, build, save, load, reload=eight_bit and not on_gpu)


def _weights_file(quant: Quant) -> str:
    return f"{quant}.safetensors"


def load_text_encoder(
    folder: Path, quant: Quant, device: torch.device, on_gpu: bool, cache: WeightCache | None = None
) -> torch.nn.Module:
    from transformers import GlmModel

    return _load(GlmModel, "transformers", folder / "text_encoder", quant, device, on_gpu, cache)


def load_transformer(
    folder: Path, quant: Quant, device: torch.device, on_gpu: bool, cache: WeightCache | None = None
) -> torch.nn.Module:
    from diffusers import CogView4Transformer2DModel

    return _load(CogView4Transformer2DModel, "diffusers", folder / "transformer", quant, device, on_gpu, cache)


def load_components(
    folder: Path,
    plan: Plan,
    device: torch.device,
    *,
    progress: LoadProgress | None = None,
    reuse: Components | None = None,
    cache_dir: Path | None = None,
) -> Components:
    """Load what the plan needs, reusing components of `reuse` whose quantization matches.

    `cache_dir`: where quantized weights are kept between starts (None: quantize on every start)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    def report(message: str, fraction: float) -> None:
        log.info("%s", message)
        if progress:
            progress(message, fraction)

    if reuse is not None and reuse.folder != folder:
        reuse = None
    cache = WeightCache(cache_dir) if cache_dir is not None else None

    def reusable(name: str, quant: Quant) -> bool:
        return reuse is not None and getattr(reuse, name) is not None and getattr(reuse, f"{name}_quant") == quant

    report(note("load.tokenizer"), 0.02)
    tokenizer = reuse.tokenizer if reuse else AutoTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = reuse.scheduler if reuse else FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")

    if reusable("text_encoder", plan.text_encoder):
        text_encoder = reuse.text_encoder
    else:
        if reuse is not None:
            reuse.text_encoder = None  # type: ignore[assignment]  # free before loading the replacement
            _free(device)
        on_gpu = parks_on_gpu(plan, "text_encoder")
        on_cpu = plan.text_encoder != "bf16" and quantizes_on_host(device, on_gpu)
        if on_cpu:
            log.info("Too little GPU memory to quantize the text encoder there: quantizing it on the CPU")
        report(note("load.text_encoder_on_cpu" if on_cpu else "load.text_encoder", quant=plan.text_encoder), 0.05)
        where = torch.device("cpu") if on_cpu else device
        text_encoder = load_text_encoder(folder, plan.text_encoder, where, on_gpu, cache)
    _park(text_encoder, parks_on_gpu(plan, "text_encoder"), device)
    text_encoder.eval()
    mapped = set()
    if _map_host_copy(text_encoder, "text_encoder", folder, plan.text_encoder, plan, cache):
        mapped.add("text_encoder")

    if reusable("transformer", plan.transformer):
        transformer = reuse.transformer
    else:
        if reuse is not None:
            reuse.transformer = None  # type: ignore[assignment]
            _free(device)
        report(note("load.transformer", quant=plan.transformer), 0.55)
        transformer = load_transformer(folder, plan.transformer, device, parks_on_gpu(plan, "transformer"), cache)
    _park(transformer, parks_on_gpu(plan, "transformer"), device)
    transformer.eval()
    if _map_host_copy(transformer, "transformer", folder, plan.transformer, plan, cache):
        mapped.add("transformer")

    report(note("load.vae"), 0.92)
    if reuse is not None and reuse.vae is not None:
        vae = reuse.vae
    else:
        vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=DTYPE)
    _park(vae, parks_on_gpu(plan, "vae"), device)
    vae.eval()
    report(note("load.done"), 1.0)
    return Components(
        folder=folder,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_quant=plan.text_encoder,
        transformer_quant=plan.transformer,
        mapped=frozenset(mapped),
    )


def _map_host_copy(
    module: torch.nn.Module, name: str, folder: Path, quant: Quant, plan: Plan, cache: WeightCache | None
) -> bool:
    """A component that waits on the host and came from a cache entry keeps the entry's memory-mapped
    tensors as its host weights (see weight_cache.map_onto_files). True where it does."""
    if cache is None or quant == "bf16" or parks_on_gpu(plan, name):
        return False
    entry = cache.entry(name, quant, folder / name)
    if not entry.is_dir():
        return False
    moved = map_onto_files(module, entry)
    total = sum(t.numel() * t.element_size() for t in module.state_dict().values() if t.device.type == "cpu")
    log.info("%s: %.2f of %.2f GiB on the host are the memory-mapped cache file", name, moved / 2**30, total / 2**30)
    trim_host_heap()
    return moved > 0


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
