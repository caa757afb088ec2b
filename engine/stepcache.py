"""Draft mode: diffusers' First Block Cache on our own denoising loop, for one image at a time.

At each transformer pass the first block runs; when its output moved less than a threshold (relative mean
absolute change of its residual) since the last full pass of the same cache context, the other blocks are
skipped and their cached residual is added instead. On a streamed plan a skipped block's weights still
arrive (engine.streaming copies in a fixed cycle, ahead of the decision), so a draft there saves compute,
not copies. The runner names each pass's context (`cond`, `uncond`, or `cfg` for a batch of both), so each
keeps its own cache. The hooks are put on for one image and taken off afterwards: an image made without
them never sees them. They sit on the blocks' `forward`, which a per-block `torch.compile` traces through
(the skip decision is a graph break: `.item()` under `torch.compiler.disable`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

# Provisional, to be confirmed by bench/draft_bench.py on the real model: diffusers' FirstBlockCache PR
# measured CogView4 at 40.5 s → 24.1 / 17.6 / 13.0 s for thresholds 0.05 / 0.10 / 0.20 (1.7× / 2.3× / 3.1×)
# without quality figures; 0.10 is the middle of those, about twice as fast.
DRAFT_THRESHOLD = 0.10


@dataclass
class CacheCount:
    """What the cache did during one image: transformer passes, and those whose later blocks were skipped."""

    passes: int = 0
    skipped: int = 0


@contextmanager
def step_cache(transformer: Any, threshold: float) -> Iterator[CacheCount]:
    """First Block Cache on `transformer` at `threshold` for the duration of the block (a threshold below 0
    never skips). Yields the count of passes and skipped passes; the hooks are removed on the way out, even
    after an error, so the transformer is exactly as it was."""
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry
    from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    count = CacheCount()
    try:
        head = HookRegistry.check_if_exists_or_initialize(transformer.transformer_blocks[0])
        hook = head.get_hook(_FBC_LEADER_BLOCK_HOOK)
        decide = hook._should_compute_remaining_blocks

        @torch.compiler.disable
        def counted(residual: torch.Tensor) -> bool:
            compute = bool(decide(residual))
            count.passes += 1
            count.skipped += not compute
            return compute

        hook._should_compute_remaining_blocks = counted
        yield count
    finally:
        transformer.disable_cache()
