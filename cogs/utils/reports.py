"""Text of the admin reports (/status, /memory), as pure functions of what the engine and queue say, in the
admin's language (what the engine wrote in English, such as a load step or why a plan cannot run, is matched back
to its code by cogs.utils.i18n.engine_text)."""

from __future__ import annotations

from collections.abc import Sequence

from cogs.utils.i18n import EngineSaid, Locale, engine_text, t
from cogs.utils.text import clip, seconds_text
from db.models import QueueStats
from db.workers import WorkerInfo
from engine.types import EngineState, EngineStatus, PlanRow

# A worker that serves no jobs: silent too long (the cluster view marks it so), or stopped or failed as it said.
OFFLINE = frozenset({"offline", "stopped", "failed"})


def status_report(engine: EngineStatus, stats: QueueStats, *, uptime_s: float, locale: Locale = None) -> str:
    state = t(f"engine_state.{engine.state.value}", locale)
    lines = [t("report.engine", locale, state=state, device=engine.device_name)]
    if engine.state in (EngineState.STARTING, EngineState.LOADING):
        message = EngineSaid(engine.load_message)
        lines.append(t("report.warming", locale, message=message, fraction=engine.load_fraction))
    if engine.error:
        lines.append(t("report.error", locale, error=EngineSaid(engine.error)))
    plan = engine.plan or t("report.not_loaded", locale)
    mode = t("report.asked", locale, mode=engine.requested_mode) if engine.requested_mode != engine.plan else ""
    lines.append(t("report.plan", locale, plan=plan, mode=mode))
    if engine.plan_note:
        lines.append(f"-# {engine_text(engine.plan_note, locale)}")
    if engine.free_vram_gib is not None:
        lines.append(t("report.free_vram", locale, gib=engine.free_vram_gib))
    if engine.step_s:
        speed = t("report.native_speed", locale, step_s=engine.step_s)
    else:
        speed = t("report.not_measured", locale)
    lines.append(t("report.speed", locale, speed=speed))
    lines.append(t("report.jobs", locale, done=engine.jobs_done, failed=engine.jobs_failed))
    current = t("report.current", locale, job=engine.current_job) if engine.current_job is not None else ""
    lines.append(
        t(
            "report.queue",
            locale,
            queued=stats.queued,
            running=stats.running,
            current=current,
            done=stats.done,
            failed=stats.failed,
            cancelled=stats.cancelled,
            paused=t("report.paused", locale) if stats.paused else "",
        )
    )
    lines.append(t("report.uptime", locale, uptime=seconds_text(uptime_s, locale)))
    return clip("\n".join(lines))


def workers_report(workers: Sequence[WorkerInfo], *, now: float, locale: Locale = None) -> str:
    """One line per GPU worker (QUEUE_BACKEND=postgres): where, which GPU and plan, busy or idle, speed.

    The workers come with the truth already decided (a silent one is ``offline``, a busy one's job is still
    its own), so this only words it; ``now`` dates "last seen"."""
    if not workers:
        return t("report.no_workers", locale)
    online = [w for w in workers if w.state not in OFFLINE]
    lines = [t("report.workers", locale, online=len(online), total=len(workers))]
    for w in workers:
        if w.state in OFFLINE:
            state = t("report.offline", locale, ago=seconds_text(max(0.0, now - w.last_seen), locale))
        elif w.state == "busy":
            state = t("report.busy_with", locale, job=w.current_job) if w.current_job else t("report.busy", locale)
        else:
            state = t("report.idle", locale) if w.state == "ready" else w.state
        speed = t("report.per_step", locale, step_s=w.step_s) if w.step_s else t("report.speed_unknown", locale)
        size = t("report.up_to", locale, mp=w.max_area / 2**20) if w.max_area and w.max_area >= 2**20 else ""
        plan = w.plan or t("report.worker_no_plan", locale)
        lines.append(
            t(
                "report.worker",
                locale,
                name=w.name,
                host=w.host,
                gpu=w.gpu,
                plan=plan,
                size=size,
                state=state,
                done=w.jobs_done,
                failed=w.jobs_failed,
                speed=speed,
            )
        )
    return "\n".join(lines)


def memory_report(engine: EngineStatus, rows: Sequence[PlanRow], locale: Locale = None) -> str:
    free = t("report.free", locale, gib=engine.free_vram_gib) if engine.free_vram_gib is not None else ""
    plan = engine.plan or t("report.not_loaded", locale)
    lines = [t("report.plan_now", locale, plan=plan, mode=engine.requested_mode, device=engine.device_name, free=free)]
    lines.extend(f"-# {engine_text(sentence, locale)}" for sentence in engine.plan_reason)
    if engine.step_s:
        lines.append(t("report.measured_here", locale, step_s=engine.step_s))
    lines.append(t("report.reference", locale))
    for row in rows:
        if row.available:
            numbers = " · ".join(
                [
                    f"{row.peak_gib:.1f} GiB" if row.peak_gib else "? GiB",
                    t("report.per_step", locale, step_s=row.step_s)
                    if row.step_s
                    else t("report.per_step_unknown", locale),
                    t("report.per_image", locale, image_s=row.image_s)
                    if row.image_s
                    else t("report.per_image_unknown", locale),
                    t("report.bf16", locale) if row.fidelity_db is None else f"{row.fidelity_db:.0f} dB",
                ]
                + (
                    [
                        t(
                            "report.here_measured" if row.here_measured else "report.here_projected",
                            locale,
                            image_s=row.here_s,
                        )
                    ]
                    if row.here_s
                    else []
                )
            )
            lines.append(f"✅ `{row.name}` — {numbers} — {t(f'plan.{row.name}', locale)}")
        else:
            why = engine_text(row.why_not, locale) if row.why_not else t("report.not_here", locale)
            lines.append(f"❌ `{row.name}` — {_first_sentence(why)}")
    lines.append(t("report.switch", locale))
    return clip("\n".join(lines))


def _first_sentence(text: str, limit: int = 110) -> str:
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"
