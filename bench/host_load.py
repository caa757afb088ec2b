"""Host RAM of one plan's load, split as the OS sees it: anonymous (swappable), file-backed (the OS may drop
it and read it again) and the rest (page-locked): the peak while loading and what stays after, for a first
start (quantizing into an empty cache) and a second start (from the cache). Runs on a GPU or on the CPU (a
stream plan runs on the CPU too; nothing is page-locked there):

    python bench/host_load.py --model /tmp/cogview4-random --plan fp8mm_stream --device cpu \\
        --cache /tmp/qcache --out bench/results/host-load.jsonl   # a first start, then a second
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import hostmem  # noqa: E402


async def start(args: argparse.Namespace, label: str) -> dict[str, object]:
    from engine.service import Engine, EngineConfig

    config = EngineConfig(
        model_id=args.model, memory_mode=args.plan, device=args.device, quantized_cache_dir=Path(args.cache)
    )
    before = hostmem.status_gib()
    started = time.perf_counter()
    with hostmem.PeakSampler() as sampler:
        engine = Engine(config)
        engine.start()
        ready = await engine.wait_ready(7200)
        gc.collect()
        after = hostmem.status_gib()
    status = engine.status()
    components = engine.plan_manager.components
    row = {
        "start": label,
        "plan": status.plan,
        "ok": bool(ready and status.error is None),
        "error": status.error,
        "load_s": round(time.perf_counter() - started, 1),
        "mapped": sorted(components.mapped) if components is not None else None,
        "before_gib": {k: round(v, 2) for k, v in before.items()},
        "peak_gib": {k: round(v, 2) for k, v in sampler.peak.items()},
        "after_gib": {k: round(v, 2) for k, v in after.items()},
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
    }
    await engine.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--plan", default="fp8mm_stream")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", required=True, help="the quantized cache folder (emptied for the first start)")
    parser.add_argument("--out", default="")
    parser.add_argument("--start", choices=("both", "first", "second"), default="both")
    args = parser.parse_args()
    if args.start == "both":  # each start in a process of its own, as a bot's restart would be
        for label in ("first", "second"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--start", label], check=True)
        return
    if args.start == "first":
        shutil.rmtree(args.cache, ignore_errors=True)
    line = json.dumps(asyncio.run(start(args, args.start)))
    print(line, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
