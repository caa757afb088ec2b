-- The durable job queue: one row per /imagine request (or re-roll / variation).
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind              TEXT    NOT NULL DEFAULT 'imagine',
    parent_job_id     INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    -- who asked, and where to answer
    user_id           INTEGER NOT NULL,
    user_name         TEXT    NOT NULL DEFAULT '',
    guild_id          INTEGER,
    channel_id        INTEGER NOT NULL,
    interaction_id    INTEGER,
    status_message_id INTEGER,
    -- the request
    prompt            TEXT    NOT NULL CHECK (length(trim(prompt)) > 0),
    negative_prompt   TEXT    NOT NULL DEFAULT '',
    width             INTEGER NOT NULL CHECK (width > 0),
    height            INTEGER NOT NULL CHECK (height > 0),
    steps             INTEGER NOT NULL CHECK (steps > 0),
    guidance          REAL    NOT NULL CHECK (guidance >= 0),
    seed              INTEGER CHECK (seed IS NULL OR seed >= 0),
    count             INTEGER NOT NULL DEFAULT 1 CHECK (count BETWEEN 1 AND 16),
    -- life cycle
    state             TEXT    NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 3,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    worker_id         TEXT,
    lease_until       REAL,
    served_seq        INTEGER,
    progress_step     INTEGER,
    progress_total    INTEGER,
    created_at        REAL    NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    error             TEXT,
    -- the result
    seed_used         INTEGER,
    plan              TEXT,
    timings_json      TEXT,
    result_paths      TEXT    NOT NULL DEFAULT '[]',
    result_message_id INTEGER,
    delivered_at      REAL,
    result_deleted    INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX jobs_by_state_user ON jobs (state, user_id, id);
CREATE INDEX jobs_by_user_served ON jobs (user_id, served_seq);

-- The outbox: posts the bot still owes a user. A row is written in the same
-- transaction as the state change it announces, and deleted only once Discord
-- confirmed the post (delivered_at set).
CREATE TABLE notices (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('result', 'failed', 'resumed', 'cancelled')),
    body            TEXT    NOT NULL DEFAULT '',
    created_at      REAL    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    delivered_at    REAL,
    message_id      INTEGER
);

CREATE INDEX notices_pending ON notices (delivered_at, next_attempt_at, id);

-- Runtime state that must survive restarts (paused flag, chosen memory plan).
CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);

-- Every admin action, who did it and when.
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL    NOT NULL,
    actor_id   INTEGER NOT NULL,
    guild_id   INTEGER,
    action     TEXT    NOT NULL,
    detail     TEXT    NOT NULL DEFAULT ''
);
