"""Where one CogView4 block's time goes on this GPU, eager, per format: the top CUDA kernels of a block
forward at 1024² with CFG batched (torch.profiler), to see what the 8-bit path spends beside its matmuls.

    python bench/quant8_profile.py --configs bench/out/cogview4-6b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.configs import transformer_block_config  # noqa: E402
from engine import card_profile  # noqa: E402


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, required=True)
    parser.add_argument("--formats", default="bf16,fp8,int8")
    parser.add_argument("--rows", type=int, default=14)
    args = parser.parse_args()
    device = torch.device("cuda")
    config = transformer_block_config(args.configs)
    inputs = card_profile.block_inputs(device, config)
    for name in args.formats.split(","):
        block = card_profile.make_block(device, config, None if name == "bf16" else name)
        for _ in range(3):
            block(*inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                block(*inputs)
            torch.cuda.synchronize()
        print(f"=== {name}: {torch.cuda.get_device_name(device)}, 5 block forwards")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        del block
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
