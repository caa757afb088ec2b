-- The job model of the SQLite queue (db/migrations) on PostgreSQL, for several GPU machines.
-- procrastinate's own tables (procrastinate_jobs, _workers, _events) carry the dispatch: one
-- procrastinate job (a "token") per attempt of a queued job, fetched by the GPU workers in
-- priority order; these tables carry everything the bot shows and owes its users.
-- Times are Unix seconds written by the caller (as in SQLite), so both backends read the same.

CREATE TABLE jobs (
    id                BIGSERIAL PRIMARY KEY,
    kind              TEXT    NOT NULL DEFAULT 'imagine',
    parent_job_id     BIGINT  REFERENCES jobs(id) ON DELETE SET NULL,
    -- who asked, and where to answer
    user_id           BIGINT  NOT NULL,
    user_name         TEXT    NOT NULL DEFAULT '',
    guild_id          BIGINT,
    channel_id        BIGINT  NOT NULL,
    interaction_id    BIGINT,
    status_message_id BIGINT,
    -- the request
    prompt            TEXT    NOT NULL CHECK (length(btrim(prompt)) > 0),
    negative_prompt   TEXT    NOT NULL DEFAULT '',
    width             INTEGER NOT NULL CHECK (width > 0),
    height            INTEGER NOT NULL CHECK (height > 0),
    steps             INTEGER NOT NULL CHECK (steps > 0),
    guidance          DOUBLE PRECISION NOT NULL CHECK (guidance >= 0),
    seed              BIGINT  CHECK (seed IS NULL OR seed >= 0),
    count             INTEGER NOT NULL DEFAULT 1 CHECK (count BETWEEN 1 AND 16),
    -- life cycle
    state             TEXT    NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 3,
    cancel_requested  BOOLEAN NOT NULL DEFAULT false,
    worker_id         TEXT,
    lease_until       DOUBLE PRECISION,
    served_seq        BIGINT,
    -- fairness: the round this job belongs to; its token's priority is -fair_round
    fair_round        INTEGER NOT NULL DEFAULT 0,
    token_id          BIGINT,
    created_at        DOUBLE PRECISION NOT NULL,
    started_at        DOUBLE PRECISION,
    finished_at       DOUBLE PRECISION,
    error             TEXT,
    -- the result (the PNG bytes are in job_images)
    seed_used         BIGINT,
    plan              TEXT,
    timings_json      TEXT,
    image_count       INTEGER NOT NULL DEFAULT 0,
    result_message_id BIGINT,
    delivered_at      DOUBLE PRECISION,
    result_deleted    BOOLEAN NOT NULL DEFAULT false
);

CREATE SEQUENCE jobs_served_seq;
-- claim order of the queued jobs (the same order procrastinate fetches their tokens in)
CREATE INDEX jobs_claim_order ON jobs (fair_round, token_id) WHERE state = 'queued';
CREATE INDEX jobs_active_by_user ON jobs (user_id, id) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_running ON jobs (id) WHERE state = 'running';
CREATE INDEX jobs_by_served_seq ON jobs (served_seq) WHERE served_seq IS NOT NULL;
CREATE INDEX jobs_by_user_created ON jobs (user_id, created_at);
CREATE INDEX jobs_by_user_state ON jobs (user_id, state, id);
CREATE UNIQUE INDEX jobs_by_token ON jobs (token_id) WHERE token_id IS NOT NULL;

-- Live progress of running jobs, written by the GPU workers at every heartbeat
-- (kept apart from jobs so the frequent writes touch a small row).
CREATE TABLE job_progress (
    job_id     BIGINT  PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    step       INTEGER,
    total      INTEGER,
    worker_id  TEXT,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Finished images travel through the database: the GPU machines share no disk with the bot.
CREATE TABLE job_images (
    job_id BIGINT  NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx    INTEGER NOT NULL,
    png    BYTEA   NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- The outbox, as in SQLite: written with the state change it announces.
CREATE TABLE notices (
    id              BIGSERIAL PRIMARY KEY,
    job_id          BIGINT  NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('result', 'failed', 'resumed', 'cancelled')),
    body            TEXT    NOT NULL DEFAULT '',
    created_at      DOUBLE PRECISION NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT,
    delivered_at    DOUBLE PRECISION,
    message_id      BIGINT
);

CREATE INDEX notices_pending ON notices (next_attempt_at, id) WHERE delivered_at IS NULL;

CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE audit (
    id       BIGSERIAL PRIMARY KEY,
    at       DOUBLE PRECISION NOT NULL,
    actor_id BIGINT NOT NULL,
    guild_id BIGINT,
    action   TEXT   NOT NULL,
    detail   TEXT   NOT NULL DEFAULT ''
);

-- What each GPU worker runs and how it is doing, for /status (one row per worker name).
CREATE TABLE gpu_workers (
    name                    TEXT PRIMARY KEY,
    host                    TEXT    NOT NULL DEFAULT '',
    pid                     INTEGER,
    gpu                     TEXT    NOT NULL DEFAULT '',
    plan                    TEXT,
    state                   TEXT    NOT NULL DEFAULT 'starting',
    note                    TEXT,
    max_area                BIGINT,
    queues                  TEXT    NOT NULL DEFAULT '',
    current_job             BIGINT,
    jobs_done               INTEGER NOT NULL DEFAULT 0,
    jobs_failed             INTEGER NOT NULL DEFAULT 0,
    step_s                  DOUBLE PRECISION,
    model_loads             INTEGER NOT NULL DEFAULT 0,
    procrastinate_worker_id BIGINT,
    started_at              DOUBLE PRECISION NOT NULL,
    last_seen               DOUBLE PRECISION NOT NULL
);

-- Names materialised result files uniquely per database, so a reset database never
-- collides with files an earlier one left in OUTPUT_DIR.
INSERT INTO kv (key, value, updated_at)
VALUES ('cluster_id', substr(md5(random()::text || clock_timestamp()::text), 1, 8), extract(epoch FROM now()));
