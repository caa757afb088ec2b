-- Retention asks whether any other job still needs a start image before removing it (db/retention.py).
CREATE INDEX jobs_by_start_image ON jobs (start_image) WHERE start_image IS NOT NULL;

-- The start images themselves, by content hash (db/postgres/inputs.py): the GPU machines share no disk
-- with the bot.
CREATE TABLE start_images (
    digest     TEXT PRIMARY KEY CHECK (length(digest) = 64),
    png        BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
