"""Start images from users, treated as hostile: fetched only from Discord, decoded here, stored as plain PNG.

Only the attachment Discord delivered in the interaction is fetched (its `url`, on Discord's CDN, or
the API host the bot is pointed at in tests), with no redirects, a timeout and a byte cap while the
bytes arrive. Decoding (Pillow only) accepts PNG, JPEG and WebP by their magic bytes, reads the header
size before any pixel is decoded (decompression bombs), takes the first frame of an animation, applies
the EXIF rotation, flattens alpha on white and turns CMYK, 16-bit and palette images into 8-bit RGB; the
result is re-encoded as a fresh PNG, so nothing the user sent (metadata, trailing bytes, extra frames)
goes further. Every refusal is an `ImageRefused` with a short message; nothing is stored before the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import discord
from PIL import Image, ImageOps

from cogs.utils.checks import Refused
from cogs.utils.i18n import msg
from db.interface import JobQueue
from settings import Settings

DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
FETCH_TIMEOUT_S = 20.0
_CHUNK = 64 * 1024
_MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",)}
UNREADABLE = msg("image.unreadable")


class ImageRefused(Refused):
    """An uploaded image was not accepted; the message says why."""


def sniff_format(data: bytes) -> str:
    """The format named by the first bytes (never the file name or the declared content type)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, prefixes in _MAGIC.items():
        if data.startswith(prefixes):
            return name
    raise ImageRefused(msg("image.format"))


def normalise(data: bytes, *, max_bytes: int, max_pixels: int) -> bytes:
    """Decode hostile bytes into a clean 8-bit RGB PNG, or raise ImageRefused. CPU-bound: run it in a thread."""
    if not data:
        raise ImageRefused(msg("image.empty"))
    if len(data) > max_bytes:
        raise ImageRefused(msg("image.over_mb", mb=f"{max_bytes / 2**20:.0f}"))
    kind = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width < 1 or height < 1:
                    raise ImageRefused(UNREADABLE)
                if width * height > max_pixels:
                    raise ImageRefused(msg("image.pixels", width=width, height=height, limit=max_pixels))
                image.seek(0)  # an animation: its first frame
                image.load()
                return _to_png(_to_rgb(ImageOps.exif_transpose(image)))
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise ImageRefused(msg("image.too_large")) from None
    except Exception:  # Pillow raises many kinds on damaged files (OSError, ValueError, SyntaxError, …)
        raise ImageRefused(UNREADABLE) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: palette and grey widened, 16-bit and float scaled down, CMYK converted, alpha on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.point(lambda v: v * 255).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """Discord's attachment hosts, plus the API host the bot was pointed at (the fake Discord in tests)."""
    hosts = set(DISCORD_CDN_HOSTS)
    if settings.discord_api_base:
        host = urlsplit(str(settings.discord_api_base)).hostname
        if host:
            hosts.add(host)
    return frozenset(hosts)


async def fetch_attachment(attachment: discord.Attachment, settings: Settings) -> bytes:
    """The attachment's bytes from Discord: its own URL only, no redirects, capped while streaming."""
    max_bytes = int(settings.max_input_mb * 2**20)
    if attachment.size > max_bytes:
        raise ImageRefused(msg("image.over_mb", mb=f"{settings.max_input_mb:g}"))
    url = urlsplit(attachment.url)
    if url.hostname not in allowed_hosts(settings) or url.scheme not in ("https", "http"):
        raise ImageRefused(msg("image.not_discord"))
    if url.scheme == "http" and url.hostname in DISCORD_CDN_HOSTS:
        raise ImageRefused(msg("image.not_discord"))
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(attachment.url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise ImageRefused(msg("image.not_handed"))
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise ImageRefused(msg("image.over_mb", mb=f"{settings.max_input_mb:g}"))
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError):
        raise ImageRefused(msg("image.download")) from None


@dataclass(frozen=True)
class StoredImage:
    digest: str  # what JobRequest.start_image records
    width: int
    height: int
    copied: bool = True  # in the input store (an upload); False: a result of ours, started from by reference


def result_reference(data: bytes) -> StoredImage:
    """One of our own result PNGs as a start image, by reference: its digest and size (only the PNG header is
    read), nothing decoded, re-encoded or stored; the dispatcher reads it from the parent job's results. CPU:
    run it in a thread."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return StoredImage(hashlib.sha256(data).hexdigest(), width, height, copied=False)


async def store_start_image(queue: JobQueue, data: bytes, settings: Settings) -> StoredImage:
    """Decode and re-encode the bytes off the event loop, then store them (nothing is stored on a refusal)."""
    png = await asyncio.to_thread(
        normalise, data, max_bytes=int(settings.max_input_mb * 2**20), max_pixels=settings.max_input_pixels
    )
    with Image.open(io.BytesIO(png)) as image:  # our own PNG: only its header is read
        width, height = image.size
    return StoredImage(await queue.inputs.put(png), width, height)


def fit_upload(name: str, data: bytes, limit: int) -> tuple[str, bytes]:
    """A result image that fits Discord's upload limit: as it is if it fits, else re-encoded as high-quality
    WebP, then JPEG at falling quality, then scaled down, so a large result is posted rather than refused.
    CPU-bound: run it in a thread."""
    if len(data) <= limit:
        return name, data
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    stem = name.rsplit(".", 1)[0]
    while True:
        for fmt, quality, suffix in (("WEBP", 92, "webp"), ("JPEG", 90, "jpg"), ("JPEG", 75, "jpg")):
            out = io.BytesIO()
            image.save(out, format=fmt, quality=quality)
            if out.tell() <= limit:
                return f"{stem}.{suffix}", out.getvalue()
        if min(image.size) <= 64:
            raise ValueError(f"{name} cannot be made to fit in {limit} bytes")
        image = image.resize((max(1, image.width * 3 // 4), max(1, image.height * 3 // 4)), Image.Resampling.LANCZOS)
