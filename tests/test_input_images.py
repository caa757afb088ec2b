"""Hostile start images: every malformed upload is refused with a clear message, nothing crashes, nothing is stored.

Over 200 inputs: truncations, bit flips, wrong magic, decompression bombs, huge or zero dimensions, text named
.png, other formats; and the images that must be accepted (CMYK, 16-bit, alpha, palette, EXIF-rotated,
animated) come out as clean 8-bit RGB PNGs.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from PIL import Image

from cogs.utils.images import UNREADABLE, ImageRefused, fit_upload, normalise, sniff_format, store_start_image
from db.inputs import FolderInputs
from db.interface import JobQueue
from settings import Settings

MAX_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
SETTINGS = Settings(_env_file=None, max_input_mb=10, max_input_pixels=MAX_PIXELS)  # type: ignore[call-arg]
FUZZ = hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def noise(size: tuple[int, int] = (48, 40), mode: str = "RGB", seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    channels = len(mode)
    return Image.frombytes(mode, size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * channels)))


VALID = {fmt: encode(noise(), fmt) for fmt in ("PNG", "JPEG", "WEBP")}


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims any size (a bomb's header, or a zero-size image)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.fixture
def store(tmp_path: Path) -> FolderInputs:
    return FolderInputs(tmp_path / "inputs")


async def refused(store: FolderInputs, data: bytes) -> str:
    """Through the real edge (decode, then store): refused with a short message, and nothing left on disk."""
    queue = cast(JobQueue, SimpleNamespace(inputs=store))
    with pytest.raises(ImageRefused) as caught:
        await store_start_image(queue, data, SETTINGS)
    assert not store.folder.exists() or not any(store.folder.iterdir())
    message = str(caught.value)
    assert 0 < len(message) <= 120 and "Traceback" not in message
    return message


# --- generated hostile inputs (4 × 60 examples) ------------------------------------------------------


@FUZZ
@given(fmt=st.sampled_from(sorted(VALID)), data=st.data())
async def test_truncated_images_are_refused(store: FolderInputs, fmt: str, data: st.DataObject) -> None:
    whole = VALID[fmt]
    cut = data.draw(st.integers(0, len(whole) - 21))  # the last bytes are end markers Pillow may do without
    await refused(store, whole[:cut])


@FUZZ
@given(payload=st.binary(min_size=0, max_size=2048), name=st.sampled_from(["", "x.png", "a.jpg"]))
async def test_random_bytes_are_refused(store: FolderInputs, payload: bytes, name: str) -> None:
    await refused(store, payload)


@FUZZ
@given(
    magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
    tail=st.binary(),
)
async def test_right_magic_wrong_body_is_refused(store: FolderInputs, magic: bytes, tail: bytes) -> None:
    assert await refused(store, magic + tail) == UNREADABLE


@FUZZ
@given(
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
)
async def test_headers_claiming_huge_sizes_are_refused_before_decoding(
    store: FolderInputs, width: int, height: int
) -> None:
    if width * height <= MAX_PIXELS:
        width = MAX_PIXELS // height + 1
    message = await refused(store, png_with_header(width, height, zlib.compress(b"\x00" * 64)))
    assert "too large" in message or message == UNREADABLE


@FUZZ
@given(fmt=st.sampled_from(["PNG", "WEBP"]), data=st.data())
async def test_bit_flips_never_crash(store: FolderInputs, fmt: str, data: st.DataObject) -> None:
    """A flipped bit may still decode (then the result is a clean PNG) or not (then a clear refusal)."""
    whole = bytearray(VALID[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(whole) - 1))
        whole[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        png = normalise(bytes(whole), max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    except ImageRefused as exc:
        assert str(exc)
    else:
        assert decoded(png).mode == "RGB"


# --- named hostile inputs ------------------------------------------------------------------------------

OTHER_FORMATS = {fmt: encode(noise(), fmt) for fmt in ("GIF", "BMP", "TIFF", "ICO", "PPM")}
HOSTILE: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "text named .png": (b"hello, this is not an image\n" * 10, "Only PNG, JPEG or WebP"),
    "html": (b"<html><script>alert(1)</script></html>", "Only PNG, JPEG or WebP"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "Only PNG, JPEG or WebP"),
    "zero width": (png_with_header(0, 10), UNREADABLE),
    "zero height": (png_with_header(10, 0), UNREADABLE),
    "png bomb header 100k²": (png_with_header(100_000, 100_000, zlib.compress(b"\x00" * 1000)), "too large"),
    "one pixel over the cap": (png_with_header(MAX_PIXELS + 1, 1), "too large"),
    "png magic only": (b"\x89PNG\r\n\x1a\n", UNREADABLE),
    "jpeg magic only": (b"\xff\xd8\xff", UNREADABLE),
    "riff not webp": (b"RIFF\x10\x00\x00\x00AVI LIST", "Only PNG, JPEG or WebP"),
    "bad crc": (VALID["PNG"][:30] + bytes([VALID["PNG"][30] ^ 0xFF]) + VALID["PNG"][31:], UNREADABLE),
    **{f"{fmt} file": (data, "Only PNG, JPEG or WebP") for fmt, data in OTHER_FORMATS.items()},
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_named_hostile_inputs_are_refused(store: FolderInputs, name: str) -> None:
    data, expected = HOSTILE[name]
    assert expected in await refused(store, data)


async def test_a_real_decompression_bomb_is_refused(store: FolderInputs) -> None:
    """A valid 8000×8000 PNG (64 MP) compresses to a few hundred KB: refused from its header."""
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")
    assert len(bomb) < 200_000
    assert "too large" in await refused(store, bomb)


async def test_over_the_byte_cap_is_refused(store: FolderInputs) -> None:
    assert "over 10 MB" in await refused(store, VALID["PNG"] + b"\x00" * MAX_BYTES)


# --- what must be accepted ------------------------------------------------------------------------------


def test_formats_are_told_by_their_bytes_not_their_names() -> None:
    assert [sniff_format(VALID[f]) for f in ("PNG", "JPEG", "WEBP")] == ["PNG", "JPEG", "WEBP"]


@pytest.mark.parametrize(
    ("label", "data", "size"),
    [
        ("rgb png", VALID["PNG"], (48, 40)),
        ("jpeg", VALID["JPEG"], (48, 40)),
        ("webp", VALID["WEBP"], (48, 40)),
        ("cmyk jpeg", encode(noise(mode="CMYK"), "JPEG"), (48, 40)),
        ("16-bit grey png", encode(Image.new("I;16", (30, 20), 40000), "PNG"), (30, 20)),
        ("grey + alpha", encode(Image.new("LA", (16, 16), (0, 0)), "PNG"), (16, 16)),
        ("palette", encode(noise().convert("P"), "PNG"), (48, 40)),
        ("lossless webp", encode(noise(), "WEBP", lossless=True), (48, 40)),
    ],
)
async def test_accepted_images_become_clean_rgb_pngs(store: FolderInputs, label: str, data: bytes, size: Any) -> None:
    queue = cast(JobQueue, SimpleNamespace(inputs=store))
    stored = await store_start_image(queue, data, SETTINGS)
    image = decoded(await store.get(stored.digest))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", size), label
    assert (stored.width, stored.height) == size
    assert not image.info.get("exif")


def test_sixteen_bit_keeps_its_brightness() -> None:
    image = decoded(normalise(encode(Image.new("I;16", (4, 4), 65535), "PNG"), max_bytes=MAX_BYTES, max_pixels=100))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_transparent_pixels_are_flattened_on_white() -> None:
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    transparent.putpixel((0, 0), (255, 0, 0, 255))
    image = decoded(normalise(encode(transparent, "PNG"), max_bytes=MAX_BYTES, max_pixels=100))
    assert image.getpixel((1, 1)) == (255, 255, 255) and image.getpixel((0, 0)) == (255, 0, 0)


def test_exif_rotation_is_applied() -> None:
    tall = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    image = decoded(normalise(encode(tall, "JPEG", exif=exif), max_bytes=MAX_BYTES, max_pixels=10_000))
    assert image.size == (20, 40)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    image = decoded(normalise(data, max_bytes=MAX_BYTES, max_pixels=1000))
    assert image.getpixel((5, 5)) == (255, 0, 0)


# --- results over Discord's upload limit --------------------------------------------------------------------


def test_results_that_fit_are_posted_as_they_are() -> None:
    assert fit_upload("job0000001_0.png", VALID["PNG"], 10 * 2**20) == ("job0000001_0.png", VALID["PNG"])


@pytest.mark.parametrize("limit", [2**20, 200_000, 20_000])
def test_a_result_over_the_upload_limit_is_re_encoded_to_fit(limit: int) -> None:
    big = encode(noise((1024, 1024), seed=3), "PNG")
    assert len(big) > 2**20 * 2
    name, data = fit_upload("job0000001_0.png", big, limit)
    assert len(data) <= limit and name.startswith("job0000001_0.") and name.endswith((".webp", ".jpg"))
    image = decoded(data)
    assert image.mode == "RGB" and image.size[0] == image.size[1]
