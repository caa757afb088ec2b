"""The queue's runtime state (key-value settings such as the paused flag and the /memory plan) and its audit
log of admin actions."""

from __future__ import annotations

from db import clock
from db.base import Conn, QueueBase
from db.models import AuditEntry
from db.rows import audit_from_row


class RuntimeState(QueueBase):
    async def _kv_get(self, conn: Conn, key: str) -> str | None:
        row = await conn.one("SELECT value FROM kv WHERE key = ?", (key,))
        return row["value"] if row else None

    async def kv_get(self, key: str) -> str | None:
        async with self._read() as conn:
            return await self._kv_get(conn, key)

    async def kv_set(self, key: str, value: str) -> None:
        async with self._tx() as conn:
            await self._kv_set(conn, key, value)

    async def _kv_set(self, conn: Conn, key: str, value: str) -> None:
        await conn.run(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, value, clock.now()),
        )

    async def set_paused(self, paused: bool) -> None:
        async with self._tx() as conn:
            await self._kv_set(conn, "paused", "1" if paused else "0")
            if not paused:
                await self._on_resume(conn)
            await self._announce(conn)

    async def is_paused(self) -> bool:
        return await self.kv_get("paused") == "1"

    async def audit(self, actor_id: int, action: str, detail: str = "", *, guild_id: int | None = None) -> None:
        async with self._tx() as conn:
            await conn.run(
                "INSERT INTO audit (at, actor_id, guild_id, action, detail) VALUES (?, ?, ?, ?, ?)",
                (clock.now(), actor_id, guild_id, action, detail[:2000]),
            )

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        async with self._read() as conn:
            rows = await conn.all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (int(limit),))
        return [audit_from_row(row) for row in rows]
