"""Live previews: a cheap linear latent → RGB map, fitted once from the loaded model's own VAE.

A VAE decode of a 1024² image costs about as much as a few denoising steps, so a preview every
second or so would slow every job. A linear map from the 16 latent channels to RGB, applied to the
model's current guess of the clean image (x0 = x_t − σ·v for CogView4's flow matching), costs a
matrix product over the latent pixels, one small copy to the CPU and a JPEG encode.

The map is fitted by least squares from smooth random colour images encoded by the VAE itself
(latent → the image averaged down to latent resolution), so it is right for whatever weights are
loaded, and it is cached in a small JSON file keyed by the VAE's config and a fingerprint of its
weights: the next start with the same VAE reads it instead of fitting again.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_SIDE = 256  # a preview is at most this many pixels a side
JPEG_QUALITY = 70
INTERVAL_S = 1.0  # at most one preview a second: the heartbeat carries one a second, Discord shows one per 3 s
FIT_IMAGES = 8
FIT_SIDE = 64  # pixels a side of each fitting image: 8² latent pixels each at CogView4's 8× VAE


@dataclass(frozen=True)
class LatentRGB:
    """rgb = latents · weights + bias, per latent pixel; colours in [0, 1]."""

    weights: list[list[float]]  # [channels][3]
    bias: list[float]  # [3]

    def to_json(self) -> str:
        return json.dumps({"weights": self.weights, "bias": self.bias})

    @classmethod
    def from_json(cls, text: str) -> LatentRGB:
        data = json.loads(text)
        return cls(weights=[[float(v) for v in row] for row in data["weights"]], bias=[float(v) for v in data["bias"]])


def vae_fingerprint(vae: Any) -> str:
    """A short key for this VAE: its config and a few statistics of every weight (cheap on the GPU)."""
    import torch

    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    with torch.inference_mode():
        for name, tensor in sorted(vae.state_dict().items()):
            flat = tensor.detach().reshape(-1).double()
            stats = torch.stack([flat.sum(), flat.square().sum(), flat[0], flat[-1]]).cpu().tolist()
            digest.update(f"{name}:{tuple(tensor.shape)}:{stats}".encode())
    return digest.hexdigest()[:24]


def _fitting_images(count: int, side: int, generator: Any) -> Any:
    """Smooth random colour fields (low-resolution noise, upsampled) plus flat colours: [count, 3, side, side]."""
    import torch
    import torch.nn.functional as F

    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    flat = torch.rand(count // 2, 3, 1, 1, generator=generator).expand(-1, -1, side, side)
    smooth[: count // 2] = 0.5 * smooth[: count // 2] + 0.5 * flat
    return smooth


def fit_latent_rgb(vae: Any, device: Any) -> LatentRGB:
    """Least squares from the VAE's own latents (in the denoising loop's scale) to the images they encode."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator(device="cpu").manual_seed(0)
    images = _fitting_images(FIT_IMAGES, FIT_SIDE, generator)
    if torch.device(device).type == "cpu" and vae.dtype in (torch.bfloat16, torch.float16):
        vae = copy.deepcopy(vae).float()  # half-precision convolutions are many times slower on a CPU
    with torch.inference_mode():
        pixels = (images * 2 - 1).to(device=device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.mean.float() * vae.config.scaling_factor
    side = latents.shape[-1]
    target = F.adaptive_avg_pool2d(images, side)  # [n, 3, side, side] in [0, 1]
    x = latents.cpu().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).double()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    solution = torch.linalg.lstsq(x, y).solution  # [channels + 1, 3]
    return LatentRGB(weights=solution[:-1].tolist(), bias=solution[-1].tolist())


def load_or_fit(vae: Any, device: Any, cache_dir: Path | None) -> LatentRGB:
    """The map for this VAE: from the cache when this exact VAE was fitted before, else fitted and cached."""
    key = vae_fingerprint(vae)
    path = cache_dir / f"latent_rgb-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return LatentRGB.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("Ignoring an unreadable preview map %s; fitting it again", path)
    started = time.perf_counter()
    fitted = fit_latent_rgb(vae, device)
    log.info("Fitted the preview colour map from the VAE in %.2f s", time.perf_counter() - started)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(fitted.to_json(), encoding="utf-8")
            os.replace(tmp, path)  # never a half-written map
        except OSError as exc:
            log.warning("Could not cache the preview map in %s (%s)", cache_dir, exc)
    return fitted


class Previewer:
    """Renders the latents of one running job into small JPEGs, at most once every `interval_s`.

    On a GPU nothing waits for it: the colours are copied to pinned memory without blocking, and the
    JPEG is made at a later step once that copy has landed (`take`), so the queue of GPU work never
    drains for a preview.
    """

    def __init__(self, rgb: LatentRGB, *, interval_s: float = INTERVAL_S) -> None:
        self.rgb = rgb
        self.interval_s = interval_s
        self._last_at = time.monotonic()  # the first preview comes one interval in: step 1 is noise
        self._tensors: dict[Any, tuple[Any, Any]] = {}
        self._pending: tuple[Any, Any] | None = None  # (pinned host pixels, CUDA event of their copy)
        self._latest: bytes | None = None

    def due(self, step: int, steps: int) -> bool:
        """Whether to render after this step: not the last one (the result replaces the preview)."""
        return step < steps and time.monotonic() - self._last_at >= self.interval_s

    def push(self, latents: Any) -> None:
        """Start rendering [1, C, h, w] latents (the current guess of the clean image); `take` returns it."""
        import torch

        pixels = self._pixels(latents)
        if pixels.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)
        else:
            self._latest = _jpeg(pixels.numpy())
        self._last_at = time.monotonic()

    def take(self) -> bytes | None:
        """The newest finished preview, once (None if there is none new or its copy is still under way)."""
        if self._pending is not None and self._pending[1].query():
            host, _ = self._pending
            self._pending = None
            self._latest = _jpeg(host.numpy())
        latest, self._latest = self._latest, None
        return latest

    def render(self, latents: Any) -> bytes:
        """One preview now, waiting for the GPU (benchmarks and tests)."""
        return _jpeg(self._pixels(latents).cpu().numpy())

    def _pixels(self, latents: Any) -> Any:
        """[h, w, 3] uint8 colours on the latents' device."""
        import torch

        key = (latents.device, latents.dtype)
        if key not in self._tensors:
            self._tensors[key] = (
                torch.tensor(self.rgb.weights, device=latents.device, dtype=torch.float32),
                torch.tensor(self.rgb.bias, device=latents.device, dtype=torch.float32),
            )
        weights, bias = self._tensors[key]
        with torch.inference_mode():
            rgb = torch.einsum("chw,cr->hwr", latents[0].float(), weights) + bias
            return (rgb.clamp(0, 1) * 255).to(torch.uint8)


def _jpeg(pixels: Any) -> bytes:
    """A JPEG of [h, w, 3] uint8 pixels, scaled to MAX_SIDE on its longer side."""
    from PIL import Image

    image = Image.fromarray(pixels, "RGB")
    height, width = pixels.shape[:2]
    scale = MAX_SIDE / max(width, height)
    image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
