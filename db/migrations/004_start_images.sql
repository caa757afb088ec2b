-- Image input (issue 13): a job may start from a stored image (db/inputs.py, named by its sha256),
-- denoise only part of the way (strength < 1) or upscale it. Old rows read as text-to-image.
ALTER TABLE jobs ADD COLUMN start_image TEXT CHECK (start_image IS NULL OR length(start_image) = 64);
ALTER TABLE jobs ADD COLUMN strength REAL NOT NULL DEFAULT 1.0 CHECK (strength > 0 AND strength <= 1);
ALTER TABLE jobs ADD COLUMN upscale INTEGER NOT NULL DEFAULT 0 CHECK (upscale IN (0, 2, 4));
CREATE INDEX jobs_by_start_image ON jobs (start_image) WHERE start_image IS NOT NULL;
