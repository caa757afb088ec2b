"""Text of the admin reports (/status, /memory), as pure functions of what the engine and queue say."""

from __future__ import annotations

from collections.abc import Sequence

from cogs.utils.text import clip, seconds_text
from db.models import QueueStats
from db.workers import WorkerInfo
from engine.types import EngineState, EngineStatus, PlanRow

# A worker that serves no jobs: silent too long (the cluster view marks it so), or stopped or failed as it said.
OFFLINE = frozenset({"offline", "stopped", "failed"})


def status_report(engine: EngineStatus, stats: QueueStats, *, uptime_s: float) -> str:
    lines = [f"**Engine:** {engine.state.value} on {engine.device_name}"]
    if engine.state in (EngineState.STARTING, EngineState.LOADING):
        lines.append(f"**Warming up:** {engine.load_message} ({engine.load_fraction:.0%})")
    if engine.error:
        lines.append(f"**Error:** {engine.error}")
    plan = engine.plan or "not loaded yet"
    mode = f" (asked: {engine.requested_mode})" if engine.requested_mode != engine.plan else ""
    lines.append(f"**Plan:** {plan}{mode}")
    if engine.plan_note:
        lines.append(f"-# {engine.plan_note}")
    if engine.free_vram_gib is not None:
        lines.append(f"**Free VRAM:** {engine.free_vram_gib:.1f} GiB")
    speed = f"{engine.step_s:.2f} s/step at the native size" if engine.step_s else "not measured yet"
    lines.append(f"**Speed:** {speed}")
    lines.append(f"**Jobs since start:** {engine.jobs_done} done, {engine.jobs_failed} failed")
    running = f" (#{engine.current_job} now)" if engine.current_job is not None else ""
    lines.append(
        f"**Queue:** {stats.queued} waiting, {stats.running} running{running} · all time {stats.done} done, "
        f"{stats.failed} failed, {stats.cancelled} cancelled" + (" · **paused**" if stats.paused else "")
    )
    lines.append(f"**Uptime:** {seconds_text(uptime_s)}")
    return clip("\n".join(lines))


def workers_report(workers: Sequence[WorkerInfo], *, now: float) -> str:
    """One line per GPU worker (QUEUE_BACKEND=postgres): where, which GPU and plan, busy or idle, speed.

    The workers come with the truth already decided (a silent one is ``offline``, a busy one's job is still
    its own), so this only words it; ``now`` dates "last seen"."""
    if not workers:
        return "**GPU workers:** none has connected yet: run `python -m engine worker` on a GPU machine."
    online = [w for w in workers if w.state not in OFFLINE]
    lines = [f"**GPU workers:** {len(online)} of {len(workers)} online"]
    for w in workers:
        if w.state in OFFLINE:
            state = f"offline (last seen {seconds_text(max(0.0, now - w.last_seen))} ago)"
        elif w.state == "busy":
            state = f"busy (#{w.current_job})" if w.current_job else "busy"
        else:
            state = "idle" if w.state == "ready" else w.state
        speed = f"{w.step_s:.2f} s/step" if w.step_s else "speed not measured yet"
        size = f", up to {w.max_area / 2**20:.1f} MP" if w.max_area and w.max_area >= 2**20 else ""
        lines.append(
            f"`{w.name}` — {w.host}, {w.gpu}, plan {w.plan or 'not loaded'}{size} — {state} — "
            f"{w.jobs_done} done, {w.jobs_failed} failed — {speed}"
        )
    return "\n".join(lines)


def memory_report(engine: EngineStatus, rows: Sequence[PlanRow]) -> str:
    free = f" · {engine.free_vram_gib:.1f} GiB free" if engine.free_vram_gib is not None else ""
    plan = engine.plan or "not loaded yet"
    lines = [f"**Plan now:** {plan} (asked: {engine.requested_mode}) on {engine.device_name}{free}"]
    if engine.step_s:
        lines.append(f"Measured here: {engine.step_s:.2f} s/step at the native size.")
    lines.append("Measured on a reference GPU (peak memory · per step · per image · fidelity vs bf16):")
    for row in rows:
        if row.available:
            numbers = " · ".join(
                [
                    f"{row.peak_gib:.1f} GiB" if row.peak_gib else "? GiB",
                    f"{row.step_s:.2f} s/step" if row.step_s else "? s/step",
                    f"{row.image_s:.0f} s/image" if row.image_s else "? s/image",
                    "reference" if row.fidelity_db is None else f"{row.fidelity_db:.0f} dB",
                ]
            )
            lines.append(f"✅ `{row.name}` — {numbers} — {row.summary}")
        else:
            lines.append(f"❌ `{row.name}` — {_first_sentence(row.why_not or 'not available here')}")
    lines.append("Switch with `/memory plan:<name>` (or `auto`); it applies between jobs and is remembered.")
    return clip("\n".join(lines))


def _first_sentence(text: str, limit: int = 110) -> str:
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"
