"""Per-component residency for the swap plans: what sits on the GPU in each phase of a job.

diffusers' model offload moves every model in and out for every image (the 17.6 GB
text encoder included), and copies from pageable memory. Here a component only
leaves the GPU when another phase needs its room, so a card that fits everything
keeps everything, and an 8 GiB card keeps the transformer and VAE while the text
encoder visits once per batch of queued prompts.

Host memory is spent only where it buys speed (see `host_policy`):
- a component on the GPU holds no host copy until it has had to leave once;
- a component that moves keeps its host copy (leaving again is then free) only where
  the machine has RAM to spare, and page-locks it (copies at bus speed) only within a
  smaller share of the RAM; otherwise leaving copies the weights back out and
  arriving frees them, so the host holds only what is not on the GPU.
- a host copy is one buffer per component, page-locked in one piece: torch's pinned
  allocator rounds every allocation up to a power of two (up to twice the bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch.utils.hooks import RemovableHandle

from engine.measurement import GIB

log = logging.getLogger(__name__)
T = TypeVar("T")

# Who leaves first when room is needed: the text encoder is needed least often.
EVICTION_ORDER = ("text_encoder", "vae", "transformer")
# Who is page-locked first: the transformer and VAE come back right after every encoder visit.
PIN_ORDER = ("transformer", "vae", "text_encoder")
# Host copies of the movers are kept only if all of them fit in this share of the RAM, and
# page-locked (never paged out, so the OS has less to work with) only within the smaller share.
KEEP_SHARE = 0.5
PIN_SHARE = 0.25
_ALIGN = 4096  # page-aligned tensors inside one buffer: every dtype's view is aligned, registration is exact


class Streamer(Protocol):
    """What a component's layer streamer (engine.streaming.LayerStream) shows the residency."""

    def streamed_layers(self) -> tuple[torch.nn.Module, ...]: ...
    def host_bytes(self) -> int: ...
    def pinned_bytes(self) -> int: ...
    def park(self) -> None: ...
    def resume(self) -> None: ...
    def parked_bytes(self) -> int: ...
    def pool_bytes(self) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class HostMode:
    keep: bool  # keep the host copy while on the GPU, so leaving is free
    pin: bool  # page-lock the kept copy


def pin_budget(ram_bytes: int | None) -> int:
    """Host memory the bot may page-lock in all (whole copies and staging rings together)."""
    return int(PIN_SHARE * ram_bytes) if ram_bytes else 0


def host_policy(sizes: dict[str, int], ram_bytes: int | None, *, locked: int = 0) -> dict[str, HostMode]:
    """How each component's host copy is held, from the component sizes and the machine's RAM.

    Keep copies only if every component could be a mover within KEEP_SHARE of the RAM; page-lock in
    PIN_ORDER while the locked total, with the `locked` bytes held already (layer streams), stays within
    `pin_budget`. Unknown RAM: nothing kept, nothing locked."""
    if not ram_bytes or sum(sizes.values()) > KEEP_SHARE * ram_bytes:
        return {name: HostMode(keep=False, pin=False) for name in sizes}
    pinned, modes = locked, {}
    for name in sorted(sizes, key=lambda n: PIN_ORDER.index(n) if n in PIN_ORDER else len(PIN_ORDER)):
        pin = pinned + sizes[name] <= pin_budget(ram_bytes)
        pinned += sizes[name] if pin else 0
        modes[name] = HostMode(keep=True, pin=pin)
    return modes


def available_bytes(device: torch.device) -> int:
    """What this process can still allocate: free VRAM plus our cached blocks, within any cap (on a device
    without such accounting, the CPU: no limit)."""
    if device.type != "cuda":
        return 1 << 62
    free, _total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    reserved = torch.cuda.memory_reserved(device)
    available = free + (reserved - allocated)
    from engine.device import _cap_gib

    if _cap_gib:
        available = min(available, int(_cap_gib * GIB) - allocated)
    return max(0, available)


def _nbytes(tensor: torch.Tensor) -> int:
    return _spec_bytes(tensor.shape, tensor.dtype)


class LockedBuffer:
    """`nbytes` of page-aligned host memory, page-locked in one piece when asked and CUDA is there (torch's
    pinned allocator would round it up to a power of two); `pinned` says whether the lock took."""

    def __init__(self, nbytes: int, *, pin: bool) -> None:
        raw = torch.empty(nbytes + _ALIGN, dtype=torch.uint8)
        start = -raw.data_ptr() % _ALIGN
        self.buffer = raw[start : start + nbytes]
        self.nbytes = nbytes
        self.pinned = False
        if pin:
            self.lock()

    def lock(self) -> None:
        self.pinned = self.nbytes > 0 and _register(self.buffer)

    def views(self, specs: list[tuple[torch.Size, torch.dtype]]) -> list[torch.Tensor]:
        return packed_views(self.buffer, specs)

    def release(self) -> None:
        """Unlock the buffer (the caller has dropped every view or finished copying from them)."""
        if self.pinned:
            self.pinned = False
            torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # at interpreter exit CUDA may already be gone: nothing left to unlock
            pass


class HostCopy:
    """Every tensor of one component in one host buffer, page-locked in one piece when asked.

    Filled one tensor at a time through `place`, so a component loaded on the host is never held twice:
    each original can be freed as soon as its bytes are in the buffer (the buffer is locked after
    filling there; before filling when the tensors come from the GPU, so the copies run at bus speed)."""

    def __init__(
        self,
        specs: list[tuple[torch.Size, torch.dtype]],
        fetch: Callable[[int], torch.Tensor],
        place: Callable[[int, torch.Tensor], None],
        *,
        pin: bool,
        from_gpu: bool,
    ) -> None:
        self.locked = LockedBuffer(packed_offsets(specs)[1], pin=pin and from_gpu)
        self.buffer = self.locked.buffer
        self.nbytes = self.locked.nbytes
        self.views = self.locked.views(specs)
        for index, view in enumerate(self.views):
            view.copy_(fetch(index))
            place(index, view)
        if pin and not from_gpu:
            self.locked.lock()

    @property
    def pinned(self) -> bool:
        return self.locked.pinned

    def release(self) -> None:
        """Unlock the buffer (the caller has dropped every view or finished copying from them)."""
        self.locked.release()


class MappedCopy:
    """A component's host weights as they already are: the memory-mapped cache file (file-backed pages the
    OS may drop and read again). Never page-locked (that would copy them into locked memory); kept while the
    component is on the GPU, since keeping them costs no anonymous memory."""

    pinned = False

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.views = tensors
        self.nbytes = sum(_nbytes(t) for t in tensors)

    def release(self) -> None:
        """Nothing to unlock."""


def _spec_bytes(shape: torch.Size, dtype: torch.dtype) -> int:
    return shape.numel() * dtype.itemsize


def packed_offsets(specs: list[tuple[torch.Size, torch.dtype]]) -> tuple[list[int], int]:
    """Where each tensor starts in one buffer holding them all, page-aligned, and the buffer's size."""
    offsets, total = [], 0
    for shape, dtype in specs:
        offsets.append(total)
        total += -(-_spec_bytes(shape, dtype) // _ALIGN) * _ALIGN
    return offsets, total


def packed_views(buffer: torch.Tensor, specs: list[tuple[torch.Size, torch.dtype]]) -> list[torch.Tensor]:
    """One view per spec into a byte buffer laid out by `packed_offsets` (host or device alike)."""
    offsets, _total = packed_offsets(specs)
    return [
        buffer[offset : offset + _spec_bytes(shape, dtype)].view(dtype).view(shape)
        for (shape, dtype), offset in zip(specs, offsets, strict=True)
    ]


def _register(buffer: torch.Tensor) -> bool:
    """Page-lock exactly this buffer; on failure (a locked-memory limit) the copy stays pageable."""
    if not torch.cuda.is_available():
        return False
    error = int(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0))
    if error != 0:
        log.info(
            "Could not page-lock %.1f GiB of host memory (CUDA error %d); it stays pageable",
            buffer.numel() / GIB,
            error,
        )
        return False
    return True


def run_on_host(module: torch.nn.Module) -> list[RemovableHandle]:
    """Run `module` where its weights are and hand its output back to the device its input came from.

    The text encoder's token embedding (1.2 GiB of its 5 GiB in 4-bit) is a table lookup: on the host it
    costs microseconds and leaves that much more room on a small card for the encoder's visit."""
    came_from: list[torch.device] = []

    def inputs_to_weights(mod: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        weights = next(mod.parameters()).device
        came_from[:] = [args[0].device]
        return tuple(a.to(weights) if isinstance(a, torch.Tensor) else a for a in args)

    def output_back(mod: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output.to(came_from[0]) if isinstance(output, torch.Tensor) else output

    return [module.register_forward_pre_hook(inputs_to_weights), module.register_forward_hook(output_back)]


def _weights(module: torch.nn.Module, *skip: torch.nn.Module | None) -> list[tuple[Any, str]]:
    """(owner, "name" or "buffer:name") of every weight of `module`, leaving out those of the `skip` modules."""
    skipped = {m for part in skip if part is not None for m in part.modules()}
    slots: list[tuple[Any, str]] = []
    for owner in module.modules():
        if owner in skipped:
            continue
        slots.extend((owner, name) for name, _ in owner.named_parameters(recurse=False))
        slots.extend((owner, f"buffer:{name}") for name, b in owner.named_buffers(recurse=False) if b is not None)
    return slots


def _get(owner: Any, key: str) -> torch.Tensor:
    """A weight by its slot key: a parameter's name, "buffer:name", or "attr:name" (a tensor attribute of
    an object that is not a module, as a bitsandbytes 4-bit weight's scales)."""
    if key.startswith("buffer:"):
        return owner._buffers[key[7:]]
    if key.startswith("attr:"):
        return getattr(owner, key[5:])
    return owner._parameters[key].data


def _set(owner: Any, key: str, tensor: torch.Tensor) -> None:
    if key.startswith("buffer:"):
        owner._buffers[key[7:]] = tensor
    elif key.startswith("attr:"):
        setattr(owner, key[5:], tensor)
    else:
        owner._parameters[key].data = tensor


def quant_states(slots: list[tuple[Any, str]]) -> list[Any]:
    """The bitsandbytes 4-bit scales that travel beside these weights (they move with them)."""
    found = []
    for owner, key in slots:
        state = None if key.startswith("buffer:") else getattr(owner._parameters[key], "quant_state", None)
        if state is not None:
            found.append(state)
    return found


def weight_bytes(module: torch.nn.Module, *skip: torch.nn.Module | None) -> int:
    return sum(_nbytes(_get(*slot)) for slot in _weights(module, *skip))


class ComponentSwap:
    """A module whose weights move between the GPU and one host copy (see the module docstring).

    `stays_on_host`: a submodule that never moves and computes on the host (`run_on_host`); `streamed`:
    submodules whose weights another mover handles (engine.streaming), left out here; `mapped`: its host
    weights are the memory-mapped cache file, used as they are (`MappedCopy`)."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        mode: HostMode,
        stays_on_host: torch.nn.Module | None = None,
        streamed: tuple[torch.nn.Module, ...] = (),
        mapped: bool = False,
    ) -> None:
        self.module = module
        self.mapped = mapped
        self.device = device
        self.mode = mode
        self._slots = _weights(module, stays_on_host, *streamed)
        self._quant_states = quant_states(self._slots)
        self.nbytes = sum(_nbytes(_get(*slot)) for slot in self._slots)
        self._stays_bytes = weight_bytes(stays_on_host) if stays_on_host is not None else 0
        self._hooks: list[RemovableHandle] = []
        if stays_on_host is not None:
            stays_on_host.to("cpu")
            self._hooks = run_on_host(stays_on_host)
        self.on_gpu = bool(self._slots) and _get(*self._slots[0]).device == _full(device)
        self.left_once = False  # has had to leave the GPU: a mover
        self.copy: HostCopy | MappedCopy | None = None
        if not self.on_gpu and mapped:
            self.copy = MappedCopy([_get(*slot) for slot in self._slots])
        elif not self.on_gpu:  # loaded on the host: its tensors move into the one host buffer
            self._take_copy()

    def close(self) -> None:
        """Stop computing `stays_on_host` apart (before another plan places the module)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _take_copy(self) -> None:
        """Copy every weight into one new host buffer, each weight re-pointed at its place in it."""
        slots = self._slots
        specs = [(t.shape, t.dtype) for t in (_get(*slot) for slot in slots)]
        self.copy = HostCopy(
            specs,
            lambda i: _get(*slots[i]),
            lambda i, view: _set(*slots[i], view),
            pin=self.mode.pin,
            from_gpu=self.on_gpu and self.device.type == "cuda",
        )

    def host_bytes(self) -> int:
        return self._stays_bytes + (self.copy.nbytes if self.copy is not None else 0)

    def pinned_bytes(self) -> int:
        return self.copy.nbytes if self.copy is not None and self.copy.pinned else 0

    def to_gpu(self) -> None:
        if self.on_gpu:
            return
        assert self.copy is not None
        for (owner, key), host in zip(self._slots, self.copy.views, strict=True):
            _set(owner, key, host.to(self.device, non_blocking=True))
        for state in self._quant_states:
            state.to(self.device)
        self.on_gpu = True
        if not (self.mode.keep and self.left_once) and not isinstance(self.copy, MappedCopy):
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # the copies read the buffer
            self.copy.release()
            self.copy = None

    def to_host(self) -> None:
        if not self.on_gpu:
            return
        if self.copy is None:
            self._take_copy()
        else:
            for (owner, key), view in zip(self._slots, self.copy.views, strict=True):
                _set(owner, key, view)
        for state in self._quant_states:
            state.to("cpu")
        self.on_gpu = False
        self.left_once = True


def _full(device: torch.device) -> torch.device:
    """`cuda` means the current CUDA device; parameters report it with its index."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Residency:
    """Brings components in for a phase, evicting others only when the card is short of room."""

    def __init__(
        self,
        modules: dict[str, torch.nn.Module],
        device: torch.device,
        *,
        ram_bytes: int | None,
        stays_on_host: dict[str, torch.nn.Module] | None = None,
        streams: dict[str, Streamer] | None = None,
        mapped: frozenset[str] = frozenset(),
    ) -> None:
        self.device = device
        stays = stays_on_host or {}
        self.streams = streams or {}

        def streamed(name: str) -> tuple[torch.nn.Module, ...]:
            return self.streams[name].streamed_layers() if name in self.streams else ()

        sizes = {name: weight_bytes(m, stays.get(name), *streamed(name)) for name, m in modules.items()}
        locked = sum(stream.pinned_bytes() for stream in self.streams.values())
        self.modes = host_policy(sizes, ram_bytes, locked=locked)
        self.swaps = {
            name: ComponentSwap(
                module,
                device,
                self.modes[name],
                stays_on_host=stays.get(name),
                streamed=streamed(name),
                mapped=name in mapped,
            )
            for name, module in modules.items()
        }
        self.moves = 0  # components brought in (tests and benchmarks count them)
        self.oom_retries = 0  # phases that ran out of memory and were retried alone
        for name, stream in self.streams.items():  # a stream's pool is on the device only with its component
            if not self.swaps[name].on_gpu:
                stream.park()

    def host_bytes(self) -> int:
        """Host memory held for weights now (pinned and file-backed included)."""
        return sum(s.host_bytes() for s in self.swaps.values()) + sum(s.host_bytes() for s in self.streams.values())

    def pinned_bytes(self) -> int:
        swaps = sum(s.pinned_bytes() for s in self.swaps.values())
        return swaps + sum(s.pinned_bytes() for s in self.streams.values())

    def available_bytes(self) -> int:
        return available_bytes(self.device)

    def room_bytes(self, name: str) -> int:
        """Working room `name` would have once resident, after evicting what `bring` may evict."""
        others = sum(s.nbytes for other, s in self.swaps.items() if other != name and s.on_gpu)
        others += sum(s.pool_bytes() for other, s in self.streams.items() if other != name)  # parked: none
        own = 0 if self.swaps[name].on_gpu else self.swaps[name].nbytes
        return self.available_bytes() + others - own

    def bring(self, name: str, working_bytes: int) -> None:
        """Make `name` resident with `working_bytes` of room to compute, evicting others if needed."""
        swap = self.swaps[name]
        stream = self.streams.get(name)
        need = working_bytes + (0 if swap.on_gpu else swap.nbytes) + (stream.parked_bytes() if stream else 0)
        for other in EVICTION_ORDER:
            if self.available_bytes() >= need:
                break
            if other != name and other in self.swaps and self.swaps[other].on_gpu:
                log.debug("evicting %s to make room for %s", other, name)
                self._evict(other)
                torch.cuda.empty_cache()
        if not swap.on_gpu:
            swap.to_gpu()
            self.moves += 1
        if stream is not None:
            stream.resume()

    def _evict(self, name: str) -> None:
        """`name` to the host, and its layer stream's pool off the device."""
        self.swaps[name].to_host()
        if name in self.streams:
            self.streams[name].park()

    def evict_all_but(self, name: str) -> None:
        for other in self.swaps:
            if other != name:
                self._evict(other)
        torch.cuda.empty_cache()

    def run(self, name: str, working_bytes: int, phase: Callable[[], T]) -> T:
        """Run a phase with `name` resident; on a CUDA OOM, evict everything else and try once more."""
        self.bring(name, working_bytes)
        try:
            return phase()
        except torch.OutOfMemoryError:
            log.warning("Out of memory in the %s phase; evicting the other components and retrying", name)
            self.oom_retries += 1
            self.evict_all_but(name)
            return phase()

    def stop_streams(self) -> None:
        """Stop the layer streamers' copier threads (the engine is stopping): no copy outlives the engine."""
        for stream in self.streams.values():
            stream.close()
        self.streams = {}

    def strip(self) -> None:
        """Leave every weight on the host (before another plan takes over)."""
        self.stop_streams()
        for swap in self.swaps.values():
            swap.to_host()
            swap.close()
