"""Small builders and assertions shared by the queue test modules (SQLite-only and both-backend)."""

from __future__ import annotations

from typing import Any

from db.interface import JobQueue
from db.models import Job, Requester
from jobrequest import JobRequest

WORKER = "gpu-0"


def who(user_id: int = 1, *, channel_id: int = 500, name: str = "") -> Requester:
    return Requester(user_id=user_id, channel_id=channel_id, guild_id=900, user_name=name or f"user{user_id}")


def what(prompt: str = "a red fox in snow", **overrides: Any) -> JobRequest:
    fields: dict[str, Any] = {"width": 1024, "height": 1024, "steps": 30, "guidance": 3.5}
    fields.update(overrides)
    return JobRequest(prompt=prompt, **fields)


async def must_claim(queue: JobQueue, worker: str = WORKER, lease_s: float = 60) -> Job:
    job = await queue.claim_next(worker, lease_s)
    assert job is not None, "expected a job to claim"
    return job


async def claim_all(queue: JobQueue) -> list[int]:
    claimed = []
    while (job := await queue.claim_next(WORKER, lease_s=60)) is not None:
        claimed.append(job.id)
    return claimed
