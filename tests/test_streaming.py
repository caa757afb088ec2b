"""Streamed layers (engine.streaming) on the CPU: the same numbers as resident layers, a pool that never
grows, a cycle that survives a pass cut short and skipped layers, and the streamed plans through the engine
giving the very pixels of the resident ones."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.measurement import GIB
from engine.residency import weight_bytes
from engine.streaming import LayerStream, layer_bytes, spread, stream_layers, stream_slots

CPU = torch.device("cpu")


def stack(count: int = 7, width: int = 48) -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(count)])


def run(layers: nn.ModuleList, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
    for layer in list(layers)[:upto]:
        x = layer(x)
    return x


def test_spread_streams_evenly_and_the_last_layer_first() -> None:
    assert spread(7, 0) == [] and spread(7, 7) == list(range(7))
    assert spread(28, 14) == list(range(1, 28, 2))
    picked = spread(28, 5)
    assert len(picked) == 5 and picked[-1] == 27
    gaps = [b - a for a, b in itertools.pairwise(picked)]
    assert max(gaps) - min(gaps) <= 1


@torch.inference_mode()
def test_streamed_layers_give_the_same_numbers_with_a_pool_that_never_grows() -> None:
    layers = stack()
    x = torch.randn(3, 48)
    want = run(layers, x)
    stream = LayerStream(layers, [1, 3, 5, 6], CPU, pool=3, pin=False)
    pool = [t.data_ptr() for t in stream.pool]
    ring = [b.buffer.data_ptr() for b in stream._ring]
    try:
        for _ in range(6):
            assert torch.equal(run(layers, x), want)
        assert [t.data_ptr() for t in stream.pool] == pool and len(stream.pool) == 3
        assert stream.pool_bytes() == 3 * stream.layer_nbytes + 3 * (stream.pool_bytes() // 3 - stream.layer_nbytes)
        assert stream.copies >= 6 * 4  # every pass copied every streamed layer in (plus the copies ahead)
        assert stream.bytes_per_pass() == 4 * layer_bytes(layers[1])
        # Not packed whole: staged through a ring of pool-many layer buffers, made once like the pool.
        assert [b.buffer.data_ptr() for b in stream._ring] == ring and len(ring) == 3
        assert stream.host_bytes() == 4 * stream.layer_nbytes + sum(b.nbytes for b in stream._ring)
        assert stream.pinned_bytes() == 0  # no CUDA here: nothing to lock
    finally:
        stream.close()
    # Closed: the layers use their host weights again, hooks gone, nothing copied any more.
    copies = stream.copies
    assert torch.equal(run(layers, x), want) and stream.copies == copies
    assert all(p.data_ptr() not in pool for p in layers[1].parameters())


@torch.inference_mode()
def test_a_parked_stream_gives_its_pool_back_and_resumes_with_the_same_numbers() -> None:
    layers = stack()
    x = torch.randn(3, 48)
    want = run(layers, x)
    stream = LayerStream(layers, [0, 2, 4], CPU, pool=2, pin=False)
    try:
        room = stream.pool_bytes()
        stream.park()
        assert stream.parked and stream.pool == [] and stream.parked_bytes() == room
        assert all(p.data_ptr() == h.data_ptr() for p, h in zip(layers[2].parameters(), stream.host[1], strict=True))
        stream.resume()  # by hand (the residency bringing the component back)
        assert not stream.parked and stream.pool_bytes() == room and stream.parked_bytes() == 0
        assert torch.equal(run(layers, x), want)
        stream.park()
        assert torch.equal(run(layers, x), want) and not stream.parked  # a streamed layer that runs resumes it
    finally:
        stream.close()


def test_the_residency_parks_a_stream_with_its_component(monkeypatch: pytest.MonkeyPatch) -> None:
    """A component that leaves the device takes its stream's pool with it, and brings it back when it
    returns: on a small card the VAE's decode gets the pool's room."""
    from engine import residency as residency_module
    from engine.residency import Residency

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = stack(4)
            self.norm = nn.LayerNorm(48)

    encoder, vae = Encoder(), nn.Linear(48, 48)
    stream = LayerStream(encoder.layers, [0, 1, 2, 3], CPU, pool=2, pin=False)
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(residency_module, "available_bytes", lambda device: free["bytes"])
    residency = Residency({"text_encoder": encoder, "vae": vae}, CPU, ram_bytes=None, streams={"text_encoder": stream})
    try:
        residency.bring("text_encoder", 0)  # on the CPU every component starts on "the device"
        assert not stream.parked
        free["bytes"] = 0  # the card is short of room: bringing the VAE evicts the encoder, pool and all
        residency.bring("vae", 1)
        assert stream.parked and stream.pool == [] and not residency.swaps["text_encoder"].on_gpu
        residency.bring("text_encoder", 0)
        assert not stream.parked and len(stream.pool) == 2
    finally:
        residency.strip()


@torch.inference_mode()
def test_a_pass_cut_short_restarts_the_cycle() -> None:
    layers = stack()
    x = torch.randn(2, 48)
    want = run(layers, x)
    stream = LayerStream(layers, [0, 2, 4, 6], CPU, pool=2, pin=False)
    try:
        run(layers, x, upto=3)  # stopped after two streamed layers (an error mid-pass)
        assert torch.equal(run(layers, x), want)
        assert torch.equal(run(layers, x), want)
    finally:
        stream.close()


@torch.inference_mode()
def test_a_failing_copy_is_an_error_in_the_pass_not_a_hang() -> None:
    layers = stack(4)
    stream = LayerStream(layers, [1, 3], CPU, pool=2, pin=False)
    stream.host[1][0] = torch.zeros(3)  # a host copy of the wrong size: its copy fails in the copier
    try:
        with pytest.raises(RuntimeError, match="streaming a layer to the GPU failed"):
            for _ in range(3):
                run(layers, torch.randn(2, 48))
    finally:
        stream.close()


@torch.inference_mode()
def test_a_copier_that_fails_as_it_starts_is_an_error_in_the_pass_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: LayerStream) -> None:
        raise ValueError("no such device")

    monkeypatch.setattr(LayerStream, "_bind_thread", refuse)
    layers = stack(4)
    stream = LayerStream(layers, [1, 3], CPU, pool=2, pin=False)
    try:
        with pytest.raises(RuntimeError, match="no such device"):
            run(layers, torch.randn(2, 48))
    finally:
        stream.close()


@torch.inference_mode()
def test_a_staged_layer_is_read_from_its_host_weights_at_every_pass() -> None:
    """The ring holds a copy only for the pass that needs it: the host weights (a memory-mapped file the OS
    may drop and read again) stay the one source, so a change there reaches the next pass."""
    layers = stack(4)
    x = torch.randn(2, 48)
    stream = LayerStream(layers, [1, 3], CPU, pool=2, pin=False)
    try:
        before = run(layers, x)
        stream.host[0][0].mul_(2)  # layer 1's weight, where the host keeps it
        stream.restart()  # the copies ahead were made from the old bytes
        reference = stack(4)
        reference[1][0].weight.data.mul_(2)
        assert torch.equal(run(layers, x), run(reference, x)) and not torch.equal(run(layers, x), before)
    finally:
        stream.close()
    assert stream._ring == []


def test_only_the_transformer_s_streamed_blocks_are_locked_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a stream plan the transformer's streamed blocks (copied every step) may take the whole budget of
    lockable memory; the text encoder's layers (copied once a prompt) are staged, never locked whole; the swaps
    lock within what the blocks left."""
    from types import SimpleNamespace

    from engine import placement
    from engine.plans import PLANS

    claims: list[tuple[int, int]] = []

    class Claimed:
        def __init__(self, layers: nn.ModuleList, pin_bytes: int) -> None:
            self.locked = 6 * GIB if pin_bytes >= 6 * GIB else 0
            claims.append((len(layers), pin_bytes))

        def pinned_bytes(self) -> int:
            return self.locked

    def claim(layers: nn.ModuleList, device: torch.device, *, pin_bytes: int, **placing: object) -> Claimed:
        return Claimed(layers, pin_bytes)

    budgets: list[int] = []

    class Residency:
        def __init__(self, modules, device, *, ram_bytes, stays_on_host, streams, mapped) -> None:
            budgets.append(sum(s.pinned_bytes() for s in streams.values()))

        def bring(self, name: str, job: int) -> None:
            pass

    monkeypatch.setattr(placement, "stream_layers", claim)
    monkeypatch.setattr(placement, "Residency", Residency)
    encoder = SimpleNamespace(layers=stack(5), get_input_embeddings=lambda: None)
    pipe = SimpleNamespace(
        text_encoder=encoder,
        transformer=SimpleNamespace(transformer_blocks=stack(7)),
        vae=SimpleNamespace(enable_slicing=lambda: None, enable_tiling=lambda: None),
    )
    monkeypatch.setattr(placement, "_to", lambda module, device: None)
    placement.apply_placement(pipe, PLANS["fp8mm_stream"], CPU, ram_bytes=32 * GIB)
    # 32 GiB: 8 GiB may be locked; the blocks take 6 of it, the encoder is offered none.
    assert sorted(claims) == [(5, 0), (7, 8 * GIB)] and budgets == [6 * GIB]


def test_layers_of_different_shapes_are_refused() -> None:
    layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 16)])
    with pytest.raises(ValueError, match="one layout"):
        LayerStream(layers, [0, 1], CPU)


@torch.inference_mode()
def test_without_a_gpu_half_the_layers_stream() -> None:
    layers = stack(6)
    stream = stream_layers(layers, CPU, room_bytes=None, pin_bytes=0)
    assert stream is not None
    try:
        assert len(stream.order) == 3 and not stream.pinned
    finally:
        stream.close()


@pytest.mark.parametrize("kernel", ["fp8mm", "int8mm"])
async def test_a_streamed_plan_makes_the_pixels_of_the_resident_plan(tiny_model: Path, kernel: str) -> None:
    """The engine under `<kernel>_stream` (half the tiny transformer's blocks streamed on the CPU) and under
    `<kernel>_resident`: the same request gives the same pixels, and a second image streams them again."""
    import numpy as np

    from tests.test_engine import request, started_engine

    pixels = {}
    for plan in (f"{kernel}_resident", f"{kernel}_stream"):
        before = set(threading.enumerate())
        engine = await started_engine(tiny_model, memory_mode=plan)
        try:
            results = [await engine.generate(request(seed=9)) for _ in range(2)]
            assert results[0].plan == plan
            runner = engine.plan_manager.runner
            assert runner is not None
            streams = runner.residency.streams if runner.residency is not None else {}
            if plan.endswith("_stream"):  # the transformer's blocks and the text encoder's layers, half each
                for name in ("transformer", "text_encoder"):
                    assert streams[name].copies > 0 and 2 * len(streams[name].order) == len(streams[name].layers)
                # The 4-bit text encoder's scales stream with its weights (none stays on the device for good).
                encoder = streams["text_encoder"]
                layer = encoder.layers[encoder.order[0]]
                scales = [owner.absmax for owner, key in stream_slots(layer) if key == "attr:absmax"]
                scale_bytes = sum(t.numel() * t.element_size() for t in scales)
                assert scales and encoder.layer_nbytes >= weight_bytes(layer) + scale_bytes
            pixels[plan] = [np.asarray(r.images[0]) for r in results]
        finally:
            await engine.stop()
        if plan.endswith("_stream"):  # stopping the engine ends the copier threads
            assert not any(t.name == "layer-stream" for t in set(threading.enumerate()) - before)
    resident, streamed = pixels[f"{kernel}_resident"], pixels[f"{kernel}_stream"]
    assert np.array_equal(resident[0], streamed[0]) and np.array_equal(streamed[0], streamed[1])


def test_streamed_blocks_work_under_the_draft_cache_and_per_block_compile(tiny_model: Path) -> None:
    """A skipped block still takes its turn in the cycle (the image after a draft is the image before it),
    and the stream's hooks run outside a compiled block's graph."""
    import numpy as np

    from tests.test_batched_cfg import make_runner
    from tests.test_draft import ALWAYS_SKIPS, draw

    runner = make_runner(tiny_model, "bf16_resident")
    plain, _, _ = draw(runner, None)
    blocks = runner.pipe.transformer.transformer_blocks
    stream = stream_layers(blocks, CPU, room_bytes=None, pin_bytes=0)
    assert stream is not None
    try:
        assert np.array_equal(draw(runner, None)[0], plain)
        _, passes, skipped = draw(runner, ALWAYS_SKIPS)
        assert skipped == passes - 2 > 0
        assert np.array_equal(draw(runner, None)[0], plain), "the cycle is intact after skipped passes"
        for block in blocks:
            block.compile(dynamic=False, backend="eager")  # dynamo traces the block; no C++ compiler here
        assert np.array_equal(draw(runner, None)[0], plain)
    finally:
        stream.close()
    assert np.array_equal(draw(runner, None)[0], plain)


async def test_host_weights_come_memory_mapped_from_the_cache_with_the_same_pixels(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Under a stream plan with a quantized cache, the components that wait on the host use the cache files
    themselves as their host copy (file-backed), from the first start on, and make the same pixels."""
    import numpy as np

    from engine.weight_cache import map_onto_files
    from tests.test_engine import request, started_engine

    pixels = []
    for cache in (None, tmp_path / "quantized", tmp_path / "quantized"):
        engine = await started_engine(tiny_model, memory_mode="fp8mm_stream", quantized_cache_dir=cache)
        try:
            pixels.append(np.asarray((await engine.generate(request(seed=4))).images[0]))
            components = engine.plan_manager.components
            assert components is not None
            if cache is None:
                assert components.mapped == frozenset()
            else:
                assert components.mapped == {"transformer", "text_encoder"}
                entry = next(cache.glob("transformer-fp8mm-*"))
                assert map_onto_files(components.transformer, entry) > 0
        finally:
            await engine.stop()
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[1], pixels[2])


async def test_a_stream_plan_that_runs_out_of_memory_keeps_fewer_blocks_and_retries(tiny_model: Path) -> None:
    """Out of memory under a stream plan with blocks resident: the same plan is placed again keeping a step's
    working memory more free (more blocks stream), the job is retried, and the user is told."""
    from tests.test_engine import request, started_engine

    engine = await started_engine(tiny_model, memory_mode="fp8mm_stream")
    manager = engine.plan_manager
    calls = {"n": 0}
    original = type(manager.runner.pipe.transformer).forward

    def exploding_forward(self: object, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] <= 2:  # the phase's own retry (the other components evicted) runs out of memory too
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    type(manager.runner.pipe.transformer).forward = exploding_forward  # type: ignore[method-assign]
    try:
        margin = manager._stream_margin_bytes
        result = await engine.generate(request(seed=5, guidance=1.0))
        assert result.plan == "fp8mm_stream" and result.images and calls["n"] > 2
        assert any("keeps fewer transformer blocks on the GPU" in n for n in result.notes)
        assert manager._stream_margin_bytes > margin and manager.model_loads == 2
    finally:
        type(manager.runner.pipe.transformer).forward = original  # type: ignore[method-assign]
        await engine.stop()


@pytest.mark.parametrize(
    ("room_gib", "tile", "work_gib"),
    [(8.0, 1024, 4.0), (4.2, 1024, 4.0), (2.5, 768, 2.25), (1.2, 512, 1.0), (0.5, 512, 1.0)],
)
def test_the_vae_tiles_smaller_only_where_its_own_tile_does_not_fit(
    room_gib: float, tile: int, work_gib: float
) -> None:
    """CogView4's VAE tiles above 1024²; a card that cannot free a 1024² tile's working memory (a 4 GiB card
    streaming its transformer) decodes in the largest smaller tile that fits, 512² where none does."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from engine.plans import PLANS
    from engine.runner import GIB, Runner, RunnerOptions
    from tests.test_batched_cfg import RoomOnly

    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=16, sample_size=1024)
    vae.enable_tiling()
    runner = Runner(SimpleNamespace(vae=vae), PLANS["fp8mm_stream"], CPU, RunnerOptions(vae_work_gib=4.0))
    runner.residency = RoomOnly(int(room_gib * GIB), "vae")
    assert runner._vae_bytes(1024 * 1024) == int(work_gib * GIB)
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (tile, tile // 8)
    runner.residency = RoomOnly(int(8 * GIB), "vae")  # room again: the VAE's own tile comes back
    runner._vae_bytes(1024 * 1024)
    assert vae.tile_sample_min_size == 1024


def test_a_vae_tile_that_runs_out_of_memory_decodes_smaller_and_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VAE's working memory is an estimate: where its tile runs out of memory after all, the image is
    decoded in the next smaller tile, and later images start there."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from engine.plans import PLANS
    from engine.runner import GIB, Runner, RunnerOptions
    from tests.test_batched_cfg import RoomOnly

    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=16, sample_size=1024)
    vae.enable_tiling()
    runner = Runner(SimpleNamespace(vae=vae), PLANS["fp8mm_stream"], CPU, RunnerOptions(vae_work_gib=4.0))
    runner.residency = RoomOnly(int(2.5 * GIB), "vae")
    tried: list[int] = []

    def decode(latents: torch.Tensor) -> str:
        tried.append(vae.tile_sample_min_size)
        if vae.tile_sample_min_size > 512:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "image"

    monkeypatch.setattr(runner, "_decode", decode)
    runner._vae_bytes(1024 * 1024)
    assert runner._decode_shrinking(torch.zeros(1)) == "image" and tried == [768, 512]
    runner.residency = RoomOnly(int(8 * GIB), "vae")  # room for the whole image: still not the tile that failed
    assert runner._vae_bytes(1024 * 1024) == int(1.0 * GIB) and vae.tile_sample_min_size == 512

    def always_short(latents: torch.Tensor) -> str:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(runner, "_decode", always_short)
    with pytest.raises(torch.OutOfMemoryError):  # the smallest tile failing too is the residency's to handle
        runner._decode_shrinking(torch.zeros(1))
    # The VAE's own tile (a card that could hold it) running out: the residency evicts and retries, no shrinking.
    runner.vae_oom_tile = None
    runner._vae_bytes(1024 * 1024)
    assert vae.tile_sample_min_size == 1024
    with pytest.raises(torch.OutOfMemoryError):
        runner._decode_shrinking(torch.zeros(1))
    assert vae.tile_sample_min_size == 1024 and runner.vae_oom_tile is None
