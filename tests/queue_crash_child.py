"""A separate OS process that uses the SQLite queue, for tests that need a real second process.

    python tests/queue_crash_child.py DB
        DB is a SQLite file, or a postgresql:// URL for the cluster backend. Open the queue,
        claim the next job as worker "crash-child", print "claimed <id>", then sleep
        until killed (the test SIGKILLs it to simulate a crash mid-generation).

    python tests/queue_crash_child.py DB enqueue TASKS JOBS FIRST_USER
        Open the queue and run TASKS concurrent coroutines, coroutine i enqueuing JOBS jobs as user
        FIRST_USER + i; print one JSON line: [[job_id, position], ...].

    python tests/queue_crash_child.py DB prune BEFORE
        Open the queue and run a retention pass (prune_results) for jobs finished before BEFORE; after
        the first job's images are deleted, print "deleted <id>" and hang (the test SIGKILLs it there).

If QUEUE_CHILD_START_AT (a time.time() value) is set, wait until then after the imports, so that
several children hit the database at the same moment.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.models import Requester
from db.sqlite_queue import SqliteJobQueue
from jobrequest import JobRequest

WORKER_ID = "crash-child"


def open_target(db: Path) -> Any:
    """The queue behind DB: a SQLite file, or PostgreSQL for a postgresql:// URL."""
    if str(db).startswith("postgresql:"):
        from db.postgres import PostgresJobQueue

        return PostgresJobQueue(str(db), apply_schema=False)
    return SqliteJobQueue(db)


def _wait_for_start() -> None:
    start_at = os.environ.get("QUEUE_CHILD_START_AT")
    if start_at:
        delay = float(start_at) - time.time()
        if delay > 0:
            time.sleep(delay)


async def claim_and_hang(db: Path) -> int:
    queue = open_target(db)
    await queue.open()
    job = await queue.claim_next(WORKER_ID, lease_s=600)
    if job is None:
        print("empty", flush=True)
        return 1
    print(f"claimed {job.id}", flush=True)
    await asyncio.sleep(3600)  # killed long before this ends
    return 0


async def enqueue_many(db: Path, tasks: int, jobs: int, first_user: int) -> int:
    queue = open_target(db)
    await queue.open()
    try:

        async def producer(user_id: int) -> list[list[int]]:
            requester = Requester(user_id=user_id, channel_id=7)
            out = []
            for n in range(jobs):
                request = JobRequest(prompt=f"user {user_id} job {n}", width=512, height=512, steps=4, guidance=1.0)
                enqueued = await queue.enqueue(requester, request)
                out.append([enqueued.job_id, enqueued.position])
            return out

        results = await asyncio.gather(*(producer(first_user + i) for i in range(tasks)))
    finally:
        await queue.close()
    print(json.dumps([pair for result in results for pair in result]), flush=True)
    return 0


async def prune_and_hang(db: Path, before: float) -> int:
    queue = open_target(db)
    await queue.open()
    real_delete = queue.results.delete

    async def delete_then_hang(job: Any) -> None:
        await real_delete(job)
        print(f"deleted {job.id}", flush=True)
        await asyncio.sleep(3600)  # killed long before this ends

    queue.results.delete = delete_then_hang
    await queue.prune_results(before)
    return 0


def main(argv: list[str]) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung child can be asked where it is
    db: Any = argv[1] if argv[1].startswith("postgresql:") else Path(argv[1])  # Path() would eat the "//"
    _wait_for_start()
    if len(argv) == 2:
        return asyncio.run(claim_and_hang(db))
    if argv[2] == "enqueue" and len(argv) == 6:
        return asyncio.run(enqueue_many(db, int(argv[3]), int(argv[4]), int(argv[5])))
    if argv[2] == "prune" and len(argv) == 4:
        return asyncio.run(prune_and_hang(db, float(argv[3])))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
