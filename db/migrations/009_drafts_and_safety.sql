-- A draft is denoised under the step cache (faster, a little less exact); its Finish button queues the same
-- prompt, seed and size without it.
ALTER TABLE jobs ADD COLUMN draft INTEGER NOT NULL DEFAULT 0;
-- The image safety check (engine.safety) found adult content in the job's images: delivery follows the
-- server's /safety mode; the images are kept like any other.
ALTER TABLE jobs ADD COLUMN flagged INTEGER NOT NULL DEFAULT 0;
