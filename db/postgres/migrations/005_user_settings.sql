-- Each user's own /imagine defaults and whether their results come by DM (/settings): one JSON object.
CREATE TABLE user_settings (
    user_id    BIGINT PRIMARY KEY,
    settings   TEXT   NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Retention (RETENTION_DAYS), as on SQLite: 'pruning' while a pass deletes a job's images, then 'pruned'.
CREATE TABLE pruned_results (
    job_id BIGINT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    state  TEXT   NOT NULL CHECK (state IN ('pruning', 'pruned')),
    at     DOUBLE PRECISION NOT NULL
);
CREATE INDEX pruned_results_by_state ON pruned_results (state);
CREATE INDEX jobs_done_by_finished ON jobs (finished_at) WHERE state = 'done';
