-- Drafts and the safety check's mark, as on SQLite (db/migrations/009_drafts_and_safety.sql).
ALTER TABLE jobs ADD COLUMN draft BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN flagged BOOLEAN NOT NULL DEFAULT false;
