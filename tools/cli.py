"""Command line for the engine alone, to check a GPU before involving Discord (`python -m engine …`).

python -m engine doctor
python -m engine generate "a lighthouse at dusk" --plan auto --steps 30 --size 1024x1024 --seed 1 --out out.png
python -m engine generate "the same, at dawn" --image photo.jpg --strength 0.5   (image-to-image)
python -m engine generate "a lighthouse at dusk" --image out.png --upscale 2       (upscale)
python -m engine tiny-model DIR
python -m engine worker [--gpu N] [--name NAME]   (a GPU machine of a multi-machine setup; README)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jobrequest
from jobrequest import InvalidRequest, JobRequest


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
    print(
        report(
            model_id,
            quality=_setting("quality", "balanced"),
            host_ram_gib=_setting("host_ram_gib", None),
            cache_dir=_setting("quantized_cache_dir", None),
        )
    )
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


class Refused(Exception):
    """What is wrong with the command line, in one sentence; nothing was loaded or written."""


@dataclass(frozen=True)
class Generation:
    """A `generate` command, checked before the model loads: what to make, from what, and where to save it."""

    model_id: str
    request: JobRequest
    out: Path
    image_data: bytes | None = None
    notes: tuple[str, ...] = ()


def output_problem(out: Path) -> str | None:
    """Why the picture could not be saved at `out`, found before anything is made (None: it can)."""
    if out.is_dir():
        return f"--out {out} is a folder: give a file name, such as {out / 'image.png'}."
    folder = out.parent
    if not folder.is_dir():
        return f"The folder {folder} does not exist: create it first, or choose another --out."
    if not os.access(folder, os.W_OK):
        return f"The folder {folder} is not writable: choose another --out."
    return None


def prepare_generation(args: argparse.Namespace, model_id: str) -> Generation:
    """Every input of `generate` checked once, before the model loads (minutes on real weights): the model
    folder, the plan, --out, the start image, and the request against the model's limits (jobrequest.check)."""
    from engine.plans import PLANS, engine_note
    from engine.rules import limits_for_model, missing_model_folder

    if (problem := missing_model_folder(model_id)) is not None:
        raise Refused(problem)
    if args.plan != "auto" and args.plan not in PLANS:
        raise Refused(engine_note("plan.unknown", name=repr(args.plan), plans=", ".join(PLANS)))
    if (args.strength is not None or args.upscale) and args.image is None:
        raise Refused("--strength and --upscale need --image PATH (the picture to start from).")
    if args.strength is not None and args.upscale:
        raise Refused(f"--strength is for image-to-image: an --upscale re-details at {jobrequest.HIRES_STRENGTH}.")
    out = Path(args.out).expanduser()
    if (problem := output_problem(out)) is not None:
        raise Refused(problem)
    limits = limits_for_model(model_id)
    width, height = args.size or (limits.native_size, limits.native_size)
    image: dict[str, Any] = {}
    notes: list[str] = []
    data = None
    if args.image is not None:
        from engine.img2img import open_image

        try:
            data = Path(args.image).read_bytes()
        except OSError as exc:
            raise Refused(f"Could not read {args.image}: {exc.strerror or exc}") from None
        picture = open_image(data)
        width, height = jobrequest.output_size(picture.width, picture.height, args.upscale, limits)
        strength = 1.0 if args.upscale else (jobrequest.DEFAULT_STRENGTH if args.strength is None else args.strength)
        strength = jobrequest.check_strength(strength)  # before JobRequest's structural check words it for a program
        image = {"start_image": hashlib.sha256(data).hexdigest(), "strength": strength, "upscale": args.upscale}
        if args.upscale and (note := jobrequest.upscale_note(picture.width, picture.height, args.upscale, limits)):
            notes.append(note)
    request = JobRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        width=width,
        height=height,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        draft=args.draft,
        **image,
    )
    jobrequest.check(request, limits)
    return Generation(model_id, request, out, data, tuple(notes))


def cmd_generate(args: argparse.Namespace) -> int:
    model_id = args.model or _setting("model_id", "THUDM/CogView4-6B")
    try:
        generation = prepare_generation(args, model_id)
    except (Refused, InvalidRequest) as exc:
        print(exc, file=sys.stderr)
        return 2
    for note in generation.notes:
        print(f"Note: {note}")
    upscaler = None if generation.request.upscale == 0 else args.upscaler or _settings_upscaler()
    return asyncio.run(_generate(generation, args.plan, args.device, upscaler))


async def _generate(generation: Generation, plan: str, device: str, upscaler: Path | None) -> int:
    from engine.png import encode_job_pngs
    from engine.service import Engine, EngineConfig
    from engine.types import EngineError, Progress

    request = generation.request
    config = EngineConfig(model_id=generation.model_id, memory_mode=plan, device=device, upscaler_model=upscaler)
    engine = Engine(config)
    engine.start()
    started = time.perf_counter()
    last = ""
    try:
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

        def show(p: Progress) -> None:
            print(f"\r  step {p.step}/{p.total}  {p.elapsed_s:5.1f} s", end="", flush=True)

        result = await engine.generate(request, on_progress=show, start_image=generation.image_data)
    except (InvalidRequest, EngineError) as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 2
    finally:
        await engine.stop()
    print()
    made = result.images[0]
    parameters: dict[str, Any] = {"prompt": request.prompt, "seed": result.seed, "plan": result.plan}
    parameters["steps"] = request.steps
    if request.start_image is not None:
        parameters.update(
            start_image=request.start_image, strength=jobrequest.strength_used(request), upscale=request.upscale
        )
    if request.draft:
        parameters["draft"] = True
    out = generation.out
    partial = out.with_name(f".{out.name}.tmp")  # a crash never leaves a truncated PNG at --out
    try:
        partial.write_bytes(encode_job_pngs(result.images, parameters)[0])
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"Could not save {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    timings = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
    print(f"Saved {out} ({made.width}×{made.height}, seed {result.seed}, plan {result.plan}; {timings})")
    for note in result.notes:
        print(f"Note: {note}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from settings import SAFETY_SUBFOLDER
    from tools.tiny import write_classifier, write_tiny_model

    folder = write_tiny_model(args.dir)
    write_classifier(folder / SAFETY_SUBFOLDER, passes_everything=True)
    print(
        f"Wrote a tiny random CogView4 pipeline to {folder} (native size 64x64), with a safety classifier that "
        f"passes every image in {folder / SAFETY_SUBFOLDER}. Use MODEL_ID={folder}"
    )
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
    from engine.rules import missing_model_folder

    if (problem := missing_model_folder(settings.model_id)) is not None:
        print(f"MODEL_ID: {problem}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="CogView4 engine tools")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="versions, GPU, known problems and the plan auto would choose")
    d.add_argument("--model", help="model id or folder (default: MODEL_ID from .env)")
    g = sub.add_parser("generate", help="make one image without Discord")
    g.add_argument("prompt")
    g.add_argument("--negative", default="")
    g.add_argument("--plan", default="auto", help="memory plan name or auto")
    g.add_argument("--steps", type=int, default=jobrequest.DEFAULT_STEPS)
    g.add_argument("--guidance", type=float, default=jobrequest.DEFAULT_GUIDANCE)
    g.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--out", default="out.png")
    g.add_argument(
        "--draft", action="store_true", help="a fast draft: the step cache skips blocks (about twice as fast)"
    )
    g.add_argument("--model", help="model id or folder (default: MODEL_ID from .env)")
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    g.add_argument("--image", help="start from this picture (image-to-image); made at its fitted size, not --size")
    g.add_argument(
        "--strength",
        type=float,
        default=None,
        help=f"with --image: how much to redo, {jobrequest.MIN_STRENGTH} to 1 (default {jobrequest.DEFAULT_STRENGTH})",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"doctor": cmd_doctor, "generate": cmd_generate, "tiny-model": cmd_tiny_model, "worker": cmd_worker}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
