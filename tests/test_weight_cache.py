"""Quantized weights cached on disk: saved then loaded gives the same image; a truncated, tampered
or stale entry is rebuilt with a log line and the job still runs. FP8 storage runs on the CPU; the NF4
transformer needs CUDA (diffusers quantizes transformers with bitsandbytes only on a GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.loader import load_components
from engine.placement import apply_placement
from engine.plans import PLANS
from engine.runner import Runner
from engine.weight_cache import MANIFEST, WeightCache

PLAN = PLANS["fp8_resident"]  # FP8 transformer, NF4 text encoder: both go through the cache


def image(folder: Path, cache_dir: Path) -> np.ndarray:
    from diffusers import CogView4Pipeline

    device = torch.device("cpu")
    c = load_components(folder, PLAN, device, cache_dir=cache_dir)
    pipe = CogView4Pipeline(
        tokenizer=c.tokenizer, text_encoder=c.text_encoder, vae=c.vae, transformer=c.transformer, scheduler=c.scheduler
    )
    apply_placement(pipe, PLAN, device)
    out, _ = Runner(pipe, PLAN, device).generate(
        prompt="a red cat", negative_prompt="", width=64, height=64, steps=3, guidance=5.0, seed=2
    )
    return np.asarray(out)


def entries(cache_dir: Path) -> dict[str, Path]:
    return {p.name.split("-")[0] + "-" + p.name.split("-")[1]: p for p in cache_dir.iterdir() if p.is_dir()}


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    """The first start: quantizes, saves, and makes the reference image."""
    cache_dir = tmp_path_factory.mktemp("qcache")
    return image(tiny_model, cache_dir), cache_dir


def test_first_start_saves_both_quantized_components(reference: tuple[np.ndarray, Path]) -> None:
    _, cache_dir = reference
    found = entries(cache_dir)
    assert set(found) == {"transformer-fp8", "text_encoder-nf4"}
    for entry in found.values():
        assert (entry / MANIFEST).is_file() and WeightCache(cache_dir).problem(entry) is None
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".tmp")], "no half-written entry left"


def test_a_later_start_loads_the_cache_and_makes_the_same_image(
    tiny_model: Path, reference: tuple[np.ndarray, Path], caplog: pytest.LogCaptureFixture
) -> None:
    pixels, cache_dir = reference
    with caplog.at_level(logging.INFO, logger="engine.weight_cache"):
        again = image(tiny_model, cache_dir)
    assert np.array_equal(again, pixels)
    assert sum("from the quantized cache" in r.message for r in caplog.records) == 2
    assert not any("Saved" in r.message for r in caplog.records)


@pytest.mark.parametrize("damage", ["truncate", "tamper", "manifest", "unloadable"])
def test_a_damaged_cache_is_rebuilt_and_the_job_still_runs(
    tiny_model: Path,
    reference: tuple[np.ndarray, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    import shutil

    pixels, source = reference
    cache_dir = tmp_path / "qcache"
    shutil.copytree(source, cache_dir)
    entry = entries(cache_dir)["transformer-fp8"]
    weights = entry / "fp8.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        data[-100] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "manifest":
        (entry / MANIFEST).unlink()
    else:  # whole and matching its manifest, but not loadable: the manifest is rewritten to match
        import json

        weights.write_bytes(b"not a safetensors file")
        manifest = json.loads((entry / MANIFEST).read_text())
        from engine.weight_cache import _sha256

        manifest["files"]["fp8.safetensors"] = {"size": weights.stat().st_size, "sha256": _sha256(weights)}
        (entry / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="engine.weight_cache"):
        assert np.array_equal(image(tiny_model, cache_dir), pixels)
    assert any("unusable" in r.message and "rebuilding" in r.message for r in caplog.records)
    assert WeightCache(cache_dir).problem(entries(cache_dir)["transformer-fp8"]) is None, "rebuilt whole"


def test_a_stale_entry_is_replaced(tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A new model revision (the source files changed) gets a new key; the old entry is removed."""
    import os
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    cache_dir = tmp_path / "qcache"
    first = image(folder, cache_dir)
    old = entries(cache_dir)["transformer-fp8"]
    config = folder / "transformer" / "config.json"
    os.utime(config, (config.stat().st_atime, config.stat().st_mtime + 10))
    with caplog.at_level(logging.INFO, logger="engine.weight_cache"):
        assert np.array_equal(image(folder, cache_dir), first)
    assert not old.exists() and entries(cache_dir)["transformer-fp8"] != old
    assert any("stale" in r.message for r in caplog.records)


def test_an_unwritable_cache_does_not_stop_loading(tiny_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    assert image(tiny_model, blocker / "qcache").shape == (64, 64, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="an NF4 transformer needs CUDA (bitsandbytes in diffusers)")
def test_nf4_transformer_round_trips_through_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    from engine.loader import load_transformer

    device = torch.device("cuda")
    cache = WeightCache(tmp_path)
    built = load_transformer(tiny_model, "nf4", device, True, cache)
    loaded = load_transformer(tiny_model, "nf4", device, True, cache)
    for (name, a), (_, b) in zip(built.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
