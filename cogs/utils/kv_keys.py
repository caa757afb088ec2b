"""The keys under which the cogs keep a setting in the queue's key-value store (`JobQueue.kv_get` / `kv_set`)."""

from __future__ import annotations

# /memory remembers the plan an admin chose under this key; the launcher reads it at start.
MEMORY_KEY = "memory_mode"


def spoilers_key(guild_id: int) -> str:
    """/spoilers remembers under this key that a server's results are posted as spoilers."""
    return f"spoilers:{guild_id}"


def drafts_key(guild_id: int) -> str:
    """/drafts remembers under this key that a server's /imagine makes drafts unless asked otherwise."""
    return f"drafts:{guild_id}"


def safety_key(guild_id: int) -> str:
    """/safety remembers a server's mode for flagged results under this key (cogs.utils.safety.MODES)."""
    return f"safety:{guild_id}"
