"""Start images of image-to-image and upscale jobs, stored by content hash with the job."""

from __future__ import annotations

from typing import Protocol


class InputStore(Protocol):
    async def put(self, data: bytes) -> str:
        """Store the (normalised PNG) bytes; return their sha256 hex. Idempotent and atomic."""
        ...

    async def get(self, digest: str) -> bytes:
        """The stored bytes; raises FileNotFoundError if absent."""
        ...

    async def delete(self, digest: str) -> None: ...
