"""Upscale jobs with an upscaler model (UPSCALER_MODEL: an ESRGAN-family file), run tiled on the GPU thread.

Loaded with spandrel (the `upscale` extra), which recognises the architecture from the weights. Tiles keep
the working memory small whatever the picture's size, so it runs beside any memory plan; each tile is run
with a margin of context that is cut away again, so the seams do not show.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from engine.types import EngineError

TILE = 256  # input pixels a side per tile
MARGIN = 16  # context around each tile, cut from its output


class UpscalerUnavailable(EngineError):
    """The configured upscaler model cannot be used; the message says why."""


class Upscaler:
    def __init__(self, path: Path, device: Any) -> None:
        try:
            import spandrel
        except ImportError:
            raise UpscalerUnavailable(
                "UPSCALER_MODEL is set but spandrel is not installed: pip install '.[upscale]'."
            ) from None
        try:
            model = spandrel.ModelLoader().load_from_file(str(path))
        except (OSError, ValueError, spandrel.UnsupportedModelError) as exc:
            raise UpscalerUnavailable(f"The upscaler model {path.name} could not be loaded ({exc}).") from exc
        if not isinstance(model, spandrel.ImageModelDescriptor) or model.input_channels != 3:
            raise UpscalerUnavailable(f"{path.name} is not an RGB upscaler model.")
        self.model = model.to(device).eval()
        self.device = device
        self.scale = int(model.scale)

    def upscale(self, image: Image.Image, factor: int, on_tile: Callable[[int, int], None]) -> Image.Image:
        """`image` made `factor` times larger: the model's own scale, then resized to the factor asked."""
        return upscale_tiled(lambda tile: self.model(tile.to(self.device)), self.scale, image, factor, on_tile)


def upscale_tiled(
    model: Callable[[Any], Any], scale: int, image: Image.Image, factor: int, on_tile: Callable[[int, int], None]
) -> Image.Image:
    """Run `model` (an RGB tensor in [0, 1] → the same `scale` times larger) over `image` tile by tile, each
    with MARGIN pixels of context cut away from its output, then resize to `factor` times the image."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    _, _, height, width = pixels.shape
    out = torch.zeros(1, 3, height * scale, width * scale)
    tiles = [(y, x) for y in range(0, height, TILE) for x in range(0, width, TILE)]
    with torch.inference_mode():
        for done, (y, x) in enumerate(tiles, start=1):
            top, left = max(0, y - MARGIN), max(0, x - MARGIN)
            bottom, right = min(height, y + TILE + MARGIN), min(width, x + TILE + MARGIN)
            result = model(pixels[:, :, top:bottom, left:right]).float().cpu()
            h, w = min(TILE, height - y), min(TILE, width - x)
            crop = result[:, :, (y - top) * scale : (y - top + h) * scale, (x - left) * scale : (x - left + w) * scale]
            out[:, :, y * scale : (y + h) * scale, x * scale : (x + w) * scale] = crop
            on_tile(done, len(tiles))
    array = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    upscaled = Image.fromarray(array)
    if scale != factor:
        upscaled = upscaled.resize((width * factor, height * factor), Image.Resampling.LANCZOS)
    return upscaled
