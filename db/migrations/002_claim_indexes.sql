-- Indexes for the per-write queries, so their cost does not grow with the job history:
-- claim_next reads the newest serve number on every claim (a full scan of every job ever run
-- without this index), and the cooldown check reads a user's newest job on every enqueue.
CREATE INDEX jobs_by_served_seq ON jobs (served_seq);
CREATE INDEX jobs_by_user_created ON jobs (user_id, created_at);
