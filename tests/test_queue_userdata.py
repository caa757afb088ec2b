"""Personal settings, the daily quota and retention, on both backends (db.per_user, db.retention, db.enqueue).

Same fixtures as tests/test_queue_contract.py: a SQLite file and a real PostgreSQL server, time
faked only through `db.clock.now`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from db.models import EnqueueLimits, JobState, QuotaExceeded, UserSettings
from tests import test_queue_contract as contract
from tests.queue_helpers import WORKER, must_claim, what, who
from tests.test_queue_contract import Backend, Clock, reopen

backend, queue, clock = contract.backend, contract.queue, contract.clock  # the contract tests' fixtures

DAY = 86_400.0


async def test_settings_are_saved_replaced_survive_a_restart_and_reset(queue: Any, backend: Backend) -> None:
    assert await queue.user_settings(1) == UserSettings()
    mine = UserSettings(aspect="16:9", steps=12, guidance=4.5, negative_prompt="blur", private=True)
    await queue.set_user_settings(1, mine)
    await queue.set_user_settings(2, UserSettings(steps=20))
    await queue.set_user_settings(2, UserSettings(steps=21))  # replaces, never a second row
    queue = await reopen(queue, backend)
    try:
        assert await queue.user_settings(1) == mine
        assert await queue.user_settings(2) == UserSettings(steps=21)
        await queue.clear_user_settings(1)
        assert await queue.user_settings(1) == UserSettings()
        assert await queue.user_settings(2) == UserSettings(steps=21)
    finally:
        await queue.close()


async def test_daily_quota_counts_images_per_utc_day_and_refuses_without_writing(
    queue: Any, backend: Backend, clock: Clock
) -> None:
    clock.t = 1_900_000_000.0 - 1_900_000_000.0 % DAY + 3600  # 01:00 UTC
    limits = EnqueueLimits(daily_quota=5)
    await queue.enqueue(who(1), what(count=4), limits)
    cancelled = await queue.enqueue(who(1), what(), limits)
    await queue.cancel(cancelled.job_id, by_user_id=1)  # a cancelled job gives its images back
    assert await queue.used_today(1) == 4
    before = backend.sql("SELECT count(*) FROM jobs")[0][0]
    with pytest.raises(QuotaExceeded, match="used 4 of your 5 images"):
        await queue.enqueue(who(1), what(count=2), limits)
    assert backend.sql("SELECT count(*) FROM jobs")[0][0] == before
    await queue.enqueue(who(1), what(), limits)  # exactly the quota
    await queue.enqueue(who(2), what(count=4), limits)  # another user has their own
    with pytest.raises(QuotaExceeded):
        await queue.enqueue(who(1), what(), limits)
    await queue.enqueue(who(1), what(), EnqueueLimits())  # 0 = unlimited
    clock.advance(DAY)  # the next UTC day
    assert await queue.used_today(1) == 0
    await queue.enqueue(who(1), what(count=4), limits)


async def finish(queue: Any, *images: bytes) -> int:
    enqueued = await queue.enqueue(who(1), what(count=len(images)))
    job = await must_claim(queue)
    assert job.id == enqueued.job_id
    paths = await queue.results.save(job.id, list(images))
    assert await queue.complete(job.id, WORKER, result_paths=paths, seed_used=1, plan="bf16")
    return job.id


async def images_of(queue: Any, job_id: int) -> list[bytes] | None:
    """The job's images as the store has them; None when the row records none or they are gone."""
    job = await queue.get_job(job_id)
    assert job is not None and job.state is JobState.DONE
    try:
        return [f.data for f in await queue.results.read(job)]
    except FileNotFoundError:
        return None


async def test_retention_deletes_old_images_and_rows_together(queue: Any, clock: Clock) -> None:
    old = await finish(queue, b"old-0", b"old-1")
    clock.advance(10 * DAY)
    new = await finish(queue, b"new")
    assert await queue.prune_results(clock.t - 5 * DAY) == [old]
    assert await images_of(queue, old) is None and await queue.is_pruned(old)
    assert (await queue.get_job(old)).result_paths == []
    assert await images_of(queue, new) == [b"new"] and not await queue.is_pruned(new)
    assert await queue.prune_results(clock.t - 5 * DAY) == [], "nothing left to prune"


async def test_a_pass_killed_between_its_steps_is_finished_by_the_next(queue: Any, clock: Clock) -> None:
    first = await finish(queue, b"a-0", b"a-1")
    second = await finish(queue, b"b-0")
    clock.advance(10 * DAY)
    real_delete = queue.results.delete
    deleted: list[int] = []

    async def dies_after_one(job: Any) -> None:
        if deleted:
            raise KeyboardInterrupt("killed while deleting")  # not an Exception: nothing may catch it
        await real_delete(job)
        deleted.append(job.id)

    queue.results.delete = dies_after_one
    with pytest.raises(KeyboardInterrupt):
        await queue.prune_results(clock.t - DAY)
    queue.results.delete = real_delete
    # Mid-pass: both jobs are marked (so /show says "deleted"), one's images are gone, the other's are whole.
    assert await queue.is_pruned(first) and await queue.is_pruned(second)
    assert await images_of(queue, first) is None and await images_of(queue, second) == [b"b-0"]
    assert sorted(await queue.prune_results(clock.t - DAY)) == [first, second]
    for job_id in (first, second):
        assert (await queue.get_job(job_id)).result_paths == [] and await images_of(queue, job_id) is None


async def test_a_sigkilled_pass_leaves_no_row_without_files_and_the_next_pass_finishes(
    queue: Any, backend: Backend
) -> None:
    first = await finish(queue, b"a-0", b"a-1")
    second = await finish(queue, b"b-0")
    child, gone = start_prune_child(backend)
    contract.kill_hard(child, backend)
    kept = second if gone == first else first
    # Killed between deleting the files and recording it: both are marked, the untouched job's images are whole.
    assert await queue.is_pruned(first) and await queue.is_pruned(second)
    assert await images_of(queue, gone) is None and await images_of(queue, kept) is not None
    assert sorted(await queue.prune_results(time.time() - DAY)) == [first, second], "the next pass finishes both"
    for job_id in (first, second):
        assert (await queue.get_job(job_id)).result_paths == [] and await images_of(queue, job_id) is None
    assert leftover_files(backend) == []


def start_prune_child(backend: Backend) -> tuple[subprocess.Popen[str], int]:
    """A real process running a retention pass that hangs after deleting one job's images; returns that job."""
    child = subprocess.Popen(
        [sys.executable, str(contract.CHILD), backend.target, "prune", str(time.time() + 60)],
        cwd=contract.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if not line.startswith("deleted "):
        child.kill()
        pytest.fail(f"prune child did not get to deleting: {line!r} {child.communicate(timeout=10)[1]}")
    return child, int(line.split()[1])


def leftover_files(backend: Backend) -> list[str]:
    """Result files left in a SQLite queue's folder (PostgreSQL keeps none on disk)."""
    if backend.name != "sqlite":
        return []
    return sorted(p.name for p in (Path(backend.target).parent / "outputs").iterdir())
