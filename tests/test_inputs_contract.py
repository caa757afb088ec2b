"""Start images (db.inputs) on both backends: stored by content hash, read back, shared, and removed by retention."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from db.inputs import FolderInputs
from db.interface import JobQueue
from db.models import InvalidJob, JobState
from jobrequest import InvalidRequest
from tests import test_queue_contract as contract
from tests.queue_helpers import WORKER, must_claim, what, who

backend, queue = contract.backend, contract.queue  # the two-backend fixtures

PNG_A = b"\x89PNG\r\n\x1a\nfirst image"
PNG_B = b"\x89PNG\r\n\x1a\nsecond image"


async def finish(queue: JobQueue, request: Any) -> int:
    """Queue, claim and complete one job with one result image; its id."""
    enqueued = await queue.enqueue(who(1), request)
    job = await must_claim(queue)
    assert job.id == enqueued.job_id
    paths = await queue.results.save(job.id, [b"result"])
    assert await queue.complete(job.id, WORKER, result_paths=paths, seed_used=1, plan="p")
    return job.id


async def test_put_get_delete_by_content_hash(queue: JobQueue) -> None:
    digest = await queue.inputs.put(PNG_A)
    assert digest == hashlib.sha256(PNG_A).hexdigest()
    assert await queue.inputs.put(PNG_A) == digest  # idempotent
    assert await queue.inputs.get(digest) == PNG_A
    await queue.inputs.delete(digest)
    await queue.inputs.delete(digest)  # absent: nothing happens
    with pytest.raises(FileNotFoundError):
        await queue.inputs.get(digest)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, ""):
        with pytest.raises(InvalidJob):
            await queue.inputs.get(bad)
    with pytest.raises(InvalidJob):
        await queue.inputs.put(b"")


async def test_image_fields_round_trip_and_old_rows_read_as_text_to_image(queue: JobQueue) -> None:
    digest = await queue.inputs.put(PNG_A)
    plain = await queue.enqueue(who(1), what())
    vary = await queue.enqueue(who(2), what(start_image=digest, strength=0.35), kind="vary")
    upscale = await queue.enqueue(who(3), what(start_image=digest, strength=0.3, upscale=2), kind="upscale")
    got = {j: await queue.get_job(j) for j in (plain.job_id, vary.job_id, upscale.job_id)}
    requests = {j: job.request for j, job in got.items() if job is not None}
    assert (requests[plain.job_id].start_image, requests[plain.job_id].strength, requests[plain.job_id].upscale) == (
        None,
        1.0,
        0,
    )
    assert (requests[vary.job_id].start_image, requests[vary.job_id].strength) == (digest, 0.35)
    assert requests[upscale.job_id].upscale == 2
    assert [job.kind for job in got.values() if job] == ["imagine", "vary", "upscale"]


@pytest.mark.parametrize(
    "fields",
    [{"strength": 0.5}, {"upscale": 2}, {"start_image": "x" * 64}, {"start_image": "0" * 64, "strength": 0.0}],
)
def test_unusable_image_fields_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):  # JobRequest's own structural check (jobrequest), before any queue
        what(**fields)


async def test_retention_removes_a_start_image_only_when_no_job_needs_it(queue: JobQueue) -> None:
    shared = await queue.inputs.put(PNG_A)
    first = await finish(queue, what(start_image=shared, strength=0.5))
    second = await finish(queue, what(start_image=shared, strength=0.7))
    waiting = await queue.enqueue(who(1), what(start_image=shared, strength=0.7))

    assert not await queue.delete_results(waiting.job_id)  # still queued: nothing removed
    assert await queue.delete_results(first)
    first_job = await queue.get_job(first)
    assert first_job is not None and first_job.result_paths == []
    assert await queue.inputs.get(shared) == PNG_A  # the second job's results and the queued job need it
    await queue.cancel(waiting.job_id, by_user_id=1)
    assert await queue.inputs.get(shared) == PNG_A
    assert await queue.delete_results(second)
    with pytest.raises(FileNotFoundError):
        await queue.inputs.get(shared)
    second_job = await queue.get_job(second)
    assert second_job is not None and second_job.state is JobState.DONE
    with pytest.raises(FileNotFoundError):
        await queue.results.read(second_job)


async def test_retention_keeps_other_images(queue: JobQueue) -> None:
    mine, other = await queue.inputs.put(PNG_A), await queue.inputs.put(PNG_B)
    job = await finish(queue, what(start_image=mine, strength=0.5))
    await finish(queue, what(start_image=other, strength=0.5))
    assert await queue.delete_results(job)
    assert await queue.inputs.get(other) == PNG_B
    assert await queue.delete_results(job)  # twice: nothing left to remove, no error


async def test_a_refused_enqueue_leaves_no_start_image(queue: JobQueue) -> None:
    needed = await queue.inputs.put(PNG_A)
    await queue.enqueue(who(1), what(start_image=needed, strength=0.5))
    orphan = await queue.inputs.put(PNG_B)
    assert not await queue.drop_start_image(needed)  # a queued job needs it
    assert await queue.drop_start_image(orphan)
    with pytest.raises(FileNotFoundError):
        await queue.inputs.get(orphan)
    assert await queue.inputs.get(needed) == PNG_A


async def test_folder_inputs_write_atomically_inside_their_folder(tmp_path: Path) -> None:
    store = FolderInputs(tmp_path / "inputs")
    digest = await store.put(PNG_A)
    assert [p.name for p in (tmp_path / "inputs").iterdir()] == [f"{digest}.png"]  # no temp files left
    (tmp_path / "inputs" / f"{digest}.png").write_bytes(b"damaged")
    with pytest.raises(FileNotFoundError):
        await store.get(digest)  # a damaged file is as good as missing
    assert await store.put(PNG_A) == digest and await store.get(digest) == PNG_A  # a put repairs it
    (tmp_path / "secret.png").write_bytes(b"secret")
    with pytest.raises(InvalidJob):
        await store.get("../secret")


async def test_the_retention_days_pass_removes_start_images_too(queue: JobQueue) -> None:
    shared, own = await queue.inputs.put(PNG_A), await queue.inputs.put(PNG_B)
    old = await finish(queue, what(start_image=own, strength=0.5))
    also_old = await finish(queue, what(start_image=shared, strength=0.5))
    waiting = await queue.enqueue(who(2), what(start_image=shared, strength=0.5))
    pruned = await queue.prune_results(time.time() + 60)
    assert set(pruned) == {old, also_old}
    with pytest.raises(FileNotFoundError):
        await queue.inputs.get(own)
    assert await queue.inputs.get(shared) == PNG_A  # the queued job still needs it
    assert waiting.job_id not in pruned
