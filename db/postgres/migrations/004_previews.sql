-- Live previews (issue 14): the newest preview of each running job, written by its heartbeat and read by
-- the status message's editor (queue.preview). One row per job, dropped when the job leaves 'running'.
CREATE TABLE job_previews (
    job_id     BIGINT           PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    image      BYTEA            NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
