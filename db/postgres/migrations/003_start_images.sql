-- Image input (issue 13): a job may start from a stored image, denoise only part of the way
-- (strength < 1) or upscale it. Old rows read as text-to-image.
ALTER TABLE jobs ADD COLUMN start_image TEXT CHECK (start_image IS NULL OR length(start_image) = 64);
ALTER TABLE jobs ADD COLUMN strength DOUBLE PRECISION NOT NULL DEFAULT 1.0 CHECK (strength > 0 AND strength <= 1);
ALTER TABLE jobs ADD COLUMN upscale INTEGER NOT NULL DEFAULT 0 CHECK (upscale IN (0, 2, 4));
CREATE INDEX jobs_by_start_image ON jobs (start_image) WHERE start_image IS NOT NULL;

-- The start images themselves, by content hash: the GPU machines share no disk with the bot.
CREATE TABLE start_images (
    digest     TEXT PRIMARY KEY CHECK (length(digest) = 64),
    png        BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
