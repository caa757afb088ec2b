"""Live previews in the engine (issue 14): the fitted latent → RGB map, its cache, the previews a job
reports, PREVIEWS=off, and what a preview costs next to a denoising step (tiny model, CPU)."""

from __future__ import annotations

import asyncio
import io
import itertools
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from engine import preview as preview_module
from engine.preview import MAX_SIDE, LatentRGB, Previewer, load_or_fit
from engine.service import Engine, EngineConfig
from engine.types import Progress
from jobrequest import JobRequest
from tests.test_engine import CPU_TABLE
from tools.tiny import write_tiny_model

# A preview is rendered at most once a second (engine.preview.Previewer); each must cost less than this
# fraction of one denoising step of the tiny model on the CPU, where a step is cheaper than anything real.
MAX_FRACTION_OF_A_STEP = 0.5


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-cogview4"))


async def started_engine(model: Path, **config: object) -> Engine:
    engine = Engine(EngineConfig(model_id=str(model), device="cpu", **config), table=dict(CPU_TABLE))  # type: ignore[arg-type]
    engine.start()
    assert await engine.wait_ready(60)
    return engine


def request(**changes: object) -> JobRequest:
    values: dict = {"prompt": "a red lighthouse", "width": 64, "height": 64, "steps": 12, "guidance": 4.0, "seed": 7}
    values.update(changes)
    return JobRequest(**values)


def test_the_map_is_fitted_from_the_vae_and_cached_under_its_fingerprint(tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model / "vae")
    fitted = load_or_fit(vae, torch.device("cpu"), tmp_path)
    cached = list(tmp_path.glob("latent_rgb-*.json"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.tmp"))
    assert len(fitted.weights) == vae.config.latent_channels and len(fitted.bias) == 3
    assert LatentRGB.from_json(cached[0].read_text()) == fitted
    # The same VAE reads the cache; other weights get a map of their own.
    assert load_or_fit(vae, torch.device("cpu"), tmp_path) == fitted
    with torch.no_grad():
        next(vae.parameters()).add_(0.5)
    load_or_fit(vae, torch.device("cpu"), tmp_path)
    assert len(list(tmp_path.glob("latent_rgb-*.json"))) == 2


def test_the_fit_recovers_the_colours_a_linear_vae_encodes() -> None:
    """A VAE whose latents are a linear mix of the colours (plus a scaling factor): the fit inverts it."""
    mix = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))

    class LinearVAE:
        config = SimpleNamespace(scaling_factor=0.7)
        dtype = torch.float32

        def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
            colours = torch.nn.functional.avg_pool2d((pixels + 1) / 2, 8)
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=torch.einsum("nrhw,rc->nchw", colours, mix)))

    fitted = preview_module.fit_latent_rgb(LinearVAE(), torch.device("cpu"))
    colours = torch.rand(5, 3, 4, 4)
    latents = torch.einsum("nrhw,rc->nchw", colours, mix) * 0.7
    predicted = torch.einsum("nchw,cr->nrhw", latents, torch.tensor(fitted.weights))
    predicted += torch.tensor(fitted.bias).view(1, 3, 1, 1)
    assert torch.allclose(predicted, colours, atol=1e-4)


async def test_a_slow_job_reports_small_jpeg_previews_but_not_at_its_last_step(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model, step_delay_s=0.25, previews=True)
    events: list[Progress] = []
    try:
        await engine.generate(request(), on_progress=events.append)
        await asyncio.sleep(0.05)
    finally:
        await engine.stop()
    previews = [e for e in events if e.preview is not None]
    assert len(previews) >= 2  # 12 steps × 0.25 s, one preview a second at most
    assert events[-1].preview is None
    for event in previews:
        image = Image.open(io.BytesIO(event.preview or b""))
        assert image.format == "JPEG" and max(image.size) <= MAX_SIDE
    gaps = [b.elapsed_s - a.elapsed_s for a, b in itertools.pairwise(previews)]
    assert all(gap >= 0.9 for gap in gaps)


async def test_previews_off_does_no_preview_work(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no preview work with PREVIEWS=off")

    monkeypatch.setattr(preview_module, "load_or_fit", refuse)
    monkeypatch.setattr(Previewer, "push", refuse)
    monkeypatch.setattr(Previewer, "render", refuse)
    engine = await started_engine(tiny_model, step_delay_s=0.25, previews=False)
    events: list[Progress] = []
    try:
        await engine.generate(request(steps=6), on_progress=events.append)
        await asyncio.sleep(0.05)
    finally:
        await engine.stop()
    assert len(events) == 6 and all(e.preview is None for e in events)


async def test_a_preview_costs_a_fraction_of_a_step(tiny_model: Path) -> None:
    """The render (map, copy, resize, JPEG) next to a real step of the tiny model at its native size."""
    engine = await started_engine(tiny_model)
    try:
        await engine.generate(request(steps=20))
        runner = engine.plan_manager.runner
        assert runner is not None
        previewer = Previewer(runner.preview_map(None))
        channels = runner.pipe.transformer.config.in_channels
    finally:
        await engine.stop()
    step_s = engine.generator.step_s or 0.0
    latents = torch.randn(1, channels, 8, 8)  # the tiny model's 64 px native size
    previewer.render(latents)  # first call: tensors made once per device
    costs = []
    for _ in range(20):
        started = time.perf_counter()
        previewer.render(latents)
        costs.append(time.perf_counter() - started)
    cost = statistics.median(costs)
    print(f"tiny model on the CPU: step {step_s * 1000:.2f} ms, preview {cost * 1000:.2f} ms")
    assert step_s > 0
    assert cost < MAX_FRACTION_OF_A_STEP * step_s
