"""The GPU workers of a multi-machine setup as they report themselves (what /status lists)."""

from __future__ import annotations

from typing import Any

from db import clock
from db.postgres.connection import PostgresConnection
from db.workers import WorkerInfo


class WorkerRegistry(PostgresConnection):
    async def report_worker(self, name: str, **fields: Any) -> None:
        """Create or update a worker's row; `last_seen` is now."""
        allowed = {
            "host", "pid", "gpu", "plan", "state", "note", "max_area", "queues", "current_job", "jobs_done",
            "jobs_failed", "step_s", "model_loads", "procrastinate_worker_id", "started_at",
        }  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown worker fields {sorted(unknown)}")
        values = {**fields, "name": name, "last_seen": clock.now()}
        values.setdefault("started_at", values["last_seen"])
        columns = list(values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "name" and (c in fields or c == "last_seen"))

        async def report() -> None:
            async with self._tx() as conn:
                await conn.run(
                    f"INSERT INTO gpu_workers ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                    f"ON CONFLICT (name) DO UPDATE SET {updates}",
                    tuple(values.values()),
                )

        await self._retrying(report)

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers as they reported themselves, except a job no longer running under a worker's
        name (taken back by the reaper, finished, cancelled) is not shown as its current job."""
        async with self._read() as conn:
            rows = await conn.all(
                "SELECT w.*, j.id AS live_job FROM gpu_workers w LEFT JOIN jobs j "
                "ON j.id = w.current_job AND j.state = 'running' AND j.worker_id = w.name ORDER BY w.name"
            )
        return [
            WorkerInfo(
                name=row["name"],
                host=row["host"],
                gpu=row["gpu"],
                state=row["state"],
                plan=row["plan"],
                max_area=row["max_area"],
                jobs_done=row["jobs_done"],
                jobs_failed=row["jobs_failed"],
                step_s=row["step_s"],
                model_loads=row["model_loads"],
                current_job=row["live_job"],
                started_at=row["started_at"],
                last_seen=row["last_seen"],
                pid=row["pid"],
                note=row["note"],
            )
            for row in rows
        ]
