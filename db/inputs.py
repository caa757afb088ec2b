"""The start-image store: the pictures img2img, Vary, Remix and Upscale jobs start from.

Discord's attachment URLs are signed and expire, so the bytes are stored when the job is queued,
named by their sha256 (the job records only that digest in `JobRequest.start_image`). On one machine
they are files under DATA_DIR/inputs (`FolderInputs`); in a cluster a table of the database
(`db.postgres.inputs.DatabaseInputs`), since the GPU machines share no disk with the bot. A name is
built from a digest that was checked to be 64 hex characters, so nothing a user sends can steer a path.
What is stored here was already decoded and re-encoded as PNG at the edge (`cogs.utils.images`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from db.models import InvalidJob
from db.results import UnsafeResult, _fsync_dir, write_atomic

_DIGEST = re.compile(r"[0-9a-f]{64}")


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """The digest, if it is 64 lowercase hex characters; else InvalidJob (never a path or a URL)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidJob("A start image is named by its sha256 hex digest.")
    return digest


@runtime_checkable
class InputStore(Protocol):
    where: str  # for log lines: a folder, or "the database"

    async def put(self, data: bytes) -> str:
        """Store PNG bytes atomically; return their sha256 hex. Idempotent: the same bytes, the same name."""
        ...

    async def get(self, digest: str) -> bytes:
        """The stored bytes; FileNotFoundError if absent."""
        ...

    async def delete(self, digest: str) -> None:
        """Remove the image (nothing happens if it is absent). Callers check no job still needs it."""
        ...


class FolderInputs:
    """Start images as files `<sha256>.png` directly inside one folder, for the single-machine queue."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.where = str(self.folder)

    def path(self, digest: str) -> Path:
        root = self.folder.resolve()
        path = (root / f"{check_digest(digest)}.png").resolve()
        if path.parent != root:
            raise UnsafeResult(f"{path} is outside {root}")
        return path

    async def put(self, data: bytes) -> str:
        if not data:
            raise InvalidJob("An empty start image cannot be stored.")
        digest = digest_of(data)
        await asyncio.to_thread(self._write, self.path(digest), bytes(data))
        return digest

    def _write(self, path: Path, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size == len(data):
            return  # content-addressed: already there (a torn write never has the right name)
        write_atomic(path, data)
        _fsync_dir(self.folder)

    async def get(self, digest: str) -> bytes:
        path = self.path(digest)
        data = await asyncio.to_thread(path.read_bytes)
        if digest_of(data) != digest:  # a damaged file is as good as missing
            raise FileNotFoundError(f"start image {digest} is damaged")
        return data

    async def delete(self, digest: str) -> None:
        path = self.path(digest)
        await asyncio.to_thread(path.unlink, missing_ok=True)
