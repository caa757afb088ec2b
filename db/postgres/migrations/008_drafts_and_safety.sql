-- Drafts, as on SQLite (db/migrations/009_drafts_and_safety.sql).
ALTER TABLE jobs ADD COLUMN draft BOOLEAN NOT NULL DEFAULT false;
