"""What a live preview costs next to a denoising step, on this machine (issue 14: ≤ 2 % of the step time).

Loads the engine under one plan, makes an image with previews off (the step time), measures one
preview render at the native size on the engine's device (the x0 guess, the linear map, the copy to
the CPU, the resize and the JPEG; synchronised), the one-time fit of the colour map (and the cached
read), and then the same image with previews on, end to end. Prints one JSON line:

    python bench/preview_cost.py --model THUDM/CogView4-6B --plan auto --steps 20

`render_vs_step` is one synchronous preview against one step; `push_vs_step` what a job's GPU thread
spends per preview (on a GPU the copy does not wait and the JPEG is made a step later). Previews come at
most once a second, so their share of a job's time is about `render_s / interval_s` (`amortised`);
`end_to_end` compares the denoising time of the same image with previews on and off (best of two each).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def measure(model: str, plan: str, steps: int, device: str) -> dict[str, object]:
    import torch

    from db.models import JobRequest
    from engine.preview import INTERVAL_S, Previewer, load_or_fit
    from engine.service import Engine, EngineConfig

    cache = Path(tempfile.mkdtemp(prefix="latent-rgb-"))
    engine = Engine(EngineConfig(model_id=model, memory_mode=plan, device=device, preview_cache_dir=cache))
    engine.start()
    if not await engine.wait_ready(3600) or engine.status().error:
        raise SystemExit(f"the engine did not load: {engine.status().error}")
    native = engine.limits.native_size
    request = JobRequest(
        prompt="a lighthouse on a cliff at dusk", width=native, height=native, steps=steps, guidance=3.5, seed=1
    )
    try:
        await engine.generate(request)  # warm-up (compile, first CUDA calls)
        off = await engine.generate(request)
        runner = engine.plan_manager.runner
        assert runner is not None
        started = time.perf_counter()
        previewer = Previewer(runner.preview_map(cache))  # fitted here: the cache folder is new
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        load_or_fit(runner.pipe.vae, runner.device, cache)  # what the next start pays: fingerprint + read
        cached_s = time.perf_counter() - started
        dev = runner.device
        side = native // runner.pipe.vae_scale_factor
        channels = runner.pipe.transformer.config.in_channels
        latents = torch.randn(1, channels, side, side, device=dev)
        velocity = torch.randn(1, channels, side, side, device=dev, dtype=runner.pipe.transformer.dtype)
        costs = []
        for _ in range(25):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            started = time.perf_counter()
            previewer.render(latents - 0.5 * velocity.float())  # the x0 guess, then the render
            costs.append(time.perf_counter() - started)
        render_s = statistics.median(costs[5:])
        pushes = []  # what the GPU thread spends per preview in a job: no wait for the GPU there
        for _ in range(25):
            started = time.perf_counter()
            previewer.push(latents - 0.5 * velocity.float())
            pushes.append(time.perf_counter() - started)
            previewer.take()
        push_s = statistics.median(pushes[5:])
        plans = engine.plan_manager
        plain, with_previews = plans.config, dataclasses.replace(plans.config, previews=True)
        denoise: dict[bool, list[float]] = {False: [], True: []}
        for previews in (True, False, True, False):
            plans.config = with_previews if previews else plain  # the generator reads it per job
            denoise[previews].append((await engine.generate(request)).timings["denoise_s"])
    finally:
        await engine.stop()
    step_s = off.timings["steady_step_s"]
    return {
        "model": model,
        "plan": off.plan,
        "device": engine.status().device_name,
        "size": native,
        "steps": steps,
        "step_s": round(step_s, 5),
        "render_s": round(render_s, 5),
        "render_vs_step": round(render_s / step_s, 4),
        "push_s": round(push_s, 5),
        "push_vs_step": round(push_s / step_s, 4),
        "interval_s": INTERVAL_S,
        "amortised": round(render_s / INTERVAL_S, 4),
        "fit_s": round(fit_s, 3),
        "cached_read_s": round(cached_s, 4),
        "denoise_off_s": round(min(denoise[False]), 3),
        "denoise_on_s": round(min(denoise[True]), 3),
        "end_to_end": round(min(denoise[True]) / min(denoise[False]) - 1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="THUDM/CogView4-6B")
    parser.add_argument("--plan", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.model, args.plan, args.steps, args.device))))


if __name__ == "__main__":
    main()
