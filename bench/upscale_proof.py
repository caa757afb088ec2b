"""The upscaler model path (UPSCALER_MODEL) proven once on this machine: an Upscale job through the engine.

Saves a random-weight ESRGAN (spandrel's RRDBNet: 23 blocks, 64 filters, 4×; spandrel recognises it from its
keys as it does a downloaded RealESRGAN/4x-UltraSharp file), starts the engine with it as UPSCALER_MODEL, and
runs one Upscale job of a --size² picture at --factor through `Engine.generate` (the same call the dispatcher
makes), tiled on the GPU thread. Prints one JSON line: seconds, peak GPU memory, tiles, output size.

    pip install .whl/spandrel-*.whl .whl/einops-*.whl     # spandrel also needs torchvision matching torch
    python bench/upscale_proof.py --device cuda --size 1024 --factor 2

The engine needs a CogView4 model loaded (--model; by default a tiny random one built here): an upscaler job
does not use it, so the tiny one keeps the proof fast. Random weights make a meaningless picture; the path,
its time and memory are what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def save_random_esrgan(folder: Path) -> Path:
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    path = folder / "random-esrgan-x4.pth"
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4).state_dict(), path)
    return path


def picture(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 12, (size, size, 3))
    pixels = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1)
    data = io.BytesIO()
    Image.fromarray((pixels + noise).clip(0, 255).astype(np.uint8)).save(data, format="PNG")
    return data.getvalue()


async def prove(args: argparse.Namespace) -> dict[str, object]:
    import torch

    import jobrequest
    from engine.service import Engine, EngineConfig
    from engine.types import Progress
    from tools.tiny import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="upscale-proof-"))
    model = args.model or str(write_tiny_model(folder / "cogview4-tiny"))
    upscaler = save_random_esrgan(folder)
    data = picture(args.size)
    engine = Engine(EngineConfig(model_id=model, device=args.device, upscaler_model=upscaler))
    engine.start()
    try:
        if not await engine.wait_ready(3600) or engine.status().error:
            raise SystemExit(f"the engine did not load: {engine.status().error}")
        # The edge's sizes (as tools.cli sets them): the engine checks them against the loaded model's limits.
        width, height = jobrequest.output_size(args.size, args.size, args.factor, engine.limits)
        request = jobrequest.JobRequest(
            prompt="upscale",
            width=width,
            height=height,
            steps=1,
            guidance=0.0,
            start_image=hashlib.sha256(data).hexdigest(),
            upscale=args.factor,
        )
        tiles: list[int] = []

        def on_progress(p: Progress) -> None:
            tiles[:] = [p.total]

        device = engine.plan_manager.device
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        result = await engine.generate(request, on_progress=on_progress, start_image=data)
        seconds = time.perf_counter() - started
        row: dict[str, object] = {
            "device": torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "plan": result.plan,
            "input": f"{args.size}x{args.size}",
            "factor": args.factor,
            "output": "x".join(map(str, result.images[0].size)),
            "tiles": tiles[0] if tiles else None,
            "seconds": round(seconds, 2),
            "upscale_s": round(result.timings.get("upscale_s", 0.0), 2),
        }
        if device is not None and device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        return row
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="a CogView4 folder (default: a tiny random one)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--size", type=int, default=1024, help="side of the start picture, px")
    parser.add_argument("--factor", type=int, default=2, choices=(2, 4))
    print(json.dumps(asyncio.run(prove(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
