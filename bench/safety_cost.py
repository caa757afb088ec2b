"""What the image safety check (engine.safety) costs per job on this machine.

Loads the classifier as the engine does (SafetyChecker: a folder or a Hub id; by default a random-weight
ViT-base of Falconsai/nsfw_image_detection's shape, built here, so no download is needed), then times the
check of 1 and 4 images of the native size (1024², the resize to 224² included) on the chosen device,
median of --repeat runs after a warm-up. One JSON line:

    python bench/safety_cost.py --device cpu
    python bench/safety_cost.py --device cuda --model Falconsai/nsfw_image_detection

Set it next to a 50-step image (tens of seconds on a GPU, minutes on a home card) to see its share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(model: str, device_name: str, size: int, repeat: int) -> dict[str, object]:
    import numpy as np
    import torch
    from PIL import Image

    from engine.safety import SafetyChecker
    from tools.tiny import write_classifier

    if not model:
        model = str(write_classifier(Path(tempfile.mkdtemp(prefix="nsfw-vit-base-")), full_size=True))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    started = time.perf_counter()
    checker = SafetyChecker(model, device, threshold=0.5)
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(4)]

    def timed(batch: list) -> float:
        times = []
        for _ in range(repeat + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            checker.flags(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    one, four = timed(images[:1]), timed(images)
    parameters = sum(p.numel() for p in checker.model.parameters())
    row: dict[str, object] = {
        "model": model,
        "parameters_m": round(parameters / 1e6, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "image": f"{size}x{size}",
        "load_s": round(load_s, 2),
        "check_1_image_s": round(one, 4),
        "check_4_images_s": round(four, 4),
    }
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="a classifier folder or Hub id (default: a random ViT-base)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--size", type=int, default=1024, help="side of the images checked, px")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.device, args.size, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
