-- The requester's Discord locale, as on SQLite (db/migrations/008_job_locale.sql).
ALTER TABLE jobs ADD COLUMN locale TEXT;
