-- Result images are saved through the result store (db/postgres/results.py) before `complete`,
-- which records their names in result_paths as on SQLite (db/columns.py declares both tables).
ALTER TABLE jobs ADD COLUMN result_paths TEXT NOT NULL DEFAULT '[]';
UPDATE jobs SET result_paths = (
    SELECT json_agg('job' || repeat('0', greatest(0, 7 - length(jobs.id::text))) || jobs.id::text || '_' || i || '.png' ORDER BY i)::text
    FROM generate_series(0, jobs.image_count - 1) AS i
) WHERE image_count > 0;
ALTER TABLE jobs DROP COLUMN image_count;

-- Result files are no longer written into the bot's OUTPUT_DIR, so they need no per-database prefix.
DELETE FROM kv WHERE key = 'cluster_id';
