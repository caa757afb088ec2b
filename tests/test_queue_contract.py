"""One behaviour, two backends: every test here runs on the SQLite queue and on the PostgreSQL one.

What the cogs and the dispatcher rely on (fair claim order, positions, caps, cancel, leases,
crash recovery, the outbox) must not depend on the backend. Nothing is mocked: SQLite files
and a real PostgreSQL server (tests/pgserver.py). Crashes are real SIGKILLed child processes.
Time is faked only by replacing `db.clock.now` (every stored time comes from it), where a test is about leases,
cooldowns or retry times.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

import db.clock
from db.fairness import next_round
from db.interface import JobQueue
from db.models import (
    RESUMED_RESTART,
    RESUMED_WORKER_LOST,
    AuditEntry,
    CancelOutcome,
    CooldownActive,
    Enqueued,
    EnqueueLimits,
    Heartbeat,
    InvalidJob,
    Job,
    JobNotFound,
    JobState,
    NotAllowed,
    Notice,
    NoticeKind,
    QueueError,
    QueueFull,
    QueueStats,
    Requester,
    UserQueueFull,
)
from db.results import ResultFile, UnsafeResult
from db.sqlite_queue import SqliteJobQueue
from jobrequest import MAX_SEED, CodedError, InvalidRequest, JobRequest
from tests.queue_helpers import WORKER, claim_all, must_claim, what, who

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "queue_crash_child.py"
CHILD_WORKER = "crash-child"


# --- the two backends -----------------------------------------------------------------------------


@dataclass
class Backend:
    """How a test reaches one backend's storage from outside the queue under test."""

    name: str
    target: str  # SQLite file or PostgreSQL URL: what a child process opens

    def new(self) -> Any:
        if self.name == "sqlite":
            return SqliteJobQueue(Path(self.target))
        from db.postgres import PostgresJobQueue

        return PostgresJobQueue(self.target, apply_schema=False)

    @property
    def queue_class(self) -> type:
        if self.name == "sqlite":
            return SqliteJobQueue
        from db.postgres import PostgresJobQueue

        return PostgresJobQueue

    def sql(self, statement: str) -> list[Any]:
        """One statement in autocommit through an independent connection."""
        if self.name == "sqlite":
            with closing(sqlite3.connect(self.target, isolation_level=None)) as conn:
                return conn.execute(statement).fetchall()
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    def counts(self) -> dict[str, int]:
        return {t: self.sql(f"SELECT count(*) FROM {t}")[0][0] for t in ("jobs", "notices", "kv", "audit")}

    def declare_dead(self) -> None:
        """Let every worker's silence outlast the stalled timeout (SQLite: a restart is enough)."""
        if self.name == "postgres":
            self.sql("UPDATE procrastinate_workers SET last_heartbeat = last_heartbeat - interval '1 day'")

    def block_notices(self) -> None:
        if self.name == "sqlite":
            self.sql("CREATE TRIGGER no_notices BEFORE INSERT ON notices BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
        else:
            self.sql(
                "CREATE FUNCTION no_notices() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk gone'; END $$; "
                "CREATE TRIGGER no_notices BEFORE INSERT ON notices FOR EACH ROW EXECUTE FUNCTION no_notices()"
            )

    def unblock_notices(self) -> None:
        self.sql("DROP TRIGGER no_notices" + ("" if self.name == "sqlite" else " ON notices"))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "queue.db"))
    return Backend("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture
async def queue(backend: Backend) -> AsyncIterator[Any]:
    q = backend.new()
    await q.open()
    yield q
    await q.close()


class Clock:
    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> Clock:
    c = Clock()
    monkeypatch.setattr(db.clock, "now", c)
    return c


# --- helpers -----------------------------------------------------------------------------------------


async def save_results(queue: JobQueue, job_id: int, *contents: bytes) -> list[str]:
    """What a dispatcher does before `complete`: the images go into the queue's result store."""
    return await queue.results.save(job_id, list(contents))


async def read_results(queue: JobQueue, job: Job) -> list[bytes]:
    return [result.data for result in await queue.results.read(job)]


async def reopen(queue: Any, backend: Backend) -> Any:
    """Close and open the same storage again, as a restarted bot would."""
    await queue.close()
    fresh = backend.new()
    await fresh.open()
    return fresh


async def must_get(queue: JobQueue, job_id: int) -> Job:
    job = await queue.get_job(job_id)
    assert job is not None, f"job {job_id} is missing"
    return job


def start_crash_child(backend: Backend) -> tuple[subprocess.Popen[str], int]:
    """A real worker process that claims the next job and hangs; returns it and the claimed id."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), backend.target],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if not line.startswith("claimed "):
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"crash child did not claim a job: {line!r} {err}")
    return child, int(line.split()[1])


def kill_hard(child: subprocess.Popen[str], backend: Backend) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    for stream in (child.stdout, child.stderr):
        if stream is not None:
            stream.close()
    backend.declare_dead()


# --- the interface ---------------------------------------------------------------------------------


async def test_implements_the_protocol_with_the_same_signatures(queue: Any, backend: Backend) -> None:
    assert isinstance(queue, JobQueue)
    for name, member in inspect.getmembers(JobQueue, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(backend.queue_class, name)
        assert inspect.iscoroutinefunction(ours), name
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(member).parameters), name


# --- fairness --------------------------------------------------------------------------------------


async def test_one_job_of_b_is_claimed_right_after_the_first_of_a(queue: JobQueue) -> None:
    a_jobs = [(await queue.enqueue(who(1), what(f"a{i}"))).job_id for i in range(5)]
    b = await queue.enqueue(who(2), what("b"))
    assert b.position == 2
    claimed = await claim_all(queue)
    assert claimed == [a_jobs[0], b.job_id, *a_jobs[1:]]


async def test_position_peek_and_active_jobs_agree_with_claim_order(queue: JobQueue) -> None:
    # some history first: users 3 then 1 were served, user 2 has a job running
    for user in (3, 1):
        await queue.enqueue(who(user), what(f"history {user}"))
        job = await must_claim(queue)
        assert await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    running = await queue.enqueue(who(2), what("running"))
    assert (await must_claim(queue, "other")).id == running.job_id

    pattern = [1, 1, 1, 2, 3, 3, 4, 1, 2, 4, 4, 4]
    returned = {}
    for user in pattern:
        enqueued = await queue.enqueue(who(user), what(f"from {user}"))
        assert enqueued.position == await queue.position(enqueued.job_id)
        returned[enqueued.job_id] = (user, enqueued.position)
    positions = {job_id: await queue.position(job_id) for job_id in returned}
    assert sorted(p for p in positions.values() if p is not None) == list(range(1, len(pattern) + 1))
    by_position = sorted(positions, key=lambda job_id: positions[job_id] or 0)
    peeked = [job.id for job in await queue.peek_next(100)]
    assert [job.id for job in await queue.peek_next(3)] == peeked[:3]
    assert await queue.peek_next(0) == []
    active = await queue.active_jobs()
    assert active[0].id == running.job_id and active[0].state is JobState.RUNNING
    assert [job.id for job in active[1:]] == peeked
    assert await queue.position(running.job_id) is None

    claimed = await claim_all(queue)
    assert claimed == peeked == by_position
    users = [returned[job_id][0] for job_id in claimed]
    assert len(set(users[:3])) == 3, "the first jobs claimed belong to different users"
    for user in set(pattern):  # each user's jobs oldest first
        mine = [job_id for job_id in claimed if returned[job_id][0] == user]
        assert mine == sorted(mine)
    # round-robin: every user's k-th job is claimed before anyone's (k+2)-th
    rank = {
        job_id: sorted(j for j in returned if returned[j][0] == returned[job_id][0]).index(job_id)
        for job_id in returned
    }
    for index, job_id in enumerate(claimed):
        assert all(rank[later] + 2 > rank[job_id] for later in claimed[index + 1 :]), (claimed, users)


async def test_50_coroutines_share_one_queue(queue: JobQueue) -> None:
    async def producer(user_id: int) -> list[tuple[int, int]]:
        out = []
        for n in range(20):
            enqueued = await queue.enqueue(who(user_id), what(f"{user_id}/{n}"))
            out.append((enqueued.job_id, enqueued.position))
        return out

    results = await asyncio.gather(*(producer(user) for user in range(1, 51)))
    pairs = [pair for result in results for pair in result]
    ids = [job_id for job_id, _ in pairs]
    assert len(pairs) == 1000 and len(set(ids)) == 1000
    for job_id, position in pairs:
        # nothing was claimed: a job's place is at least 1 and at most the number of jobs queued so far
        assert 1 <= position <= job_id
    for result in results:  # one user's jobs keep their order
        positions = [position for _, position in result]
        assert positions == sorted(positions)
    peeked = await queue.peek_next(1000)
    assert [await queue.position(job.id) for job in peeked[:100]] == list(range(1, 101))
    assert len({job.requester.user_id for job in peeked[:50]}) == 50, "the first round serves everyone once"
    assert await queue.queue_length() == 1000
    assert all([await queue.pending_count(user) == 20 for user in (1, 25, 50)])


# --- recovery --------------------------------------------------------------------------------------


async def test_job_of_a_killed_worker_is_queued_again(queue: Any, backend: Backend) -> None:
    enqueued = await queue.enqueue(who(1), what())
    child, claimed = start_crash_child(backend)
    assert claimed == enqueued.job_id
    kill_hard(child, backend)
    job = await must_get(queue, claimed)
    assert job.state is JobState.RUNNING and job.worker_id == CHILD_WORKER

    queue = await reopen(queue, backend)
    try:
        assert await queue.recover_interrupted() == ([claimed], [])
        job = await must_get(queue, claimed)
        assert (job.state, job.attempts, job.worker_id, job.started_at) == (JobState.QUEUED, 1, None, None)
        assert await queue.position(claimed) == 1
        notices = await queue.pending_notices()
        assert [(n.kind, n.job.id) for n in notices] == [(NoticeKind.RESUMED, claimed)]
        # SQLite: the bot's own process died (a restart); PostgreSQL: a GPU worker went silent
        assert notices[0].body == (RESUMED_RESTART if backend.name == "sqlite" else RESUMED_WORKER_LOST)
        assert await queue.recover_interrupted() == ([], []), "a second recovery finds nothing to do"
        assert len(await queue.pending_notices()) == 1
        assert (await must_claim(queue)).id == claimed, "and it can be claimed again"
    finally:
        await queue.close()


async def test_third_crash_fails_the_job_and_tells_the_user(queue: Any, backend: Backend) -> None:
    enqueued = await queue.enqueue(who(1), what())
    for crash in range(1, 4):
        child, claimed = start_crash_child(backend)
        assert claimed == enqueued.job_id
        kill_hard(child, backend)
        queue = await reopen(queue, backend)
        requeued, failed = await queue.recover_interrupted()
        job = await must_get(queue, claimed)
        assert job.attempts == crash
        if crash < 3:
            assert (requeued, failed, job.state) == ([claimed], [], JobState.QUEUED)
    try:
        assert (requeued, failed) == ([], [enqueued.job_id])
        assert job.state is JobState.FAILED
        assert job.error == "crashed the worker 3 times"
        assert job.finished_at is not None
        notices = await queue.pending_notices()
        assert [n.kind for n in notices] == [NoticeKind.RESUMED, NoticeKind.RESUMED, NoticeKind.FAILED]
        assert notices[-1].body == "crashed the worker 3 times"
        assert await queue.claim_next(WORKER, 60) is None, "a failed job is never handed out again"
    finally:
        await queue.close()


async def test_cancel_requested_before_the_crash_ends_cancelled(queue: Any, backend: Backend) -> None:
    enqueued = await queue.enqueue(who(1), what())
    child, claimed = start_crash_child(backend)
    outcome = await queue.cancel(claimed, by_user_id=1)
    assert (outcome.state, outcome.immediate) == (JobState.RUNNING, False)
    kill_hard(child, backend)
    queue = await reopen(queue, backend)
    try:
        assert await queue.recover_interrupted() == ([], [])
        job = await must_get(queue, enqueued.job_id)
        assert job.state is JobState.CANCELLED and job.finished_at is not None
        assert await queue.pending_notices() == [], "the owner cancelled it; nothing to announce"
        assert await queue.claim_next(WORKER, 60) is None
    finally:
        await queue.close()


async def test_admin_cancel_of_a_job_running_in_a_killed_worker(queue: Any, backend: Backend) -> None:
    await queue.enqueue(who(1), what())
    child, claimed = start_crash_child(backend)
    await queue.cancel(claimed, by_user_id=99, is_admin=True)
    kill_hard(child, backend)
    queue = await reopen(queue, backend)
    try:
        assert await queue.recover_interrupted() == ([], [])
        (notice,) = await queue.pending_notices()
        assert (notice.kind, notice.job.id, notice.job.state) == (NoticeKind.CANCELLED, claimed, JobState.CANCELLED)
    finally:
        await queue.close()


async def test_completed_but_undelivered_result_survives_a_restart(
    queue: Any, backend: Backend, tmp_path: Path
) -> None:
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    paths = await save_results(queue, job.id, b"\x89PNG one")
    assert await queue.complete(job.id, WORKER, result_paths=paths, seed_used=42, plan="bf16")
    # the bot dies before the delivery loop posted it
    queue = await reopen(queue, backend)
    try:
        assert await queue.recover_interrupted() == ([], []), "a finished job is never re-run"
        (notice,) = await queue.pending_notices()
        assert (notice.kind, notice.job.id, notice.job.state) == (NoticeKind.RESULT, enqueued.job_id, JobState.DONE)
        assert await read_results(queue, notice.job) == [b"\x89PNG one"] and notice.job.seed_used == 42
        await queue.notice_sent(notice.id, message_id=777)
        queue = await reopen(queue, backend)
        assert await queue.recover_interrupted() == ([], [])
        assert await queue.pending_notices() == [], "a delivered result is never posted again"
    finally:
        await queue.close()


async def test_expired_leases_only_are_requeued(queue: JobQueue, clock: Clock) -> None:
    short = await queue.enqueue(who(1), what())
    long = await queue.enqueue(who(2), what())
    assert (await must_claim(queue, "w1", lease_s=10)).id == short.job_id
    assert (await must_claim(queue, "w2", lease_s=100)).id == long.job_id
    clock.advance(9)
    assert await queue.requeue_expired_leases() == ([], [])
    clock.advance(2)
    assert await queue.requeue_expired_leases() == ([short.job_id], [])
    first = await must_get(queue, short.job_id)
    second = await must_get(queue, long.job_id)
    assert (first.state, first.worker_id, first.attempts) == (JobState.QUEUED, None, 1)
    assert (second.state, second.worker_id) == (JobState.RUNNING, "w2")
    # the hung worker wakes up: its lease is gone, so it can neither renew nor complete
    assert await queue.heartbeat(short.job_id, "w1", 10) == Heartbeat(alive=False, cancel_requested=False)
    assert not await queue.complete(short.job_id, "w1", result_paths=[], seed_used=1, plan="p")
    assert [n.kind for n in await queue.pending_notices()] == [NoticeKind.RESUMED]


async def test_expired_lease_after_max_attempts_fails(queue: JobQueue, clock: Clock) -> None:
    enqueued = await queue.enqueue(who(1), what())
    for attempt in range(1, 4):
        job = await queue.claim_next(f"w{attempt}", lease_s=5)
        assert job is not None and job.attempts == attempt
        clock.advance(6)
        requeued, failed = await queue.requeue_expired_leases()
    assert (requeued, failed) == ([], [enqueued.job_id])
    job = await must_get(queue, enqueued.job_id)
    assert job.state is JobState.FAILED and job.error == "crashed the worker 3 times"


async def test_heartbeat_extends_the_lease_and_reports_cancel(queue: JobQueue, clock: Clock) -> None:
    enqueued = await queue.enqueue(who(1), what(steps=20))
    job = await queue.claim_next(WORKER, lease_s=10)
    assert job is not None and (job.progress_step, job.progress_total) == (0, 20)
    clock.advance(8)
    beat = await queue.heartbeat(job.id, WORKER, 10, step=7)
    assert (beat.alive, beat.cancel_requested) == (True, False)
    clock.advance(8)  # 16 s after the claim: expired without the heartbeat, alive with it
    assert await queue.requeue_expired_leases() == ([], [])
    progressed = await must_get(queue, job.id)
    assert (progressed.progress_step, progressed.progress_total) == (7, 20)

    await queue.cancel(enqueued.job_id, by_user_id=1)
    beat = await queue.heartbeat(job.id, WORKER, 10, step=8)
    assert (beat.alive, beat.cancel_requested) == (True, True)
    clock.advance(11)
    assert await queue.requeue_expired_leases() == ([], [])  # cancel requested: it ends cancelled, not requeued
    ended = await must_get(queue, job.id)
    assert ended.state is JobState.CANCELLED


async def test_heartbeat_by_another_worker_is_not_alive(queue: JobQueue) -> None:
    await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    assert await queue.heartbeat(job.id, "intruder", 60, step=5) == Heartbeat(False, False)
    assert await queue.heartbeat(999, WORKER, 60) == Heartbeat(False, False)
    unchanged = await must_get(queue, job.id)
    assert unchanged.progress_step == 0 and unchanged.worker_id == WORKER


async def test_the_heartbeat_keeps_the_newest_preview_of_a_running_job_only(queue: JobQueue) -> None:
    """Live previews (issue 14): the newest one wins; another worker's or a finished job's is not kept."""
    first = await queue.enqueue(who(1), what())
    second = await queue.enqueue(who(2), what())
    job = await must_claim(queue)
    assert job.id == first.job_id and await queue.preview(job.id) is None
    await queue.heartbeat(job.id, WORKER, 60, step=1)
    assert await queue.preview(job.id) is None  # a beat without a preview stores none
    await queue.heartbeat(job.id, WORKER, 60, step=2, preview=b"\xff\xd8 first")
    await queue.heartbeat(job.id, WORKER, 60, step=3)
    assert await queue.preview(job.id) == b"\xff\xd8 first"  # kept until a newer one comes
    await queue.heartbeat(job.id, WORKER, 60, step=4, preview=b"\xff\xd8 second")
    assert await queue.preview(job.id) == b"\xff\xd8 second"
    await queue.heartbeat(job.id, "intruder", 60, preview=b"\xff\xd8 intruder")
    assert await queue.preview(job.id) == b"\xff\xd8 second"
    assert await queue.preview(second.job_id) is None
    # Finished: the result replaces the preview, which is gone from the database.
    assert await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    assert await queue.preview(job.id) is None
    # Handed back to the queue: its old preview is gone too, not shown again on the next run.
    other = await must_claim(queue)
    await queue.heartbeat(other.id, WORKER, 60, preview=b"\xff\xd8 other")
    assert await queue.release(other.id, WORKER)
    again = await must_claim(queue)
    assert again.id == other.id and await queue.preview(other.id) is None


# --- cancel ------------------------------------------------------------------------------------------


async def test_cancel_queued_job_is_immediate(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    outcome = await queue.cancel(enqueued.job_id, by_user_id=1)
    assert (outcome.job_id, outcome.state, outcome.immediate) == (enqueued.job_id, JobState.CANCELLED, True)
    job = await must_get(queue, enqueued.job_id)
    assert job.state is JobState.CANCELLED and job.finished_at is not None
    assert await queue.claim_next(WORKER, 60) is None
    assert await queue.pending_notices() == []


async def test_cancel_running_job_is_seen_by_the_worker(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    outcome = await queue.cancel(enqueued.job_id, by_user_id=1)
    assert (outcome.state, outcome.immediate) == (JobState.RUNNING, False)
    still = await must_get(queue, job.id)
    assert still.state is JobState.RUNNING and still.cancel_requested
    assert (await queue.heartbeat(job.id, WORKER, 60)).cancel_requested
    assert not await queue.mark_cancelled(job.id, "someone-else")
    assert await queue.mark_cancelled(job.id, WORKER)
    ended = await must_get(queue, job.id)
    assert ended.state is JobState.CANCELLED and ended.finished_at is not None
    assert not await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    assert await queue.pending_notices() == []


async def test_cancel_someone_elses_job_is_refused(queue: JobQueue, backend: Backend) -> None:
    enqueued = await queue.enqueue(who(1), what())
    before = backend.counts()
    with pytest.raises(NotAllowed, match="isn't yours"):
        await queue.cancel(enqueued.job_id, by_user_id=2)
    job = await must_get(queue, enqueued.job_id)
    assert job.state is JobState.QUEUED and not job.cancel_requested
    assert backend.counts() == before


async def test_admin_cancels_someone_elses_queued_job(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    outcome = await queue.cancel(enqueued.job_id, by_user_id=99, is_admin=True)
    assert (outcome.state, outcome.immediate) == (JobState.CANCELLED, True)
    notices = await queue.pending_notices()
    assert [(n.kind, n.job.id, n.job.requester.user_id) for n in notices] == [
        (NoticeKind.CANCELLED, enqueued.job_id, 1)
    ]
    assert "admin" in notices[0].body


async def test_admin_cancels_someone_elses_running_job(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    outcome = await queue.cancel(enqueued.job_id, by_user_id=99, is_admin=True)
    assert (outcome.state, outcome.immediate) == (JobState.RUNNING, False)
    assert await queue.pending_notices() == [], "not announced before the worker actually stopped"
    assert (await queue.heartbeat(job.id, WORKER, 60)).cancel_requested
    assert await queue.mark_cancelled(job.id, WORKER)
    notices = await queue.pending_notices()
    assert [(n.kind, n.job.id, n.job.state) for n in notices] == [(NoticeKind.CANCELLED, job.id, JobState.CANCELLED)]


@pytest.mark.parametrize("hand_back", ["release", "fail-retry"])
async def test_cancel_request_survives_a_hand_back(queue: JobQueue, hand_back: str) -> None:
    """A running job with a pending cancel must not go back to the queue (the next claim clears the flag)."""
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    await queue.cancel(enqueued.job_id, by_user_id=1)
    if hand_back == "release":
        assert await queue.release(job.id, WORKER)
    else:
        assert await queue.fail(job.id, WORKER, "interrupted", retry=True)
    ended = await must_get(queue, job.id)
    assert ended.state is JobState.CANCELLED
    assert await queue.claim_next(WORKER, 60) is None


async def test_cancel_finished_job_is_a_clear_error(queue: JobQueue, backend: Backend) -> None:
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    assert await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    before = backend.counts()
    with pytest.raises(QueueError, match=rf"#{enqueued.job_id} has already finished \(done\)"):
        await queue.cancel(enqueued.job_id, by_user_id=1)
    with pytest.raises(QueueError, match="already finished"):
        await queue.cancel(enqueued.job_id, by_user_id=5, is_admin=True)
    assert backend.counts() == before


async def test_cancel_unknown_job(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound, match="no job #12345"):
        await queue.cancel(12345, by_user_id=1)
    assert issubclass(JobNotFound, QueueError)


# --- bad input -----------------------------------------------------------------------------------------

BAD_FIELDS = [
    pytest.param("steps", -5, "steps must be a positive whole number", id="negative steps"),
    pytest.param("steps", 2.5, "steps must be a positive whole number", id="fractional steps"),
    pytest.param("prompt", "", "prompt is empty", id="empty prompt"),
    pytest.param("prompt", "  \n\t ", "prompt is empty", id="whitespace prompt"),
    pytest.param("prompt", "x" * 4001, "limited to 4000 characters", id="long prompt"),
    pytest.param("negative_prompt", None, "negative prompt must be text", id="negative prompt None"),
    pytest.param("seed", MAX_SEED + 1, "seed must be a whole number from 0 to 4294967295", id="seed too big"),
    pytest.param("seed", -1, "seed must be a whole number from 0", id="negative seed"),
    pytest.param("seed", True, "seed must be a whole number", id="bool seed"),
    pytest.param("count", 0, "count must be a positive whole number", id="count 0"),
    pytest.param("guidance", math.nan, "guidance must be a number", id="NaN guidance"),
    pytest.param("guidance", -1.0, "guidance must be a number", id="negative guidance"),
    pytest.param("guidance", True, "guidance must be a number", id="bool guidance"),
    pytest.param("width", 0, "width must be a positive whole number", id="width 0"),
    pytest.param("start_image", "ABC", "start_image must be the sha256", id="start image not a digest"),
    pytest.param("strength", 0.0, "strength must be a number above 0", id="strength 0"),
    pytest.param("strength", 1.5, "strength must be a number above 0", id="strength above 1"),
    pytest.param("strength", math.nan, "strength must be a number above 0", id="NaN strength"),
    pytest.param("strength", 0.5, "need a start image", id="strength without an image"),
    pytest.param("upscale", 3, "upscale must be 0, 2 or 4", id="upscale 3"),
    pytest.param("upscale", 2, "need a start image", id="upscale without an image"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS)
def test_bad_request_is_refused_when_built(field: str, value: object, message: str) -> None:
    fields: dict[str, Any] = {"prompt": "ok", "width": 64, "height": 64, "steps": 4, "guidance": 1.0}
    fields[field] = value
    with pytest.raises(InvalidRequest, match=message) as info:
        JobRequest(**fields)
    assert isinstance(info.value, CodedError) and isinstance(info.value, ValueError)


def test_requester_needs_positive_ids() -> None:
    for user_id, channel_id in ((0, 1), (1, -3), (True, 1), ("7", 1)):
        with pytest.raises(InvalidJob, match="positive Discord ids"):
            Requester(user_id=user_id, channel_id=channel_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS)
async def test_bad_request_slipped_past_the_constructor_writes_nothing(
    queue: JobQueue, backend: Backend, field: str, value: object, message: str
) -> None:
    await queue.enqueue(who(1), what())
    before = backend.counts()
    request = what()
    object.__setattr__(request, field, value)  # e.g. a caller that mutated a frozen request
    with pytest.raises(InvalidJob, match=message):
        await queue.enqueue(who(1), request)
    assert backend.counts() == before


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda q: q.enqueue({"user_id": 1, "channel_id": 2}, what()), id="dict as requester"),
        pytest.param(lambda q: q.enqueue(who(), {"prompt": "x"}), id="dict as request"),
        pytest.param(lambda q: q.enqueue(who(), what(), kind=""), id="empty kind"),
        pytest.param(lambda q: q.enqueue(who(), what(), parent_job_id=4242), id="unknown parent"),
        pytest.param(lambda q: q.list_user_jobs(1, states=["queued", "sleeping"]), id="unknown state"),
    ],
)
async def test_bad_arguments_raise_invalid_job_and_write_nothing(
    queue: JobQueue, backend: Backend, call: Callable[[JobQueue], Any]
) -> None:
    await queue.enqueue(who(1), what())
    before = backend.counts()
    with pytest.raises(InvalidJob) as info:
        await call(queue)
    assert str(info.value) and not str(info.value).startswith(("'", "("))  # a sentence, not a repr
    assert backend.counts() == before


async def test_unknown_state_message_lists_the_valid_ones(queue: JobQueue) -> None:
    with pytest.raises(InvalidJob, match=r"Unknown job state 'sleeping'; expected one of: queued, running, done"):
        await queue.list_user_jobs(1, states=["sleeping"])


async def test_list_user_jobs_filters_and_orders(queue: JobQueue) -> None:
    ids = [(await queue.enqueue(who(1), what(f"p{i}"))).job_id for i in range(4)]
    await queue.enqueue(who(2), what("other"))
    await queue.cancel(ids[1], by_user_id=1)
    job = await must_claim(queue)
    assert job.id == ids[0]
    assert [j.id for j in await queue.list_user_jobs(1)] == [ids[3], ids[2], ids[0]]
    assert [j.id for j in await queue.list_user_jobs(1, states=[JobState.CANCELLED])] == [ids[1]]
    assert [j.id for j in await queue.list_user_jobs(1, states="cancelled")] == [ids[1]]
    assert [j.id for j in await queue.list_user_jobs(1, states=["queued", "cancelled"], limit=2)] == ids[3:1:-1]
    assert await queue.list_user_jobs(3) == []


async def test_enqueue_stores_every_field(queue: JobQueue) -> None:
    requester = Requester(user_id=11, channel_id=22, guild_id=33, user_name="ana", interaction_id=44)
    request = JobRequest(
        prompt="p 🦊", width=768, height=1344, steps=28, guidance=4.0, negative_prompt="n", seed=MAX_SEED, count=4
    )
    parent = await queue.enqueue(requester, request)
    child = await queue.enqueue(requester, replace(request, seed=0), kind="reroll", parent_job_id=parent.job_id)
    job = await must_get(queue, child.job_id)
    assert job.requester == requester
    assert job.request == replace(request, seed=0)
    assert (job.kind, job.parent_job_id, job.state, job.attempts) == ("reroll", parent.job_id, JobState.QUEUED, 0)
    assert await queue.get_job(999) is None


async def test_requester_locale_round_trips_to_the_jobs_posts(queue: JobQueue) -> None:
    """The locale a job was asked in comes back on the job and on its notices (its posts are written in it)."""
    chinese = await queue.enqueue(replace(who(1), locale="zh-CN"), what("一只猫"))
    english = await queue.enqueue(replace(who(2), locale="en-US"), what())
    unknown = await queue.enqueue(who(3), what())  # as jobs queued before the column existed
    assert [(await must_get(queue, e.job_id)).requester.locale for e in (chinese, english, unknown)] == [
        "zh-CN",
        "en-US",
        None,
    ]
    job = await must_claim(queue)
    assert job.requester == replace(who(1), locale="zh-CN")
    assert await queue.fail(job.id, WORKER, "boom")
    (notice,) = await queue.pending_notices()
    assert (notice.kind, notice.job.requester.locale) == (NoticeKind.FAILED, "zh-CN")
    assert [j.requester.locale for j in await queue.active_jobs()] == ["en-US", None]


@pytest.mark.parametrize("locale", ["", "x" * 17, 5])
def test_requester_locale_must_be_a_short_name(locale: object) -> None:
    with pytest.raises(InvalidJob, match="locale must be a short locale name"):
        Requester(user_id=1, channel_id=2, locale=locale)  # type: ignore[arg-type]


async def test_image_input_fields_round_trip(queue: JobQueue) -> None:
    digest = "ab" * 32
    img2img = what("from my picture", start_image=digest, strength=0.35)
    upscale = what("bigger", start_image=digest, upscale=4)
    first = await queue.enqueue(who(1), img2img)
    second = await queue.enqueue(who(1), upscale, kind="upscale", parent_job_id=first.job_id)
    assert (await must_get(queue, first.job_id)).request == img2img
    assert (await must_get(queue, second.job_id)).request == upscale
    plain = await queue.enqueue(who(2), what("text only"))
    request = (await must_get(queue, plain.job_id)).request
    assert (request.start_image, request.strength, request.upscale) == (None, 1.0, 0)


# --- limits ----------------------------------------------------------------------------------------


async def test_per_user_cap(queue: JobQueue, backend: Backend) -> None:
    limits = EnqueueLimits(max_per_user=2)
    first = await queue.enqueue(who(1), what(), limits)
    await queue.enqueue(who(1), what(), limits)
    with pytest.raises(UserQueueFull, match=r"already have 2 job\(s\) waiting \(the limit is 2\)"):
        await queue.enqueue(who(1), what(), limits)
    await queue.enqueue(who(2), what(), limits)  # others are not affected
    job = await must_claim(queue)
    assert job.id == first.job_id
    with pytest.raises(UserQueueFull):  # running jobs count too
        await queue.enqueue(who(1), what(), limits)
    assert await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    await queue.enqueue(who(1), what(), limits)
    assert backend.counts()["jobs"] == 4


async def test_global_cap(queue: JobQueue) -> None:
    limits = EnqueueLimits(max_total=3)
    for user in (1, 2, 3):
        await queue.enqueue(who(user), what(), limits)
    with pytest.raises(QueueFull, match=r"queue is full \(3 jobs waiting\)"):
        await queue.enqueue(who(4), what(), limits)
    assert await queue.claim_next(WORKER, 60) is not None  # the cap counts waiting jobs
    await queue.enqueue(who(4), what(), limits)
    assert await queue.queue_length() == 3


async def test_cooldown(queue: JobQueue, clock: Clock) -> None:
    limits = EnqueueLimits(cooldown_s=30)
    await queue.enqueue(who(1), what(), limits)
    clock.advance(10.2)
    with pytest.raises(CooldownActive, match="try again in 20 s") as info:
        await queue.enqueue(who(1), what(), limits)
    assert info.value.retry_after == pytest.approx(19.8)
    await queue.enqueue(who(2), what(), limits)  # per user
    clock.advance(19.9)
    await queue.enqueue(who(1), what(), limits)
    assert await queue.pending_count(1) == 2


@pytest.mark.parametrize("connections", [1, 4])
async def test_caps_hold_under_concurrent_enqueues(backend: Backend, connections: int) -> None:
    """20 enqueues at once by one user with a cap of 3, through 1 or 4 connections to the same storage."""
    queues = [backend.new() for _ in range(connections)]
    for q in queues:
        await q.open()
    try:
        limits = EnqueueLimits(max_per_user=3)
        results = await asyncio.gather(
            *(queues[i % connections].enqueue(who(1), what(), limits) for i in range(20)), return_exceptions=True
        )
    finally:
        for q in queues:
            await q.close()
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(accepted) == 3
    assert all(isinstance(r, UserQueueFull) for r in refused), refused
    assert backend.counts()["jobs"] == 3


async def test_global_cap_holds_under_concurrent_enqueues(backend: Backend) -> None:
    queues = [backend.new() for _ in range(3)]
    for q in queues:
        await q.open()
    try:
        limits = EnqueueLimits(max_total=5)
        results = await asyncio.gather(
            *(queues[i % 3].enqueue(who(i + 1), what(), limits) for i in range(15)), return_exceptions=True
        )
    finally:
        for q in queues:
            await q.close()
    assert sum(not isinstance(r, BaseException) for r in results) == 5
    assert all(isinstance(r, QueueFull) for r in results if isinstance(r, BaseException))
    assert backend.counts()["jobs"] == 5


# --- worker side and outbox ----------------------------------------------------------------------------


async def test_complete_writes_result_and_notice_together(queue: JobQueue, backend: Backend, tmp_path: Path) -> None:
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    before = backend.counts()
    paths = await save_results(queue, job.id, b"image a", b"image b")
    assert not await queue.complete(job.id, "not-the-owner", result_paths=paths[:1], seed_used=5, plan="p")
    assert backend.counts() == before
    untouched = await must_get(queue, job.id)
    assert (untouched.state, untouched.result_paths, untouched.seed_used) == (JobState.RUNNING, [], None)

    ok = await queue.complete(job.id, WORKER, result_paths=paths, seed_used=5, plan="nf4", timings={"total": 3.5})
    assert ok
    done = await must_get(queue, job.id)
    assert (done.state, done.seed_used, done.plan, done.timings) == (JobState.DONE, 5, "nf4", {"total": 3.5})
    assert await read_results(queue, done) == [b"image a", b"image b"]
    assert backend.counts()["notices"] == before["notices"] + 1
    assert not await queue.complete(job.id, WORKER, result_paths=paths[:1], seed_used=6, plan="p"), "only once"
    notices = await queue.pending_notices()
    assert [(n.kind, n.job.id) for n in notices] == [(NoticeKind.RESULT, enqueued.job_id)]
    assert await read_results(queue, notices[0].job) == [b"image a", b"image b"]


async def test_complete_is_atomic_when_the_notice_cannot_be_written(queue: JobQueue, backend: Backend) -> None:
    """If the outbox insert fails, the job must not be marked done either (one transaction)."""
    await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    backend.block_notices()
    with pytest.raises(Exception, match="disk gone"):
        await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    assert (await must_get(queue, job.id)).state is JobState.RUNNING
    backend.unblock_notices()
    # and the connection is still usable afterwards (the failed transaction was rolled back)
    assert await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")


async def test_notice_sent_records_the_message(queue: JobQueue) -> None:
    await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    (notice,) = await queue.pending_notices()
    await queue.notice_sent(notice.id, message_id=123456)
    done = await must_get(queue, job.id)
    assert done.result_message_id == 123456 and done.delivered_at is not None
    assert await queue.pending_notices() == []
    await queue.notice_sent(notice.id, message_id=999)  # a repeat does not overwrite
    again = await must_get(queue, job.id)
    assert again.result_message_id == 123456
    await queue.mark_result_deleted(job.id)
    deleted = await must_get(queue, job.id)
    assert deleted.result_message_id is None


async def test_notice_failed_reschedules_and_give_up_closes(queue: JobQueue, clock: Clock) -> None:
    enqueued = await queue.enqueue(who(1), what())
    await queue.cancel(enqueued.job_id, by_user_id=2, is_admin=True)
    (notice,) = await queue.pending_notices()
    await queue.notice_failed(notice.id, "503 from Discord", retry_in_s=30)
    assert await queue.pending_notices() == []
    clock.advance(29)
    assert await queue.pending_notices() == []
    clock.advance(2)
    (retried,) = await queue.pending_notices()
    assert (retried.id, retried.attempts) == (notice.id, 1)
    await queue.notice_failed(notice.id, "channel deleted", retry_in_s=30, give_up=True)
    clock.advance(3600)
    assert await queue.pending_notices() == []


async def test_pending_notices_oldest_first_and_limited(queue: JobQueue) -> None:
    ids = [(await queue.enqueue(who(1), what())).job_id for _ in range(5)]
    for job_id in ids:
        await queue.cancel(job_id, by_user_id=7, is_admin=True)
    notices = await queue.pending_notices(limit=3)
    assert [n.job.id for n in notices] == ids[:3]


async def test_fail_with_retry_requeues_while_attempts_remain(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    assert not await queue.fail(enqueued.job_id, WORKER, "not claimed yet", retry=True)
    for attempt in (1, 2):
        job = await must_claim(queue)
        assert job.attempts == attempt
        assert await queue.fail(job.id, WORKER, "CUDA out of memory", retry=True)
        requeued = await must_get(queue, job.id)
        assert requeued.state is JobState.QUEUED and requeued.worker_id is None
    assert await queue.pending_notices() == [], "a retry is silent"
    job = await must_claim(queue)
    assert job.attempts == 3
    assert await queue.fail(job.id, WORKER, "CUDA out of memory", retry=True)  # no attempts left
    failed = await must_get(queue, job.id)
    assert failed.state is JobState.FAILED and failed.error == "CUDA out of memory"
    (notice,) = await queue.pending_notices()
    assert (notice.kind, notice.body) == (NoticeKind.FAILED, "CUDA out of memory")


async def test_fail_without_retry_and_by_a_stranger(queue: JobQueue) -> None:
    await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    assert not await queue.fail(job.id, "stranger", "boom")
    assert await queue.fail(job.id, WORKER, "bad prompt for the model")
    failed = await must_get(queue, job.id)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 1)


async def test_release_hands_back_without_counting(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    assert job.attempts == 1
    assert not await queue.release(job.id, "stranger")
    assert await queue.release(job.id, WORKER)
    back = await must_get(queue, job.id)
    assert (back.state, back.attempts, back.worker_id) == (JobState.QUEUED, 0, None)
    assert await queue.position(enqueued.job_id) == 1
    assert not await queue.release(job.id, WORKER), "only a running job can be released"
    again = await must_claim(queue, "gpu-1")
    assert again.id == job.id and again.attempts == 1


async def test_pause_stops_claims_and_survives_a_restart(queue: Any, backend: Backend) -> None:
    await queue.enqueue(who(1), what())
    assert not await queue.is_paused()
    await queue.set_paused(True)
    assert await queue.claim_next(WORKER, 60) is None
    queue = await reopen(queue, backend)
    try:
        assert await queue.is_paused() and (await queue.stats()).paused
        assert await queue.claim_next(WORKER, 60) is None
        await queue.set_paused(False)
        assert await queue.claim_next(WORKER, 60) is not None
    finally:
        await queue.close()


async def test_kv_and_audit_round_trip(queue: Any, backend: Backend) -> None:
    assert await queue.kv_get("plan") is None
    await queue.kv_set("plan", "nf4")
    await queue.kv_set("plan", "bf16-offload")
    await queue.kv_set("emoji", "🦊 ünïcode")
    queue = await reopen(queue, backend)
    try:
        assert await queue.kv_get("plan") == "bf16-offload"
        assert await queue.kv_get("emoji") == "🦊 ünïcode"
        await queue.audit(10, "pause", "maintenance", guild_id=900)
        await queue.audit(11, "purge")
        log = await queue.audit_log()
        assert [(e.actor_id, e.action, e.detail, e.guild_id) for e in log] == [
            (11, "purge", "", None),
            (10, "pause", "maintenance", 900),
        ]
        assert log[0].at >= log[1].at > 0
        assert len(await queue.audit_log(limit=1)) == 1
    finally:
        await queue.close()


async def test_purge(queue: JobQueue) -> None:
    a = [(await queue.enqueue(who(1), what())).job_id for _ in range(3)]
    b = [(await queue.enqueue(who(2), what())).job_id for _ in range(2)]
    running = await must_claim(queue)
    assert running.id == a[0]
    assert await queue.purge(user_id=2) == b
    assert [j.id for j in await queue.peek_next(10)] == a[1:]
    assert await queue.purge() == a[1:]
    assert await queue.purge() == []
    job = await must_get(queue, a[0])
    assert job.state is JobState.RUNNING
    cancelled = await queue.list_user_jobs(2, states=["cancelled"])
    assert {j.id for j in cancelled} == set(b)
    notices = await queue.pending_notices()
    assert sorted(n.job.id for n in notices) == sorted(b + a[1:])
    assert {n.kind for n in notices} == {NoticeKind.CANCELLED}
    assert await queue.claim_next(WORKER, 60) is None, "purged jobs are never handed out"


async def test_stats_count_each_state(queue: JobQueue) -> None:
    ids = [(await queue.enqueue(who(u), what())).job_id for u in (1, 2, 3, 4, 5, 6)]
    await queue.cancel(ids[5], by_user_id=6)
    for outcome in ("done", "failed", "running"):
        job = await must_claim(queue)
        if outcome == "done":
            await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
        elif outcome == "failed":
            await queue.fail(job.id, WORKER, "x")
    stats = await queue.stats()
    assert (stats.queued, stats.running, stats.done, stats.failed, stats.cancelled, stats.paused) == (
        2,
        1,
        1,
        1,
        1,
        False,
    )


async def test_status_message_is_kept(queue: JobQueue) -> None:
    enqueued = await queue.enqueue(who(1), what())
    await queue.set_status_message(enqueued.job_id, 5555)
    job = await must_get(queue, enqueued.job_id)
    assert job.status_message_id == 5555


async def test_wait_for_change_wakes_on_a_write(queue: JobQueue) -> None:
    started = asyncio.get_running_loop().time()
    await queue.wait_for_change(0.05)  # nothing happens: times out
    assert asyncio.get_running_loop().time() - started >= 0.04
    waiter = asyncio.create_task(queue.wait_for_change(10))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await queue.enqueue(who(1), what())
    await asyncio.wait_for(waiter, 2)


async def test_wait_for_change_wakes_on_another_process_write(queue: JobQueue, backend: Backend) -> None:
    """The delivery loop of one process hears another's writes (PostgreSQL: LISTEN/NOTIFY)."""
    if backend.name == "sqlite":
        pytest.skip("one bot process owns a SQLite queue; it only needs to hear its own writes")
    other = backend.new()
    await other.open()
    try:
        await queue.wait_for_change(0.2)  # starts listening
        waiter = asyncio.create_task(queue.wait_for_change(10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await other.enqueue(who(1), what())
        await asyncio.wait_for(waiter, 2)
    finally:
        await other.close()


async def test_cancelled_caller_does_not_wedge_the_connection(queue: Any, backend: Backend) -> None:
    """A caller cancelled mid-transaction (e.g. by asyncio.wait_for) must leave no transaction open."""
    for delay in (0, 0.0005, 0.001, 0.002, 0.004):
        task = asyncio.create_task(queue.enqueue(who(1), what()))
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        enqueued = await asyncio.wait_for(queue.enqueue(who(2), what()), 5)  # still works
        assert enqueued.job_id > 0
    if backend.name == "sqlite":
        assert not queue._db.in_transaction


async def test_closed_queue_raises_queue_error(backend: Backend) -> None:
    q = backend.new()
    with pytest.raises(QueueError, match="not open"):
        await q.queue_length()
    await q.open()
    await q.close()
    await q.close()  # twice is fine
    with pytest.raises(QueueError, match="not open"):
        await q.enqueue(who(), what())


@hyp_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.integers(min_value=1, max_value=5), st.just("claim"), st.just("release")),
        min_size=1,
        max_size=30,
    )
)
def test_postgres_positions_match_procrastinates_fetch_order_after_any_history(
    pg_server: Any, pg_template: str, script: list[int | str]
) -> None:
    """Positions and peek_next come from our tables; claims from procrastinate's fetch: they must agree.

    (The same property for SQLite is in tests/test_queue.py.)"""
    from db.postgres import PostgresJobQueue
    from tests.pgserver import admin_sql

    name = f"hyp_{os.getpid()}_{abs(hash(tuple(map(str, script)))) % 10**9}_{len(script)}"
    admin_sql(pg_server.url(), f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name} TEMPLATE {pg_template}")

    async def scenario() -> None:
        async with PostgresJobQueue(pg_server.url(name), apply_schema=False) as q:
            held: list[int] = []
            for step in script:
                if step == "claim":
                    job = await q.claim_next(WORKER, 60)
                    if job is not None:
                        held.append(job.id)
                elif step == "release":
                    if held:
                        assert await q.release(held.pop(0), WORKER)
                else:
                    assert isinstance(step, int)
                    enqueued = await q.enqueue(who(step), what())
                    assert enqueued.position == await q.position(enqueued.job_id)
            peeked = [job.id for job in await q.peek_next(1000)]
            assert [await q.position(job_id) for job_id in peeked] == list(range(1, len(peeked) + 1))
            assert await claim_all(q) == peeked

    asyncio.run(scenario())


# --- one fairness rule: the same history gives the same claim order on both backends ------------------


class FairModel:
    """db.fairness's rule on plain Python data: what every backend must claim, in this order."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, int | str]] = {}
        self.served_round: int | None = None
        self.turns = 0

    def enqueue(self, job_id: int, user: int) -> None:
        active = [j["round"] for j in self.jobs.values() if j["user"] == user and j["state"] != "done"]
        fair_round = next_round(self.served_round, max(active) if active else None)  # type: ignore[type-var]
        self.jobs[job_id] = {"user": user, "round": fair_round, "state": "queued", "turn": self._turn()}

    def _turn(self) -> int:
        self.turns += 1
        return self.turns

    def order(self) -> list[int]:
        queued = [i for i, j in self.jobs.items() if j["state"] == "queued"]
        return sorted(queued, key=lambda i: (self.jobs[i]["round"], self.jobs[i]["turn"]))

    def claim(self) -> int | None:
        order = self.order()
        if not order:
            return None
        self.jobs[order[0]]["state"] = "running"
        self.served_round = int(self.jobs[order[0]]["round"])
        return order[0]

    def release(self, job_id: int) -> None:
        self.jobs[job_id].update(state="queued", turn=self._turn())

    def complete(self, job_id: int) -> None:
        self.jobs[job_id]["state"] = "done"


HISTORIES = [
    pytest.param([1, 1, 1, 2, "claim", 3, 3, "claim", 1, 4, "claim", "claim", 2, 2], id="newcomers join the round"),
    pytest.param([1, 1, "claim", "release", 2, "claim", "claim", "done", 1, 3, 3], id="a hand-back keeps its round"),
    pytest.param([5, 5, 5, 5, "claim", "done", "claim", "done", 6, 7, 5, 6], id="a backlog does not block others"),
    pytest.param([1, 2, 3, "claim", "claim", "release", "release", 1, 2, 3, 4], id="hand-backs take new turns"),
]


@pytest.mark.parametrize("history", HISTORIES)
async def test_same_history_same_claim_order(queue: JobQueue, history: list[int | str]) -> None:
    """Both backends follow db.fairness to the letter: claims, positions and peek match the model."""
    model = FairModel()
    held: list[int] = []
    for step in history:
        if step == "claim":
            job = await queue.claim_next(WORKER, 60)
            assert (job.id if job else None) == model.claim()
            if job is not None:
                held.append(job.id)
        elif step == "release":
            job_id = held.pop(0)
            assert await queue.release(job_id, WORKER)
            model.release(job_id)
        elif step == "done":
            job_id = held.pop(0)
            assert await queue.complete(job_id, WORKER, result_paths=[], seed_used=1, plan="p")
            model.complete(job_id)
        else:
            assert isinstance(step, int)
            enqueued = await queue.enqueue(who(step), what())
            model.enqueue(enqueued.job_id, step)
            assert enqueued.position == model.order().index(enqueued.job_id) + 1
    expected = model.order()
    assert [job.id for job in await queue.peek_next(100)] == expected
    assert [await queue.position(job_id) for job_id in expected] == list(range(1, len(expected) + 1))
    assert await claim_all(queue) == expected


# --- every field of every result type, on both backends ----------------------------------------------------


async def test_enqueued_says_whether_the_queue_is_paused(queue: JobQueue) -> None:
    assert await queue.enqueue(who(1), what()) == Enqueued(job_id=1, position=1, paused=False)
    await queue.set_paused(True)
    assert await queue.enqueue(who(2), what()) == Enqueued(job_id=2, position=2, paused=True)
    await queue.set_paused(False)
    assert await queue.enqueue(who(2), what()) == Enqueued(job_id=3, position=3, paused=False)


async def test_every_job_field_round_trips(queue: JobQueue, clock: Clock) -> None:
    requester = Requester(user_id=11, channel_id=22, guild_id=33, user_name="ana", interaction_id=44)
    request = JobRequest(
        prompt="a fox", width=768, height=512, steps=12, guidance=2.5, negative_prompt="blur", seed=7, count=2
    )
    parent = await queue.enqueue(requester, request)
    child = await queue.enqueue(requester, request, kind="variation", parent_job_id=parent.job_id)
    queued = Job(
        id=child.job_id,
        requester=requester,
        request=request,
        state=JobState.QUEUED,
        attempts=0,
        created_at=clock.t,
        kind="variation",
        parent_job_id=parent.job_id,
    )
    assert await must_get(queue, child.job_id) == queued
    await queue.set_status_message(child.job_id, 555)
    assert await queue.cancel(parent.job_id, by_user_id=11) == CancelOutcome(parent.job_id, JobState.CANCELLED, True)
    clock.advance(1)
    running = await must_claim(queue)
    started = replace(
        queued, state=JobState.RUNNING, attempts=1, started_at=clock.t, worker_id=WORKER, status_message_id=555
    )
    assert running == replace(started, progress_step=0, progress_total=12)
    assert await queue.heartbeat(child.job_id, WORKER, 60, step=5) == Heartbeat(alive=True, cancel_requested=False)
    assert await must_get(queue, child.job_id) == replace(started, progress_step=5, progress_total=12)
    clock.advance(1)
    paths = await save_results(queue, child.job_id, b"one", b"two")
    assert await queue.complete(child.job_id, WORKER, result_paths=paths, seed_used=9, plan="nf4", timings={"a": 1.0})
    done = replace(
        started,
        state=JobState.DONE,
        finished_at=clock.t,
        result_paths=paths,
        seed_used=9,
        plan="nf4",
        timings={"a": 1.0},
        progress_step=12,
        progress_total=12,
    )
    assert await must_get(queue, child.job_id) == done
    (notice,) = await queue.pending_notices()
    assert notice == Notice(id=notice.id, kind=NoticeKind.RESULT, job=done, attempts=0, body="")
    clock.advance(1)
    await queue.notice_sent(notice.id, 666)
    delivered = replace(done, result_message_id=666, delivered_at=clock.t)
    assert await must_get(queue, child.job_id) == delivered
    assert await queue.list_user_jobs(11, states=["done"]) == [delivered]
    assert await queue.stats() == QueueStats(queued=0, running=0, done=1, failed=0, cancelled=1, paused=False)
    await queue.audit(5, "pause", "why", guild_id=33)
    assert await queue.audit_log() == [AuditEntry(at=clock.t, actor_id=5, action="pause", detail="why", guild_id=33)]


async def test_resumed_notice_says_why(queue: JobQueue, clock: Clock) -> None:
    await queue.enqueue(who(1), what())
    await must_claim(queue, lease_s=5)
    clock.advance(6)
    assert len((await queue.requeue_expired_leases())[0]) == 1
    (notice,) = await queue.pending_notices()
    assert (notice.kind, notice.body) == (NoticeKind.RESUMED, RESUMED_WORKER_LOST)


async def test_the_first_result_alone_is_read_for_a_vary(queue: JobQueue) -> None:
    await queue.enqueue(who(1), what(count=2))
    job = await must_claim(queue)
    paths = await save_results(queue, job.id, b"first", b"second")
    assert await queue.complete(job.id, WORKER, result_paths=paths, seed_used=1, plan="p")
    done = await must_get(queue, job.id)
    assert [f.data for f in await queue.results.read(done, count=1)] == [b"first"]
    assert await read_results(queue, done) == [b"first", b"second"]


async def test_results_are_read_back_and_refused_when_tampered(queue: JobQueue) -> None:
    await queue.enqueue(who(1), what())
    job = await must_claim(queue)
    paths = await save_results(queue, job.id, b"png")
    assert paths == [str(Path(p)) for p in paths] and all(Path(p).name == f"job{job.id:07d}_0.png" for p in paths)
    assert await queue.complete(job.id, WORKER, result_paths=paths, seed_used=1, plan="p")
    done = await must_get(queue, job.id)
    assert await queue.results.read(done) == [ResultFile(f"job{job.id:07d}_0.png", b"png")]
    with pytest.raises(UnsafeResult):
        await queue.results.read(replace(done, result_paths=["/etc/passwd"]))
    await queue.results.delete(done)
    with pytest.raises(FileNotFoundError):
        await queue.results.read(done)
