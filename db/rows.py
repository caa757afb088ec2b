"""Turning stored rows into `db.models` types, the same way for every backend."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from db.models import AuditEntry, InvalidJob, Job, JobState, Requester
from jobrequest import JobRequest

ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)


def parse_states(states: Iterable[JobState | str] | None) -> list[JobState]:
    if states is None:
        return list(ACTIVE_STATES)
    if isinstance(states, str):  # states="queued" means that one state, not its letters
        states = [states]
    result = []
    for state in states:
        try:
            result.append(JobState(state))
        except ValueError:
            valid = ", ".join(s.value for s in JobState)
            raise InvalidJob(f"Unknown job state {state!r}; expected one of: {valid}.") from None
    return result


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A job row (a dict or an sqlite Row) of either backend; columns only one of them has are ignored."""
    return Job(
        id=row["id"],
        requester=Requester(
            user_id=row["user_id"],
            channel_id=row["channel_id"],
            guild_id=row["guild_id"],
            user_name=row["user_name"],
            interaction_id=row["interaction_id"],
            locale=row["locale"],
        ),
        request=JobRequest(
            prompt=row["prompt"],
            negative_prompt=row["negative_prompt"],
            width=row["width"],
            height=row["height"],
            steps=row["steps"],
            guidance=row["guidance"],
            seed=row["seed"],
            count=row["count"],
            start_image=row["start_image"],
            strength=row["strength"],
            upscale=row["upscale"],
            draft=bool(row["draft"]),
        ),
        state=JobState(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        kind=row["kind"],
        parent_job_id=row["parent_job_id"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        result_paths=json.loads(row["result_paths"]),
        seed_used=row["seed_used"],
        plan=row["plan"],
        timings=json.loads(row["timings_json"] or "{}"),
        cancel_requested=bool(row["cancel_requested"]),
        worker_id=row["worker_id"],
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        status_message_id=row["status_message_id"],
        result_message_id=None if row["result_deleted"] else row["result_message_id"],
        delivered_at=row["delivered_at"],
        flagged=bool(row["flagged"]),
    )


def audit_from_row(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        at=row["at"], actor_id=row["actor_id"], action=row["action"], detail=row["detail"], guild_id=row["guild_id"]
    )
