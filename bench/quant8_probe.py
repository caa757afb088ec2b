"""One CogView4 transformer block on this GPU: bf16 against the 8-bit kernels (engine.quant8).

Times one block forward at 1024² with CFG batched (4096 image + 64 text tokens, batch 2), eager and
compiled, and reports each 8-bit linear's relative error against bf16 on the same inputs, plus the
card profile the engine keeps (engine.card_profile) and the pinned host → device copy speed.

    python bench/quant8_probe.py --configs bench/out/cogview4-6b --out bench/results/quant8-probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.configs import transformer_block_config  # noqa: E402
from engine import card_profile  # noqa: E402
from engine.quant8 import COMPUTE_LINEARS, Linear8  # noqa: E402


def timed(fn, runs: int = 10) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / runs


@torch.inference_mode()
def layer_errors(device: torch.device, config: dict[str, int], kernel: str) -> dict[str, float]:
    """Relative error (‖y8 − y‖ / ‖y‖) of each 8-bit linear of one block, fed the block's own activations."""
    reference = card_profile.make_block(device, config, None)
    quantized = card_profile.make_block(device, config, kernel)
    inputs = card_profile.block_inputs(device, config)
    seen: dict[str, torch.Tensor] = {}

    def keep_input(path: str):  # a forward hook that returns nothing leaves the output as it is
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen.setdefault(path, args[0].clone())

        return hook

    hooks = [reference.get_submodule(path).register_forward_hook(keep_input(path)) for path in COMPUTE_LINEARS]
    reference(*inputs)
    for handle in hooks:
        handle.remove()
    errors = {}
    for path, x in seen.items():
        want = reference.get_submodule(path)(x).float()
        layer = quantized.get_submodule(path)
        assert isinstance(layer, Linear8)
        layer.share = None
        got = layer(x).float()
        errors[path] = round(float((got - want).norm() / want.norm()), 5)
    out_ref = reference(*inputs)[0].float()
    out_q = quantized(*inputs)[0].float()
    errors["block_output"] = round(float((out_q - out_ref).norm() / out_ref.norm()), 5)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    config = transformer_block_config(args.configs)
    t0 = time.perf_counter()
    profile = card_profile.measure(device, config)
    result: dict = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "card_profile": asdict(profile),
        "card_profile_s": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(result, indent=1), flush=True)
    inputs = card_profile.block_inputs(device, config)
    for kernel in [None, *profile.block_s.keys() - {"bf16"}]:
        name = kernel or "bf16"
        block = card_profile.make_block(device, config, kernel)
        with torch.inference_mode():
            result[f"eager_{name}_s"] = round(timed(lambda b=block: b(*inputs)), 6)
            if not args.no_compile:
                compiled = torch.compile(block, dynamic=False)
                t1 = time.perf_counter()
                compiled(*inputs)
                result[f"compile_{name}_first_s"] = round(time.perf_counter() - t1, 1)
                result[f"compiled_{name}_s"] = round(timed(lambda c=compiled: c(*inputs)), 6)
        if kernel is not None:
            result[f"errors_{name}"] = layer_errors(device, config, kernel)
        del block
        torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in result.items() if name in k}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("DONE", json.dumps(result))


if __name__ == "__main__":
    main()
