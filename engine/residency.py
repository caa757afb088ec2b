"""Per-component residency for the swap plans: what sits on the GPU in each phase of a job.

diffusers' model offload moves every model in and out for every image (the 17.6 GB
text encoder included), and copies from pageable memory. Here each component
keeps a *pinned* copy of its weights on the host, so bringing it in is one
asynchronous copy at bus speed and sending it out is free (the host copy is
still valid: inference never changes weights). A component only leaves the GPU
when another phase needs its room, so a card that fits everything keeps
everything, and an 8 GiB card keeps the transformer and VAE while the text
encoder visits once per batch of queued prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
GIB = 1024**3

# Who leaves first when room is needed: the text encoder is needed least often.
EVICTION_ORDER = ("text_encoder", "vae", "transformer")


def _should_pin(total_bytes: int) -> bool:
    """Pinned memory cannot be paged out: only pin when the host has plenty of RAM."""
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except Exception:  # psutil missing or unsupported platform: pageable copies still work
        return False
    return ram >= total_bytes * 2 + 8 * GIB


def available_bytes(device: torch.device) -> int:
    """What this process can still allocate: free VRAM plus our cached blocks, within any cap."""
    free, _total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    reserved = torch.cuda.memory_reserved(device)
    available = free + (reserved - allocated)
    from engine.device import _cap_gib

    if _cap_gib:
        available = min(available, int(_cap_gib * GIB) - allocated)
    return max(0, available)


class PinnedSwap:
    """A module whose weights live on the host and visit the GPU without re-copying back."""

    def __init__(self, module: torch.nn.Module, device: torch.device, *, pin: bool) -> None:
        self.module = module
        self.device = device
        self._tensors: list[tuple[Any, str, torch.Tensor]] = []  # (owner, attribute, host copy)
        self._quant_states: list[Any] = []
        self.nbytes = 0
        first = next(module.parameters(), None)
        self.on_gpu = first is not None and first.device.type == "cuda"
        for owner in module.modules():
            for name, param in list(owner.named_parameters(recurse=False)):
                self._add(owner, name, param.data, pin, is_param=True)
                state = getattr(param, "quant_state", None)
                if state is not None:
                    self._quant_states.append(state)
            for name, buffer in list(owner.named_buffers(recurse=False)):
                if buffer is not None:
                    self._add(owner, name, buffer, pin, is_param=False)

    def _add(self, owner: Any, name: str, tensor: torch.Tensor, pin: bool, *, is_param: bool) -> None:
        host = tensor.detach().to("cpu")
        if pin and self.device.type == "cuda" and not host.is_pinned():
            host = host.pin_memory()
        self._tensors.append((owner, name if is_param else f"buffer:{name}", host))
        self.nbytes += host.numel() * host.element_size()
        if not self.on_gpu:
            self._assign(owner, name if is_param else f"buffer:{name}", host)

    @staticmethod
    def _assign(owner: Any, key: str, tensor: torch.Tensor) -> None:
        if key.startswith("buffer:"):
            owner._buffers[key[7:]] = tensor
        else:
            owner._parameters[key].data = tensor

    def to_gpu(self) -> None:
        if self.on_gpu:
            return
        for owner, key, host in self._tensors:
            self._assign(owner, key, host.to(self.device, non_blocking=True))
        for state in self._quant_states:
            state.to(self.device)
        self.on_gpu = True

    def to_host(self) -> None:
        if not self.on_gpu:
            return
        for owner, key, host in self._tensors:
            self._assign(owner, key, host)
        for state in self._quant_states:
            state.to("cpu")
        self.on_gpu = False


class Residency:
    """Brings components in for a phase, evicting others only when the card is short of room."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device, *, pin: bool | None = None) -> None:
        self.device = device
        total = sum(sum(p.numel() * p.element_size() for p in m.parameters()) for m in modules.values())
        pin = _should_pin(total) if pin is None else pin
        self.pinned = pin
        self.swaps = {name: PinnedSwap(module, device, pin=pin) for name, module in modules.items()}
        self.moves = 0  # components brought in (tests and benchmarks count them)

    def available_bytes(self) -> int:
        return available_bytes(self.device)

    def room_bytes(self, name: str) -> int:
        """Working room `name` would have once resident, after evicting what `bring` may evict."""
        others = sum(s.nbytes for other, s in self.swaps.items() if other != name and s.on_gpu)
        own = 0 if self.swaps[name].on_gpu else self.swaps[name].nbytes
        return self.available_bytes() + others - own

    def bring(self, name: str, working_bytes: int) -> None:
        """Make `name` resident with `working_bytes` of room to compute, evicting others if needed."""
        swap = self.swaps[name]
        need = working_bytes + (0 if swap.on_gpu else swap.nbytes)
        for other in EVICTION_ORDER:
            if self.available_bytes() >= need:
                break
            if other != name and other in self.swaps and self.swaps[other].on_gpu:
                log.debug("evicting %s to make room for %s", other, name)
                self.swaps[other].to_host()
                torch.cuda.empty_cache()
        if not swap.on_gpu:
            swap.to_gpu()
            self.moves += 1

    def evict_all_but(self, name: str) -> None:
        for other, swap in self.swaps.items():
            if other != name:
                swap.to_host()
        torch.cuda.empty_cache()

    def run(self, name: str, working_bytes: int, phase: Callable[[], T]) -> T:
        """Run a phase with `name` resident; on a CUDA OOM, evict everything else and try once more."""
        self.bring(name, working_bytes)
        try:
            return phase()
        except torch.OutOfMemoryError:
            log.warning("Out of memory in the %s phase; evicting the other components and retrying", name)
            self.evict_all_but(name)
            return phase()

    def strip(self) -> None:
        """Leave every weight on the host (before another plan takes over)."""
        for swap in self.swaps.values():
            swap.to_host()
