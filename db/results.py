"""The result store: where finished images live, and the only code that names, writes and reads them.

On one machine the images are files in OUTPUT_DIR (`FolderResults`); in a cluster they travel
through the database (`db.postgres.results.DatabaseResults`). File names are built from numbers
only, so nothing a user types can steer a path, and a recorded path is read back only if it is a
file directly inside the store's folder. Reading never writes anything.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from db.models import QueueError

if TYPE_CHECKING:
    from db.models import Job

_NAME = re.compile(r"^job\d{7,}_\d+\.png$")


@dataclass(frozen=True)
class ResultFile:
    name: str  # e.g. "job0000042_0.png" (numbers only)
    data: bytes


class UnsafeResult(QueueError):
    """A recorded result path is not a file directly inside OUTPUT_DIR (a tampered row): refused."""


def result_name(job_id: int, index: int) -> str:
    """The file name of image `index` of job `job_id`, from numbers only."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (job_id, index)):
        raise UnsafeResult("result files are named from numeric job ids only")
    return f"job{job_id:07d}_{index}.png"


class ResultStore(Protocol):
    where: str  # where the images are kept, for log lines: a folder, or "the database"

    async def save(self, job_id: int, pngs: Sequence[bytes]) -> list[str]:
        """Write atomically (temp, fsync, rename, dir fsync); return what `complete(result_paths=…)` records.

        Raises OSError (ENOSPC, …) as is: the dispatcher turns a full disk into its requeue-and-hold path."""
        ...

    async def read(self, job: Job, *, count: int | None = None) -> list[ResultFile]:
        """The result images of a done job (its first `count` only, if given). Never writes anything. Raises
        UnsafeResult for a path outside the store (logged by the caller and announced as refused); a missing
        file raises FileNotFoundError."""
        ...

    async def delete(self, job: Job) -> None: ...


class FolderResults:
    """Result PNGs as files directly inside one folder (OUTPUT_DIR), for the single-machine queue."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.where = str(self.output_dir)

    def path(self, job_id: int, index: int) -> Path:
        root = self.output_dir.resolve()
        path = (root / result_name(job_id, index)).resolve()
        if path.parent != root:
            raise UnsafeResult(f"{path} is outside {root}")
        return path

    def check(self, recorded: str | Path) -> Path:
        """The recorded path, if it names a result file directly inside the folder; else UnsafeResult."""
        try:
            path = Path(recorded).resolve()
            inside = path.parent == self.output_dir.resolve()
        except (OSError, ValueError):
            inside = False
        if not inside or not _NAME.match(Path(recorded).name):
            raise UnsafeResult(f"{recorded} is not a result file in {self.output_dir}")
        return path

    async def save(self, job_id: int, pngs: Sequence[bytes]) -> list[str]:
        paths = [self.path(job_id, index) for index in range(len(pngs))]
        await asyncio.to_thread(self._write_all, paths, list(pngs))
        return [str(path) for path in paths]

    def _write_all(self, paths: list[Path], pngs: list[bytes]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for path, data in zip(paths, pngs, strict=True):
            write_atomic(path, data)
        _fsync_dir(self.output_dir)

    async def read(self, job: Job, *, count: int | None = None) -> list[ResultFile]:
        if not job.result_paths:
            raise FileNotFoundError(f"job #{job.id} has no result files")
        paths = [self.check(recorded) for recorded in job.result_paths[:count]]
        return await asyncio.to_thread(lambda: [ResultFile(path.name, path.read_bytes()) for path in paths])

    async def delete(self, job: Job) -> None:
        paths = [self.check(recorded) for recorded in job.result_paths]
        await asyncio.to_thread(lambda: [path.unlink(missing_ok=True) for path in paths])


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: a crash never leaves a truncated PNG that would later be posted."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable; Windows cannot open a directory (its rename is atomic anyway)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
