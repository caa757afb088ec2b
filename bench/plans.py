"""Measure every memory plan: bare diffusers and this engine, side by side, under VRAM caps.

Each measurement runs in its own process (a cap set with
`torch.cuda.set_per_process_memory_fraction` cannot be lifted, and a clean
process gives honest peak figures). Device time is short, so runs use few steps
and the per-image figure for 50 steps is projected from the measured per-step
time: projected = encode + 50 × step + decode (stated as such in the results).

    python bench/plans.py measure --model DIR --impl engine --plan nf4_swap --cap 8 --steps 8
    python bench/plans.py matrix --model DIR --runs engine:auto:8:n8,diffusers:nf4_model_offload:8:n3:s50 --out r.jsonl
    python bench/plans.py table r.jsonl            # writes engine/plan_table.json and prints a markdown table
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3
PROMPTS = [
    "a lighthouse on a cliff at dusk, oil painting, warm light over a stormy sea",
    "a red fox sleeping in fresh snow under pine trees, soft morning light",
    "an astronaut riding a horse across a desert, cinematic, wide shot",
    "a bowl of ramen with steam rising, studio photo, shallow depth of field",
    "a cozy library with tall wooden shelves and a cat on an armchair, watercolor",
    "a futuristic city skyline at night with neon signs reflected in rain puddles",
    "a portrait of an old fisherman with a white beard, detailed, natural light",
    "a field of sunflowers under a blue sky with small white clouds, summer",
]


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def host_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


class StepClock:
    """CUDA events at call start, each step end and call end: per-phase GPU time without extra syncs.

    encode = start → first step end, less one steady step (so it includes weight moves, like the
    anchor file); step = mean of steps 2..n (step 1 pays warm-up); decode = last step → end.
    """

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.start: Any = None
        self.marks: list[Any] = []

    def _event(self) -> Any:
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def begin(self) -> None:
        self.marks = []
        self.start = self._event()

    def mark(self) -> None:
        self.marks.append(self._event())

    def split(self) -> dict[str, float]:
        end = self._event()
        end.synchronize()
        ms = [self.start.elapsed_time(m) / 1000 for m in self.marks]
        total = self.start.elapsed_time(end) / 1000
        if len(ms) >= 3:
            step = (ms[-1] - ms[1]) / (len(ms) - 2)
        elif len(ms) == 2:
            step = ms[1] - ms[0]
        else:
            step = ms[0] if ms else 0.0
        encode = max(0.0, (ms[0] if ms else total) - step)
        decode = total - (ms[-1] if ms else total)
        return {"encode_s": encode, "step_s": step, "decode_s": decode, "total_s": total}


# --- bare diffusers recipes ----------------------------------------------------------------------


def bare_pipeline(model: Path, plan: str, device: Any) -> Any:
    """The best-known plain-diffusers recipe for each plan (what a user of bare diffusers would write)."""
    import torch
    from diffusers import CogView4Pipeline

    bf16 = torch.bfloat16
    if plan == "bf16_resident":
        return CogView4Pipeline.from_pretrained(model, torch_dtype=bf16).to(device)
    if plan == "bf16_fast":
        # The anchor's fastest bare recipe: bf16 resident, torch.compile of the transformer,
        # and cuDNN/flash attention forced around the call (see measure_bare). Compiled per block
        # (PyTorch's regional-compilation recipe; CogView4 has no `_repeated_blocks` for diffusers'
        # compile_repeated_blocks): the same kernels as compiling the whole model, in a fraction
        # of the compile time.
        pipe = CogView4Pipeline.from_pretrained(model, torch_dtype=bf16).to(device)
        for block in pipe.transformer.transformer_blocks:
            block.compile()
        return pipe
    if plan == "nf4_resident":
        from diffusers.quantizers import PipelineQuantizationConfig

        quant = PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": bf16},
            components_to_quantize=["transformer", "text_encoder"],
        )
        return CogView4Pipeline.from_pretrained(model, torch_dtype=bf16, quantization_config=quant).to(device)
    if plan in ("nf4_model_offload", "nf4_sequential", "nf4_swap"):
        # "nf4staged": each component quantized on its own and parked on the CPU before the next loads.
        from diffusers import BitsAndBytesConfig as DiffusersBnb
        from diffusers import CogView4Transformer2DModel
        from transformers import BitsAndBytesConfig as TransformersBnb
        from transformers import GlmModel

        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": bf16}
        te = GlmModel.from_pretrained(
            model / "text_encoder", dtype=bf16, quantization_config=TransformersBnb(**kwargs), device_map={"": device}
        )
        te.to("cpu")
        torch.cuda.empty_cache()
        tr = CogView4Transformer2DModel.from_pretrained(
            model / "transformer", torch_dtype=bf16, quantization_config=DiffusersBnb(**kwargs), device_map={"": device}
        )
        if plan != "nf4_swap":
            tr.to("cpu")
            torch.cuda.empty_cache()
        pipe = CogView4Pipeline.from_pretrained(model, text_encoder=te, transformer=tr, torch_dtype=bf16)
        if plan == "nf4_model_offload":
            pipe.enable_model_cpu_offload(device=device)
        elif plan == "nf4_sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.vae.to(device)
        return pipe
    pipe = CogView4Pipeline.from_pretrained(model, torch_dtype=bf16)
    if plan == "bf16_model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif plan == "bf16_sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan in ("bf16_group_block", "bf16_group_leaf"):
        from diffusers.hooks import apply_group_offloading

        kind = "block_level" if plan == "bf16_group_block" else "leaf_level"
        extra = {"num_blocks_per_group": 1} if kind == "block_level" else {}
        for module in (pipe.transformer, pipe.text_encoder):
            apply_group_offloading(module, onload_device=device, offload_type=kind, use_stream=True, **extra)
        pipe.vae.to(device)
    else:
        raise SystemExit(f"no bare-diffusers recipe for {plan}")
    return pipe


def attention_context(plan: str) -> Any:
    import contextlib

    if plan != "bf16_fast":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])


def measure_bare(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device("cuda", 0)
    t0 = time.perf_counter()
    pipe = bare_pipeline(args.model, args.plan, device)
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    load_peak = torch.cuda.max_memory_reserved() / GIB
    clock = StepClock()
    images = []
    for index in range(args.images):

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
            clock.mark()
            return kwargs

        clock.begin()
        with attention_context(args.plan):
            pipe(
                prompt=PROMPTS[index % len(PROMPTS)],
                height=args.size,
                width=args.size,
                num_inference_steps=args.steps,
                guidance_scale=5.0,
                generator=torch.Generator("cpu").manual_seed(index),
                callback_on_step_end=on_step,
            )
        images.append(clock.split())
    return {"load_s": load_s, "load_peak_reserved_gib": load_peak, "images": images}


# --- this engine -------------------------------------------------------------------------------------


def engine_config(args: argparse.Namespace) -> Any:
    """The engine's config for this run; newer fields (quality, cache folder) only where the engine has them."""
    import dataclasses

    import torch

    from engine.service import EngineConfig

    values: dict[str, Any] = {
        "model_id": str(args.model),
        "memory_mode": args.plan,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "memory_cap_gib": args.cap or None,
        "torch_compile": args.compile,
        "quality": args.quality,
        "quantized_cache_dir": args.cache_dir,
        "host_ram_gib": args.host_ram or None,
    }
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    return EngineConfig(**{k: v for k, v in values.items() if k in known})


async def timed_load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Start an engine and wait until it is ready: seconds, bytes read from disk, host memory peaks."""
    from bench import hostmem
    from engine.service import Engine

    engine = Engine(engine_config(args))
    read0, t0 = hostmem.read_bytes(), time.perf_counter()
    with hostmem.PeakSampler() as sampler:
        engine.start()
        await engine.wait_ready()
    status = engine.status()
    if status.error:
        raise RuntimeError(status.error)
    figures = {
        "load_s": time.perf_counter() - t0,
        "load_read_gib": round((hostmem.read_bytes() - read0) / GIB, 2),
        "load_peak_rss_gib": round(sampler.peak.get("rss_gib", 0.0), 2),
        "load_peak_unswappable_gib": round(sampler.peak.get("unswappable_gib", 0.0), 2),
    }
    return engine, figures


def measure_engine(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench import hostmem
    from db.models import JobRequest
    from engine.service import Prefetch

    async def run() -> dict[str, Any]:
        if args.cache_dir and args.reload:
            hostmem.drop_page_cache(args.model)  # cold: the model files come from disk
        engine, load = await timed_load(args)
        cuda = torch.cuda.is_available()
        load_peak = torch.cuda.max_memory_reserved() / GIB if cuda else 0.0
        after_load = {k: round(v, 2) for k, v in hostmem.status_gib().items()}
        pinned = hostmem.pinned_gib()
        weights_after_load = weights_on_host(engine)
        images = []
        requests = [
            JobRequest(
                prompt=PROMPTS[i % len(PROMPTS)],
                width=args.size,
                height=args.size,
                steps=args.steps,
                guidance=5.0,
                seed=i,
            )
            for i in range(args.images)
        ]
        for index, request in enumerate(requests):
            lookahead = [
                Prefetch(f"job{j}", (r.prompt, r.negative_prompt))
                for j, r in enumerate(requests[index + 1 : index + 1 + args.lookahead], start=index + 1)
            ]
            started = time.perf_counter()
            result = await engine.generate(request, holder=f"job{index}", prefetch=lookahead)
            timings = dict(result.timings)
            if args.images_dir:
                save_image(args, index, result.images[0])
            images.append(
                {
                    "encode_s": timings["encode_s"],
                    "step_s": timings.get("steady_step_s", timings["step_s"]),
                    "decode_s": timings["decode_s"],
                    "total_s": time.perf_counter() - started,
                    "plan": result.plan,
                    "notes": result.notes,
                }
            )
        final = engine.status()
        weights = weights_on_host(engine)
        after_queue = {k: round(v, 2) for k, v in hostmem.status_gib().items()}
        measured_work = engine.plan_manager.runner.measured_work_gib
        await engine.stop()
        row = {
            "weights_host_after_load": weights_after_load,
            "weights_host": weights,
            **load,
            "load_peak_reserved_gib": load_peak,
            "host_after_load": after_load,
            "host_gib": round(after_load["unswappable_gib"], 2),
            # After the whole queue: anonymous, file-backed and page-locked apart (bench/hostmem.py).
            "host_after_queue": after_queue,
            "host_peak_gib": round(load["load_peak_unswappable_gib"], 2),
            "torch_pinned_gib": None if pinned is None else round(pinned, 2),
            "images": images,
            "plan_used": final.plan,
            # One transformer pass's working memory per megapixel, as the runner measured it on its first step.
            "work_gib": None if measured_work is None else round(measured_work, 3),
            "plan_note": final.plan_note,
            "plan_reason": list(final.plan_reason),
            # This card's figures as the engine measured them at start (engine.card_profile).
            "card": None if engine.plan_manager.card is None else dataclasses.asdict(engine.plan_manager.card),
        }
        if args.cache_dir and args.reload:
            # The second start: quantized weights from the cache, read from disk, not the page cache.
            del engine
            import gc

            gc.collect()
            torch.cuda.empty_cache()
            hostmem.drop_page_cache(args.cache_dir)
            hostmem.drop_page_cache(args.model)
            engine, cached = await timed_load(args)
            await engine.stop()
            row.update({f"cached_{k}": v for k, v in cached.items()})
        return row

    return asyncio.run(run())


def weights_on_host(engine: Any) -> dict[str, Any]:
    """What a swap plan holds on the host for its weights (all of it / page-locked), and how often a phase
    ran out of memory and was retried alone; {} for plans without per-component residency."""
    runner = engine.plan_manager.runner
    residency = getattr(runner, "residency", None)
    if residency is None:
        return {}
    return {
        "host_gib": round(residency.host_bytes() / GIB, 2),
        "pinned_gib": round(residency.pinned_bytes() / GIB, 2),
        "moves": residency.moves,
        "oom_retries": residency.oom_retries,
        "modes": {name: [mode.keep, mode.pin] for name, mode in residency.modes.items()},
        "streamed": {
            name: {
                "layers": len(stream.order),
                "of": len(stream.layers),
                "gb_per_pass": round(stream.bytes_per_pass() / 1e9, 3),
                "pinned": stream.pinned,
                "copies": stream.copies,
            }
            for name, stream in residency.streams.items()
        },
    }


def save_image(args: argparse.Namespace, index: int, image: Any) -> None:
    """Keep the image; the bf16_resident run's images are the reference for every other run's fidelity."""
    folder = Path(args.images_dir)
    folder.mkdir(parents=True, exist_ok=True)
    label = f"{args.plan}_{args.card or args.cap:g}{'_compile' if args.compile else ''}"
    image.save(folder / f"{label}_s{args.steps}_{args.size}_i{index}.png")


def fidelity(args: argparse.Namespace, count: int) -> float | None:
    """Mean PSNR of this run's images against bf16_resident's for the same prompt, seed and steps."""
    from PIL import Image

    from bench import hostmem

    folder = Path(args.images_dir)
    label = f"{args.plan}_{args.card or args.cap:g}{'_compile' if args.compile else ''}"
    values = []
    for i in range(count):
        ref = folder / f"bf16_resident_0_s{args.steps}_{args.size}_i{i}.png"
        mine = folder / f"{label}_s{args.steps}_{args.size}_i{i}.png"
        if ref.exists() and mine.exists() and ref != mine:
            values.append(min(99.0, hostmem.psnr(Image.open(ref).convert("RGB"), Image.open(mine).convert("RGB"))))
    return round(sum(values) / len(values), 2) if values else None


def measure(args: argparse.Namespace) -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    context: dict[str, float] = {}
    if args.card and torch.cuda.is_available():
        # A card of the named size also holds the CUDA context and library workspaces: cap PyTorch below it.
        from bench import hostmem

        context = hostmem.cuda_context_gib()
        args.cap = round(args.card - context["context_gib"], 3)

    if args.impl == "diffusers":
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if args.cap:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(args.cap * GIB / total)
    row: dict[str, Any] = {
        "impl": args.impl,
        "plan": args.plan,
        "card_gib": args.card,
        "host_ram_gib": args.host_ram or None,
        **context,
        "cap_gib": args.cap,
        "size": args.size,
        "steps": args.steps,
        "compile": args.compile,
    }
    try:
        data = measure_bare(args) if args.impl == "diffusers" else measure_engine(args)
        row.update(data, ok=True)
    except Exception as exc:  # the benchmark records failures (OOM, known bugs) as data
        row.update(ok=False, error=f"{exc.__class__.__name__}: {str(exc)[:300]}")
        traceback.print_exc()
    if torch.cuda.is_available():
        row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
        row["gpu"] = torch.cuda.get_device_name(0)
    row["host_rss_gib"] = round(host_rss_gib(), 2)
    row["versions"] = versions()
    row["date"] = time.strftime("%Y-%m-%d")
    images = row.get("images") or []
    if images:
        steady = images[1:] or images
        for key in ("encode_s", "step_s", "decode_s"):
            row[key] = round(sum(i[key] for i in steady) / len(steady), 4)
        row["first_image_encode_s"] = round(images[0]["encode_s"], 3)
        row["image_s_50"] = round(row["encode_s"] + 50 * row["step_s"] + row["decode_s"], 2)
        row["first_image_s_50"] = round(images[0]["encode_s"] + 50 * images[0]["step_s"] + images[0]["decode_s"], 2)
        # Steady state of a full queue: later images, plus their share of the first image's encoder visit
        # (the look-ahead encodes the whole window of queued prompts in that one visit).
        later = images[1:] or images
        per_image = [i["encode_s"] + 50 * i["step_s"] + i["decode_s"] for i in later]
        steady = sum(per_image) / len(per_image) + images[0]["encode_s"] / len(images)
        row["steady_image_s_50"] = round(steady, 2)
        row["images_per_hour_50"] = round(3600 / steady, 1) if steady else None
        # Measured, not projected: wall-clock seconds per image over the whole queue (the first image included),
        # the figure to read when the run made full 50-step images (:s50).
        queue_s = sum(i["total_s"] for i in images) / len(images)
        row["queue_image_s"] = round(queue_s, 2)
        row["images_per_hour_queue"] = round(3600 / queue_s, 1) if queue_s else None
        row["images"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in i.items()} for i in images]
        if args.images_dir and args.impl == "engine":
            row["psnr_db"] = fidelity(args, len(images))
    print("RESULT " + json.dumps(row), flush=True)


def memory_cgroup(gib: int) -> Path | None:
    """A cgroup v2 group whose processes may hold at most `gib` GiB (page cache included, as on a real PC),
    or None where this machine does not let us make one."""
    group = Path(f"/sys/fs/cgroup/cogview-bench-{gib}g")
    try:
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(gib * 1024**3))
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
        return group
    except OSError as exc:
        print(f"no memory cgroup ({exc}); HOST_RAM_GIB={gib} instead", flush=True)
        return None


def matrix(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out)
    for spec in args.runs.split(","):
        impl, plan, cap, *extra = spec.split(":")
        left = deadline - time.monotonic()
        if left < 30:
            print(f"SKIP {spec}: out of time", flush=True)
            continue
        images = next((e[1:] for e in extra if e.startswith("n")), str(args.images))
        steps = next((e[1:] for e in extra if e.startswith("s")), str(args.steps))
        cmd = [sys.executable, __file__, "measure", "--model", str(args.model), "--impl", impl, "--plan", plan]
        # cap "c8": a real 8 GiB card (PyTorch capped below it by the measured CUDA context); "8": a bare cap.
        size_flag = ["--card", cap[1:]] if cap.startswith("c") else ["--cap", cap]
        cmd += [*size_flag, "--steps", steps, "--size", str(args.size), "--images", images]
        cmd += ["--quality", args.quality, "--images-dir", str(Path(args.out).with_suffix("")) + "-images"]
        cmd += [f"--host-ram={e[1:]}" for e in extra if e.startswith("r") and e[1:].replace(".", "").isdigit()]
        # "g10": the run in a memory cgroup of 10 GiB, a 16 GB PC simulated (HOST_RAM_GIB=10 where none can be made).
        limit = next((e[1:] for e in extra if e.startswith("g") and e[1:].isdigit()), None)
        group = memory_cgroup(int(limit)) if limit else None
        if limit and group is None:
            cmd += [f"--host-ram={limit}"]
        timeout = args.run_timeout_s
        private = None
        if args.cache_dir:
            # A reload run starts from an empty cache (cold), then loads again from it; its entries join the
            # shared cache afterwards, so later runs start warm like a bot's second start.
            private = Path(f"{args.cache_dir}-{plan}-cold") if "reload" in extra else None
            if private is not None:
                import shutil

                shutil.rmtree(private, ignore_errors=True)
                cmd += ["--reload"]
                timeout *= 2
            cmd += ["--cache-dir", str(private or args.cache_dir)]
        if "compile" in extra:
            cmd.append("--compile")
            timeout *= 2
        print(f"RUN {spec}", flush=True)
        started = time.monotonic()
        try:
            join = (lambda g=group: (g / "cgroup.procs").write_text(str(os.getpid()))) if group else None
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(timeout, left), preexec_fn=join)
            with Path(args.out).with_suffix(".log").open("a") as log_file:  # the engine's log, for failures
                log_file.write(f"== {spec}\n{proc.stderr}\n")
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if lines:
                row = json.loads(lines[-1][7:])
            else:
                row = {
                    "impl": impl,
                    "plan": plan,
                    "cap_gib": cap,
                    "ok": False,
                    "error": (proc.stderr or proc.stdout)[-600:],
                }
        except subprocess.TimeoutExpired:
            row = {"impl": impl, "plan": plan, "cap_gib": cap, "ok": False, "error": "timeout"}
        row["wall_s"] = round(time.monotonic() - started, 1)
        if limit:
            cgroup = f"cgroup memory.max {limit} GiB"
            row["memory_limit"] = cgroup if group else f"HOST_RAM_GIB={limit} (no cgroup here)"
            if group and (group / "memory.peak").is_file():
                row["cgroup_peak_gib"] = round(int((group / "memory.peak").read_text()) / GIB, 2)
        if private is not None and private.is_dir():
            Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
            for entry in private.iterdir():
                if not (Path(args.cache_dir) / entry.name).exists():
                    entry.rename(Path(args.cache_dir) / entry.name)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        keys = (
            "impl",
            "plan",
            "plan_used",
            "cap_gib",
            "ok",
            "step_s",
            "encode_s",
            "decode_s",
            "first_image_encode_s",
            "steady_image_s_50",
            "queue_image_s",
            "work_gib",
            "peak_reserved_gib",
            "load_peak_reserved_gib",
            "card_gib",
            "context_gib",
            "psnr_db",
            "host_gib",
            "host_peak_gib",
            "weights_host",
            "load_s",
            "cached_load_s",
            "load_read_gib",
            "cached_load_read_gib",
            "error",
            "wall_s",
        )
        brief = {k: row.get(k) for k in keys}
        print("DONE " + json.dumps(brief), flush=True)


def streamed_per_step(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """A streamed run's transformer copies per step (GiB, over every step of the run) and its compute alone:
    the step of the same format resident in the same results (none: the projection uses the whole step)."""
    stream = (row.get("weights_host") or {}).get("streamed", {}).get("transformer")
    if not stream or not stream["layers"]:
        return {}
    steps = len(row["images"]) * row["steps"]
    layer_bytes = stream["gb_per_pass"] * 1e9 / stream["layers"]
    figures = {"stream_gib": round(stream["copies"] * layer_bytes / steps / GIB, 3)}
    kernel = row["plan"].split("_")[0]
    resident = [
        r
        for r in rows
        if r["plan"] == f"{kernel}_resident" and not r.get("cap_gib") and r.get("compile") == row.get("compile")
    ]
    if resident:
        figures["compute_step_s"] = resident[-1]["step_s"]
    return figures


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for path in args.results for line in Path(path).read_text().splitlines() if line.strip()]
    engine_rows = [r for r in rows if r.get("impl") == "engine" and r.get("ok") and r.get("size") == 1024]
    plans: dict[str, dict[str, Any]] = {}
    for row in engine_rows:
        name = row.get("plan_used") or row["plan"]
        if row["plan"] == "auto":
            continue  # auto rows test the choice; the table holds named plans
        peak = max(row.get("peak_reserved_gib", 0), row.get("load_peak_reserved_gib", 0))
        # What PyTorch could allocate: on a card row the card less its CUDA context, which is what a real card
        # of that size reports free (the planner compares the two).
        cap = round(row.get("cap_gib") or 0, 2)
        entry = {
            "plan": name,
            "peak_gib": round(peak, 2),
            "step_s": row["step_s"],
            "encode_s": row["encode_s"],
            "decode_s": row["decode_s"],
            "measured_cap_gib": cap,
            **{k: row[k] for k in ("psnr_db", "host_gib", "host_peak_gib", "work_gib") if row.get(k) is not None},
            **streamed_per_step(row, engine_rows),
        }
        best = plans.get(name)
        # What a plan needs: swap and stream plans adapt to the card, so their smallest successful cap is
        # what counts; other plans need their uncapped peak.
        if "swap" in name or "stream" in name:
            better = best is None or (cap and (not best["measured_cap_gib"] or cap <= best["measured_cap_gib"]))
        elif row.get("compile") or (best is not None and best.get("compile")):
            better = bool(row.get("compile")) and (not cap)  # fast plans are listed as compiled
        else:
            # Later rows win; an uncapped run (the true peak) beats a capped one.
            better = best is None or not cap or bool(best["measured_cap_gib"])
        if better:
            plans[name] = entry
    failed = [r for r in rows if r.get("impl") == "engine" and not r.get("ok")]
    for row in failed:
        if row["plan"] not in plans and not row.get("cap_gib"):
            plans[row["plan"]] = {
                "plan": row["plan"],
                "peak_gib": 0,
                "step_s": 0,
                "encode_s": 0,
                "decode_s": 0,
                "ok": False,
                "note": row.get("error", "")[:200],
            }
    if args.write and args.keep_missing:
        # Plans not measured by these runs keep their earlier rows (with their own source noted).
        old = json.loads((ROOT / "engine" / "plan_table.json").read_text())
        for row in old["plans"]:
            if row["plan"] not in plans:
                row.setdefault("note", f"from {old.get('source', 'an earlier table')}"[:200])
                plans[row["plan"]] = row
    meta = {
        "source": f"bench/plans.py on {rows[0].get('gpu', '?')}, {rows[0].get('date', '?')}, 1024x1024, CFG 5.0, "
        f"{rows[0].get('steps')} steps measured (50-step figures projected)",
        "gpu": rows[0].get("gpu"),
        "versions": rows[0].get("versions"),
        "size": 1024,
        "fidelity": {
            "psnr_db": "final image PSNR against bf16_resident in the same run, same prompts and seeds",
            "noise_floor_db": next((r.get("psnr_db") for r in engine_rows if r["plan"] == "bf16_fast"), None),
            "noise_floor": "bf16_fast (compiled, batched, cuDNN attention) against bf16_resident: a kernel change",
            "estimated": False,
        },
        "host": {
            "host_gib": "anonymous + pinned host RAM after loading (VmRSS - RssFile), GiB",
            "host_peak_gib": "the same, peak while loading (sampled every 50 ms), GiB",
        },
        "context_gib": next((r.get("context_gib") for r in rows if r.get("context_gib")), None),
        "cap": "measured_cap_gib: the most PyTorch could allocate in the run that proved the plan (a real card less "
        "its CUDA context), compared with the free VRAM PyTorch reports",
        "plans": sorted(plans.values(), key=lambda p: p["peak_gib"]),
    }
    if args.write:
        (ROOT / "engine" / "plan_table.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        "| impl | plan | cap GiB | ok | s/step | encode s | decode s | 50-step image s | peak reserved GiB | load s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.get('impl')} | {r.get('plan_used') or r.get('plan')} | {r.get('cap_gib') or '-'} | "
            f"{'yes' if r.get('ok') else 'no: ' + str(r.get('error', ''))[:60]} | {r.get('step_s', '')} | "
            f"{r.get('encode_s', '')} | {r.get('decode_s', '')} | {r.get('image_s_50', '')} | "
            f"{max(r.get('peak_reserved_gib', 0) or 0, r.get('load_peak_reserved_gib', 0) or 0):.2f} | "
            f"{round(r['load_s'], 1) if r.get('load_s') else ''} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", type=Path, required=True)
    m.add_argument("--impl", choices=("engine", "diffusers"), required=True)
    m.add_argument("--plan", required=True)
    m.add_argument("--cap", type=float, default=0.0)
    m.add_argument("--steps", type=int, default=8)
    m.add_argument("--size", type=int, default=1024)
    m.add_argument("--images", type=int, default=2, help="images made in a row (the first one is the cold one)")
    m.add_argument("--lookahead", type=int, default=8)
    m.add_argument("--compile", action="store_true")
    m.add_argument("--card", type=float, default=0.0, help="a real card of this size: cap = card - CUDA context")
    m.add_argument("--quality", default="balanced")
    m.add_argument("--cache-dir", type=Path, default=None, help="quantized weight cache")
    m.add_argument("--reload", action="store_true", help="cold start, then a second start from the cache")
    m.add_argument("--images-dir", default=None, help="keep images; bf16_resident's are the fidelity reference")
    m.add_argument("--host-ram", type=float, default=0.0, help="HOST_RAM_GIB: behave like a PC with this much RAM")
    x = sub.add_parser("matrix")
    x.add_argument("--model", type=Path, required=True)
    x.add_argument(
        "--runs",
        required=True,
        help="impl:plan:cap[:compile][:nIMAGES][:sSTEPS][:rRAM_GIB],... e.g. engine:nf4_swap:c8:n8:s50:r16",
    )
    x.add_argument("--out", required=True)
    x.add_argument("--steps", type=int, default=8)
    x.add_argument("--size", type=int, default=1024)
    x.add_argument("--images", type=int, default=2)
    x.add_argument("--budget-s", type=float, default=540)
    x.add_argument("--run-timeout-s", type=float, default=240)
    x.add_argument("--quality", default="balanced")
    x.add_argument("--cache-dir", default=None, help="shared quantized weight cache ('reload' runs start cold)")
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+", help="result files, oldest first (later rows win)")
    t.add_argument("--write", action="store_true", help="write engine/plan_table.json")
    t.add_argument("--keep-missing", action="store_true", help="keep table rows of plans these runs did not measure")
    args = parser.parse_args()
    {"measure": measure, "matrix": matrix, "table": table}[args.command](args)
    if args.command == "measure":
        print(f"host: {platform.node()}", file=sys.stderr)


if __name__ == "__main__":
    main()
