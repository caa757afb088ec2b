-- Image input (issue 13): a job may start from a stored image (its sha256), re-run part of the schedule
-- (strength, 1.0 = text-to-image) or upscale it (2 or 4). Older rows read as plain text-to-image jobs.
ALTER TABLE jobs ADD COLUMN start_image TEXT;
ALTER TABLE jobs ADD COLUMN strength REAL NOT NULL DEFAULT 1.0 CHECK (strength > 0 AND strength <= 1);
ALTER TABLE jobs ADD COLUMN upscale INTEGER NOT NULL DEFAULT 0 CHECK (upscale IN (0, 2, 4));
