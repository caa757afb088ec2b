"""The outbox: the posts the bot still owes its users, written in the same transaction as the change they
announce (db.core), read and marked sent or failed by the delivery loop (cogs.delivery)."""

from __future__ import annotations

from db import clock
from db.base import Conn, QueueBase
from db.models import Notice, NoticeKind
from db.rows import job_from_row


class Outbox(QueueBase):
    async def _add_notice(self, conn: Conn, job_id: int, kind: NoticeKind, body: str) -> None:
        at = clock.now()
        await conn.run(
            "INSERT INTO notices (job_id, kind, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            (job_id, kind.value, body, at, at),
        )

    async def pending_notices(self, limit: int = 20) -> list[Notice]:
        async with self._read() as conn:
            rows = await conn.all(
                "SELECT n.id AS notice_id, n.kind AS notice_kind, n.body AS notice_body, "
                f"n.attempts AS notice_attempts, {self.JOB_COLUMNS} FROM {self.JOB_FROM} "
                "JOIN notices n ON n.job_id = j.id "
                "WHERE n.delivered_at IS NULL AND n.next_attempt_at <= ? ORDER BY n.id LIMIT ?",
                (clock.now(), int(limit)),
            )
        return [
            Notice(
                id=row["notice_id"],
                kind=NoticeKind(row["notice_kind"]),
                job=job_from_row(row),
                attempts=row["notice_attempts"],
                body=row["notice_body"],
            )
            for row in rows
        ]

    async def notice_sent(self, notice_id: int, message_id: int | None) -> None:
        at = clock.now()
        async with self._tx() as conn:
            row = await conn.one(
                "UPDATE notices SET delivered_at = ?, message_id = ?, attempts = attempts + 1 "
                "WHERE id = ? AND delivered_at IS NULL RETURNING job_id, kind",
                (at, message_id, notice_id),
            )
            if row is not None and row["kind"] == NoticeKind.RESULT.value:
                await conn.run(
                    "UPDATE jobs SET result_message_id = ?, delivered_at = ? WHERE id = ?",
                    (message_id, at, row["job_id"]),
                )

    async def notice_failed(self, notice_id: int, error: str, retry_in_s: float, *, give_up: bool = False) -> None:
        at = clock.now()
        async with self._tx() as conn:
            await conn.run(
                "UPDATE notices SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                "delivered_at = CASE WHEN ? THEN CAST(? AS DOUBLE PRECISION) ELSE NULL END "
                "WHERE id = ? AND delivered_at IS NULL",
                (error[:1000], at + retry_in_s, give_up, at, notice_id),
            )
