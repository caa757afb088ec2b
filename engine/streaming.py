"""Layers streamed from host memory behind the compute: a few stay resident, the others are copied in for
every pass into a small fixed pool of device buffers, ahead of the compute, on a copy stream.

On a home card a CogView4 step is compute-bound (seconds) while PCIe moves 12–25 GB/s, so weights that do
not fit can move during the compute and cost almost nothing, as long as the copies overlap it. diffusers'
group offloading synchronises the host on every group; here, as in ComfyUI's low-VRAM path, nothing in the
step waits on the host:
- the streamed layers run in a fixed cyclic order (block 0 … N-1 of every pass), so the n-th streamed layer
  to run always goes into pool slot n mod `pool`; its copy is issued as soon as the layer that used that slot
  before it has run (an event recorded on the compute stream, which the copy stream waits on);
- a layer about to run makes the compute stream wait on its copy's event and points its weights at the slot.
Host weights are either packed whole into page-locked memory (where the RAM the bot may lock allows), or
stay where they are (a memory-mapped weight file, which the OS may drop and re-read) and are staged through
a page-locked ring of `pool` layers: the host copies a layer into a ring slot once that slot's previous
copy to the device has finished, and the device copies it from there at bus speed. The copies are issued by
one copier thread, so staging (and any read from disk) blocks that thread, never the one that queues the
compute. The pool and the ring are allocated once: no allocator churn, and they never grow.

A layer skipped by the step cache (draft mode) still takes its turn in the cycle: its weights arrive but
are not used. A pass cut short by an error leaves the cycle mid-way; the next pass re-starts it (`restart`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from engine.residency import (
    GIB,
    HostCopy,
    LockedBuffer,
    _get,
    _set,
    _spec_bytes,
    _weights,
    packed_offsets,
    packed_views,
    quant_states,
)

log = logging.getLogger(__name__)

# Slots in the device pool: two would let a copy start only once the previous layer has run; three keep one
# copy always in flight while a layer computes and the next waits ready.
POOL_SLOTS = 3


def stream_slots(layer: nn.Module) -> list[tuple[Any, str]]:
    """What a layer's streamer copies, in order: its weights, then the scales of its bitsandbytes 4-bit
    weights (an eighth of their bytes: on a 4–6 GiB card the text encoder's would hold half a GiB for good)."""
    slots = _weights(layer)
    return slots + [(state, "attr:absmax") for state in quant_states(slots)]


def layout(layer: nn.Module) -> list[tuple[torch.Size, torch.dtype]]:
    """Shapes and dtypes of what a layer's streamer copies, in order."""
    return [(t.shape, t.dtype) for t in (_get(*slot) for slot in stream_slots(layer))]


def layer_bytes(layer: nn.Module) -> int:
    return sum(_spec_bytes(shape, dtype) for shape, dtype in layout(layer))


def spread(count: int, streamed: int) -> list[int]:
    """Which of `count` layers to stream: `streamed` of them spread evenly, so every streamed layer's copy
    has resident layers' compute to hide behind (the last layer of a pass streams first)."""
    if streamed <= 0:
        return []
    if streamed >= count:
        return list(range(count))
    return sorted({count - 1 - int(i * count / streamed) for i in range(streamed)})


def stream_layers(
    layers: Sequence[nn.Module],
    device: torch.device,
    *,
    room_bytes: int | None,
    pin_bytes: int,
    pool: int = POOL_SLOTS,
    place: bool = True,
) -> LayerStream | None:
    """Put on `device` as many of `layers` as `room_bytes` holds beside the pool, and stream the others
    (None: all of them fit; `place` False: the caller moves the resident ones). Their host copies are
    page-locked whole where that fits in `pin_bytes` (what the bot may still lock), else staged through the
    ring from where they are (a memory-mapped file when loaded from the quantized cache). `room_bytes` None
    (no CUDA device): half of them stream, which exercises the path."""
    count, size = len(layers), layer_bytes(layers[0])
    if room_bytes is None:
        resident = count - count // 2
    elif count * size <= room_bytes:
        resident = count
    else:
        resident = max(0, min(count, (room_bytes - pool * size) // size))
    streamed = spread(count, count - resident)
    for index, layer in enumerate(layers):
        if place and index not in streamed:
            layer.to(device)
    if not streamed:
        return None
    pin = len(streamed) * size <= pin_bytes
    log.info(
        "%d of %d layers resident, %d streamed (%.2f GiB a pass, host copies %s)",
        resident,
        count,
        len(streamed),
        len(streamed) * size / GIB,
        "page-locked" if pin else "staged through a page-locked ring",
    )
    return LayerStream(layers, streamed, device, pool=pool, pin=pin)


class LayerStream:
    """Streams `layers[i]` for every i in `streamed` (see the module docstring); the other layers and
    everything else are the caller's to place.

    `pin`: pack each streamed layer's host weights into one page-locked buffer (copies at bus speed; the
    memory is locked). Otherwise the weights stay where they are on the host (file-backed when they came
    from a memory-mapped weight file) and are staged through a ring of `pool` layer buffers, page-locked on
    a CUDA device."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        streamed: Sequence[int],
        device: torch.device,
        *,
        pool: int = POOL_SLOTS,
        pin: bool = True,
    ) -> None:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the copier thread sets it by index
        self.device = device
        self.layers = list(layers)
        self.order = sorted(streamed)
        if not self.order:
            raise ValueError("nothing to stream")
        shapes = layout(self.layers[self.order[0]])
        if any(layout(self.layers[i]) != shapes for i in self.order):
            raise ValueError("streamed layers must share one layout")
        self.pool_size = min(pool, len(self.order))
        self._slots_of = [stream_slots(self.layers[i]) for i in self.order]
        # The 4-bit scales stream with their weights; what else a scale state holds (its 16-value code
        # book, a nested state's offset and scales) is a few bytes and stays on the device.
        self._quant_states = [owner for slots in self._slots_of for owner, key in slots if key == "attr:absmax"]
        for state in self._quant_states:
            _small_parts_to(state, device)
        # Per streamed layer: its host weights, and the one buffer holding them all where they are packed.
        self.host: list[list[torch.Tensor]] = []
        self.host_flat: list[torch.Tensor | None] = []
        self._copies: list[HostCopy] = []
        cuda = device.type == "cuda"
        whole = pin and cuda
        for slots in self._slots_of:
            if whole:
                copy = HostCopy(
                    shapes,
                    lambda j, s=slots: _get(*s[j]),
                    lambda j, view, s=slots: _set(*s[j], view),
                    pin=True,
                    from_gpu=False,
                )
                self._copies.append(copy)
                self.host.append(copy.views)
                self.host_flat.append(copy.buffer)
            else:
                self.host.append([_get(*slot).to("cpu") for slot in slots])
                self.host_flat.append(None)
        self.layer_nbytes = sum(_spec_bytes(s, d) for s, d in shapes)
        self._shapes = shapes
        self.pool, self.pool_views = _pool(shapes, self.pool_size, device)
        # The staging ring, laid out as the pool: a staged layer is one copy to the device.
        ring_bytes = packed_offsets(shapes)[1]
        self._ring = [] if whole else [LockedBuffer(ring_bytes, pin=cuda) for _ in range(self.pool_size)]
        self._ring_views = [buffer.views(shapes) for buffer in self._ring]
        self.parked = False
        self.pinned = whole and all(c.pinned for c in self._copies)
        self._copy_stream = torch.cuda.Stream(device) if cuda else None
        self._copied = [torch.cuda.Event() if cuda else None for _ in range(self.pool_size)]
        self._freed = [torch.cuda.Event() if cuda else None for _ in range(self.pool_size)]
        self._position = {index: n for n, index in enumerate(self.order)}
        self._hooks = [
            h
            for n, index in enumerate(self.order)
            for h in (
                self.layers[index].register_forward_pre_hook(self._before_hook(n)),
                self.layers[index].register_forward_hook(self._after_hook(n)),
            )
        ]
        self.copies = 0  # layers copied in (tests and benchmarks count them)
        self._lock = threading.Condition()
        self._next = 0  # ordinal of the next streamed layer to run
        self._issued = -1  # highest ordinal whose copy is issued
        self._done = -1  # highest ordinal that has run (its slot may be overwritten)
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._start(0)

    # --- the cycle ------------------------------------------------------------------------------

    def _start(self, first: int) -> None:
        with self._lock:
            self._next = first
            self._issued = first - 1
            self._done = first - 1
            self._stop = False
            self._error = None
        self._thread = threading.Thread(target=self._copier, name="layer-stream", daemon=True)
        self._thread.start()

    def _copier(self) -> None:
        """Issue the copy of ordinal n as soon as ordinal n - pool has run, forever (until stopped)."""
        try:
            self._bind_thread()
            while True:
                with self._lock:
                    n = self._issued + 1
                    self._lock.wait_for(lambda n=n: self._stop or self._done >= n - self.pool_size)
                    if self._stop:
                        return
                with torch.inference_mode():  # the pool may have been made in inference mode (a thread's own)
                    self._copy(n)
                with self._lock:
                    self._issued = n
                    self._lock.notify_all()
        except BaseException as exc:  # surfaced to the compute thread at its next streamed layer
            log.exception("Streaming a layer to the GPU failed")
            with self._lock:
                self._error = exc
                self._lock.notify_all()

    def _bind_thread(self) -> None:
        """The copier thread's CUDA device: a new thread starts on device 0."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _copy(self, n: int) -> None:
        slot, which = n % self.pool_size, n % len(self.order)
        source = self.host_flat[which]
        if source is None:
            source = self._stage(slot, which)
        if self._copy_stream is None:
            self.pool[slot].copy_(source)
        else:
            freed, copied = self._freed[slot], self._copied[slot]
            assert freed is not None and copied is not None
            with torch.cuda.stream(self._copy_stream):
                if n >= self.pool_size:
                    self._copy_stream.wait_event(freed)  # the slot's previous layer has run
                self.pool[slot].copy_(source, non_blocking=True)  # the same packed layout
                copied.record(self._copy_stream)
        self.copies += 1

    def _stage(self, slot: int, which: int) -> torch.Tensor:
        """Copy streamed layer `which` into ring slot `slot` once the slot's previous copy to the device has
        read it (a wait in the copier thread only); the ring slot, packed as the pool."""
        copied = self._copied[slot]
        if copied is not None:
            copied.synchronize()
        for dst, src in zip(self._ring_views[slot], self.host[which], strict=True):
            dst.copy_(src)
        return self._ring[slot].buffer

    def _before_hook(self, position: int) -> Any:
        @torch.compiler.disable
        def before(module: nn.Module, args: Any) -> None:
            if self.parked:
                self.resume()
            n = self._next
            if n % len(self.order) != position:  # a pass was cut short: start the cycle here
                log.info("streamed layers out of step (expected %d, got %d); restarting the cycle", n, position)
                self.restart(position)
                n = self._next
            with self._lock:
                self._lock.wait_for(lambda: self._issued >= n or self._error is not None)
                if self._error is not None:
                    raise RuntimeError(f"streaming a layer to the GPU failed: {self._error}") from self._error
            slot = n % self.pool_size
            copied = self._copied[slot]
            if copied is not None:
                torch.cuda.current_stream(self.device).wait_event(copied)
            for (owner, key), view in zip(self._slots_of[position], self.pool_views[slot], strict=True):
                _set(owner, key, view)

        return before

    def _after_hook(self, position: int) -> Any:
        @torch.compiler.disable
        def after(module: nn.Module, args: Any, output: Any) -> None:
            n = self._next
            freed = self._freed[n % self.pool_size]
            if freed is not None:
                freed.record(torch.cuda.current_stream(self.device))
            with self._lock:
                self._done = n
                self._next = n + 1
                self._lock.notify_all()

        return after

    def restart(self, position: int = 0) -> None:
        """Start the cycle again at streamed position `position` (after a pass that stopped mid-way)."""
        self._halt()
        if self._copy_stream is not None:  # no copy lands in a slot a queued layer still reads, and back
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._copy_stream)
            self._copy_stream.wait_stream(compute)
        self._start(position)

    def _halt(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # --- accounting and teardown ------------------------------------------------------------------

    def streamed_layers(self) -> tuple[nn.Module, ...]:
        return tuple(self.layers[i] for i in self.order)

    def bytes_per_pass(self) -> int:
        """Bytes copied to the device for one pass through the layers."""
        return self.layer_nbytes * len(self.order)

    def pool_bytes(self) -> int:
        return sum(t.numel() for t in self.pool)

    def pinned_bytes(self) -> int:
        return sum(c.nbytes for c in self._copies if c.pinned) + sum(b.nbytes for b in self._ring if b.pinned)

    def host_bytes(self) -> int:
        return self.layer_nbytes * len(self.order) + sum(b.nbytes for b in self._ring)

    def park(self) -> None:
        """While the component waits on the host: no copies, the pool's device memory given back (the VAE's
        decode on a small card needs it). The next streamed layer to run, or `resume`, brings it back."""
        if self.parked:
            return
        self._halt()
        if self._copy_stream is not None:
            self._copy_stream.synchronize()
        self._point_at_host()
        self.pool, self.pool_views = [], []
        self.parked = True

    def resume(self) -> None:
        """Make the pool again and start the cycle at the first streamed layer."""
        if not self.parked:
            return
        self.pool, self.pool_views = _pool(self._shapes, self.pool_size, self.device)
        self.parked = False
        self._start(0)

    def parked_bytes(self) -> int:
        """Device memory `resume` will take: the pool (none while it is in use)."""
        return self.pool_size * packed_offsets(self._shapes)[1] if self.parked else 0

    def close(self) -> None:
        """Stop streaming: every streamed layer's weights point at its host copy again, hooks removed."""
        self._halt()
        if self._copy_stream is not None:
            self._copy_stream.synchronize()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._point_at_host()
        for state in self._quant_states:
            state.to("cpu")
        self.pool, self.pool_views = [], []
        for buffer in self._ring:
            buffer.release()
        self._ring, self._ring_views = [], []

    def _point_at_host(self) -> None:
        for slots, host in zip(self._slots_of, self.host, strict=True):
            for (owner, key), tensor in zip(slots, host, strict=True):
                _set(owner, key, tensor)


def _small_parts_to(state: Any, device: torch.device) -> None:
    """A bitsandbytes scale state's parts other than `absmax` (which streams) to `device`."""
    state.code = state.code.to(device)
    if state.nested:
        state.offset = state.offset.to(device)
        state.state2.to(device)


def _pool(
    shapes: list[tuple[torch.Size, torch.dtype]], slots: int, device: torch.device
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """`slots` device buffers of one layer each, and every weight's view in each, laid out as HostCopy lays
    out the host buffer (so a packed host layer is one copy)."""
    total = packed_offsets(shapes)[1]
    pool = [torch.empty(total, dtype=torch.uint8, device=device) for _ in range(slots)]
    return pool, [packed_views(buf, shapes) for buf in pool]
