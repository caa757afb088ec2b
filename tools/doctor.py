"""`python -m engine doctor` (tools/cli.py): what this machine has and which plan `auto` would pick.

Meant to be pasted into a bug report, so it prints versions, the GPU, known-bad
combinations and the plan choice in plain lines, and never the Discord token.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from engine import plans as plan_catalog
from engine.device import host_ram

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "discord.py", "aiosqlite")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _numeric(version: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (version or "0").split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def known_problems(versions: dict[str, str | None], has_gpu: bool) -> list[str]:
    """Combinations we know break, phrased as what to do."""
    problems = []
    if versions.get("torch") is None:
        problems.append("torch is not installed: pip install torch (the CUDA build for an NVIDIA GPU).")
    if versions.get("diffusers") and _numeric(versions["diffusers"]) < (0, 33):
        problems.append("diffusers < 0.33 has no CogView4 pipeline: pip install -U diffusers.")
    if versions.get("bitsandbytes") is None:
        problems.append("bitsandbytes is missing: the 4-bit (nf4) plans are unavailable.")
    elif has_gpu and _numeric(versions["bitsandbytes"]) < (0, 45):
        problems.append(
            "bitsandbytes < 0.45 cannot move 4-bit weights between CPU and GPU: pip install -U bitsandbytes."
        )
    if versions.get("bitsandbytes") and versions.get("diffusers"):
        problems.append(
            "nf4 + sequential CPU offload crashes in diffusers/accelerate ('Cannot copy out of meta tensor; "
            "no data!'): the engine remaps nf4_sequential to nf4_model_offload."
        )
    if not has_gpu:
        problems.append(
            "No CUDA GPU visible to torch: generation runs on the CPU (minutes per image). On Windows/Linux with "
            "an NVIDIA card install the CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu128"
        )
    return problems


def measure_card(model_id: str | None, cache_dir: Path | None) -> plan_catalog.CardProfile | None:
    """This card's figures (engine.card_profile): kept from the bot's first start, else measured now."""
    import json

    import torch

    from engine import card_profile

    config = card_profile.COGVIEW4_6B_BLOCK
    if model_id and (Path(model_id).expanduser() / "transformer" / "config.json").is_file():
        text = (Path(model_id).expanduser() / "transformer" / "config.json").read_text(encoding="utf-8")
        config = card_profile.block_config_of(json.loads(text))
    try:
        return card_profile.load_or_measure(torch.device("cuda", 0), config, cache_dir)
    except Exception as exc:  # a report still helps without it
        print(f"Could not time this card: {exc.__class__.__name__}: {exc}")
        return None


def report(
    model_id: str | None = None,
    quality: str = "balanced",
    host_ram_gib: float | None = None,
    cache_dir: Path | None = None,
) -> str:
    lines = [f"Python {platform.python_version()} on {platform.system()} {platform.release()} ({platform.machine()})"]
    versions = {name: _version(name) for name in PACKAGES}
    lines.append("Packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in versions.items()))
    has_gpu = False
    free = None
    capability: tuple[int, int] | None = None
    try:
        import torch

        lines.append(f"torch CUDA build: {torch.version.cuda or 'none (CPU build)'}")
        if torch.cuda.is_available():
            has_gpu = True
            from engine.device import gpu_info

            info = gpu_info()
            assert info is not None
            free = info.free_gib
            capability = info.capability
            lines.append(
                f"GPU: {info.name}, {info.total_gib:.1f} GiB total, {info.free_gib:.1f} GiB free, "
                f"compute capability {info.capability[0]}.{info.capability[1]}"
            )
            try:
                import subprocess

                driver = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                lines.append(f"NVIDIA driver: {driver or 'unknown'}")
            except (OSError, subprocess.SubprocessError):
                lines.append("NVIDIA driver: nvidia-smi not found")
        else:
            lines.append("GPU: none visible to torch")
    except ImportError:
        lines.append("torch: not importable")
    for problem in known_problems(versions, has_gpu):
        lines.append(f"Note: {problem}")
    table = plan_catalog.load_table()
    meta = plan_catalog.table_meta()
    lines.append(f"Plan table: {meta.get('source', '?')}")
    ram = host_ram(host_ram_gib)
    source = "HOST_RAM_GIB" if host_ram_gib else "this machine"
    lines.append(f"Host RAM: {ram:.1f} GiB ({source})" if ram is not None else "Host RAM: unknown (psutil missing)")
    card = measure_card(model_id, cache_dir) if has_gpu else None
    reference = plan_catalog.table_card()
    if card is not None:
        timed = ", ".join(f"{kernel} {seconds * 1000:.1f} ms" for kernel, seconds in card.block_s.items())
        refused = "; ".join(f"{kernel}: {why}" for kernel, why in card.refused.items())
        lines.append(f"This card, one transformer block at 1024²: {timed}; host → GPU {card.h2d_gbps:.1f} GB/s")
        if refused:
            lines.append(f"8-bit kernels that cannot run here: {refused}")
    if not has_gpu:
        cpu_plan = plan_catalog.choose_auto(None, table).plan.name
        lines.append(
            f"auto (QUALITY={quality}): no CUDA GPU here, so the engine would run {cpu_plan} on the CPU "
            "(minutes per image: enough to try the bot, not to serve it). The GPU plans below need an NVIDIA card "
            "and the CUDA build of torch (see the note above)."
        )
    else:
        try:
            choice = plan_catalog.choose_auto(
                free, table, quality=quality, ram_gib=ram, capability=capability, card=card, reference=reference
            )
            lines.append(
                f"auto (QUALITY={quality}) would use: {choice.plan.name} — {choice.plan.summary}"
                + (f" ({choice.note})" if choice.note else "")
            )
            lines.extend(
                f"  {why}"
                for why in plan_catalog.auto_reason(
                    choice.plan.name, quality, card, reference, table.get(choice.plan.name)
                )
            )
        except plan_catalog.PlanError as exc:
            lines.append(f"auto cannot choose: {exc}")
    here = "here (projected)" if card is not None and reference is not None else f"on {meta.get('gpu', '?')}"
    lines.append(f"Plans (GPU memory needed at 1024², seconds per 50-step image {here}, fidelity vs bf16):")
    rows = plan_catalog.plan_rows(table, has_gpu=has_gpu, capability=capability, card=card, reference=reference)
    for row in rows:
        fidelity = "reference" if row.fidelity_db is None else f"{row.fidelity_db:4.1f} dB"
        seconds = row.here_s if row.here_s is not None else row.image_s
        measured = "   not measured      "
        if row.need_gib and seconds:
            measured = f"{row.need_gib:5.1f} GiB  {seconds:6.1f} s  {fidelity:>9}"
        if row.name in plan_catalog.REMAPS:
            measured = f"→ {plan_catalog.REMAPS[row.name][0]} (known crash)"
        elif not row.available and row.why_not and has_gpu:
            measured += f"  (not here: {row.why_not.split('. ')[0]})"
        lines.append(f"  {row.name:20} {measured}  {row.summary}")
    if model_id:
        lines.append(f"MODEL_ID: {model_id}")
    return "\n".join(lines)
