-- Each user's own /imagine defaults and whether their results come by DM (/settings): one JSON object.
CREATE TABLE user_settings (
    user_id    INTEGER PRIMARY KEY,
    settings   TEXT    NOT NULL,
    updated_at REAL    NOT NULL
);

-- Retention (RETENTION_DAYS): a job whose result images are being deleted ('pruning') or were ('pruned').
-- A pass marks its jobs, deletes their files, then clears result_paths and marks them pruned; a pass
-- interrupted in the middle is finished by the next one, so no row outlives its files or the reverse.
CREATE TABLE pruned_results (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    state  TEXT    NOT NULL CHECK (state IN ('pruning', 'pruned')),
    at     REAL    NOT NULL
);
CREATE INDEX pruned_results_by_state ON pruned_results (state);
CREATE INDEX jobs_done_by_finished ON jobs (finished_at) WHERE state = 'done';
