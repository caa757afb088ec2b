"""What only the SQLite queue promises, the fair-round rule itself, and one file shared by processes.

The behaviour both backends share (claim order, caps, cancel, leases, crash recovery, the outbox)
is tested once for each in tests/test_queue_contract.py. Nothing here mocks the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.fairness import next_round
from db.models import (
    JobState,
)
from db.sqlite_queue import SqliteJobQueue
from tests.queue_helpers import WORKER, claim_all, must_claim, what, who

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "queue_crash_child.py"


# --- helpers -------------------------------------------------------------------------------


def sql(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Run one statement through an independent connection (autocommit) and return its rows."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(query, params).fetchall()


def row_counts(path: Path) -> dict[str, int]:
    """Row counts per table."""
    return {t: sql(path, f"SELECT count(*) FROM {t}")[0][0] for t in ("jobs", "notices", "kv", "audit")}


def raw_job(path: Path, job_id: int) -> sqlite3.Row:
    (row,) = sql(path, "SELECT * FROM jobs WHERE id = ?", (job_id,))
    return row


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
async def queue(db_path: Path) -> AsyncIterator[SqliteJobQueue]:
    q = SqliteJobQueue(db_path)
    await q.open()
    yield q
    await q.close()


async def must_position(queue: SqliteJobQueue, job_id: int) -> int:
    position = await queue.position(job_id)
    assert position is not None, f"job {job_id} is not queued"
    return position


# --- fairness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served_round", "user_round", "expected"),
    [
        pytest.param(None, None, 0, id="nothing ever claimed, no jobs: round 0"),
        pytest.param(None, 0, 1, id="second job of a user: next round"),
        pytest.param(None, 4, 5, id="a user's backlog: one round per job"),
        pytest.param(7, None, 7, id="newcomer joins the round served now"),
        pytest.param(7, 2, 7, id="an old backlog never goes before the round served now"),
        pytest.param(7, 7, 8, id="a user already in this round waits for the next"),
        pytest.param(3, 9, 10, id="a long backlog keeps growing from its last job"),
    ],
)
def test_next_round(served_round: int | None, user_round: int | None, expected: int) -> None:
    assert next_round(served_round, user_round) == expected


async def test_rounds_after_history_serve_each_user_once_per_round(queue: SqliteJobQueue) -> None:
    # some history first: users 3 then 1 were served (round 0), user 2 is running (round 0)
    first = await queue.enqueue(who(3), what("history 3"))
    second = await queue.enqueue(who(1), what("history 1"))
    for expected in (first.job_id, second.job_id):
        job = await queue.claim_next(WORKER, 60)
        assert job is not None and job.id == expected
        assert await queue.complete(job.id, WORKER, result_paths=[], seed_used=1, plan="p")
    running = await queue.enqueue(who(2), what("running"))
    assert (await must_claim(queue, "other")).id == running.job_id

    pattern = [1, 1, 1, 2, 3, 3, 4, 1, 2, 4, 4, 4]
    returned = {}
    for user in pattern:
        enqueued = await queue.enqueue(who(user), what(f"from {user}"))
        assert enqueued.position == await queue.position(enqueued.job_id)
        returned[enqueued.job_id] = enqueued.position
    positions = {job_id: await must_position(queue, job_id) for job_id in returned}
    by_position = sorted(positions, key=positions.__getitem__)
    assert sorted(positions.values()) == list(range(1, len(pattern) + 1))
    peeked = [job.id for job in await queue.peek_next(100)]
    assert [job.id for job in await queue.peek_next(3)] == peeked[:3]
    assert await queue.peek_next(0) == []
    active = await queue.active_jobs()
    assert active[0].id == running.job_id and active[0].state is JobState.RUNNING
    assert [job.id for job in active[1:]] == peeked
    assert await queue.position(running.job_id) is None

    claimed = await claim_all(queue)
    assert claimed == peeked == by_position
    # round 0 (served now): 1, 3, 4 in the order they came; user 2 (running in round 0) starts in round 1
    users = [raw_job(queue.path, job_id)["user_id"] for job_id in claimed]
    assert users == [1, 3, 4, 1, 2, 3, 4, 1, 2, 4, 1, 4]
    assert [raw_job(queue.path, job_id)["fair_round"] for job_id in claimed] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3]
    assert await queue.position(claimed[-1]) is None


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.integers(min_value=1, max_value=6), st.just("claim"), st.just("release")),
        min_size=1,
        max_size=40,
    )
)
def test_position_and_peek_match_claims_after_any_history(script: list[int | str]) -> None:
    """Random enqueue / claim / release histories; then everything queued is claimed and compared."""

    async def scenario(path: Path) -> None:
        async with SqliteJobQueue(path) as q:
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
            positions = [await q.position(job_id) for job_id in peeked]
            assert positions == list(range(1, len(peeked) + 1))
            assert await claim_all(q) == peeked

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(Path(folder) / "q.db"))


# --- concurrency --------------------------------------------------------------------------------


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    """4 child processes (10 coroutines × 20 jobs each, own connection) and this one, on a new file."""
    path = tmp_path / "shared.db"
    env = {**os.environ, "QUEUE_CHILD_START_AT": str(time.time() + 1.5)}
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(path), "enqueue", "10", "20", str(1000 + 100 * i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]

    async def main_process() -> list[tuple[int, int]]:
        await asyncio.sleep(max(0.0, float(env["QUEUE_CHILD_START_AT"]) - time.time()))
        async with SqliteJobQueue(path) as q:

            async def producer(user_id: int) -> list[tuple[int, int]]:
                out = []
                for n in range(20):
                    enqueued = await q.enqueue(who(user_id), what(f"main {user_id}/{n}"))
                    out.append((enqueued.job_id, enqueued.position))
                return out

            return [pair for r in await asyncio.gather(*(producer(u) for u in range(1, 11))) for pair in r]

    pairs = asyncio.run(main_process())
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert "locked" not in err and "busy" not in err
        pairs.extend((job_id, position) for job_id, position in json.loads(out))
    ids = [job_id for job_id, _ in pairs]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert all(1 <= position <= job_id for job_id, position in pairs)
    assert row_counts(path)["jobs"] == 1000
    assert sql(path, "SELECT count(DISTINCT user_id) FROM jobs")[0][0] == 50
    assert sql(path, "PRAGMA integrity_check")[0][0] == "ok"


# --- recovery ------------------------------------------------------------------------------------


# --- cancel ----------------------------------------------------------------------------------


# --- bad input -----------------------------------------------------------------------------------

# --- limits ----------------------------------------------------------------------------------------


# --- worker side and outbox -------------------------------------------------------------------------
