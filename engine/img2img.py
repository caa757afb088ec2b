"""The start image of an image-to-image or upscale job: decoded, then resized and cropped to a size the
model accepts (jobrequest.fit_size).

The bytes are an upload checked where it came in (its stored PNG in db.inputs) or one of our own results (a
Vary, Remix or Upscale starts from it by reference); this decodes them on the GPU thread and refuses, with a
user-facing message, anything Pillow cannot read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from jobrequest import InvalidRequest, JobRequest, ModelLimits, output_size, strength_used


@dataclass(frozen=True)
class StartImage:
    """What the runner starts from: the image at exactly the size it is made at, and how much to redo."""

    image: Image.Image
    strength: float

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def open_image(data: bytes) -> Image.Image:
    """RGB pixels of the first frame, upright (EXIF orientation applied); InvalidRequest if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")  # transparent parts become white, as a viewer shows them
                background = Image.new("RGB", image.size, (255, 255, 255))
                background.paste(rgba, mask=rgba.getchannel("A"))
                return background
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(code="request.unreadable_image") from exc


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width × height, aspect kept, and crop the overflow evenly from both sides."""
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def start_image(request: JobRequest, data: bytes, limits: ModelLimits) -> StartImage:
    """The start of an image-to-image job (made at the fitted size of the image, whatever the request's
    width and height say), or of a hires upscale (the largest size for its aspect, at HIRES_STRENGTH)."""
    image = open_image(data)
    width, height = output_size(image.width, image.height, request.upscale, limits)
    return StartImage(fit_image(image, width, height), strength_used(request))
