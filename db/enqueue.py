"""Enqueue's rules for every backend: the queue's own invariant check, caps, cooldown, daily quota, fair round.

A backend runs ENQUEUE_FACTS_SQL, `plan_enqueue`, INSERT_JOB_SQL and then gives the job its turn,
all in one transaction (SQLite in one trip to its thread, PostgreSQL under an advisory lock).
"""

from __future__ import annotations

from typing import Any

from db import fairness
from db.columns import INSERT_COLUMNS
from db.models import CooldownActive, EnqueueLimits, InvalidJob, QueueFull, QuotaExceeded, Requester, UserQueueFull
from jobrequest import InvalidRequest, JobRequest


def check_enqueue(
    requester: object, request: object, limits: object, kind: object, parent_job_id: object
) -> EnqueueLimits:
    """The queue's own invariant check of an enqueue; returns the limits to apply."""
    if not isinstance(requester, Requester):
        raise InvalidJob(f"enqueue needs a Requester (who asked, where to answer), got {type(requester).__name__}.")
    if not isinstance(request, JobRequest):
        raise InvalidJob(f"enqueue needs a JobRequest (the generation parameters), got {type(request).__name__}.")
    requester.validate()  # again: a caller may have bypassed __init__ (object.__setattr__, copy tricks)
    try:
        request.validate()
    except InvalidRequest as exc:
        raise InvalidJob(str(exc)) from None
    if not isinstance(kind, str) or not kind.strip() or len(kind) > 32:
        raise InvalidJob(f"kind must be a short name such as 'imagine' (got {kind!r}).")
    if parent_job_id is not None and (
        not isinstance(parent_job_id, int) or isinstance(parent_job_id, bool) or parent_job_id <= 0
    ):
        raise InvalidJob(f"parent_job_id must be a job number (got {parent_job_id!r}).")
    if limits is None:
        return EnqueueLimits()
    if not isinstance(limits, EnqueueLimits):
        raise InvalidJob(f"limits must be an EnqueueLimits, got {type(limits).__name__}.")
    return limits


# Images a user asked for since a time (the daily quota's count); cancelled and failed jobs do not count.
# Parameters: user id, start of the UTC day (`day_start`).
USED_SINCE_SQL = (
    "SELECT coalesce(sum(count), 0) FROM jobs WHERE user_id = ? AND created_at >= ?"
    " AND state NOT IN ('cancelled', 'failed')"
)
DAY_S = 86_400

# Everything enqueue decides on, read in one statement inside its transaction.
# Parameters: enqueue_facts_params().
ENQUEUE_FACTS_SQL = (
    "SELECT (SELECT count(*) FROM jobs WHERE id = ?) AS parent_found,"
    " CASE WHEN ? THEN (SELECT count(*) FROM jobs WHERE state = 'queued') END AS queued,"
    " CASE WHEN ? THEN (SELECT count(*) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')) END AS pending,"
    " CASE WHEN ? THEN (SELECT max(created_at) FROM jobs WHERE user_id = ?) END AS last_at,"
    " (SELECT fair_round FROM jobs WHERE served_seq IS NOT NULL ORDER BY served_seq DESC LIMIT 1) AS served_round,"
    " (SELECT max(fair_round) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')) AS user_round,"
    " (SELECT count(*) FROM kv WHERE key = 'paused' AND value = '1') AS paused,"
    f" CASE WHEN ? THEN ({USED_SINCE_SQL}) END AS used_today"
)
INSERT_JOB_SQL = (
    f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join('?' for _ in INSERT_COLUMNS)}) RETURNING id"
)


def day_start(at: float) -> float:
    """The start of the UTC day holding `at`: the daily quota counts the images asked for since then."""
    return at - at % DAY_S


def enqueue_facts_params(
    requester: Requester, parent_job_id: int | None, limits: EnqueueLimits, at: float
) -> tuple[Any, ...]:
    """Counts a limit does not need are not read (they cost a scan on every enqueue)."""
    user = requester.user_id
    return (
        parent_job_id or 0,
        limits.max_total is not None,
        limits.max_per_user is not None,
        user,
        limits.cooldown_s > 0,
        user,
        user,
        limits.daily_quota > 0,
        user,
        day_start(at),
    )


def plan_enqueue(facts: Any, limits: EnqueueLimits, parent_job_id: int | None, at: float, count: int = 1) -> int:
    """Refuse what the caps, the cooldown, the daily quota (of `count` more images) or a missing parent
    forbid; returns the new job's fair round."""
    if parent_job_id is not None and not facts["parent_found"]:
        raise InvalidJob(code="job.no_parent", job=parent_job_id)
    if limits.max_total is not None and facts["queued"] >= limits.max_total:
        raise QueueFull(limits.max_total)
    pending = facts["pending"]
    if limits.max_per_user is not None and pending >= limits.max_per_user:
        raise UserQueueFull(pending, limits.max_per_user)
    if limits.cooldown_s > 0 and facts["last_at"] is not None:
        wait = facts["last_at"] + limits.cooldown_s - at
        if wait > 0:
            raise CooldownActive(wait)
    if limits.daily_quota > 0 and facts["used_today"] + count > limits.daily_quota:
        raise QuotaExceeded(int(facts["used_today"]), limits.daily_quota, day_start(at) + DAY_S)
    return fairness.next_round(facts["served_round"], facts["user_round"])


def insert_values(
    requester: Requester, request: JobRequest, kind: str, parent_job_id: int | None, at: float, fair_round: int
) -> tuple[Any, ...]:
    """The values of INSERT_JOB_SQL, in the order of db.columns.INSERT_COLUMNS."""
    values = {
        "kind": kind,
        "parent_job_id": parent_job_id,
        "user_id": requester.user_id,
        "user_name": requester.user_name,
        "guild_id": requester.guild_id,
        "channel_id": requester.channel_id,
        "interaction_id": requester.interaction_id,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "guidance": float(request.guidance),
        "seed": request.seed,
        "count": request.count,
        "created_at": at,
        "fair_round": fair_round,
        "start_image": request.start_image,
        "strength": float(request.strength),
        "upscale": request.upscale,
        "locale": requester.locale,
        "draft": request.draft,
    }
    return tuple(values[name] for name in INSERT_COLUMNS)
