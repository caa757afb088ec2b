"""Image-to-image and upscale jobs in the engine (issue 13), on the CPU with the tiny random CogView4.

The tiny model's VAE is random, so it does not reproduce a picture: "strength near 0 gives back the start
image" is checked against the VAE's own round trip of it (decode(encode(image))), which is what a perfect
img2img at strength 0 returns on any VAE.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from db.models import JobState, Requester
from db.results import FolderResults
from db.sqlite_queue import SqliteJobQueue
from dispatch.dispatcher import Dispatcher
from engine.attention import install
from engine.img2img import fit_image, open_image
from engine.plans import CPU_PLANS, Measurement
from engine.runner import Runner, RunnerOptions
from engine.service import Engine, EngineConfig
from engine.types import Progress
from jobrequest import (
    COGVIEW4_LIMITS,
    HIRES_STRENGTH,
    InvalidRequest,
    JobRequest,
    ModelLimits,
    check_size,
    fit_size,
    img2img_steps,
    output_size,
    steps_run,
)
from tests.pngs import read_parameters
from tests.test_batched_cfg import make_runner

TINY_LIMITS = ModelLimits.from_sizes(sample_size=32, vae_scale_factor=2, patch_size=8)  # 32–128 px, as the tiny
TABLE = {"bf16_resident": Measurement("bf16_resident", 37.0, 0.34, 0.5, 0.2)}
ALICE = Requester(user_id=1001, channel_id=55, guild_id=9, user_name="alice")
DIGEST = "5a" * 32


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth picture with structure (gradients and a disc), not noise: resizing keeps it recognisable."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    disc = ((x - width * rng.uniform(0.3, 0.7)) ** 2 + (y - height / 2) ** 2) < (min(width, height) / 3) ** 2
    rgb = np.stack([255 * x / max(1, width - 1), 255 * y / max(1, height - 1), 200 * disc], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def psnr(a: object, b: object) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float((diff**2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# --- the size rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((1024, 1024), (1024, 1024)),  # a valid size stays
        ((768, 1344), (768, 1344)),
        ((1000, 750), (1024, 768)),  # nearest multiples of 32, 4:3 kept
        ((4000, 3000), (1664, 1248)),  # huge: at most 2^21 pixels, 4:3 kept
        ((2048, 2048), (1440, 1440)),  # the largest square within 2^21 pixels
        ((10, 10), (512, 512)),  # tiny: grows to the smallest side
        ((100_000, 10), (2048, 512)),  # beyond 4:1: the widest the model makes, cropped
        ((1, 5000), (512, 2048)),
    ],
)
def test_fit_size_for_cogview4(size: tuple[int, int], fitted: tuple[int, int]) -> None:
    assert fit_size(*size, COGVIEW4_LIMITS) == fitted


@given(st.integers(1, 100_000), st.integers(1, 100_000), st.sampled_from([COGVIEW4_LIMITS, TINY_LIMITS]))
def test_every_fitted_size_is_valid_and_keeps_a_makeable_aspect(width: int, height: int, limits: ModelLimits) -> None:
    w, h = fit_size(width, height, limits)
    check_size(w, h, limits)  # raises if not
    widest = limits.max_size / limits.min_size
    ratio = min(max(width / height, 1 / widest), widest)  # the aspect the model can make closest to the image's
    assert abs(math.log(w / h) - math.log(ratio)) <= math.log(1 + 2 * limits.multiple / limits.min_size)


def test_output_size_of_an_upscale_is_the_largest_for_its_aspect() -> None:
    assert output_size(1024, 1024, 2, COGVIEW4_LIMITS) == (1440, 1440)  # 2× would be 4 MP: capped at 2^21 pixels
    assert output_size(512, 512, 2, COGVIEW4_LIMITS) == (1024, 1024)  # 2× fits
    assert output_size(768, 1344, 4, COGVIEW4_LIMITS) == fit_size(768 * 4, 1344 * 4, COGVIEW4_LIMITS)
    assert output_size(1000, 750, 0, COGVIEW4_LIMITS) == (1024, 768)  # image-to-image: the fit itself


def test_fit_size_refuses_an_empty_image() -> None:
    with pytest.raises(InvalidRequest, match="no pixels"):
        fit_size(0, 10, COGVIEW4_LIMITS)


@pytest.mark.parametrize(("steps", "strength", "run"), [(20, 1.0, 20), (20, 0.99, 20), (20, 0.5, 10), (20, 0.35, 7)])
def test_img2img_runs_the_last_part_of_the_schedule(steps: int, strength: float, run: int) -> None:
    assert img2img_steps(steps, strength) == run


def test_img2img_runs_at_least_one_step() -> None:
    assert img2img_steps(50, 0.001) == 1 and img2img_steps(1, 0.3) == 1


def test_the_eta_counts_the_steps_a_job_runs() -> None:
    assert steps_run(job(steps=10)) == 10
    assert steps_run(job(steps=10, start_image=DIGEST, strength=0.5)) == 5
    assert steps_run(job(steps=10, start_image=DIGEST, upscale=4)) == img2img_steps(10, HIRES_STRENGTH)


# --- decoding the start image ------------------------------------------------------------------------


def test_start_images_of_every_kind_become_upright_rgb() -> None:
    base = picture(40, 20)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    assert np.asarray(open_image(png(rgba))).min() == 255
    assert open_image(png(base.convert("CMYK").convert("RGB"))).mode == "RGB"
    assert open_image(png(base.convert("I;16"))).size == (40, 20)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    base.save(rotated, format="JPEG", exif=exif)
    assert open_image(rotated.getvalue()).size == (20, 40)


@pytest.mark.parametrize("data", [b"", b"not an image", png(picture(8, 8))[:40]], ids=["empty", "text", "truncated"])
def test_unreadable_start_image_is_a_clear_refusal(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="could not be read"):
        open_image(data)


def test_fit_image_crops_evenly_and_keeps_a_fitting_image() -> None:
    image = picture(300, 100)
    assert fit_image(image, 96, 64).size == (96, 64)
    same = picture(64, 32)
    assert fit_image(same, 64, 32) is same


# --- the runner, on every plan that runs on the CPU ------------------------------------------------------


@pytest.fixture(scope="module", params=CPU_PLANS)
def runner(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[Runner]:
    made = make_runner(tiny_model, request.param)
    yield made
    if made.residency is not None:  # a stream plan's copier threads end with the runner
        made.residency.stop_streams()


def make(runner: Runner, strength: float | None, **options: object) -> Image.Image:
    runner.options = RunnerOptions(**options)  # type: ignore[arg-type]
    start = {} if strength is None else {"init_image": picture(96, 64), "strength": strength}
    image, _ = runner.generate(
        prompt="a cat", negative_prompt="", width=96, height=64, steps=10, guidance=5.0, seed=4, **start
    )
    return image


@pytest.mark.parametrize("batched", [False, True], ids=["two passes", "batched CFG"])
def test_strength_one_is_text_to_image_bit_for_bit(runner: Runner, batched: bool) -> None:
    options: dict[str, object] = {"batched_cfg": True, "text_bucket": 64} if batched else {}
    if batched:
        install(runner.pipe.transformer)
    assert np.array_equal(np.asarray(make(runner, 1.0, **options)), np.asarray(make(runner, None, **options)))


def test_strength_near_zero_gives_back_the_start_image(runner: Runner) -> None:
    with torch.inference_mode():
        round_trip = runner._decode(runner._encode_image(picture(96, 64)))
    assert np.asarray(round_trip).std() > 5, "the round trip is a picture, not a flat colour"
    near, half, full = (psnr(make(runner, s), round_trip) for s in (0.02, 0.5, 1.0))
    assert near > 35, f"strength 0.02: {near:.1f} dB from the start image"
    assert near > half > full, (near, half, full)


# --- through the engine ------------------------------------------------------------------------------------


@pytest.fixture
async def engine(tiny_model: Path) -> AsyncIterator[Engine]:
    engine = Engine(EngineConfig(model_id=str(tiny_model), device="cpu"), table=dict(TABLE))
    engine.start()
    assert await engine.wait_ready(60)
    yield engine
    await engine.stop()


def job(**changes: object) -> JobRequest:
    values: dict = {"prompt": "a red lighthouse", "width": 64, "height": 64, "steps": 6, "guidance": 4.0, "seed": 7}
    values.update(changes)
    return JobRequest(**values)


async def test_img2img_is_made_at_the_fitted_size_of_the_start_image(engine: Engine) -> None:
    start = png(picture(300, 200))  # 3:2 → 96×64 for the tiny model, whatever the request's size says
    seen: list[Progress] = []
    result = await engine.generate(job(start_image=DIGEST, strength=1.0), start_image=start, on_progress=seen.append)
    plain = await engine.generate(job(width=96, height=64))
    assert result.images[0].size == (96, 64)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    half = await engine.generate(job(start_image=DIGEST, strength=0.5), start_image=start, on_progress=seen.append)
    await asyncio.sleep(0.05)  # progress crosses back with call_soon_threadsafe
    assert half.images[0].size == (96, 64) and seen[-1].total == 3 == seen[-1].step


async def test_upscale_without_a_model_is_a_hires_pass(engine: Engine) -> None:
    seen: list[Progress] = []
    request = job(start_image=DIGEST, upscale=2, steps=10)
    result = await engine.generate(request, start_image=png(picture(64, 32)), on_progress=seen.append)
    await asyncio.sleep(0.05)
    assert result.images[0].size == (128, 64)  # 2× within the tiny model's largest area
    assert seen[-1].total == img2img_steps(10, HIRES_STRENGTH) == 4  # the last 3.5 of 10 steps


async def test_missing_or_broken_start_image_fails_clearly(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="start image of this job is missing"):
        await engine.generate(job(start_image=DIGEST, strength=0.5))
    with pytest.raises(InvalidRequest, match="could not be read"):
        await engine.generate(job(start_image=DIGEST, strength=0.5), start_image=b"GIF89a garbage")
    assert (await engine.generate(job(steps=2))).images, "the engine still works"


# --- through the dispatcher --------------------------------------------------------------------------------


class MemoryInputs:
    """The db.inputs.InputStore contract, in memory."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    async def put(self, data: bytes) -> str:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        self.stored[digest] = data
        return digest

    async def get(self, digest: str) -> bytes:
        if digest not in self.stored:
            raise FileNotFoundError(digest)
        return self.stored[digest]

    async def delete(self, digest: str) -> None:
        self.stored.pop(digest, None)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: SQLite in the test's folder; else a fresh PostgreSQL database (the cluster's queue)."""
    return request.getfixturevalue("pg_url") if request.param == "postgres" else None


async def test_dispatcher_runs_img2img_from_the_stored_start_image(
    engine: Engine, tmp_path: Path, database_url: str | None
) -> None:
    """As the bot's dispatcher and a cluster worker's (PostgreSQL) run it: the start image comes from the
    queue's input store by its digest; one that is gone fails the job with a message, not a crash."""
    if database_url is None:
        queue: Any = SqliteJobQueue(tmp_path / "queue.sqlite3", results=FolderResults(tmp_path / "out"))
    else:
        from db.postgres import PostgresJobQueue

        queue = PostgresJobQueue(database_url, apply_schema=False)
    await queue.open()
    inputs = MemoryInputs()  # db.inputs' stores are another branch's; the dispatcher needs only the Protocol
    queue.inputs = inputs
    digest = await inputs.put(png(picture(200, 100)))
    dispatcher = Dispatcher(queue, engine, worker_id="w", model_id="tiny", heartbeat_s=0.05, idle_poll_s=0.1)
    try:
        good = await queue.enqueue(ALICE, job(start_image=digest, strength=0.6, width=128, height=64))
        gone = await queue.enqueue(ALICE, job(start_image="ab" * 32, strength=0.6))
        for queued in (good, gone):
            claimed = await queue.claim_next("w", 60)
            assert claimed is not None and claimed.id == queued.job_id
            assert claimed.request.start_image is not None and claimed.request.strength == 0.6
            await dispatcher.process(claimed)
        done, failed = await queue.get_job(good.job_id), await queue.get_job(gone.job_id)
        assert done is not None and done.state is JobState.DONE
        [made] = await queue.results.read(done)
        with Image.open(io.BytesIO(made.data)) as image:
            assert image.size == (128, 64)
        assert read_parameters(made.data)["strength"] == 0.6
        assert failed is not None and failed.state is JobState.FAILED
        assert failed.error is not None and "no longer stored" in failed.error
    finally:
        await queue.close()


# --- an upscaler model ---------------------------------------------------------------------------------------


def test_tiles_are_stitched_without_seams() -> None:
    """A local operation (a 3×3 blur, then 4× nearest) gives the same pixels tiled as in one piece."""
    from engine.upscaler import upscale_tiled

    def model(tile: torch.Tensor) -> torch.Tensor:
        blurred = torch.nn.functional.avg_pool2d(tile, 3, stride=1, padding=1, count_include_pad=False)
        return torch.nn.functional.interpolate(blurred, scale_factor=4, mode="nearest")

    image = picture(300, 270)
    tiles: list[tuple[int, int]] = []
    tiled = upscale_tiled(model, 4, image, 4, lambda done, total: tiles.append((done, total)))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = (model(pixels)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert tiled.size == (1200, 1080) and tiles == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert np.array_equal(np.asarray(tiled), expected)
    assert upscale_tiled(model, 4, image, 2, lambda done, total: None).size == (600, 540)


# --- an upscaler model --------------------------------------------------------------------------------------


async def test_upscaler_model_upscales_in_tiles(tmp_path: Path, tiny_model: Path) -> None:
    try:
        import spandrel
        from spandrel.architectures.ESRGAN import ESRGAN
    except Exception as exc:  # also torchvision without a build for this torch, which fails on import
        pytest.skip(f"spandrel (the `upscale` extra) is not usable here: {exc!r}")
    # A real ESRGAN architecture with random weights, as the tiny CogView4 is: loading and tiling are real.
    weights = tmp_path / "tiny-esrgan.pth"
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict(), weights)
    assert isinstance(spandrel.ModelLoader().load_from_file(str(weights)), spandrel.ImageModelDescriptor)
    engine = Engine(EngineConfig(model_id=str(tiny_model), device="cpu", upscaler_model=weights), table=dict(TABLE))
    engine.start()
    assert await engine.wait_ready(60)
    try:
        seen: list[Progress] = []
        start = png(picture(300, 200))
        result = await engine.generate(job(start_image=DIGEST, upscale=2), start_image=start, on_progress=seen.append)
        assert result.images[0].size == (600, 400)  # the image itself, 2× (the model's 4×, resized)
        await asyncio.sleep(0.05)
        assert seen[-1].total == 2 == seen[-1].step  # 300×200 in 256-pixel tiles
    finally:
        await engine.stop()


# --- the command line ------------------------------------------------------------------------------------


def test_cli_generates_from_an_image_and_upscales(tiny_model: Path, tmp_path: Path, capsys) -> None:
    from tools.cli import main

    start, out = tmp_path / "start.png", tmp_path / "out.png"
    start.write_bytes(png(picture(300, 200)))
    base = ["generate", "a lighthouse", "--model", str(tiny_model), "--device", "cpu", "--steps", "4", "--out"]
    assert main([*base, str(out), "--image", str(start), "--strength", "0.5", "--seed", "3"]) == 0
    with Image.open(out) as made:
        assert made.size == (96, 64)
    assert read_parameters(out)["strength"] == 0.5
    start.write_bytes(png(picture(64, 32)))
    assert main([*base, str(out), "--image", str(start), "--upscale", "2"]) == 0  # hires: no UPSCALER_MODEL
    with Image.open(out) as made:
        assert made.size == (128, 64)
    assert main([*base, str(out), "--strength", "0.5"]) == 2
    assert "need --image" in capsys.readouterr().err
    assert main([*base, str(out), "--image", str(tmp_path / "nope.png")]) == 2
    assert "Could not read" in capsys.readouterr().err
