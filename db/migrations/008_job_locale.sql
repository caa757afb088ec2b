-- The requester's Discord locale ("zh-CN", "en-US"; NULL for jobs from before it was kept): the job's public
-- posts (status message, result, notices) are written in its language.
ALTER TABLE jobs ADD COLUMN locale TEXT;
