"""Reading back what engine.png wrote: the tests' view of a result PNG (the product only writes them)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from engine.png import METADATA_KEY


def read_parameters(data_or_path: bytes | str | Path) -> dict[str, Any]:
    """The parameters `encode_png` wrote, from PNG bytes or a file."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as image:
        return json.loads(image.text[METADATA_KEY])  # type: ignore[attr-defined]
