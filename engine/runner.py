"""The synchronous core that the GPU thread drives: encode, denoise, decode — explicit steps.

The denoising loop is CogView4Pipeline.__call__'s (diffusers 0.42), written out so
that every phase is timed, cancellation stops at a step boundary without decoding a
half-finished image, prompt embeddings can come from a look-ahead cache, and the fast
path can batch the conditional and unconditional passes. It calls the pipeline's
private `_get_glm_embeds`, so diffusers is pinned below its next minor release; a test
checks that it produces the very same pixels as the stock pipeline.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from engine.embeddings import EmbeddingCache
from engine.measurement import GIB
from engine.plans import Plan
from jobrequest import img2img_steps, uses_cfg

log = logging.getLogger(__name__)
T = TypeVar("T")
# The VAE's tiles a side, in pixels, where its own tile does not fit the card, largest first. On the full-size
# VAE a 1024² image decoded in 768² tiles is 43 dB from its whole decode (2 GiB of working memory in bf16), in
# 512² tiles 36 dB (0.6 GiB): the tile sizes that split the image unevenly lose more at their seams.
SMALL_VAE_TILES = (768, 512)


class Cancelled(Exception):
    """The job was cancelled; raised from the step callback to stop at a step boundary."""


StepHook = Callable[[int, int], None]  # (step done, steps total) — may raise Cancelled


@dataclass
class Timings:
    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    steady_step_s: float | None = None  # mean of steps 2..n on the GPU clock (step 1 pays warm-up)
    passes: int = 0  # transformer passes under the step cache (a draft); 0 without it
    skipped_passes: int = 0  # of those, the passes whose blocks after the first were skipped

    @property
    def step_s(self) -> float:
        return self.denoise_s / self.steps if self.steps else 0.0


@dataclass
class RunnerOptions:
    step_delay_s: float = 0.0  # testing knob: slow every step down (crash soak)
    batched_cfg: bool = False
    text_bucket: int = 0  # > 0: pad text to a multiple of this many tokens (static shapes for compile)
    # Working memory of one image pass per megapixel, GiB, until the runner has measured its own (the first
    # job's first step): the plan table's `work_gib` where measured, else this cautious figure.
    # A batch of two passes is run only where it fits; else the two passes run one after the other.
    work_gib: float = 2.0
    # The VAE's working memory per megapixel, GiB (bf16 decode; its encoder needs less): a full-size
    # CogView4 VAE's whole 1024² decode took 7.5 GiB beside its weights in fp32 (CPU, peak RSS), so about
    # 3.8 in bf16; a 768² tile 4.0 in fp32.
    # A swap plan makes this much room before decoding, rather than running out of memory halfway.
    vae_work_gib: float = 4.0


def _set_vae_tile(vae: Any, tile: int) -> None:
    """The VAE's tiled decode works in `tile`² pixels (and the matching latent tile) from now on."""
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // 2 ** (len(vae.config.block_out_channels) - 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PassMemory:
    """What a denoising step needs beyond what is already allocated. The cache is emptied first, so every
    byte its passes take (activations, dequantized weights, fragmentation) shows as newly reserved: on a
    real card that is what has to fit. Measured, because an estimate either wastes a small card's room for
    a batch of 2 or, on Windows, spills into shared memory instead of failing."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        torch.cuda.empty_cache()
        self.base = torch.cuda.memory_allocated(self.device)

    def used(self) -> int:
        return torch.cuda.memory_reserved(self.device) - self.base


class Runner:
    """Holds a placed pipeline and turns (embeddings, size, seed) into images."""

    def __init__(
        self,
        pipe: Any,
        plan: Plan,
        device: torch.device,
        options: RunnerOptions | None = None,
        residency: Any = None,
    ) -> None:
        self.pipe = pipe
        self.residency = residency  # engine.residency.Residency for the swap plans
        self.plan = plan
        self.device = device
        self.options = options or RunnerOptions()
        self.embeddings = EmbeddingCache()
        self.encoder_calls = 0  # forward passes of the text encoder
        self.encoder_visits = 0  # times the encoder was brought in for a batch of texts
        self.batch_oom_area: int | None = None  # smallest image area at which a CFG batch of 2 ran out of memory
        self.vae_oom_tile: int | None = None  # smallest VAE tile that ran out of memory: only smaller ones after
        self.unbatched_steps = 0  # CFG steps run as two passes although batching was on (tests, benchmarks)
        self.pass_memory = PassMemory(device) if device.type == "cuda" else None
        self.measured_work_gib: float | None = None  # one image pass's working memory per megapixel, here
        self._preview_map: Any = None  # engine.preview.LatentRGB of this pipeline's VAE, once asked for

    # --- text encoder ---------------------------------------------------------------------
    def encode(self, texts: list[str]) -> None:
        """Make sure every text has embeddings, in one visit of the text encoder to the GPU."""
        missing = [t for t in dict.fromkeys(texts) if not self.embeddings.has(t)]
        if not missing:
            return
        self.encoder_visits += 1

        def run_encoder() -> None:
            with torch.inference_mode():
                for text in missing:
                    # One prompt at a time: GLM attends to the pad tokens, so batching
                    # prompts of different lengths would change their embeddings.
                    # As CogView4Pipeline.encode_prompt does (max_sequence_length=1024, the
                    # text encoder's dtype), through its private helper.
                    embeds = self.pipe._get_glm_embeds(text, 1024, self.device, None)
                    self.embeddings.put(text, embeds)
                    self.encoder_calls += 1

        self._phase("text_encoder", int(0.75 * GIB), run_encoder)

    def warm_up(self, size: int) -> None:
        """Make one throwaway 2-step image so the first job does not pay for compiling the
        transformer (and the first CUDA calls of each component); nothing is kept. Its first step measures a
        pass's working memory; where that changes whether CFG runs as one batch, a second image compiles
        the batch's shapes too."""
        batched = self.batch_fits(size * size)
        self.generate(prompt="warm-up", negative_prompt="", width=size, height=size, steps=2, guidance=5.0, seed=0)
        if self.batch_fits(size * size) != batched:
            self.generate(prompt="warm-up", negative_prompt="", width=size, height=size, steps=2, guidance=5.0, seed=0)
        self.embeddings.drop_unheld()
        self.encoder_calls = self.encoder_visits = 0

    def preview_map(self, cache_dir: Path | None) -> Any:
        """The latent → RGB map of this pipeline's VAE (engine.preview), read or fitted once per runner."""
        if self._preview_map is None:
            from engine.preview import load_or_fit

            fit = functools.partial(load_or_fit, self.pipe.vae, self.device, cache_dir)
            self._preview_map = self._phase("vae", int(0.5 * GIB), fit)
        return self._preview_map

    def _phase(self, component: str, working_bytes: int, fn: Callable[[], T]) -> T:
        """Run one phase; under a swap plan the component is brought in first (evicting others if needed)."""
        if self.residency is None:
            return fn()
        return self.residency.run(component, working_bytes, fn)

    # --- one image ----------------------------------------------------------------------
    def generate(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        steps: int,
        guidance: float,
        seed: int,
        on_step: StepHook | None = None,
        init_image: Any = None,
        strength: float = 1.0,
        preview: Any = None,
        cache_threshold: float | None = None,
    ) -> tuple[Any, Timings]:
        """One image; the text embeddings must already be in the cache (see encode). With `init_image` (a PIL
        image of exactly width × height) the denoising starts from it: image-to-image at `strength`. `preview`:
        an engine.preview.Previewer that renders the current guess of the image when it is due.
        `cache_threshold`: a draft, denoised under the step cache at that threshold (engine.stepcache)."""
        timings = Timings()
        device = self.device
        t0 = time.perf_counter()
        cfg = uses_cfg(guidance)
        self.encode([prompt, negative_prompt] if cfg else [prompt])
        prompt_embeds = self.embeddings.get(prompt).to(device)
        negative_embeds = self.embeddings.get(negative_prompt).to(device) if cfg else None
        _sync(device)
        timings.encode_s = time.perf_counter() - t0

        step_events: list[Any] = []
        with torch.inference_mode(), self._attention_backend():
            start = None
            if init_image is not None:  # the start image's encoding counts as encoding time
                start = self._phase(
                    "vae", self._vae_bytes(width * height), lambda: (self._encode_image(init_image), strength)
                )
                _sync(device)
                timings.encode_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            batched = cfg and self.options.batched_cfg and self.batch_fits(width * height)
            working = self._pass_bytes(width * height) * (2 if batched else 1)
            denoise = functools.partial(
                self._denoise,
                prompt_embeds,
                negative_embeds,
                width,
                height,
                steps,
                guidance,
                seed,
                on_step,
                batched,
                step_events,
                start,
                preview,
            )
            if cache_threshold is None:
                latents = self._phase("transformer", working, denoise)
            else:
                from engine.stepcache import step_cache

                with step_cache(self.pipe.transformer, cache_threshold) as count:
                    latents = self._phase("transformer", working, denoise)
                timings.passes, timings.skipped_passes = count.passes, count.skipped
            _sync(device)
            timings.denoise_s = time.perf_counter() - t1
            if len(step_events) >= 3:
                gpu_s = step_events[1].elapsed_time(step_events[-1]) / 1000
                timings.steady_step_s = gpu_s / (len(step_events) - 2)
            timings.steps = steps if start is None else img2img_steps(steps, strength)
            t2 = time.perf_counter()
            image = self._phase("vae", self._vae_bytes(width * height), lambda: self._decode_shrinking(latents))
            _sync(device)
        timings.decode_s = time.perf_counter() - t2
        return image, timings

    def _denoise(
        self,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        width: int,
        height: int,
        steps: int,
        guidance: float,
        seed: int,
        on_step: StepHook | None,
        batched: bool,
        step_events: list[Any],
        start: tuple[torch.Tensor, float] | None = None,
        preview: Any = None,
    ) -> torch.Tensor:
        # Adapted from diffusers.pipelines.cogview4.pipeline_cogview4.CogView4Pipeline.__call__ (prepare
        # latents, timesteps and the denoising loop), with these differences: one image per call; the
        # embeddings come from our cache; the noise comes from a CPU generator; the fast path batches the
        # conditional and unconditional passes (two passes again where that batch runs out of memory) and
        # pads the text to buckets (engine.attention); no attention_kwargs, callbacks or interrupt flag
        # (`on_step` may raise Cancelled instead); each step is timed with CUDA events; `step_delay_s`
        # slows steps down for tests. With `start` (the start image's latent and the strength), the loop begins
        # part-way through the same schedule as diffusers' Flux/SD3 img2img pipelines do (get_timesteps and
        # scheduler.scale_noise: x = σ·ε + (1−σ)·x0, ε the very noise text-to-image would start from).
        from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift, retrieve_timesteps

        pipe = self.pipe
        device = self.device
        transformer = pipe.transformer
        scheduler = pipe.scheduler
        # CPU generator: the same seed gives the same starting noise on every device and plan.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = pipe.prepare_latents(
            1, transformer.config.in_channels, height, width, torch.float32, device, generator
        )
        dtype = prompt_embeds.dtype
        sizes = torch.tensor([[height, width]], dtype=dtype, device=device)
        crops = torch.tensor([[0, 0]], dtype=dtype, device=device)

        image_seq_len = ((height // pipe.vae_scale_factor) * (width // pipe.vae_scale_factor)) // (
            transformer.config.patch_size**2
        )
        timesteps = np.linspace(scheduler.config.num_train_timesteps, 1.0, steps)
        timesteps = timesteps.astype(np.int64).astype(np.float32)
        sigmas = timesteps / scheduler.config.num_train_timesteps
        mu = calculate_shift(
            image_seq_len,
            scheduler.config.get("base_image_seq_len", 256),
            scheduler.config.get("base_shift", 0.25),
            scheduler.config.get("max_shift", 0.75),
        )
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, timesteps, sigmas, mu=mu)
        total = steps
        if start is not None:
            image_latents, strength = start
            total = img2img_steps(steps, strength)
            first = steps - total
            timesteps = timesteps[first:]
            scheduler.set_begin_index(first)
            latents = scheduler.scale_noise(image_latents.to(device, torch.float32), timesteps[:1], latents)
        transformer_dtype = transformer.dtype
        cfg = negative_embeds is not None
        batched = batched and cfg
        key_starts = None
        if batched or (self.options.text_bucket and not cfg):
            from engine.attention import bucketed

            group = [prompt_embeds, negative_embeds] if batched else [prompt_embeds]
            text, key_starts = bucketed(group, max(1, self.options.text_bucket))  # type: ignore[arg-type]
            if batched:
                both_embeds = text
            else:
                prompt_embeds = text

        meter = self.pass_memory if self.measured_work_gib is None else None
        for i, t in enumerate(timesteps):
            model_input = latents.to(transformer_dtype)
            timestep = t.expand(latents.shape[0])
            if meter is not None and i == 0:
                meter.start()
            if batched:
                try:
                    with transformer.cache_context("cfg"):
                        pred = transformer(
                            hidden_states=torch.cat([model_input, model_input]),
                            encoder_hidden_states=both_embeds,
                            timestep=t.expand(2),
                            original_size=sizes.repeat(2, 1),
                            target_size=sizes.repeat(2, 1),
                            crop_coords=crops.repeat(2, 1),
                            attention_mask=key_starts,
                            return_dict=False,
                        )[0]
                    noise_cond, noise_uncond = pred.chunk(2)
                    noise_pred = noise_uncond + guidance * (noise_cond - noise_uncond)
                except torch.OutOfMemoryError:
                    # Measured, not guessed: a batch of 2 does not fit at this size; two passes from here
                    # on (the same step is redone, so the image does not change), and for later jobs.
                    log.warning("A CFG batch of 2 ran out of memory at %dx%d; running two passes", width, height)
                    area = width * height
                    self.batch_oom_area = min(area, self.batch_oom_area or area)
                    batched, key_starts = False, None
                    torch.cuda.empty_cache()
            if not batched:
                self.unbatched_steps += int(cfg and self.options.batched_cfg)
                with transformer.cache_context("cond"):
                    noise_pred = transformer(
                        hidden_states=model_input,
                        encoder_hidden_states=prompt_embeds,
                        timestep=timestep,
                        original_size=sizes,
                        target_size=sizes,
                        crop_coords=crops,
                        attention_mask=key_starts,
                        return_dict=False,
                    )[0]
                if cfg:
                    with transformer.cache_context("uncond"):
                        noise_uncond = transformer(
                            hidden_states=model_input,
                            encoder_hidden_states=negative_embeds,
                            timestep=timestep,
                            original_size=sizes,
                            target_size=sizes,
                            crop_coords=crops,
                            return_dict=False,
                        )[0]
                    noise_pred = noise_uncond + guidance * (noise_pred - noise_uncond)
            if meter is not None and i == 0:
                self._measured(meter.used() / (2 if batched else 1), width * height)
            previous = latents
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if device.type == "cuda":
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                step_events.append(event)
            if self.options.step_delay_s:
                time.sleep(self.options.step_delay_s)
            if preview is not None and preview.due(i + 1, total):
                # Flow matching: the transformer predicts v = noise − x0, so x0 = x_t − σ·v.
                sigma = float(scheduler.sigmas[scheduler.step_index - 1])  # the scheduler keeps them on the CPU
                preview.push(previous - sigma * noise_pred.float())
            if on_step is not None:
                on_step(i + 1, total)
        return latents

    def _measured(self, pass_bytes: float, area: int) -> None:
        self.measured_work_gib = pass_bytes / GIB * (1024 * 1024) / area
        log.info("one transformer pass needs %.2f GiB per megapixel here", self.measured_work_gib)

    def _pass_bytes(self, area: int) -> int:
        """Working memory of one transformer pass at this image area: it grows with the image's tokens
        (attention runs on kernels whose memory is linear in them), so per megapixel."""
        per_megapixel = self.measured_work_gib or self.options.work_gib
        return int(per_megapixel * GIB * area / (1024 * 1024))

    def _vae_bytes(self, area: int) -> int:
        """The VAE's working memory for an image of `area` pixels, its tile size chosen first. Above its tile
        size (tiling is enabled at placement; CogView4's VAE tiles above 1024²) it works one tile at a time;
        where even one such tile does not fit what the card can free (a 4 GiB card), the largest of
        SMALL_VAE_TILES that does (the smallest if none), blended at their seams as diffusers' tiled decode does."""
        vae = self.pipe.vae
        if not getattr(vae, "use_tiling", False):
            return self._vae_work(area)
        size = vae.config.sample_size
        own = size[0] if isinstance(size, list | tuple) else size
        tiles = [own, *(t for t in SMALL_VAE_TILES if t < own)]
        if self.vae_oom_tile is not None:
            tiles = [t for t in tiles if t < self.vae_oom_tile] or [SMALL_VAE_TILES[-1]]
        tile = tiles[0]
        if self.residency is not None:
            room = self.residency.room_bytes("vae")
            tile = next((t for t in tiles if self._vae_work(min(area, t**2)) <= room), tiles[-1])
        _set_vae_tile(vae, tile)
        return self._vae_work(min(area, tile**2))

    def _vae_work(self, area: int) -> int:
        return int(self.options.vae_work_gib * GIB * area / (1024 * 1024))

    def batch_fits(self, area: int) -> bool:
        """Whether cond+uncond can run as one batch at this image area: never again where a batch
        already ran out of memory, and only where the extra pass fits the room the GPU has."""
        if self.batch_oom_area is not None and area >= self.batch_oom_area:
            return False
        if self.device.type != "cuda":
            return True
        from engine.residency import available_bytes

        need = 2 * self._pass_bytes(area)
        if self.residency is not None:
            return self.residency.room_bytes("transformer") >= need
        return available_bytes(self.device) >= need

    def _attention_backend(self) -> Any:
        """The fast path prefers cuDNN, then flash attention (measured fastest on Hopper)."""
        import contextlib

        if not (self.plan.fast and self.device.type == "cuda"):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        return sdpa_kernel(backends, set_priority=True)

    def _encode_image(self, image: Any) -> torch.Tensor:
        """The start image's latent, scaled exactly as `_decode` unscales it. The distribution's mode, not a
        sample: the same image always gives the same latent, whatever the seed (the seed picks the noise).
        AutoencoderKL encodes in tiles above its tile size (tiling is enabled at placement)."""
        pipe = self.pipe
        pixels = pipe.image_processor.preprocess(image, height=image.height, width=image.width)
        pixels = pixels.to(self.device, pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mode()
        return latents.float() * pipe.vae.config.scaling_factor

    def _decode_shrinking(self, latents: torch.Tensor) -> Any:
        """Decode; where a small card's tile runs out of memory after all (its working memory is an estimate),
        decode again in the next smaller tile, and never try that tile again. The VAE's own tile running out is
        the residency's to handle (it evicts the others and retries: no fidelity lost)."""
        vae = self.pipe.vae
        while True:
            try:
                return self._decode(latents)
            except torch.OutOfMemoryError:
                tile = vae.tile_sample_min_size
                smaller = [t for t in SMALL_VAE_TILES if t < tile]
                if not getattr(vae, "use_tiling", False) or tile not in SMALL_VAE_TILES or not smaller:
                    raise
                log.warning("The VAE ran out of memory in %d² tiles; decoding in %d² tiles", tile, smaller[0])
                self.vae_oom_tile = tile
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                _set_vae_tile(vae, smaller[0])

    def _decode(self, latents: torch.Tensor) -> Any:
        # Adapted from diffusers.pipelines.cogview4.pipeline_cogview4.CogView4Pipeline.__call__ (its end):
        # one PIL image; no generator for vae.decode (AutoencoderKL.decode does not use it).
        pipe = self.pipe
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        images = pipe.image_processor.postprocess(image, output_type="pil")
        pipe.maybe_free_model_hooks()
        return images[0]
