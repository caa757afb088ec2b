"""`python -m engine doctor` (tools/cli.py): what this machine has and which plan `auto` would pick.

Meant to be pasted into a bug report, so it prints versions, the GPU, known-bad
combinations and the plan choice in plain lines, and never the Discord token.
"""

from __future__ import annotations

import platform
from importlib import metadata

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


def report(model_id: str | None = None, quality: str = "balanced", host_ram_gib: float | None = None) -> str:
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
    try:
        choice = plan_catalog.choose_auto(
            free if has_gpu else None, table, quality=quality, ram_gib=ram, capability=capability
        )
    except plan_catalog.PlanError as exc:
        choice = None
        lines.append(f"auto cannot choose: {exc}")
    if choice is not None and not has_gpu:
        lines.append(
            f"auto (QUALITY={quality}): no CUDA GPU here, so the engine would run {choice.plan.name} on the CPU "
            "(minutes per image: enough to try the bot, not to serve it). The GPU plans below need an NVIDIA card "
            "and the CUDA build of torch (see the note above)."
        )
    elif choice is not None:
        lines.append(
            f"auto (QUALITY={quality}) would use: {choice.plan.name} — {choice.plan.summary}"
            + (f" ({choice.note})" if choice.note else "")
        )
    lines.append("Plans (peak GPU memory at 1024², seconds per 50-step image, fidelity vs bf16; measured):")
    for name, plan in plan_catalog.PLANS.items():
        m = table.get(name)
        db = plan_catalog.fidelity_db(name, table)
        fidelity = "reference" if db is None else f"{db:4.1f} dB"
        measured = "   not measured      "
        if m and m.ok:
            measured = f"{m.peak_gib:5.1f} GiB  {m.image_s():6.1f} s  {fidelity:>9}"
        if name in plan_catalog.REMAPS:
            measured = f"→ {plan_catalog.REMAPS[name][0]} (known crash)"
        lines.append(f"  {name:20} {measured}  {plan.summary}")
    if model_id:
        lines.append(f"MODEL_ID: {model_id}")
    return "\n".join(lines)
