"""The engine on a tiny random CogView4, loaded through from_pretrained from a temp folder (CPU)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import jobrequest
from engine import plans as plan_catalog
from engine.plans import Measurement
from engine.png import encode_job_pngs
from engine.rules import limits_from_folder
from engine.service import Engine, EngineConfig, Prefetch
from engine.types import JobCancelled, PlanSwitchFailed
from jobrequest import InvalidRequest, JobRequest
from tests.pngs import read_parameters
from tools.tiny import write_tiny_model

# A plan table for the CPU: mixed_resident measured leaner than bf16_resident, like on a GPU.
CPU_TABLE = {
    "bf16_resident": Measurement("bf16_resident", peak_gib=37.0, step_s=0.34, encode_s=0.5, decode_s=0.2),
    "mixed_resident": Measurement("mixed_resident", peak_gib=24.0, step_s=0.34, encode_s=0.5, decode_s=0.2),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-cogview4"))


def request(**changes: object) -> JobRequest:
    values: dict = {"prompt": "a red lighthouse", "width": 64, "height": 64, "steps": 3, "guidance": 4.0, "seed": 7}
    values.update(changes)
    return JobRequest(**values)


async def started_engine(model: Path, **config: object) -> Engine:
    engine = Engine(EngineConfig(model_id=str(model), device="cpu", **config), table=dict(CPU_TABLE))  # type: ignore[arg-type]
    engine.start()
    assert await engine.wait_ready(60)
    assert engine.status().error is None
    return engine


async def test_same_seed_same_pixels_and_metadata_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    engine = await started_engine(tiny_model)
    try:
        first = await engine.generate(request(seed=11))
        again = await engine.generate(request(seed=11))
        other = await engine.generate(request(seed=12))
    finally:
        await engine.stop()
    a, b, c = (np.asarray(r.images[0]) for r in (first, again, other))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert first.seed == 11 and first.plan == "bf16_resident"

    params = {
        "prompt": "a red lighthouse",
        "negative_prompt": "",
        "seed": first.seed,
        "steps": 3,
        "guidance": 4.0,
        "width": 64,
        "height": 64,
        "model": str(tiny_model),
        "plan": first.plan,
    }
    check_saved(first.images, tmp_path, params, a)


def check_saved(images: list, folder: Path, params: dict, pixels: np.ndarray) -> None:
    """The PNG bytes carry the parameters and the exact pixels (file names and atomic writes: db/results)."""
    import io

    from PIL import Image

    (png,) = encode_job_pngs(images, params)
    meta = read_parameters(png)
    assert {k: meta[k] for k in params} == params
    assert meta["index"] == 0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels)
    path = folder / "saved.png"
    path.write_bytes(png)
    assert read_parameters(path) == meta


async def test_explicit_loop_matches_stock_diffusers_pipeline(tiny_model: Path) -> None:
    from diffusers import CogView4Pipeline

    engine = await started_engine(tiny_model)
    try:
        ours = await engine.generate(request(seed=3, steps=4, guidance=5.0))
    finally:
        await engine.stop()
    pipe = CogView4Pipeline.from_pretrained(tiny_model, dtype=torch.bfloat16)
    stock = pipe(
        prompt="a red lighthouse",
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(stock))


async def test_progress_events_arrive_in_order_with_the_right_count(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model)
    events = []
    try:
        result = await engine.generate(request(steps=3, count=2), on_progress=events.append)
        await asyncio.sleep(0.05)  # progress crosses threads with call_soon_threadsafe
    finally:
        await engine.stop()
    assert len(result.images) == 2
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert {e.total for e in events} == {6}
    assert [e.image for e in events] == [1, 1, 1, 2, 2, 2]
    assert events[-1].eta_s == 0
    assert all(e.elapsed_s >= 0 for e in events)


async def test_cancellation_stops_at_the_next_step(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model, step_delay_s=0.05)
    events = []
    stop_after = 3
    try:
        with pytest.raises(JobCancelled):
            await engine.generate(
                request(steps=50),
                on_progress=events.append,
                should_cancel=lambda: len(events) >= stop_after,
            )
        await asyncio.sleep(0.05)
        # The engine is still usable afterwards.
        assert (await engine.generate(request(steps=2))).images
    finally:
        await engine.stop()
    cancelled_run = [e for e in events if e.total == 50]
    assert stop_after <= len(cancelled_run) < 10


async def test_input_rule_violations_generate_nothing(tiny_model: Path) -> None:
    """Every rule is checked once, at the edge (jobrequest.check); the engine itself refuses only
    sizes its model cannot make, and trusts the edge for the rest."""
    engine = await started_engine(tiny_model)
    limits = engine.limits
    assert (limits.native_size, limits.min_size, limits.max_size, limits.multiple) == (64, 32, 128, 32)
    sizes = {
        "multiple of 32": request(width=48),
        "between 32 and 128": request(width=160, height=32),
        "too many pixels": request(width=128, height=96),
    }
    cases = {
        **sizes,
        "Steps must be from 1 to 100": request(steps=101),
        "Guidance must be from 0 to 20": request(guidance=25.0),
        "1 to 4 images": request(count=5),
        "tokens": request(prompt="x " * 600),
    }
    try:
        for expected, bad in cases.items():
            with pytest.raises(InvalidRequest, match=expected):
                jobrequest.check(bad, limits)
        for expected, bad in sizes.items():
            with pytest.raises(InvalidRequest, match=expected):
                await engine.generate(bad)
        assert engine.status().jobs_done == 0
        assert (await engine.generate(request(guidance=25.0, steps=1))).images, "no second check of the rules"
    finally:
        await engine.stop()
    for bad in ({"steps": -1}, {"prompt": "   "}, {"seed": -5}, {"guidance": float("nan")}, {"count": 0}):
        with pytest.raises(InvalidRequest):  # the structure, checked when built
            request(**bad)


def test_limits_come_from_the_model_config(tiny_model: Path) -> None:
    tiny = limits_from_folder(tiny_model)
    assert tiny.size_for_aspect("1:1") == (64, 64)
    assert tiny.size_for_aspect("3:2") == (96, 64)
    from jobrequest import COGVIEW4_LIMITS

    assert (COGVIEW4_LIMITS.native_size, COGVIEW4_LIMITS.min_size, COGVIEW4_LIMITS.max_size) == (1024, 512, 2048)
    assert COGVIEW4_LIMITS.max_area == 2**21
    assert COGVIEW4_LIMITS.size_for_aspect("16:9") == (1376, 768)
    for aspect in ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"):
        w, h = COGVIEW4_LIMITS.size_for_aspect(aspect)
        jobrequest.check(request(width=w, height=h), COGVIEW4_LIMITS)


async def test_event_loop_keeps_ticking_during_generation(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model, step_delay_s=0.05)
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(heartbeat())
    try:
        started = time.monotonic()
        await engine.generate(request(steps=10))
        took = time.monotonic() - started
    finally:
        task.cancel()
        await engine.stop()
    gaps = np.diff(ticks)
    assert took >= 0.5
    assert len(ticks) > took / 0.05, "the loop ran its heartbeat all along"
    assert gaps.max() < 0.25, f"the event loop stalled for {gaps.max():.2f} s"


async def test_simulated_oom_steps_down_to_a_leaner_plan_and_retries(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model)
    transformer = engine.plan_manager.runner.pipe.transformer
    original = transformer.forward
    calls = {"n": 0}

    def exploding_forward(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:  # only the first forward runs out of memory, like a card that is just too small
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(*args, **kwargs)

    transformer.forward = exploding_forward
    try:
        # Without CFG there is no batch of 2 for the runner to split: the OOM reaches the engine.
        result = await engine.generate(request(seed=5, guidance=1.0))
        assert calls["n"] > 1, "the retry ran the transformer again"
        assert result.plan == "mixed_resident"
        assert result.images and result.images[0].size == (64, 64)
        assert any("ran out of memory" in note and "mixed_resident" in note for note in result.notes)
        assert engine.status().plan == "mixed_resident"
    finally:
        transformer.forward = original
        await engine.stop()


async def test_failed_switch_falls_back_to_the_previous_plan(tiny_model: Path, monkeypatch) -> None:
    import engine.loader as loader

    engine = await started_engine(tiny_model)
    real_load = loader.load_text_encoder

    def nf4_broken(folder: Path, quant: str, *args: object) -> object:
        if quant == "nf4":  # e.g. a bitsandbytes build that does not match the installed CUDA
            raise RuntimeError("bitsandbytes: CUDA setup failed (simulated)")
        return real_load(folder, quant, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "load_text_encoder", nf4_broken)
    try:
        with pytest.raises(PlanSwitchFailed, match="Still using bf16_resident"):
            await engine.switch_plan("mixed_resident")
        assert engine.status().plan == "bf16_resident"
        assert engine.status().requested_mode == "auto"
        assert (await engine.generate(request())).plan == "bf16_resident"
        with pytest.raises(PlanSwitchFailed, match="needs an NVIDIA GPU"):
            await engine.switch_plan("nf4_model_offload")
        with pytest.raises(PlanSwitchFailed, match="Unknown memory plan"):
            await engine.switch_plan("turbo")
    finally:
        await engine.stop()


async def test_switch_reloads_only_the_component_whose_quantization_changes(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model)
    try:
        transformer_before = engine.plan_manager.components.transformer
        encoder_before = engine.plan_manager.components.text_encoder
        message = await engine.switch_plan("mixed_resident")
        assert "mixed_resident" in message
        assert engine.plan_manager.components.transformer is transformer_before
        assert engine.plan_manager.components.text_encoder is not encoder_before
        result = await engine.generate(request())
        assert result.plan == "mixed_resident"
    finally:
        await engine.stop()


async def test_lookahead_encodes_queued_prompts_in_one_visit_with_identical_images(tiny_model: Path) -> None:
    prompts = ["a red fox", "a blue whale", "a red fox", "a green hill", "a yellow kite"]
    jobs = [request(prompt=p, seed=i) for i, p in enumerate(prompts)]

    async def run(lookahead: int) -> tuple[list[np.ndarray], int, int]:
        engine = await started_engine(tiny_model)
        try:
            images = []
            for index, job in enumerate(jobs):
                ahead = [
                    Prefetch(f"job{j}", (later.prompt, later.negative_prompt))
                    for j, later in enumerate(jobs[index + 1 : index + 1 + lookahead], start=index + 1)
                ]
                result = await engine.generate(job, holder=f"job{index}", prefetch=ahead)
                images.append(np.asarray(result.images[0]))
            return images, engine.plan_manager.runner.encoder_visits, engine.plan_manager.runner.encoder_calls
        finally:
            await engine.stop()

    plain, plain_visits, plain_calls = await run(0)
    ahead, ahead_visits, ahead_calls = await run(4)
    assert plain_visits == 5
    assert ahead_visits < 5
    assert ahead_calls == len(set(prompts)) + 1, "each distinct text (and the empty negative) is encoded once"
    assert ahead_calls < plain_calls
    for a, b in zip(plain, ahead, strict=True):
        assert np.array_equal(a, b)


async def test_releasing_a_cancelled_jobs_embeddings(tiny_model: Path) -> None:
    engine = await started_engine(tiny_model)
    try:
        await engine.generate(
            request(prompt="now"),
            holder="job1",
            prefetch=[Prefetch("job2", ("second", "")), Prefetch("job3", ("third only", ""))],
        )
        runner = engine.plan_manager.runner
        assert runner.embeddings.has("third only") and runner.embeddings.has("second")
        await engine.release(["job3"])
        assert not runner.embeddings.has("third only")
        assert runner.embeddings.has("second") and runner.embeddings.has(""), "texts job2 still needs stay"
    finally:
        await engine.stop()


def test_nf4_sequential_is_never_attempted() -> None:
    resolved = plan_catalog.resolve("nf4_sequential", has_gpu=True)
    assert resolved.plan.name == "nf4_model_offload"
    assert resolved.note and "Cannot copy out of meta tensor" in resolved.note
    with pytest.raises(plan_catalog.PlanError, match="needs an NVIDIA GPU"):
        plan_catalog.resolve("nf4_sequential", has_gpu=False)


async def test_an_unreachable_model_fails_with_a_message_and_jobs_are_refused(monkeypatch) -> None:
    from engine.types import EngineState, EngineUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine(EngineConfig(model_id="nobody/not-a-model", device="cpu"), table=dict(CPU_TABLE))
    engine.start()
    try:
        assert await engine.wait_ready(60)
        status = engine.status()
        assert status.state is EngineState.FAILED
        assert status.error and "Could not get nobody/not-a-model" in status.error and "MODEL_ID" in status.error
        with pytest.raises(EngineUnavailable, match="not available"):
            await engine.generate(request(width=1024, height=1024))
    finally:
        await engine.stop()
