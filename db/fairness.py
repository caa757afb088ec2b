"""The claim order, the one rule every backend follows: round-robin by user, in numbered rounds.

One user queuing twenty jobs must not make everyone else wait behind all twenty (InvokeAI's
session queue and most community bots learned this the hard way). So each job gets a round
when it is queued (start-time fair queueing):

- a user's job goes one round after that user's last queued or running job;
- a user with none joins the round being served now (the round of the most recently claimed
  job), so a newcomer neither jumps ahead of the current round nor waits behind old backlogs;
- jobs are claimed by (round, turn): lowest round first, and within a round in the order they
  entered the queue. A job enters the queue when it is enqueued and again whenever it is handed
  back (released, retried, recovered); it keeps its round, so it is taken before later rounds.

The rule is fixed when a job enters the queue, so a claim never reorders the others: the place
shown to a user only ever moves forward. The PostgreSQL backend hands the order to procrastinate
(token priority = -round, and the token's id is the turn); SQLite keeps the turn in `queue_seq`.
Both read the same facts with the SQL below, and tests/test_queue_contract.py checks that the
same history gives the same claim order on both.
"""

from __future__ import annotations

# The order queued jobs are claimed in, given the backend's turn column (`{turn}`).
CLAIM_ORDER = "j.fair_round, j.{turn}"

# Place of a queued job (1-based); no row if it is not queued. One parameter: the job id.
POSITION_SQL = (
    "WITH me AS (SELECT fair_round, {turn} AS turn FROM jobs WHERE id = ? AND state = 'queued') "
    "SELECT 1 + (SELECT count(*) FROM jobs q WHERE q.state = 'queued' "
    "AND (q.fair_round, q.{turn}) < (me.fair_round, me.turn)) AS position FROM me"
)


def next_round(served_round: int | None, user_round: int | None) -> int:
    """The round of a new job: after the user's last active job, never before the round served now.

    `served_round`: the round of the most recently claimed job (None: nothing was ever claimed).
    `user_round`: the highest round among this user's queued and running jobs (None: they have none).
    """
    current = served_round or 0
    return current if user_round is None else max(current, user_round + 1)
