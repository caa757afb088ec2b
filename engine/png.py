"""PNG bytes with the generation parameters in text chunks (Pillow; no files, no torch).

Where the bytes are stored is the result store's business (db/results.py). The
parameters go in as JSON under "parameters" (METADATA_KEY) and the
prompt also as an iTXt "prompt" chunk, which image viewers show.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from jobrequest import image_seed

METADATA_KEY = "parameters"


def encode_png(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """One PNG with `parameters` (as given) in its text chunks."""
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, ensure_ascii=False, sort_keys=True))
    if "prompt" in parameters:
        info.add_itxt("prompt", str(parameters["prompt"]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def encode_job_pngs(images: Sequence[Image.Image], parameters: dict[str, Any]) -> list[bytes]:
    """The PNGs of one job: image i records its own seed (the job's seed + i) and its index."""
    base_seed = int(parameters.get("seed", 0))
    return [
        encode_png(image, {**parameters, "seed": image_seed(base_seed, index), "index": index})
        for index, image in enumerate(images)
    ]
