"""The one declaration of the `jobs` table's columns, which both schemas are checked against.

SQLite (db/migrations) and PostgreSQL (db/postgres/migrations) each create the table in their
own dialect; tests/test_db_columns.py reads the created tables and compares them with this list.
A new field is added here, in a new numbered migration of each backend, and in `db.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: str  # int | text | real | bool: the portable type both dialects map to their own
    nullable: bool = True


JOB_COLUMNS: tuple[Column, ...] = (
    Column("id", "int", False),
    Column("kind", "text", False),
    Column("parent_job_id", "int"),
    Column("user_id", "int", False),
    Column("user_name", "text", False),
    Column("guild_id", "int"),
    Column("channel_id", "int", False),
    Column("interaction_id", "int"),
    Column("status_message_id", "int"),
    Column("prompt", "text", False),
    Column("negative_prompt", "text", False),
    Column("width", "int", False),
    Column("height", "int", False),
    Column("steps", "int", False),
    Column("guidance", "real", False),
    Column("seed", "int"),
    Column("count", "int", False),
    Column("state", "text", False),
    Column("attempts", "int", False),
    Column("max_attempts", "int", False),
    Column("cancel_requested", "bool", False),
    Column("worker_id", "text"),
    Column("lease_until", "real"),
    Column("served_seq", "int"),
    Column("fair_round", "int", False),
    Column("created_at", "real", False),
    Column("started_at", "real"),
    Column("finished_at", "real"),
    Column("error", "text"),
    Column("seed_used", "int"),
    Column("plan", "text"),
    Column("timings_json", "text"),
    Column("result_paths", "text", False),
    Column("result_message_id", "int"),
    Column("delivered_at", "real"),
    Column("result_deleted", "bool", False),
    Column("start_image", "text"),
    Column("strength", "real", False),
    Column("upscale", "int", False),
    Column("locale", "text"),
    Column("draft", "bool", False),
    Column("flagged", "bool", False),
)

# Where a backend keeps a fact elsewhere (PostgreSQL: progress in job_progress, written at every
# heartbeat) or needs a column of its own for the turn a queued job waits for (see db.fairness).
SQLITE_ONLY: tuple[Column, ...] = (
    Column("progress_step", "int"),
    Column("progress_total", "int"),
    Column("queue_seq", "int"),
)
POSTGRES_ONLY: tuple[Column, ...] = (Column("token_id", "int"),)

# What enqueue writes; every other column starts at its default.
INSERT_COLUMNS: tuple[str, ...] = (
    "kind",
    "parent_job_id",
    "user_id",
    "user_name",
    "guild_id",
    "channel_id",
    "interaction_id",
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance",
    "seed",
    "count",
    "created_at",
    "fair_round",
    "start_image",
    "strength",
    "upscale",
    "locale",
    "draft",
)
