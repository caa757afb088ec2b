-- A draft is denoised under the step cache (faster, a little less exact); its Finish button queues the same
-- prompt, seed and size without it.
ALTER TABLE jobs ADD COLUMN draft INTEGER NOT NULL DEFAULT 0;
