"""Host memory, disk reads, CUDA context and image fidelity for bench/plans.py (Linux /proc figures)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

GIB = 1024**3


def status_gib() -> dict[str, float]:
    """VmRSS split the way the OS sees it: anonymous (swappable), file-backed (droppable), and the rest,
    which for this process is pinned host memory (cudaHostAlloc: neither swappable nor droppable)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024 / GIB
    rss, anon, file = fields.get("VmRSS", 0.0), fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0)
    return {
        "rss_gib": rss,
        "anon_gib": anon,
        "file_gib": file,
        "shmem_gib": fields.get("RssShmem", 0.0),
        "pinned_est_gib": max(0.0, rss - anon - file),
        "unswappable_gib": max(0.0, rss - file),  # anonymous + pinned: what the OS can neither drop nor page out
    }


def pinned_gib() -> float | None:
    """What torch's caching host allocator holds pinned, where this torch exposes it."""
    try:
        import torch

        stats = torch.cuda.host_memory_stats()
        return stats.get("reserved_bytes.all.current", stats.get("allocated_bytes.all.current", 0)) / GIB
    except Exception:
        return None


def read_bytes() -> int:
    """Bytes this process made the kernel fetch from storage (page-cache hits do not count)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def drop_page_cache(folder: Path) -> None:
    """Evict a folder's files from the page cache (no root needed), so the next read comes from disk."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class PeakSampler:
    """Samples /proc/self/status every 50 ms on a thread: the peak RSS and peak unswappable memory."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in status_gib().items():
                self.peak[key] = max(self.peak.get(key, 0.0), value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cuda_context_gib() -> dict[str, float]:
    """What a process holds on the card beyond PyTorch's allocator (CUDA context, cuBLAS/cuDNN
    workspaces): device used minus reserved, after one matmul, conv and attention call."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    (x @ x).sum().item()
    F.conv2d(torch.randn(1, 4, 32, 32, device="cuda"), torch.randn(4, 4, 3, 3, device="cuda")).sum().item()
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16)
    F.scaled_dot_product_attention(q, q, q).sum().item()
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    return {"context_gib": round((total - free - reserved) / GIB, 3), "device_total_gib": round(total / GIB, 2)}


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))
