"""What draft mode buys and costs on this machine: seconds per image, speed-up and PSNR against the uncached image.

Loads the engine under one plan, then for each prompt and seed makes the image without the step cache and
with it at each threshold (the same prompt, seed, size and steps; engine.stepcache), on the engine's GPU
thread. One JSON line per image, then one summary line per threshold (mean speed-up, mean and worst PSNR,
the share of transformer passes skipped):

    python bench/draft_bench.py --model THUDM/CogView4-6B --plan auto --steps 50 \\
        --thresholds 0.05,0.1,0.15,0.2,0.3 --out bench/results/draft.jsonl

Run it under the plan the bot uses (--plan), with --compile where TORCH_COMPILE=true, and once under a
streamed plan: a skipped block also skips its weight transfer there.

The engine's DRAFT_THRESHOLD is the threshold chosen from this table: the smallest cost in dB for at least
jobrequest.DRAFT_SPEEDUP times the speed. The first image pays warm-up (compile, first CUDA calls) and is not
counted. Saves every image next to --out when --images is given, to look at them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = (
    "a lighthouse on a cliff at dusk, waves breaking on the rocks, oil painting",
    "a close-up portrait of an old fisherman with a grey beard, natural light, 85mm photo",
    "a bowl of ramen on a wooden table with chopsticks, steam rising, food photography",
    "a futuristic city street at night in the rain, neon signs in Chinese, cinematic",
)
SEEDS = (1, 42)


def run_one(runner: Any, prompt: str, seed: int, steps: int, size: int, threshold: float | None) -> tuple:
    import torch

    from jobrequest import DEFAULT_GUIDANCE

    runner.encode([prompt, ""])  # the embeddings are cached: the timed image is denoising and decoding only
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    started = time.perf_counter()
    image, timings = runner.generate(
        prompt=prompt,
        negative_prompt="",
        width=size,
        height=size,
        steps=steps,
        guidance=DEFAULT_GUIDANCE,
        seed=seed,
        cache_threshold=threshold,
    )
    return image, time.perf_counter() - started, timings


async def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    from bench.hostmem import psnr
    from engine.service import Engine, EngineConfig

    config = EngineConfig(model_id=args.model, memory_mode=args.plan, device=args.device, torch_compile=args.compile)
    engine = Engine(config)
    engine.start()
    if not await engine.wait_ready(3600) or engine.status().error:
        raise SystemExit(f"the engine did not load: {engine.status().error}")
    size = args.size or engine.limits.native_size
    thresholds = [float(t) for t in args.thresholds.split(",")]
    runner = engine.plan_manager.require_runner()
    rows: list[dict[str, object]] = []
    out = Path(args.out) if args.out else None
    try:

        def call(prompt: str, seed: int, threshold: float | None) -> Any:
            return engine._thread.call(lambda: run_one(runner, prompt, seed, args.steps, size, threshold))

        await call(PROMPTS[0], 0, None)  # warm-up
        for prompt in PROMPTS[: args.prompts]:
            for seed in SEEDS:
                full, full_s, _ = await call(prompt, seed, None)
                save(args, out, full, prompt, seed, None)
                for threshold in thresholds:
                    image, seconds, timings = await call(prompt, seed, threshold)
                    save(args, out, image, prompt, seed, threshold)
                    row = {
                        "plan": runner.plan.name,
                        "prompt": prompt[:40],
                        "seed": seed,
                        "threshold": threshold,
                        "steps": args.steps,
                        "size": size,
                        "full_s": round(full_s, 2),
                        "draft_s": round(seconds, 2),
                        "speedup": round(full_s / seconds, 3),
                        "psnr_db": round(psnr(image, full), 2),
                        "skipped_share": round(timings.skipped_passes / max(1, timings.passes), 3),
                    }
                    rows.append(row)
                    emit(out, row)
    finally:
        await engine.stop()
    for threshold in thresholds:
        mine = [r for r in rows if r["threshold"] == threshold]
        emit(
            out,
            {
                "summary": True,
                "threshold": threshold,
                "images": len(mine),
                "speedup_mean": round(statistics.mean(float(r["speedup"]) for r in mine), 3),  # type: ignore[arg-type]
                "psnr_mean_db": round(statistics.mean(float(r["psnr_db"]) for r in mine), 2),  # type: ignore[arg-type]
                "psnr_worst_db": min(float(r["psnr_db"]) for r in mine),  # type: ignore[arg-type]
                "skipped_share": round(statistics.mean(float(r["skipped_share"]) for r in mine), 3),  # type: ignore[arg-type]
            },
        )
    return rows


def save(
    args: argparse.Namespace, out: Path | None, image: Any, prompt: str, seed: int, threshold: float | None
) -> None:
    if not args.images or out is None:
        return
    folder = out.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    name = f"p{PROMPTS.index(prompt)}-s{seed}-{'full' if threshold is None else f't{threshold:g}'}.png"
    image.save(folder / name)


def emit(out: Path | None, row: dict[str, object]) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a CogView4 folder or Hub id")
    parser.add_argument("--plan", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=0, help="square side in px (default: the model's native size)")
    parser.add_argument("--thresholds", default="0.05,0.1,0.15,0.2,0.3")
    parser.add_argument("--compile", action="store_true", help="per-block torch.compile, as TORCH_COMPILE=true")
    parser.add_argument("--prompts", type=int, default=3, help=f"how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--out", default="", help="append the JSON lines to this file too")
    parser.add_argument("--images", action="store_true", help="save every image in a folder named like --out")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
