"""What a GPU worker of a multi-machine setup reports about itself; /status lists these.

Plain data, no SQL and no driver types, so the cogs can show it without the cluster extra.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One GPU worker as it last reported itself."""

    name: str
    host: str
    gpu: str
    state: str  # starting | loading | ready | busy | failed | stopped
    plan: str | None
    max_area: int | None  # the most pixels per image its memory plan can make
    jobs_done: int
    jobs_failed: int
    step_s: float | None  # seconds per step at the native size, measured on that machine
    model_loads: int  # times the weights were placed on its GPU (1 unless the plan changed)
    current_job: int | None
    started_at: float
    last_seen: float
    pid: int | None = None
    note: str | None = None

    def online(self, now: float, stale_s: float) -> bool:
        return self.state not in ("stopped", "failed") and now - self.last_seen <= stale_s
