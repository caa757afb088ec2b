"""Write result PNGs atomically, with the generation parameters in PNG text chunks.

A crash mid-write must never leave a truncated PNG that later gets posted: each
file is written to a temp name, fsynced, then renamed into place. File names are
built from the job id alone, so nothing a user types can steer a path outside
OUTPUT_DIR.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

METADATA_KEY = "parameters"


class UnsafePath(ValueError):
    pass


def result_path(output_dir: Path, job_id: int, index: int) -> Path:
    if not isinstance(job_id, int) or not isinstance(index, int) or job_id < 0 or index < 0:
        raise UnsafePath("result files are named from numeric job ids only")
    root = output_dir.resolve()
    path = (root / f"job{job_id:07d}_{index}.png").resolve()
    if path.parent != root:
        raise UnsafePath(f"{path} is outside {root}")
    return path


def inside_output_dir(output_dir: Path, path: str | Path) -> bool:
    """True if `path` names a file directly inside output_dir (checked before posting a file)."""
    try:
        return Path(path).resolve().parent == output_dir.resolve()
    except OSError:
        return False


def save_images(images: Sequence[Image.Image], output_dir: Path, job_id: int, parameters: dict[str, Any]) -> list[str]:
    """Save each image with its own seed in the metadata; returns the paths written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    base_seed = int(parameters.get("seed", 0))
    for index, image in enumerate(images):
        meta = {**parameters, "seed": (base_seed + index) % 2**32, "index": index}
        path = result_path(output_dir, job_id, index)
        _write_atomic(image, path, meta)
        paths.append(str(path))
    return paths


def _write_atomic(image: Image.Image, path: Path, meta: dict[str, Any]) -> None:
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(meta, ensure_ascii=False, sort_keys=True))
    if "prompt" in meta:
        info.add_itxt("prompt", str(meta["prompt"]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open directories; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_parameters(path: str | Path) -> dict[str, Any]:
    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])  # type: ignore[attr-defined]
