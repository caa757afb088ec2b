"""What a new user meets first: `python -m engine generate` with a wrong --out, --plan, model folder, picture or
number; a start without DISCORD_TOKEN; bitsandbytes' optional-kernel hint. Each is one clear sentence, found
before the model loads where the input allows it, with no traceback and no file left behind."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import jobrequest
import settings as settings_module
from engine.rules import limits_from_folder
from settings import MissingToken, load_settings
from tools import cli


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fails the test if the engine is built: these inputs must be refused before the model loads."""
    built: list[object] = []

    class Forbidden:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(args)
            raise AssertionError("the engine was built before the input was checked")

    import engine.service

    monkeypatch.setattr(engine.service, "Engine", Forbidden)
    return built


def generate(tiny_model: Path, *args: str) -> int:
    return cli.main(["generate", "a lighthouse", "--model", str(tiny_model), "--device", "cpu", "--steps", "2", *args])


def picture(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def one_sentence(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("missing/dir/a.png", "does not exist: create it first, or choose another --out"),
        (".", "is a folder: give a file name"),
    ],
    ids=["missing folder", "existing folder"],
)
def test_a_bad_out_is_one_sentence_before_the_model_loads(
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_model_load: list[object],
    out: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert generate(tiny_model, "--out", out) == 2
    captured = capsys.readouterr()
    assert expected in one_sentence(captured.err)
    assert "Loaded" not in captured.out and not no_model_load
    assert list(tmp_path.rglob("*")) == [], "nothing is written"


def test_an_unknown_plan_is_one_sentence_without_a_traceback(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    no_model_load: list[object],
) -> None:
    assert generate(tiny_model, "--plan", "bogus", "--out", str(tmp_path / "a.png")) == 2
    message = one_sentence(capsys.readouterr().err)
    assert message.startswith("Unknown memory plan 'bogus'. Choose auto or one of: ") and "nf4_swap" in message
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


@pytest.mark.parametrize("model", ["/no/such/folder", "./no-such-model", "~/no/such/model"])
def test_a_model_folder_that_does_not_exist_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: list[object], model: str
) -> None:
    assert cli.main(["generate", "x", "--model", model, "--out", str(tmp_path / "a.png")]) == 2
    message = one_sentence(capsys.readouterr().err)
    assert f"The model folder {model} does not exist" in message and "THUDM/CogView4-6B" in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--steps", "500"], "Steps must be from 1 to 100 (got 500)."),
        (["--size", "100x100"], "The width must be a multiple of 32 px (got 100)."),
        (["--guidance", "25"], "Guidance must be from 0 to 20 (got 25)."),
        (["--image", "IMG", "--strength", "0.01"], "Strength must be from 0.05 to 1"),
        (["--image", "IMG", "--strength", "0"], "Strength must be from 0.05 to 1"),
        (["--image", "MISSING"], "Could not read"),
        (["--image", "NOT_A_PICTURE"], "The start image could not be read as a picture."),
        (["--strength", "0.5"], "--strength and --upscale need --image PATH"),
    ],
)
def test_image_strength_steps_and_size_are_checked_before_the_model_loads(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model_load: list[object],
    args: list[str],
    expected: str,
) -> None:
    paths = {
        "IMG": str(picture(tmp_path / "in.png", (64, 64))),
        "MISSING": str(tmp_path / "nope.png"),
        "NOT_A_PICTURE": str(tmp_path / "text.png"),
    }
    (tmp_path / "text.png").write_text("not a picture")
    assert generate(tiny_model, *[paths.get(a, a) for a in args], "--out", str(tmp_path / "a.png")) == 2
    assert expected in one_sentence(capsys.readouterr().err)
    assert not (tmp_path / "a.png").exists()


def test_cli_and_bot_share_the_strength_default_and_limits() -> None:
    args = cli.build_parser().parse_args(["generate", "x"])
    assert args.steps == jobrequest.DEFAULT_STEPS == load_settings(_env_file=None).default_steps
    assert args.guidance == jobrequest.DEFAULT_GUIDANCE == load_settings(_env_file=None).default_guidance
    assert (jobrequest.DEFAULT_STRENGTH, jobrequest.MIN_STRENGTH) == (0.7, 0.05)  # the bot's, now the CLI's too


def saved_parameters(path: Path) -> dict[str, Any]:
    with Image.open(path) as image:
        return {"size": image.size, **json.loads(image.text["parameters"])}


def test_image_to_image_uses_the_shared_default_strength_and_says_the_size(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = picture(tmp_path / "in.png", (64, 32))
    assert generate(tiny_model, "--image", str(start), "--out", str(tmp_path / "a.png")) == 0
    saved = saved_parameters(tmp_path / "a.png")
    assert saved["strength"] == jobrequest.DEFAULT_STRENGTH and saved["size"] == (64, 32)
    assert f"Saved {tmp_path / 'a.png'} (64×32, seed {saved['seed']}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "in.png"], "no .tmp file is left"


def test_an_upscale_makes_the_larger_size_or_says_why(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limits = limits_from_folder(tiny_model)
    small = picture(tmp_path / "small.png", (32, 32))
    assert generate(tiny_model, "--image", str(small), "--upscale", "2", "--out", str(tmp_path / "up.png")) == 0
    output = capsys.readouterr().out
    saved = saved_parameters(tmp_path / "up.png")
    assert saved["size"] == (64, 64) and "Saved" in output and "(64×64," in output and "Note: 32×32" not in output
    assert saved["strength"] == jobrequest.HIRES_STRENGTH, "the PNG records the strength the hires pass ran at"
    # at the model's largest size for that shape, the upscale cannot grow it: the user is told why, up front
    large = picture(tmp_path / "large.png", (64, 64))
    assert generate(tiny_model, "--image", str(large), "--upscale", "2", "--out", str(tmp_path / "up2.png")) == 0
    output = capsys.readouterr().out
    note = jobrequest.upscale_note(64, 64, 2, limits)
    assert note is not None and f"Note: {note}" in output and output.index("Note:") < output.index("Saved")
    assert "64×64 × 2 is made at 64×64" in note and "UPSCALER_MODEL" in note
    assert saved_parameters(tmp_path / "up2.png")["size"] == (64, 64)


def test_strength_with_upscale_is_refused(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: list[object]
) -> None:
    start = picture(tmp_path / "in.png", (32, 32))
    args = ["--image", str(start), "--upscale", "2", "--strength", "0.5", "--out", str(tmp_path / "a.png")]
    assert generate(tiny_model, *args) == 2
    assert "an --upscale re-details at 0.35" in one_sentence(capsys.readouterr().err)


# --- settings: .env next to the program and in the current folder ------------------------------------------
@pytest.fixture
def two_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    program, here = tmp_path / "program", tmp_path / "elsewhere"
    program.mkdir()
    here.mkdir()
    monkeypatch.setattr(settings_module, "PROGRAM_FOLDER", program)
    monkeypatch.chdir(here)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.delenv("DEVICE", raising=False)
    return program, here


def test_env_is_read_next_to_the_program_and_in_the_current_folder(two_folders: tuple[Path, Path]) -> None:
    program, here = two_folders
    (program / ".env").write_text("DISCORD_TOKEN=from-the-program-folder\nDEVICE=cpu\n")
    settings = load_settings()
    assert settings.token() == "from-the-program-folder" and settings.device == "cpu"
    (here / ".env").write_text("DEVICE=cuda\n")
    assert load_settings().device == "cuda", "the current folder's .env wins"


def test_a_missing_token_names_the_folders_looked_in(two_folders: tuple[Path, Path]) -> None:
    program, here = two_folders
    with pytest.raises(MissingToken) as caught:
        load_settings().token()
    message = str(caught.value)
    assert f"looked in {program / '.env'} and {here / '.env'} (no .env file there)" in message
    assert "DISCORD_TOKEN is not set" in message and "discord.com/developers/applications" in message
    (here / ".env").write_text("DEVICE=cpu\n")
    with pytest.raises(MissingToken, match="has no DISCORD_TOKEN line"):
        load_settings().token()


# --- bitsandbytes' optional-kernel hint ----------------------------------------------------------------------
def test_the_kernels_hint_of_bitsandbytes_is_silenced_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    import engine  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        logger.warning("some other warning")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["some other warning"]


# --- doctor without a GPU ------------------------------------------------------------------------------------
def test_doctor_without_a_gpu_says_what_would_happen_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tools.doctor import report

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    doctor = report("THUDM/CogView4-6B", quality="balanced")
    assert "would use: bf16_resident — Everything on the GPU" not in doctor
    (auto,) = [line for line in doctor.splitlines() if line.startswith("auto ")]
    assert auto.startswith("auto (QUALITY=balanced): no CUDA GPU here, so the engine would run bf16_resident on")
    assert "CUDA build of torch" in auto


def test_a_worker_with_a_model_folder_that_does_not_exist_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(settings_module, "PROGRAM_FOLDER", tmp_path)
    monkeypatch.setenv("MODEL_ID", "/no/such/folder")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@localhost/none")
    assert cli.main(["worker"]) == 2
    message = one_sentence(capsys.readouterr().err)
    assert message.startswith("MODEL_ID: The model folder /no/such/folder does not exist")
