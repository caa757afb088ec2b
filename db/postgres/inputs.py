"""Start images in the database, for a cluster: any GPU worker can read what the bot stored."""

from __future__ import annotations

from db import clock
from db.inputs import check_digest, digest_of
from db.models import InvalidJob
from db.postgres.results import DatabaseStore


class DatabaseInputs(DatabaseStore):
    """`db.inputs.InputStore` on the start_images table of the PostgreSQL queue."""

    async def put(self, data: bytes) -> str:
        if not data:
            raise InvalidJob("An empty start image cannot be stored.")
        digest = digest_of(data)

        async def store() -> None:
            async with self._tx() as conn:
                await conn.run(
                    "INSERT INTO start_images (digest, png, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (digest) DO NOTHING",
                    (digest, bytes(data), clock.now()),
                )

        await self._retrying(store)
        return digest

    async def get(self, digest: str) -> bytes:
        async with self._read() as conn:
            row = await conn.one("SELECT png FROM start_images WHERE digest = ?", (check_digest(digest),))
        if row is None:
            raise FileNotFoundError(f"no start image {digest}")
        return bytes(row["png"])

    async def delete(self, digest: str) -> None:
        async with self._tx() as conn:
            await conn.run("DELETE FROM start_images WHERE digest = ?", (check_digest(digest),))
