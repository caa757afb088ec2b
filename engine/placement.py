"""Put the loaded components where a plan wants them, and take them back out.

Switching plans without reloading means undoing whatever the previous plan
installed: accelerate's offload hooks and diffusers' group-offloading hooks.
"""

from __future__ import annotations

import logging

import torch

from engine.plans import Placement, Plan
from engine.residency import Residency, available_bytes, pin_budget, weight_bytes
from engine.streaming import stream_layers

log = logging.getLogger(__name__)

_DIFFUSERS_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def strip_placement(pipe: object) -> None:
    """Remove every offload hook and bring all weights back to the CPU."""
    from accelerate.hooks import remove_hook_from_module
    from diffusers.hooks import HookRegistry

    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        remove_hook_from_module(module, recurse=True)
        registry = getattr(module, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            for hook in _DIFFUSERS_HOOKS:
                registry.remove_hook(hook, recurse=True)
    if hasattr(pipe, "_all_hooks"):
        pipe._all_hooks = []  # type: ignore[attr-defined]


def _to(module: torch.nn.Module, device: torch.device) -> None:
    if any(p.device != device for p in module.parameters()):
        module.to(device)


def apply_placement(
    pipe: object,
    plan: Plan,
    device: torch.device,
    *,
    ram_bytes: int | None = None,
    work_bytes: int = 0,
    mapped: frozenset[str] = frozenset(),
) -> Residency | None:
    """Install the plan's placement on a pipeline whose components carry no hooks.

    Swap and stream plans return the Residency that moves components in and out per phase; `ram_bytes` (the
    host RAM the bot may count on) decides how their host copies are held (engine.residency.host_policy).
    `work_bytes`: the working memory a step needs, kept free when deciding how many blocks stay resident;
    `mapped`: components whose host weights are the memory-mapped cache files (kept as they are)."""
    te = pipe.text_encoder  # type: ignore[attr-defined]
    transformer = pipe.transformer  # type: ignore[attr-defined]
    vae = pipe.vae  # type: ignore[attr-defined]
    cpu = torch.device("cpu")
    placement = plan.placement
    residency = None
    if placement is Placement.RESIDENT:
        for module in (te, transformer, vae):
            _to(module, device)
    elif placement is Placement.SWAP:
        _to(te, cpu)
        _to(transformer, device)
        _to(vae, device)
        residency = Residency(
            {"text_encoder": te, "transformer": transformer, "vae": vae},
            device,
            ram_bytes=ram_bytes,
            stays_on_host={"text_encoder": te.get_input_embeddings()},  # a lookup table: 1.2 GiB less to visit
            mapped=mapped,
        )
    elif placement is Placement.STREAM:
        _to(te, cpu)
        _to(transformer, cpu)
        _to(vae, device)
        blocks = transformer.transformer_blocks
        cuda = device.type == "cuda"
        # The room for resident blocks: what is free less a step's working memory and the transformer's parts
        # other than its blocks (embeddings, norms, the output projection), which stay on the GPU.
        room = available_bytes(device) - work_bytes - weight_bytes(transformer, blocks) if cuda else None
        # The transformer's blocks stream every step: they are locked whole where the memory the bot may lock
        # allows. The text encoder streams every layer, with its 4-bit scales, through its own small pool, which
        # is on the GPU only while it encodes (the residency parks it otherwise), within the room a step's
        # working memory leaves: encoding a prompt never evicts the transformer's resident blocks. Its layers
        # move once a prompt, behind the queue's other work, so they are staged, never locked whole: 4 GiB of
        # RAM kept free for the cost of a slower copy the queue hides.
        streams = {
            "transformer": stream_layers(blocks, device, room_bytes=room, pin_bytes=pin_budget(ram_bytes), place=False),
            "text_encoder": stream_layers(te.layers, device, room_bytes=0 if cuda else None, pin_bytes=0),
        }
        # Made while every weight is on the host, so a component that is the mapped cache file keeps the file
        # as its host copy; then the transformer's resident part comes to the GPU.
        residency = Residency(
            {"text_encoder": te, "transformer": transformer, "vae": vae},
            device,
            ram_bytes=ram_bytes,
            stays_on_host={"text_encoder": te.get_input_embeddings()},
            streams={name: stream for name, stream in streams.items() if stream is not None},
            mapped=mapped,
        )
        residency.bring("transformer", 0)
    elif placement is Placement.MODEL_OFFLOAD:
        for module in (te, transformer, vae):
            _to(module, cpu)
        pipe.enable_model_cpu_offload(device=device)  # type: ignore[attr-defined]
    elif placement is Placement.SEQUENTIAL:
        for module in (te, transformer, vae):
            _to(module, cpu)
        pipe.enable_sequential_cpu_offload(device=device)  # type: ignore[attr-defined]
    elif placement in (Placement.GROUP_BLOCK, Placement.GROUP_LEAF):
        from diffusers.hooks import apply_group_offloading

        kind = "block_level" if placement is Placement.GROUP_BLOCK else "leaf_level"
        extra = {"num_blocks_per_group": 1} if kind == "block_level" else {}
        for module in (te, transformer):
            _to(module, cpu)
            apply_group_offloading(
                module, onload_device=device, offload_device=cpu, offload_type=kind, use_stream=True, **extra
            )
        _to(vae, device)
    else:  # pragma: no cover - every Placement is handled above
        raise ValueError(f"unknown placement {placement}")
    vae.enable_slicing()
    vae.enable_tiling()
    return residency
