-- One fairness rule for every backend (db/fairness.py): each job gets a round when it is queued,
-- and queued jobs are claimed by (round, turn), the turn being the order they entered the queue.
ALTER TABLE jobs ADD COLUMN fair_round INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN queue_seq INTEGER;

-- Jobs already waiting keep their old round-robin shape: a user's k-th queued job goes to round k - 1,
-- and they take their turns in the order they were queued.
UPDATE jobs SET
    fair_round = (SELECT count(*) FROM jobs o WHERE o.user_id = jobs.user_id AND o.state = 'queued' AND o.id < jobs.id),
    queue_seq = id
WHERE state = 'queued';

CREATE INDEX jobs_claim_order ON jobs (fair_round, queue_seq) WHERE state = 'queued';
CREATE INDEX jobs_by_queue_seq ON jobs (queue_seq);
