"""Result images that came through the database become files in the bot's OUTPUT_DIR.

The delivery loop and /show post files from OUTPUT_DIR (as with the local engine), so
the bot writes each image once, atomically, under a name built from numbers only: the
database's cluster id (a reset database never reuses an old file) and the job number.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_CLUSTER_ID = re.compile(r"^[0-9a-f]{1,16}$")


def result_file(output_dir: Path, cluster_id: str, job_id: int, index: int) -> Path:
    if not _CLUSTER_ID.match(cluster_id) or not isinstance(job_id, int) or not isinstance(index, int):
        raise ValueError("result files are named from the cluster id and numeric job ids only")
    if job_id < 0 or index < 0:
        raise ValueError("job ids and image indexes are not negative")
    return output_dir.resolve() / f"c{cluster_id}-job{job_id:07d}_{index}.png"


def missing(paths: list[Path]) -> list[Path]:
    return [path for path in paths if not path.is_file()]


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: a crash never leaves a truncated PNG that would be posted."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def read_all(paths: list[str]) -> list[bytes]:
    return [Path(path).read_bytes() for path in paths]
