"""Claim order: round-robin by user, least recently served user first.

One user queuing twenty jobs must not make everyone else wait behind all twenty
(InvokeAI's session queue and most community bots learned this the hard way).
The order is computed from two facts every backend can read: the queued jobs
(id, user) and, per user, the sequence number of their last claim.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping


def fair_order(queued: Iterable[tuple[int, int]], last_served: Mapping[int, int]) -> list[int]:
    """Return job ids in the order claim_next would take them.

    `queued` holds (job_id, user_id) pairs; within one user, lower ids go first.
    `last_served` maps user_id to the serial number of their most recent claim
    (missing: never served, so they go first). Each round takes one job from every
    user that still has one, users ordered by how long ago they were served.
    """
    per_user: dict[int, deque[int]] = {}
    for job_id, user_id in sorted(queued):
        per_user.setdefault(user_id, deque()).append(job_id)
    rotation = OrderedDict(
        (user, jobs)
        for user, jobs in sorted(per_user.items(), key=lambda item: (last_served.get(item[0], 0), item[1][0]))
    )
    order: list[int] = []
    while rotation:
        for user in list(rotation):
            jobs = rotation[user]
            order.append(jobs.popleft())
            if not jobs:
                del rotation[user]
    return order
