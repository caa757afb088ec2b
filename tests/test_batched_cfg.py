"""The fast path on every plan that runs on the CPU: cond+uncond as one batch gives the same pixels as
two passes, and where a batch of 2 does not fit the runner falls back to two passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.attention import install
from engine.loader import load_components
from engine.placement import apply_placement
from engine.plans import CPU_PLANS, PLANS
from engine.runner import Runner, RunnerOptions

GIB = 1024**3
PROMPTS = ["a cat", "a much longer prompt about a red cat asleep on a sunny windowsill in spring"]


def make_runner(folder: Path, plan: str) -> Runner:
    from diffusers import CogView4Pipeline

    device = torch.device("cpu")
    c = load_components(folder, PLANS[plan], device)
    pipe = CogView4Pipeline(
        tokenizer=c.tokenizer, text_encoder=c.text_encoder, vae=c.vae, transformer=c.transformer, scheduler=c.scheduler
    )
    apply_placement(pipe, PLANS[plan], device)
    return Runner(pipe, PLANS[plan], device)


def pixels(runner: Runner, prompt: str, **options: object) -> np.ndarray:
    runner.options = RunnerOptions(**options)  # type: ignore[arg-type]
    image, _ = runner.generate(prompt=prompt, negative_prompt="", width=64, height=64, steps=3, guidance=5.0, seed=4)
    return np.asarray(image)


@pytest.fixture(scope="module", params=CPU_PLANS)
def runner(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[Runner]:
    made = make_runner(tiny_model, request.param)
    yield made
    if made.residency is not None:  # a stream plan's copier threads end with the runner
        made.residency.stop_streams()


def test_every_cpu_plan_has_the_fast_path() -> None:
    assert all(PLANS[name].fast for name in CPU_PLANS)
    assert {"bf16_resident", "mixed_resident", "fp8_resident"} <= set(CPU_PLANS), "bf16, NF4 and FP8 weights"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_one_batch_gives_the_same_pixels_as_two_passes(runner: Runner, prompt: str) -> None:
    """Bit-identical on the CPU: each row of the batch runs the very kernels its pass runs alone."""
    plain = pixels(runner, prompt)
    install(runner.pipe.transformer)
    assert np.array_equal(pixels(runner, prompt, batched_cfg=True, text_bucket=64), plain), runner.plan.name
    assert runner.unbatched_steps == 0


def test_fp8_plan_stores_the_transformer_in_8_bits(tiny_model: Path) -> None:
    runner = make_runner(tiny_model, "fp8_resident")
    transformer = runner.pipe.transformer
    stored = {p.dtype for p in transformer.transformer_blocks.parameters()}
    assert torch.float8_e4m3fn in stored
    assert transformer.dtype == torch.bfloat16, "computes in bf16: latents are not cast to 8 bits"


def test_a_batch_that_runs_out_of_memory_falls_back_to_two_passes(tiny_model: Path) -> None:
    runner = make_runner(tiny_model, "bf16_resident")
    plain = pixels(runner, PROMPTS[1])
    install(runner.pipe.transformer)
    transformer = runner.pipe.transformer
    forward = transformer.forward
    batches = []

    def forward_without_room_for_two(*args: object, **kwargs: torch.Tensor) -> object:
        if kwargs["hidden_states"].shape[0] == 2:
            batches.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    transformer.forward = forward_without_room_for_two
    assert np.array_equal(pixels(runner, PROMPTS[1], batched_cfg=True, text_bucket=64), plain)
    assert len(batches) == 1 and runner.unbatched_steps == 3
    assert runner.batch_oom_area == 64 * 64
    # Remembered: the next job of this size or larger runs two passes without trying a batch again.
    assert np.array_equal(pixels(runner, PROMPTS[1], batched_cfg=True, text_bucket=64), plain)
    assert len(batches) == 1 and runner.unbatched_steps == 6
    assert runner.batch_fits(48 * 48)


class RoomOnly:
    """A swap plan's residency reduced to the room it reports for one component's phase."""

    def __init__(self, room: int, component: str = "transformer") -> None:
        self.room = room
        self.component = component

    def room_bytes(self, name: str) -> int:
        assert name == self.component
        return self.room


@pytest.mark.parametrize(
    ("room_gib", "work_gib", "side", "fits"),
    [
        (8.0, 2.0, 1024, True),  # 2 passes x 2 GiB at 1 megapixel
        (3.9, 2.0, 1024, False),
        (3.9, 0.9, 1024, True),  # a measured, smaller working set
        (3.9, 0.9, 2048, False),  # 4 megapixels
        (0.0, 2.0, 1024, False),
    ],
)
def test_a_batch_of_two_is_run_only_where_it_fits(room_gib: float, work_gib: float, side: int, fits: bool) -> None:
    runner = Runner(None, PLANS["nf4_swap"], torch.device("cuda"), RunnerOptions(work_gib=work_gib))
    runner.residency = RoomOnly(int(room_gib * GIB))
    assert runner.batch_fits(side * side) is fits


class MeterReading:
    """A CUDA memory meter whose step always reserved `used` bytes beyond the weights."""

    def __init__(self, used: int) -> None:
        self.reading = used
        self.starts = 0

    def start(self) -> None:
        self.starts += 1

    def used(self) -> int:
        return self.reading


@pytest.mark.parametrize("batched", [True, False])
def test_the_first_step_measures_a_pass_and_later_batches_are_decided_by_it(tiny_model: Path, batched: bool) -> None:
    runner = make_runner(tiny_model, "bf16_resident")
    install(runner.pipe.transformer)
    images_in_step = 2 if batched else 1
    meter = MeterReading(int(0.3 * GIB * images_in_step * 64 * 64 / (1024 * 1024)))  # 0.3 GiB/MP per image
    runner.pass_memory = meter  # type: ignore[assignment]
    pixels(runner, PROMPTS[0], batched_cfg=batched, text_bucket=64)
    assert meter.starts == 1
    assert runner.measured_work_gib == pytest.approx(0.3, rel=1e-3)
    pixels(runner, PROMPTS[1], batched_cfg=batched, text_bucket=64)
    assert meter.starts == 1, "measured once, on the first job"
    # Two passes of 0.3 GiB fit 1 GiB of room at one megapixel; the cautious estimate (2 GiB a pass) does not.
    runner.device = torch.device("cuda")
    runner.residency = RoomOnly(1 * GIB)
    assert runner.batch_fits(1024 * 1024) and not runner.batch_fits(2048 * 2048)
    runner.measured_work_gib = None
    assert not runner.batch_fits(1024 * 1024)


def test_a_warm_up_whose_measurement_allows_a_batch_also_compiles_the_batch(tiny_model: Path) -> None:
    runner = make_runner(tiny_model, "bf16_resident")
    install(runner.pipe.transformer)
    runner.options = RunnerOptions(batched_cfg=True, text_bucket=64)
    runner.pass_memory = MeterReading(1)  # type: ignore[assignment]
    runner.batch_fits = lambda area: runner.measured_work_gib is not None  # type: ignore[method-assign]
    generate = runner.generate
    batch_sizes: list[bool] = []

    def counted(**kwargs: object) -> object:
        batch_sizes.append(runner.batch_fits(64 * 64))
        return generate(**kwargs)  # type: ignore[arg-type]

    runner.generate = counted  # type: ignore[method-assign]
    runner.warm_up(64)
    assert batch_sizes == [False, True], "two passes first (the cautious estimate), then the measured batch"
    runner.warm_up(64)
    assert batch_sizes == [False, True, True]


def test_resident_plans_use_the_free_vram(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.residency

    monkeypatch.setattr(engine.residency, "available_bytes", lambda device: 3 * GIB)
    runner = Runner(None, PLANS["fp8_resident"], torch.device("cuda"), RunnerOptions(work_gib=1.0))
    assert runner.batch_fits(1024 * 1024) and not runner.batch_fits(1536 * 1536)
