"""What decoding in tiles costs in fidelity: CogView4's VAE decodes one 1024² latent whole and in square tiles
of each given size (diffusers' tiled decode, overlap blended), PSNR of each against the whole decode, with the
working memory each needed (the device's peak, or on the CPU the process's peak RSS above the model's).

    python bench/vae_tiles.py --model /path/to/cogview4 --tiles 512,768 --out vae-tiles.jsonl

The latent is seeded Gaussian noise (a denoised latent's statistics are close to it; its content is not).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.hostmem import psnr  # noqa: E402


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@torch.inference_mode()
def decode(vae, latent: torch.Tensor, tile: int | None) -> np.ndarray:
    if tile is None:
        vae.disable_tiling()
    else:
        vae.enable_tiling()
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // 2 ** (len(vae.config.block_out_channels) - 1)
    image = vae.decode(latent).sample
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tiles", default="512,640,768,896")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from diffusers import AutoencoderKL

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = AutoencoderKL.from_pretrained(args.model / "vae", torch_dtype=dtype).to(device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator().manual_seed(0)
    side = args.size // factor
    latent = torch.randn(1, vae.config.latent_channels, side, side, generator=generator).to(device, dtype)
    base = peak_gib(device)
    # Smallest tile first and the whole decode last: on the CPU the peak RSS only grows, so each run's peak
    # is its own while each needs more than the one before.
    images, rows = {}, []
    for tile in [*sorted(int(t) for t in args.tiles.split(",")), None]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        images[tile] = decode(vae, latent, tile)
        rows.append(
            {"tile": tile, "seconds": round(time.perf_counter() - start, 1), "peak_gib": round(peak_gib(device), 2)}
        )
        print("decoded", rows[-1], flush=True)  # a CPU run takes minutes a decode
    for row in rows:
        if row["tile"] is not None:
            row["psnr_db"] = round(psnr(images[None], images[row["tile"]]), 2)
    meta = {"device": str(device), "dtype": str(dtype), "size": args.size, "model_peak_gib": round(base, 2)}
    meta["torch"] = torch.__version__
    with args.out.open("a") as out:
        for row in rows:
            line = json.dumps({**meta, **row})
            print(line, flush=True)
            out.write(line + "\n")


if __name__ == "__main__":
    main()
