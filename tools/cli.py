"""Command line for the engine alone, to check a GPU before involving Discord (`python -m engine …`).

python -m engine doctor
python -m engine generate "a lighthouse at dusk" --plan auto --steps 30 --size 1024x1024 --seed 1 --out out.png
python -m engine generate "the same, at dawn" --image photo.jpg --strength 0.6   (image-to-image)
python -m engine generate "a lighthouse at dusk" --image out.png --upscale 2       (upscale)
python -m engine tiny-model DIR
python -m engine worker [--gpu N] [--name NAME]   (a GPU machine of a multi-machine setup; README)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobrequest import ModelLimits


def _setting(name: str, default: Any) -> Any:
    """One value from the bot's settings (.env), or the default where they do not load (no token yet)."""
    try:
        from settings import load_settings

        return getattr(load_settings(), name)
    except Exception:
        return default


def cmd_doctor(args: argparse.Namespace) -> int:
    from tools.doctor import report

    model_id = args.model or _setting("model_id", "THUDM/CogView4-6B")
    print(report(model_id, quality=_setting("quality", "balanced"), host_ram_gib=_setting("host_ram_gib", None)))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        width, _, height = text.lower().partition("x")
        return int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError("use WIDTHxHEIGHT, e.g. 1024x1024") from None


def _settings_upscaler() -> Path | None:
    try:
        from settings import load_settings

        return load_settings().upscaler_model
    except Exception:
        return None


def _start_size(image_data: bytes, upscale: int, limits: ModelLimits) -> tuple[int, int]:
    """The size an image-to-image or upscale job is made at (what the engine will pick from the image)."""
    from engine.img2img import open_image
    from jobrequest import output_size

    image = open_image(image_data)
    return output_size(image.width, image.height, upscale, limits)


def cmd_generate(args: argparse.Namespace) -> int:
    import hashlib

    from db.models import InvalidJob
    from engine.png import encode_job_pngs
    from engine.service import Engine, EngineConfig
    from engine.types import EngineError, Progress
    from jobrequest import InvalidRequest, JobRequest
    from jobrequest import check as validate_request

    if (args.strength is not None or args.upscale) and args.image is None:
        print("--strength and --upscale need --image PATH (the picture to start from).", file=sys.stderr)
        return 2
    try:
        image_data = None if args.image is None else Path(args.image).read_bytes()
    except OSError as exc:
        print(f"Could not read {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    config = EngineConfig(
        model_id=args.model or _setting("model_id", "THUDM/CogView4-6B"),
        memory_mode=args.plan,
        device=args.device,
        upscaler_model=args.upscaler or _settings_upscaler(),
    )
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
        image: dict[str, Any] = {}
        try:
            if image_data is not None:
                width, height = _start_size(image_data, args.upscale, engine.limits)
                strength = 0.6 if args.strength is None else args.strength
                image = {"start_image": hashlib.sha256(image_data).hexdigest(), "strength": strength}
                image["upscale"] = args.upscale
            request = JobRequest(
                prompt=args.prompt,
                negative_prompt=args.negative,
                width=width,
                height=height,
                steps=args.steps,
                guidance=args.guidance,
                seed=args.seed,
                **image,
            )
            validate_request(request, engine.limits)  # this command is an edge: the engine checks only sizes

            def show(p: Progress) -> None:
                print(f"\r  step {p.step}/{p.total}  {p.elapsed_s:5.1f} s", end="", flush=True)

            result = await engine.generate(request, on_progress=show, start_image=image_data)
        except (InvalidJob, InvalidRequest, EngineError) as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 2
        finally:
            await engine.stop()
        print()
        out = Path(args.out)
        parameters = {"prompt": args.prompt, "seed": result.seed, "plan": result.plan, "steps": args.steps, **image}
        partial = out.with_name(f".{out.name}.tmp")  # a crash never leaves a truncated PNG at --out
        partial.write_bytes(encode_job_pngs(result.images, parameters)[0])
        os.replace(partial, out)
        timings = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(f"Saved {out} (seed {result.seed}, plan {result.plan}; {timings})")
        for note in result.notes:
            print(f"Note: {note}")
        return 0

    return asyncio.run(run())


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from tools.tiny import write_tiny_model

    folder = write_tiny_model(args.dir)
    print(f"Wrote a tiny random CogView4 pipeline to {folder} (native size 64x64). Use MODEL_ID={folder}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.gpu is not None:  # before torch is imported (on the engine thread): this process sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    logging.getLogger().setLevel(args.log_level)
    logging.getLogger("procrastinate").setLevel(logging.WARNING if args.log_level != "DEBUG" else logging.DEBUG)
    try:
        from cluster.worker import GpuWorker, WorkerOptions
    except ImportError as exc:
        print(
            f"The worker needs the cluster extra ({exc.name} is missing): pip install -e '.[cluster]'", file=sys.stderr
        )
        return 2
    from engine.service import EngineConfig
    from settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if settings.database_url is None:
        print(
            "DATABASE_URL is not set: put postgresql://ROLE:PASSWORD@HOST/DB in .env (README, 'Add a second GPU PC')."
        )
        return 2
    import socket

    options = WorkerOptions(
        database_url=settings.database_url.get_secret_value(),
        name=args.name or f"{socket.gethostname()}-gpu{args.gpu or 0}",
        heartbeat_s=args.heartbeat,
        stalled_after_s=args.stalled_after,
        reap_s=max(0.5, min(5.0, args.stalled_after / 2)),  # a dead worker's job is retried soon after
        progress_s=args.progress_every,
        poll_s=args.poll,
        shutdown_grace_s=args.shutdown_grace,
    )
    return asyncio.run(GpuWorker(options, EngineConfig.from_settings(settings)).run())


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
    g.add_argument("--image", help="start from this picture (image-to-image); made at its fitted size, not --size")
    g.add_argument("--strength", type=float, default=None, help="with --image: 0 < S ≤ 1, how much to redo (0.6)")
    g.add_argument("--upscale", type=int, default=0, choices=(2, 4), help="with --image: upscale it 2× or 4×")
    g.add_argument("--upscaler", type=Path, help="ESRGAN-family model file (default: UPSCALER_MODEL; none: hires)")
    t = sub.add_parser("tiny-model", help="write a tiny random CogView4 pipeline folder (tests, smoke runs)")
    t.add_argument("dir")
    w = sub.add_parser("worker", help="serve jobs from PostgreSQL on this machine's GPU (QUEUE_BACKEND=postgres)")
    w.add_argument("--gpu", type=int, default=None, help="GPU index for this worker (run one worker per GPU)")
    w.add_argument("--name", help="worker name shown in /status (default: HOSTNAME-gpuN)")
    w.add_argument("--heartbeat", type=float, default=10.0, help="seconds between worker heartbeats")
    w.add_argument("--stalled-after", type=float, default=30.0, help="silence after which a worker counts as dead")
    w.add_argument("--progress-every", type=float, default=1.0, help="seconds between progress reports")
    w.add_argument("--poll", type=float, default=5.0, help="seconds between fetches when no notification arrives")
    w.add_argument("--shutdown-grace", type=float, default=30.0, help="on SIGTERM, seconds before handing back")
    w.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"doctor": cmd_doctor, "generate": cmd_generate, "tiny-model": cmd_tiny_model, "worker": cmd_worker}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
