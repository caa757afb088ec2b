"""Command line for the engine alone, to check a GPU before involving Discord.

python -m engine doctor
python -m engine generate "a lighthouse at dusk" --plan auto --steps 30 --size 1024x1024 --seed 1 --out out.png
python -m engine tiny-model DIR
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path


def _settings_model_id() -> str:
    try:
        from settings import load_settings

        return load_settings().model_id
    except Exception:
        return "THUDM/CogView4-6B"


def cmd_doctor(args: argparse.Namespace) -> int:
    from engine.doctor import report

    print(report(args.model or _settings_model_id()))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        width, _, height = text.lower().partition("x")
        return int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError("use WIDTHxHEIGHT, e.g. 1024x1024") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from db.models import InvalidJob, JobRequest
    from engine.results import save_images
    from engine.rules import InvalidRequest
    from engine.service import Engine, EngineConfig
    from engine.types import EngineError

    config = EngineConfig(model_id=args.model or _settings_model_id(), memory_mode=args.plan, device=args.device)
    engine = Engine(config)

    async def run() -> int:
        engine.start()
        started = time.perf_counter()
        last = ""
        while not await engine.wait_ready(1.0):
            status = engine.status()
            if status.load_message != last:
                last = status.load_message
                print(f"[{time.perf_counter() - started:5.0f} s] {last}", flush=True)
        status = engine.status()
        if status.error:
            print(f"Could not load the model: {status.error}", file=sys.stderr)
            return 1
        print(
            f"Loaded in {time.perf_counter() - started:.1f} s with plan {status.plan}"
            + (f" ({status.plan_note})" if status.plan_note else "")
        )
        width, height = args.size or (engine.limits.native_size, engine.limits.native_size)
        try:
            request = JobRequest(
                prompt=args.prompt,
                negative_prompt=args.negative,
                width=width,
                height=height,
                steps=args.steps,
                guidance=args.guidance,
                seed=args.seed,
            )

            def show(progress: object) -> None:
                p = progress  # engine.types.Progress
                print(f"\r  step {p.step}/{p.total}  {p.elapsed_s:5.1f} s", end="", flush=True)  # type: ignore[attr-defined]

            result = await engine.generate(request, on_progress=show)
        except (InvalidJob, InvalidRequest, EngineError) as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 2
        finally:
            await engine.stop()
        print()
        out = Path(args.out)
        paths = save_images(
            result.images,
            out.parent,
            0,
            {"prompt": args.prompt, "seed": result.seed, "plan": result.plan, "steps": args.steps},
        )
        os.replace(paths[0], out)
        timings = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(f"Saved {out} (seed {result.seed}, plan {result.plan}; {timings})")
        for note in result.notes:
            print(f"Note: {note}")
        return 0

    return asyncio.run(run())


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from engine.tiny import write_tiny_model

    folder = write_tiny_model(args.dir)
    print(f"Wrote a tiny random CogView4 pipeline to {folder} (native size 64x64). Use MODEL_ID={folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="CogView4 engine tools")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="versions, GPU, known problems and the plan auto would choose")
    d.add_argument("--model", help="model id or folder (default: MODEL_ID from .env)")
    g = sub.add_parser("generate", help="make one image without Discord")
    g.add_argument("prompt")
    g.add_argument("--negative", default="")
    g.add_argument("--plan", default="auto", help="memory plan name or auto")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--guidance", type=float, default=3.5)
    g.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--out", default="out.png")
    g.add_argument("--model", help="model id or folder (default: MODEL_ID from .env)")
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    t = sub.add_parser("tiny-model", help="write a tiny random CogView4 pipeline folder (tests, smoke runs)")
    t.add_argument("dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"doctor": cmd_doctor, "generate": cmd_generate, "tiny-model": cmd_tiny_model}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
