-- Start images are kept in a folder next to the queue file (db/inputs.py); retention asks whether any
-- other job still needs one before removing it (db/retention.py).
CREATE INDEX jobs_by_start_image ON jobs (start_image) WHERE start_image IS NOT NULL;
