"""The image safety check on the CPU: a tiny random classifier loaded like SAFETY_MODEL, run after decoding and
before anything is stored; its verdict marks the job (and the audit log) when the queue completes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from db.models import Requester
from engine.safety import SafetyChecker
from engine.service import Engine, EngineConfig
from engine.types import EngineUnavailable
from jobrequest import JobRequest
from settings import DEFAULT_SAFETY_MODEL, Settings
from tests.test_engine import CPU_TABLE
from tools.tiny import write_classifier

REQUEST = JobRequest(prompt="a red lighthouse", width=64, height=64, steps=2, guidance=4.0, seed=3)


async def generate(model: Path, **config: object) -> object:
    engine = Engine(EngineConfig(model_id=str(model), device="cpu", **config), table=dict(CPU_TABLE))  # type: ignore[arg-type]
    engine.start()
    try:
        assert await engine.wait_ready(60)
        return await engine.generate(REQUEST)
    finally:
        await engine.stop()


def test_the_threshold_forces_flagged_and_clean(tiny_classifier: Path) -> None:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    checker = SafetyChecker(str(tiny_classifier), torch.device("cpu"), threshold=0.5)
    (score,) = checker.scores([image])
    assert 0 < score < 1
    assert SafetyChecker(str(tiny_classifier), torch.device("cpu"), threshold=0.0).flags([image, image]) == [True] * 2
    assert SafetyChecker(str(tiny_classifier), torch.device("cpu"), threshold=1.0).flags([image]) == [False]


@pytest.mark.parametrize(("threshold", "flagged"), [(0.0, True), (1.0, False)])
async def test_every_job_is_checked_after_decoding(
    tiny_model: Path, tiny_classifier: Path, threshold: float, flagged: bool
) -> None:
    result = await generate(tiny_model, safety_model=str(tiny_classifier), safety_threshold=threshold)
    assert result.flagged is flagged  # type: ignore[attr-defined]
    assert result.timings["safety_s"] > 0  # type: ignore[attr-defined]
    unchecked = await generate(tiny_model)
    assert unchecked.flagged is False and "safety_s" not in unchecked.timings  # type: ignore[attr-defined]


async def test_a_classifier_that_cannot_load_fails_every_job_with_a_clear_reason(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    with pytest.raises(EngineUnavailable, match=r"could not load .*no-such-classifier.*set SAFETY_MODEL"):
        await generate(tiny_model, safety_model=str(tmp_path / "no-such-classifier"))
    pets = write_classifier(tmp_path / "pets")
    config = ViTConfig.from_pretrained(pets)
    config.id2label, config.label2id = {0: "cat", 1: "dog"}, {"cat": 0, "dog": 1}
    ViTForImageClassification(config).save_pretrained(pets)
    with pytest.raises(EngineUnavailable, match=r"its labels \(cat, dog\) name no adult content"):
        await generate(tiny_model, safety_model=str(pets))


def test_safety_model_setting() -> None:
    def safety(value: str) -> str | None:
        return Settings(_env_file=None, safety_model=value).safety_model  # type: ignore[call-arg]

    assert safety("") == DEFAULT_SAFETY_MODEL
    assert safety("  ") == DEFAULT_SAFETY_MODEL
    assert safety("off") is None and safety("OFF") is None
    assert safety(" /models/nsfw ") == "/models/nsfw"
    assert EngineConfig.from_settings(Settings(_env_file=None, safety_model="off")).safety_model is None  # type: ignore[call-arg]


async def test_a_flagged_job_is_marked_and_audited_once_while_it_runs(tmp_path: Path) -> None:
    from db.sqlite_queue import SqliteJobQueue

    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    await queue.open()
    try:
        for flagged in (True, False):
            requester = Requester(user_id=42, channel_id=5, guild_id=6)
            job_id = (await queue.enqueue(requester, REQUEST)).job_id
            job = await queue.claim_next("w1", lease_s=60)
            assert job is not None and job.id == job_id
            if flagged:
                assert await queue.mark_flagged(job_id, "w1") and await queue.mark_flagged(job_id, "w1")
            assert not await queue.mark_flagged(job_id, "w2"), "not this worker's job"
            assert await queue.complete(job_id, "w1", result_paths=[], seed_used=3, plan="p")
            assert (await queue.get_job(job_id)).flagged is flagged  # type: ignore[union-attr]
            assert not await queue.mark_flagged(job_id, "w1"), "no longer running"
        audit = await queue.audit_log()
    finally:
        await queue.close()
    assert [(a.action, a.actor_id, a.guild_id) for a in audit] == [("flagged", 42, 6)]
    assert audit[0].detail == "job #1: the safety check flagged its images"


def test_a_model_folder_with_its_own_classifier_uses_it_by_default(tmp_path: Path) -> None:
    """The tiny smoke-test model brings a classifier that passes every image, so a machine that cannot download
    the default classifier (offline, as in the README's tiny-model run) still posts its images."""
    import subprocess
    import sys

    folder = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "tiny-model", str(folder)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    settings = Settings(_env_file=None, model_id=str(folder), safety_model="")  # type: ignore[call-arg]
    assert settings.safety_model == str(folder / "safety")
    assert Settings(_env_file=None, model_id=str(tmp_path), safety_model="").safety_model == DEFAULT_SAFETY_MODEL  # type: ignore[call-arg]
    assert Settings(_env_file=None, model_id=str(folder), safety_model="off").safety_model is None  # type: ignore[call-arg]
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 120, 90))
    assert SafetyChecker(str(folder / "safety"), torch.device("cpu"), threshold=0.5).flags([image]) == [False]
    assert SafetyChecker(str(folder / "safety"), torch.device("cpu"), threshold=0.0).flags([image]) == [True]
