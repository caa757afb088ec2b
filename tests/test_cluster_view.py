"""The bot's view of remote GPU workers (QUEUE_BACKEND=postgres): status, estimates, /status text.

Pure: the workers' reports are given as data, as the queue would return them.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from cluster.view import NO_WORKER, ClusterView
from cogs.utils.reports import workers_report
from db.workers import WorkerInfo
from engine.types import EngineState, EngineView, PlanSwitchFailed
from jobrequest import JobRequest


def worker(name: str, **changes: object) -> WorkerInfo:
    """A worker that reported just now (unless `last_seen` says otherwise)."""
    now = time.time()
    base = WorkerInfo(
        name=name,
        host=f"{name}-pc",
        gpu="NVIDIA GeForce RTX 4090",
        state="ready",
        plan="bf16_resident",
        max_area=2 * 1024 * 1024,
        jobs_done=3,
        jobs_failed=0,
        step_s=0.5,
        model_loads=1,
        current_job=None,
        started_at=now - 600,
        last_seen=now,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def view_of(*workers: WorkerInfo) -> ClusterView:
    async def listed() -> list[WorkerInfo]:
        return list(workers)

    view = ClusterView(listed, "THUDM/CogView4-6B")
    await view.refresh()
    return view


async def test_the_cluster_view_is_an_engine_view() -> None:
    view: EngineView = await view_of(worker("a"))
    assert view.limits.native_size == 1024 and view.status().current_job is None
    assert [w.name for w in view.workers()] == ["a"]
    await view.stop()


async def test_no_worker_yet_reads_as_warming_up() -> None:
    view = await view_of()
    status = view.status()
    assert (status.state, status.load_message) == (EngineState.STARTING, NO_WORKER)
    assert not view.ready and not await view.wait_ready(0.05)


async def test_ready_busy_and_offline_workers_are_summed_up() -> None:
    view = await view_of(
        worker("a", state="busy", current_job=7, step_s=0.4, jobs_done=5),
        worker("b", plan="nf4_resident", step_s=0.8, jobs_done=2, jobs_failed=1),
        worker("c", last_seen=time.time() - 3600, jobs_done=9),  # gone for an hour
    )
    status = view.status()
    assert status.state is EngineState.READY and view.ready and await view.wait_ready(0.05)
    assert status.device_name == "2 GPU worker(s) online, 1 busy"
    assert status.plan == "bf16_resident, nf4_resident"
    assert status.step_s == pytest.approx(0.6)  # median of the online ones
    assert (status.jobs_done, status.jobs_failed) == (16, 1)
    assert [(w.name, w.state, w.current_job) for w in view.workers()] == [
        ("a", "busy", 7),
        ("b", "ready", None),
        ("c", "offline", None),
    ]


async def test_a_silent_or_stopped_worker_is_offline() -> None:
    now = time.time()
    view = await view_of(
        worker("fresh", last_seen=now - 59, state="busy", current_job=3),
        worker("silent", last_seen=now - 61, state="busy", current_job=4),
        worker("stopped", state="stopped"),
        worker("failed", state="failed", note="out of memory"),
    )
    seen = {w.name: (w.state, w.current_job) for w in view.workers()}
    assert seen == {
        "fresh": ("busy", 3),
        "silent": ("offline", None),
        "stopped": ("offline", None),
        "failed": ("offline", None),
    }
    assert view.status().device_name == "1 GPU worker(s) online, 1 busy"


async def test_a_worker_whose_job_was_taken_back_is_not_busy_with_it() -> None:
    """The queue reports `current_job` only while the job still runs under the worker's name."""
    now = time.time()
    view = await view_of(
        worker("recording", state="busy", current_job=None, last_seen=now - 1),  # its result just went in
        worker("dead", state="busy", current_job=None, last_seen=now - 31),  # SIGKILLed, job reclaimed
    )
    seen = {w.name: (w.state, w.current_job) for w in view.workers()}
    assert seen == {"recording": ("ready", None), "dead": ("offline", None)}
    assert view.status().device_name == "1 GPU worker(s) online, 0 busy"
    report = workers_report(view.workers(), now=now)
    assert "**GPU workers:** 1 of 2 online" in report and "busy" not in report, report
    assert "`dead` — dead-pc" in report and "offline (last seen 31 s ago)" in report, report


async def test_estimate_is_shared_by_the_workers_that_serve() -> None:
    request = JobRequest(prompt="x", width=1024, height=1024, steps=20, guidance=3.5)
    one = await view_of(worker("a", step_s=0.5))
    two = await view_of(worker("a", step_s=0.5), worker("b", step_s=0.5, state="busy"))
    assert one.estimate_seconds(request) == pytest.approx(10.0)
    assert two.estimate_seconds(request) == pytest.approx(5.0)


async def test_plans_are_chosen_per_machine() -> None:
    view = await view_of(worker("a"))
    with pytest.raises(PlanSwitchFailed, match="Each GPU machine picks its own memory plan"):
        await view.switch_plan("nf4_resident")
    assert any(row.name == "nf4_resident" for row in view.plan_rows())


async def test_status_lists_each_worker() -> None:
    now = time.time()
    view = await view_of(
        worker("a", state="busy", current_job=42, step_s=0.41),
        worker("b", step_s=None, jobs_done=0),
        worker("c", last_seen=now - 600),
    )
    report = workers_report(view.workers(), now=now)
    lines = report.splitlines()
    assert lines[0] == "**GPU workers:** 2 of 3 online"
    assert lines[1] == (
        "`a` — a-pc, NVIDIA GeForce RTX 4090, plan bf16_resident, up to 2.0 MP — busy (#42) — 3 done, 0 failed"
        " — 0.41 s/step"
    )
    assert "— idle —" in lines[2] and "speed not measured yet" in lines[2]
    assert "offline (last seen 10 min ago)" in lines[3], lines[3]
    assert workers_report([], now=now).startswith("**GPU workers:** none has connected yet")
