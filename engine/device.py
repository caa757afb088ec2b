"""What GPU we have and how much of it is free; allocator settings that must precede CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.measurement import GIB


def configure_allocator() -> None:
    """Use expandable segments unless the user chose otherwise.

    Must run before the first CUDA allocation: offloading moves weights in and out
    all the time, and without it the caching allocator fragments and reports OOM
    with gigabytes "reserved but unallocated" (measured on an 8 GiB cap).
    """
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_gib: float
    free_gib: float
    capability: tuple[int, int]
    # A hard cap set with torch.cuda.set_per_process_memory_fraction (benchmarks of small cards).
    cap_gib: float | None = None

    @property
    def usable_gib(self) -> float:
        """What this process may still take: free memory, or the cap minus what we already hold."""
        if self.cap_gib is None:
            return self.free_gib
        import torch

        held = torch.cuda.memory_reserved() / GIB
        return max(0.0, min(self.free_gib, self.cap_gib - held))


_cap_gib: float | None = None


def set_memory_cap(cap_gib: float | None) -> None:
    """Pretend the card has only cap_gib (benchmarks of small cards on a big one)."""
    global _cap_gib
    _cap_gib = cap_gib
    if cap_gib:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))


def gpu_info() -> GpuInfo | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(
        name=props.name,
        total_gib=total / GIB,
        free_gib=free / GIB,
        capability=(props.major, props.minor),
        cap_gib=_cap_gib,
    )


def free_gib() -> float | None:
    """Free VRAM this process can use, or None without a CUDA GPU."""
    info = gpu_info()
    return None if info is None else info.usable_gib


def host_ram(configured_gib: float | None = None) -> float | None:
    """The host RAM the bot may count on, GiB: HOST_RAM_GIB where set, else the machine's or, where less, the
    memory limit of the process's cgroup (a container's `--memory`, a systemd `MemoryMax`) (None: unknown).
    `auto` never picks a plan that would not fit beside the system, and swap plans keep host copies of
    their weights only where there is room (engine.residency)."""
    if configured_gib:
        return configured_gib
    try:
        import psutil
    except ImportError:
        return None
    total = psutil.virtual_memory().total
    limit = cgroup_memory_limit()
    return (total if limit is None else min(total, limit)) / GIB


# A cgroup v1 group without a limit reports a number near 2^63.
_NO_LIMIT = 2**60


def cgroup_memory_limit(
    membership: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The smallest memory limit, bytes, on this process's cgroup and the groups above it (cgroup v2
    `memory.max`, v1 `memory.limit_in_bytes`); None where none is set or the files cannot be read (Windows,
    macOS)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        node = base / path.lstrip("/")
        while True:
            try:
                value = (node / name).read_text().strip()
            except OSError:
                value = "max"
            if value.isdigit() and int(value) < _NO_LIMIT:
                limits.append(int(value))
            if node == base or base not in node.parents:
                break
            node = node.parent
    return min(limits) if limits else None


def release_memory() -> None:
    """Give cached blocks back after an OOM or a plan change."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def trim_host_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc only). Weights under 32 MB live in malloc's heap, and
    freeing them (a component re-pointed at its memory-mapped cache file) leaves them counted as the process's
    memory until trimmed."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return
    trim(0)
