"""The engine's parts on their own: the GPU thread, PNG metadata, the generator's bookkeeping and
step-down, the plan manager's choices on a CPU, and the command line's own edge check."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from engine.embeddings import EmbeddingCache
from engine.generator import Generator
from engine.gpu_thread import GpuThread
from engine.plan_manager import PlanManager
from engine.plans import Measurement
from engine.png import encode_job_pngs, encode_png
from engine.runner import Timings
from engine.types import EngineConfig, EngineUnavailable, JobCancelled, OutOfMemory, Progress
from jobrequest import COGVIEW4_LIMITS, JobRequest, ModelLimits
from tests.pngs import read_parameters
from tools.tiny import write_tiny_model

TABLE = {
    "bf16_resident": Measurement("bf16_resident", peak_gib=37.0, step_s=0.34, encode_s=0.5, decode_s=0.2),
    "mixed_resident": Measurement("mixed_resident", peak_gib=24.0, step_s=0.34, encode_s=0.5, decode_s=0.2),
}
LIMITS = ModelLimits.from_sizes(sample_size=8, vae_scale_factor=8, patch_size=2)  # native 64


def request(**changes: object) -> JobRequest:
    values: dict = {"prompt": "a red lighthouse", "width": 64, "height": 64, "steps": 3, "guidance": 4.0, "seed": 7}
    values.update(changes)
    return JobRequest(**values)


# --- GpuThread -------------------------------------------------------------------------------------------
async def test_gpu_thread_runs_commands_in_order_on_one_thread_and_survives_errors() -> None:
    thread = GpuThread()
    with pytest.raises(EngineUnavailable, match="not started"):
        thread.submit(lambda: None)
    thread.start()
    seen: list[tuple[int, str]] = []

    def work(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    def boom() -> None:
        raise RuntimeError("a job's error")

    try:
        futures = [thread.submit(lambda n=n: work(n)) for n in range(5)]
        with pytest.raises(RuntimeError, match="a job's error"):
            await thread.call(boom)
        assert await thread.call(lambda: work(5)) == 10, "the thread survives an error"
        assert [f.result() for f in futures] == [0, 2, 4, 6, 8]
        assert [n for n, _ in seen] == [0, 1, 2, 3, 4, 5]
        assert {name for _, name in seen} == {"gpu-engine"}
    finally:
        queued = thread.submit(lambda: work(6))
        await thread.stop()
    assert queued.result() == 12, "stop lets commands already submitted finish"


# --- PNG ---------------------------------------------------------------------------------------------------
def test_png_metadata_round_trip_with_a_seed_per_image() -> None:
    images = [Image.new("RGB", (8, 8), color) for color in ("red", "blue", "green")]
    parameters = {"prompt": "ein Leuchtturm ✓", "seed": 2**32 - 2, "plan": "bf16_resident", "steps": 3}
    pngs = encode_job_pngs(images, parameters)
    assert [p[:8] for p in pngs] == [b"\x89PNG\r\n\x1a\n"] * 3
    metas = [read_parameters(p) for p in pngs]
    assert [m["seed"] for m in metas] == [2**32 - 2, 2**32 - 1, 0], "image i has seed + i (wrapping)"
    assert [m["index"] for m in metas] == [0, 1, 2]
    assert all(m["prompt"] == "ein Leuchtturm ✓" and m["plan"] == "bf16_resident" for m in metas)
    with Image.open(io.BytesIO(pngs[1])) as image:
        assert image.text["prompt"] == "ein Leuchtturm ✓"  # type: ignore[attr-defined]
        assert image.getpixel((0, 0)) == (0, 0, 255)
    assert read_parameters(encode_png(images[0], {"seed": 5})) == {"seed": 5}, "encode_png writes them as given"


# --- Generator (with a fake plan manager and runner) -----------------------------------------------------
class FakeRunner:
    def __init__(self, plan: str = "bf16_resident", fail: list[BaseException] | None = None) -> None:
        self.plan = SimpleNamespace(name=plan)
        self.embeddings = EmbeddingCache()
        self.fail = fail or []
        self.encoded: list[list[str]] = []

    def encode(self, texts: list[str]) -> None:
        self.encoded.append(texts)
        for text in texts:
            self.embeddings.put(text, text)

    def generate(self, *, steps: int, seed: int, on_step: Any, **_: Any) -> tuple[Any, Timings]:
        if self.fail:
            raise self.fail.pop(0)
        for step in range(1, steps + 1):
            on_step(step, steps)
        return f"image{seed}", Timings(encode_s=0.0, denoise_s=0.1 * steps, decode_s=0.01, steps=steps)


class FakePlans:
    def __init__(self, runner: FakeRunner) -> None:
        self.runner = runner
        self.table = dict(TABLE)
        self.limits = LIMITS
        self.model_loads = 1
        self.oom_recoveries: list[bool] = []
        self.config = EngineConfig(model_id="fake")  # previews off, as in every engine not started by the bot

    @property
    def plan_name(self) -> str:
        return self.runner.plan.name

    def require_runner(self) -> FakeRunner:
        return self.runner

    def step_down_if_tight(self, request: JobRequest) -> str | None:
        return None

    def recover_from_oom(self, *, step_down: bool) -> str | None:
        self.oom_recoveries.append(step_down)
        if not step_down:
            return None
        self.runner.plan = SimpleNamespace(name="mixed_resident")
        self.model_loads += 1
        return "switched to mixed_resident and retried"


def generator(runner: FakeRunner) -> tuple[Generator, FakePlans]:
    plans = FakePlans(runner)
    return Generator(plans), plans  # type: ignore[arg-type]


def test_generator_reports_progress_and_measures_speed_per_plan_placement() -> None:
    gen, plans = generator(FakeRunner())
    events: list[Progress] = []
    assert gen.step_s is None
    assert gen.estimate_seconds(request(steps=10, count=2)) == pytest.approx(2 * (10 * 0.34 + 0.7)), "table"
    result = gen.generate(request(steps=2, count=2, seed=9), events.append, None, "job1", [])
    assert result.images == ["image9", "image10"] and result.seed == 9 and result.plan == "bf16_resident"
    assert [(e.step, e.total, e.image) for e in events] == [(1, 4, 1), (2, 4, 1), (3, 4, 2), (4, 4, 2)]
    assert gen.step_s == pytest.approx(0.1) and gen.jobs_done == 1
    assert gen.estimate_seconds(request(steps=10, width=128, height=64)) == pytest.approx(10 * 0.1 * 2)
    gen.generate(request(steps=2), events.append, None, "job2", [])
    assert gen.step_s == pytest.approx(0.1), "smoothed"
    plans.model_loads += 1  # another plan was placed: its speed is not known yet
    assert gen.step_s is None
    assert not plans.runner.embeddings.has("a red lighthouse"), "a finished job's embeddings are dropped"


def test_generator_encodes_the_lookahead_in_the_same_visit_and_release_drops_it() -> None:
    from engine.types import Prefetch

    gen, plans = generator(FakeRunner())
    ahead = [Prefetch("job2", ("second", "")), Prefetch("job3", ("third", ""))]
    gen.generate(request(negative_prompt=""), lambda _: None, None, "job1", ahead)
    assert plans.runner.encoded == [["a red lighthouse", "", "second", "", "third", ""]]
    gen.release(["job3"])
    assert not plans.runner.embeddings.has("third") and plans.runner.embeddings.has("second")


def test_generator_cancel_and_failures_release_the_jobs_embeddings() -> None:
    gen, plans = generator(FakeRunner())
    with pytest.raises(JobCancelled):
        gen.generate(request(prompt="cancel me"), lambda _: None, lambda: True, "job1", [])
    assert not plans.runner.embeddings.has("cancel me") and gen.jobs_failed == 0
    plans.runner.fail = [RuntimeError("broken")]
    with pytest.raises(RuntimeError, match="broken"):
        gen.generate(request(prompt="breaks"), lambda _: None, None, "job2", [])
    assert not plans.runner.embeddings.has("breaks") and gen.jobs_failed == 1


def test_generator_steps_down_once_after_running_out_of_memory() -> None:
    oom = torch.OutOfMemoryError
    gen, plans = generator(FakeRunner(fail=[oom("simulated")]))
    result = gen.generate(request(), lambda _: None, None, "job1", [])
    assert result.plan == "mixed_resident" and result.notes == ["switched to mixed_resident and retried"]
    assert plans.oom_recoveries == [True]
    plans.runner.fail = [oom("again"), oom("and again")]
    with pytest.raises(OutOfMemory, match=r"ran out of memory \(plan mixed_resident\)"):
        gen.generate(request(prompt="too big"), lambda _: None, None, "job2", [])
    assert plans.oom_recoveries == [True, True, False], "the retry runs once; the second OOM fails the job"
    assert gen.jobs_failed == 1 and not plans.runner.embeddings.has("too big")


# --- PlanManager on a CPU ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-cogview4"))


def test_plan_manager_before_loading(tiny_model: Path) -> None:
    local = PlanManager(EngineConfig(model_id=str(tiny_model), device="cpu"), dict(TABLE))
    assert local.limits.native_size == 64, "a local folder's limits are known before loading"
    remote = PlanManager(EngineConfig(model_id="THUDM/CogView4-6B"), dict(TABLE))
    assert remote.limits == COGVIEW4_LIMITS
    assert remote.plan_name is None and remote.free_gib() is None and remote.max_area() == COGVIEW4_LIMITS.max_area
    with pytest.raises(EngineUnavailable, match="not loaded"):
        remote.require_runner()
    assert remote.leaner("bf16_resident") == ["mixed_resident"], "only plans that can run here"


def test_plan_manager_loads_switches_and_keeps_auto_out_of_step_down_on_a_cpu(tiny_model: Path) -> None:
    plans = PlanManager(EngineConfig(model_id=str(tiny_model), device="cpu"), dict(TABLE))
    plans.load("auto")
    assert plans.loaded.is_set() and plans.error is None
    assert (plans.plan_name, plans.model_loads, plans.device_name) == ("bf16_resident", 1, "CPU")
    assert plans.step_down_if_tight(request(width=128, height=128)) is None, "no GPU: nothing to measure"
    assert plans.max_area() == plans.limits.max_area
    assert plans.switch("bf16_resident") == "Already using plan bf16_resident."
    assert plans.switch("mixed_resident") == "Now using plan mixed_resident."
    assert plans.model_loads == 2
    assert plans.recover_from_oom(step_down=True) is None, "nothing leaner than mixed_resident on a CPU"


# --- Engine facade and the command line -------------------------------------------------------------------
async def test_engine_shows_the_job_it_is_making_and_no_workers(tiny_model: Path) -> None:
    from engine.service import Engine

    engine = Engine(EngineConfig(model_id=str(tiny_model), device="cpu", step_delay_s=0.05), table=dict(TABLE))
    engine.start()
    try:
        assert await engine.wait_ready(60)
        assert engine.workers() == [] and engine.status().current_job is None
        job = asyncio.create_task(engine.generate(request(steps=10), holder=42))
        await asyncio.sleep(0.2)
        assert engine.status().current_job == 42
        await job
        assert engine.status().current_job is None
        await engine.generate(request(steps=1), holder="not a job id")
        assert engine.status().current_job is None
    finally:
        await engine.stop()


def test_cli_generate_checks_every_rule_at_its_own_edge(tiny_model: Path, tmp_path: Path, capsys) -> None:
    from tools.cli import main

    out = tmp_path / "out.png"
    base = ["generate", "a lighthouse", "--model", str(tiny_model), "--device", "cpu", "--out", str(out)]
    assert main([*base, "--steps", "101"]) == 2
    assert "Steps must be from 1 to 100" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--steps", "2", "--seed", "4", "--size", "64x64"]) == 0
    assert read_parameters(out) == {
        "prompt": "a lighthouse",
        "seed": 4,
        "plan": "bf16_resident",
        "steps": 2,
        "index": 0,
    }
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("free_gib", "on_gpu", "expected"),
    [
        (5.32, False, True),  # a 6 GB card: the 4-bit text encoder would not fit while quantizing
        (7.32, False, False),  # an 8 GB card quantizes on the GPU (faster)
        (5.32, True, False),  # a component that lives on the GPU is loaded there
        (None, False, False),  # no CUDA: everything is on the host already
    ],
)
def test_a_small_card_quantizes_the_text_encoder_on_the_host(monkeypatch, free_gib, on_gpu, expected) -> None:
    from engine import device, loader

    monkeypatch.setattr(device, "free_gib", lambda: free_gib)
    assert loader.quantizes_on_host(torch.device("cuda"), on_gpu) is expected
    assert loader.quantizes_on_host(torch.device("cpu"), on_gpu) is False
