"""The dispatcher between a real SQLite queue and the engine on a tiny CogView4 (CPU)."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

import jobrequest
from db.models import JobState, NoticeKind, Requester
from db.results import FolderResults
from db.sqlite_queue import SqliteJobQueue
from dispatch.dispatcher import DISK_FULL_HOLD_S, Dispatcher
from engine.plans import Measurement
from engine.service import Engine, EngineConfig
from jobrequest import JobRequest
from tests.pngs import read_parameters
from tools.tiny import write_tiny_model

TABLE = {
    "bf16_resident": Measurement("bf16_resident", 37.0, 0.34, 0.5, 0.2),
    "mixed_resident": Measurement("mixed_resident", 24.0, 0.34, 0.5, 0.2),
}
ALICE = Requester(user_id=1001, channel_id=55, guild_id=9, user_name="alice")
BOB = Requester(user_id=1002, channel_id=55, guild_id=9, user_name="bob")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-cogview4"))


def job_request(prompt: str = "a lighthouse", steps: int = 3, **changes: object) -> JobRequest:
    values: dict = {"prompt": prompt, "width": 64, "height": 64, "steps": steps, "guidance": 4.0, "seed": 1}
    values.update(changes)
    return JobRequest(**values)


class Rig:
    def __init__(self, queue: SqliteJobQueue, engine: Engine, dispatcher: Dispatcher, outputs: Path) -> None:
        self.queue, self.engine, self.dispatcher, self.outputs = queue, engine, dispatcher, outputs

    async def wait_state(self, job_id: int, *states: JobState, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while True:
                job = await self.queue.get_job(job_id)
                assert job is not None
                if job.state in states:
                    return
                await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tiny_model: Path, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    step_delay, timed, *previews = getattr(request, "param", (0.0, False))
    outputs = tmp_path / "outputs"
    queue = SqliteJobQueue(tmp_path / "queue.sqlite3", results=FolderResults(outputs))
    await queue.open()
    config = EngineConfig(model_id=str(tiny_model), device="cpu", step_delay_s=step_delay, previews=bool(previews))
    engine = Engine(config, table=dict(TABLE))
    engine.start()
    assert await engine.wait_ready(60)
    dispatcher = Dispatcher(
        queue,
        engine,
        worker_id="test-worker",
        model_id=str(tiny_model),
        heartbeat_s=0.05,
        idle_poll_s=0.1,
        dispatch_timings=timed,
    )
    yield Rig(queue, engine, dispatcher, outputs)
    await dispatcher.stop(grace_s=5)
    await engine.stop()
    await queue.close()


async def test_a_job_becomes_a_png_and_a_pending_result_post(rig: Rig) -> None:
    queued = await rig.queue.enqueue(ALICE, job_request(prompt="a red fox", count=2, seed=40))
    rig.dispatcher.start()
    await rig.wait_state(queued.job_id, JobState.DONE)
    job = await rig.queue.get_job(queued.job_id)
    assert job is not None and job.seed_used == 40 and job.plan == "bf16_resident"
    assert len(job.result_paths) == 2
    for index, path in enumerate(job.result_paths):
        assert Path(path).parent == rig.outputs.resolve()
        with Image.open(path) as image:
            assert image.size == (64, 64)
        meta = read_parameters(path)
        assert meta["prompt"] == "a red fox" and meta["seed"] == 40 + index and meta["job_id"] == job.id
    notices = await rig.queue.pending_notices()
    assert [(n.kind, n.job.id) for n in notices] == [(NoticeKind.RESULT, job.id)]
    assert "claim_to_engine_s" not in job.timings, "dispatch timings only where asked for (cluster workers)"


async def test_a_worker_that_is_its_own_edge_checks_each_job_once_against_its_model(rig: Rig) -> None:
    """A cluster worker's jobs were checked against the bot machine's idea of the model: with `check`, the
    dispatcher holds each one to this engine's limits before it runs, and a refused one fails in words."""
    checked: list[int] = []

    def check(request: JobRequest) -> None:
        checked.append(request.steps)
        jobrequest.check(request, rig.engine.limits)

    rig.dispatcher.check = check
    bad = await rig.queue.enqueue(ALICE, job_request(steps=500))  # past MAX_STEPS: no edge of this machine saw it
    good = await rig.queue.enqueue(BOB, job_request(steps=2))
    rig.dispatcher.start()
    await rig.wait_state(good.job_id, JobState.DONE)
    failed = await rig.queue.get_job(bad.job_id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.error == "Steps must be from 1 to 100 (got 500)." and failed.result_paths == []
    assert checked == [500, 2], "each job checked once, before it runs"


@pytest.mark.parametrize("rig", [(0.02, True)], indirect=True)
async def test_dispatch_timings_measure_claim_to_engine_and_first_step(rig: Rig) -> None:
    queued = await rig.queue.enqueue(ALICE, job_request())
    rig.dispatcher.start()
    await rig.wait_state(queued.job_id, JobState.DONE)
    job = await rig.queue.get_job(queued.job_id)
    assert job is not None and job.started_at is not None
    to_engine, to_first = job.timings["claim_to_engine_s"], job.timings["claim_to_first_step_s"]
    assert 0 <= to_engine <= to_first < 30, job.timings


@pytest.mark.parametrize("rig", [(0.03, False)], indirect=True)
async def test_plan_switch_between_two_queued_jobs(rig: Rig) -> None:
    first = await rig.queue.enqueue(ALICE, job_request(prompt="first", steps=20))
    second = await rig.queue.enqueue(BOB, job_request(prompt="second", steps=3))
    rig.dispatcher.start()
    await rig.wait_state(first.job_id, JobState.RUNNING)
    message = await rig.engine.switch_plan("mixed_resident")  # requested while the first job runs
    assert "mixed_resident" in message
    await rig.wait_state(second.job_id, JobState.DONE)
    done_first = await rig.queue.get_job(first.job_id)
    done_second = await rig.queue.get_job(second.job_id)
    assert done_first is not None and done_second is not None
    assert done_first.state is JobState.DONE and done_first.plan == "bf16_resident"
    assert done_second.plan == "mixed_resident"


@pytest.mark.parametrize("rig", [(0.03, False)], indirect=True)
async def test_cancelling_a_running_job_stops_it(rig: Rig) -> None:
    queued = await rig.queue.enqueue(ALICE, job_request(steps=100))
    rig.dispatcher.start()
    await rig.wait_state(queued.job_id, JobState.RUNNING)
    outcome = await rig.queue.cancel(queued.job_id, by_user_id=ALICE.user_id)
    assert not outcome.immediate
    await rig.wait_state(queued.job_id, JobState.CANCELLED, timeout=10)
    job = await rig.queue.get_job(queued.job_id)
    assert job is not None and job.progress_step is not None and job.progress_step < 100
    assert not rig.outputs.exists() or not list(rig.outputs.iterdir())


@pytest.mark.parametrize("rig", [(0.03, False)], indirect=True)
async def test_cancelled_queued_job_releases_its_precomputed_embeddings(rig: Rig) -> None:
    running = await rig.queue.enqueue(ALICE, job_request(prompt="running now", steps=15))
    doomed = await rig.queue.enqueue(BOB, job_request(prompt="never runs", steps=3))
    rig.dispatcher.start()
    await rig.wait_state(running.job_id, JobState.RUNNING)
    # The look-ahead encodes the queued prompt in the running job's encoder visit (slower on a busy CPU).
    async with asyncio.timeout(20):
        while True:  # "the look-ahead encoded the queued prompt" (a timeout here means it never did)
            if rig.engine.plan_manager.runner.embeddings.has("never runs"):
                break
            await asyncio.sleep(0.05)
    await rig.queue.cancel(doomed.job_id, by_user_id=BOB.user_id)
    nxt = await rig.queue.enqueue(ALICE, job_request(prompt="after", steps=2))
    await rig.wait_state(nxt.job_id, JobState.DONE)
    assert not rig.engine.plan_manager.runner.embeddings.has("never runs")


@pytest.mark.parametrize("rig", [(0.05, False)], indirect=True)
async def test_stop_hands_the_running_job_back_to_the_queue(rig: Rig) -> None:
    queued = await rig.queue.enqueue(ALICE, job_request(steps=100))
    rig.dispatcher.start()
    await rig.wait_state(queued.job_id, JobState.RUNNING)
    await rig.dispatcher.stop(grace_s=0.2)
    job = await rig.queue.get_job(queued.job_id)
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0


async def test_disk_full_requeues_the_job_instead_of_losing_it(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def full_disk(job_id: int, pngs: Sequence[bytes]) -> list[str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rig.queue.results, "save", full_disk)
    queued = await rig.queue.enqueue(ALICE, job_request())
    job = await rig.queue.claim_next(rig.dispatcher.worker_id, 60)
    assert job is not None
    await rig.dispatcher.process(job)
    after = await rig.queue.get_job(queued.job_id)
    assert after is not None and after.state is JobState.QUEUED
    assert after.error is not None and "disk is full" in after.error
    assert await rig.queue.pending_notices() == []
    assert json.dumps(after.result_paths) == "[]"
    assert rig.dispatcher._hold_claims_until > time.monotonic() + DISK_FULL_HOLD_S - 5, "no claims meanwhile"


@pytest.mark.parametrize("rig", [(0.25, False, True)], indirect=True)
async def test_the_heartbeat_carries_live_previews_to_the_queue_until_the_result(rig: Rig) -> None:
    """Issue 14: the newest preview of the running job is in the queue (queue.preview), gone once it is done."""
    queued = await rig.queue.enqueue(ALICE, job_request(steps=12))
    rig.dispatcher.start()
    seen: list[bytes] = []
    while (job := await rig.queue.get_job(queued.job_id)) is not None and not job.state.finished:
        preview = await rig.queue.preview(queued.job_id)
        if preview is not None and preview not in seen:
            seen.append(preview)
        await asyncio.sleep(0.05)
    assert job is not None and job.state is JobState.DONE
    assert len(seen) >= 2 and all(p.startswith(b"\xff\xd8") for p in seen)  # JPEGs, a newer one replacing the last
    assert await rig.queue.preview(queued.job_id) is None
