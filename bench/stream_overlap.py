"""How well streamed weights hide behind the compute on this GPU (engine.streaming against diffusers' group
offloading): CogView4-6B's 28 transformer blocks at the native size (1024², CFG as one batch of 2, one
64-token text bucket), random weights, eager, in bf16 and in the FP8 matmul format.

For each format: the resident step (every block on the GPU), then the step with every block streamed and with
half of them streamed (spread evenly), from page-locked host copies and staged from pageable ones through
the page-locked ring, against the ideal max(resident step, bytes ÷ measured GB/s: the bus from page-locked
memory; for staging, the slower of the bus and the host's copy into locked memory); and diffusers'
block-level group offloading (use_stream=True) streaming every block, the same blocks and inputs. One JSON line per run:

    python bench/stream_overlap.py --configs bench/out/cogview4-6b --out bench/results/stream-overlap.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.configs import transformer_block_config  # noqa: E402
from engine import card_profile  # noqa: E402
from engine.residency import _get, _set, _weights  # noqa: E402
from engine.streaming import LayerStream, layer_bytes, spread  # noqa: E402

RUNS, WARM = 6, 2


class Blocks(nn.Module):
    """The transformer's block loop alone: what a step spends its time in."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(blocks)

    def forward(self, hidden: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rope: tuple) -> torch.Tensor:
        for block in self.transformer_blocks:
            hidden, text = block(hidden, text, temb, rope)
        return hidden


def step_s(model: nn.Module, inputs: tuple) -> float:
    for _ in range(WARM):
        model(*inputs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(RUNS):
        model(*inputs)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / RUNS


def to_plain_host(block: nn.Module) -> None:
    """Every weight in ordinary (pageable) host memory, whatever held it before."""
    for owner, key in _weights(block):
        tensor = _get(owner, key)
        plain = torch.empty(tensor.shape, dtype=tensor.dtype)
        plain.copy_(tensor)
        _set(owner, key, plain)


def staging_gbps(nbytes: int) -> float:
    """The host's copy of one layer from pageable into page-locked memory (what staging does per layer)."""
    source = torch.empty(nbytes, dtype=torch.uint8)
    source.fill_(1)
    ring = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    ring.copy_(source)
    start = time.perf_counter()
    for _ in range(3):
        ring.copy_(source)
    return 3 * nbytes / (time.perf_counter() - start) / 1e9


def pageable_gbps(device: torch.device, nbytes: int) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8)
    host.fill_(1)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target.copy_(host)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        target.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 3 * nbytes / (time.perf_counter() - start) / 1e9


@torch.inference_mode()
def run_format(device: torch.device, config: dict[str, int], kernel: str | None, count: int, out) -> None:
    name = kernel or "bf16"
    blocks = [card_profile.make_block(device, config, kernel) for _ in range(count)]
    model = Blocks(blocks)
    inputs = card_profile.block_inputs(device, config)
    resident = step_s(model, inputs)
    size = layer_bytes(blocks[0])
    pinned_gbps = card_profile.copy_speed_gbps(device)
    paged_gbps = pageable_gbps(device, size)
    staged_gbps = min(pinned_gbps, staging_gbps(size))
    emit = lambda row: (print(json.dumps(row)), out.write(json.dumps(row) + "\n"), out.flush())  # noqa: E731
    emit(
        {
            "format": name,
            "run": "resident",
            "step_s": round(resident, 4),
            "block_mb": round(size / 1e6, 1),
            "pinned_gbps": round(pinned_gbps, 1),
            "pageable_gbps": round(paged_gbps, 1),
            "staged_gbps": round(staged_gbps, 1),
        }
    )
    for streamed_count in (count, count // 2):
        for pin in (True, False):
            for block in blocks:
                to_plain_host(block)
            torch.cuda.empty_cache()
            streamed = spread(count, streamed_count)
            stream = LayerStream(model.transformer_blocks, streamed, device, pin=pin)
            for index, block in enumerate(blocks):
                if index not in streamed:
                    block.to(device)
            try:
                seconds = step_s(model, inputs)
            finally:
                stream.close()
            moved = stream.bytes_per_pass()
            gbps = pinned_gbps if pin else staged_gbps
            ideal = max(resident, moved / 1e9 / gbps)
            emit(
                {
                    "format": name,
                    "run": f"stream {streamed_count}/{count}",
                    "host": "pinned" if pin else "staged",
                    "step_s": round(seconds, 4),
                    "gb_per_step": round(moved / 1e9, 2),
                    "gbps": round(gbps, 1),
                    "ideal_s": round(ideal, 4),
                    "of_ideal": round(seconds / ideal, 3),
                    "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
                }
            )
            torch.cuda.reset_peak_memory_stats(device)
    # diffusers' group offloading, every block streamed, from its own (pinned) host copies.
    from diffusers.hooks import apply_group_offloading

    for block in blocks:
        block.to("cpu")
    torch.cuda.empty_cache()
    apply_group_offloading(
        model,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=True,
    )
    seconds = step_s(model, inputs)
    moved = count * size
    ideal = max(resident, moved / 1e9 / pinned_gbps)
    emit(
        {
            "format": name,
            "run": f"diffusers group_offload {count}/{count}",
            "host": "pinned",
            "step_s": round(seconds, 4),
            "gb_per_step": round(moved / 1e9, 2),
            "gbps": round(pinned_gbps, 1),
            "ideal_s": round(ideal, 4),
            "of_ideal": round(seconds / ideal, 3),
        }
    )
    del model, blocks
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, required=True, help="CogView4-6B's configs (transformer_config.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--formats", default="fp8,bf16")
    parser.add_argument("--blocks", type=int, default=28)
    args = parser.parse_args()
    device = torch.device("cuda")
    config = transformer_block_config(args.configs)
    print(torch.cuda.get_device_name(device), torch.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for name in args.formats.split(","):
            run_format(device, config, None if name == "bf16" else name, args.blocks, out)


if __name__ == "__main__":
    main()
