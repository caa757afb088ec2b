"""Input rules for a generation request, in one place for the engine and the Discord layer.

The limits come from the model's own config files (transformer sample_size × VAE
scale factor = the native size), so the real CogView4-6B gets 512–2048 px with
1024 by default and a tiny test model gets 32–128 px with 64 by default, with no
special case for tests. This module imports no torch: the cogs use it directly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from db.models import MAX_PROMPT_CHARS, MAX_SEED, CodedError, JobRequest

log = logging.getLogger(__name__)

MAX_IMAGES_PER_JOB = 4
MIN_STEPS, MAX_STEPS = 1, 100
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0
# The pipeline's max_sequence_length: longer prompts would be cut silently.
MAX_PROMPT_TOKENS = 1024

ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "16:9": (16, 9),
    "9:16": (9, 16),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "3:2": (3, 2),
    "2:3": (2, 3),
}


# The English of every rule a request can break, by code (cogs.utils.catalogue.refusals has the Chinese).
RULE_TEXTS: dict[str, str] = {
    "rules.aspect": "Unknown aspect: use one of {aspects}.",
    "rules.width_multiple": "The width must be a multiple of {multiple} px (got {value}).",
    "rules.height_multiple": "The height must be a multiple of {multiple} px (got {value}).",
    "rules.width_range": "The width must be between {low} and {high} px (got {value}).",
    "rules.height_range": "The height must be between {low} and {high} px (got {value}).",
    "rules.area": (
        "{width}×{height} is too many pixels for this model: keep width × height ≤ {max_area:,} "
        "(e.g. {native}×{native} or an --ar aspect)."
    ),
    "rules.steps": "Steps must be from {low} to {high} (got {steps}).",
    "rules.guidance": "Guidance must be from {low:g} to {high:g} (got {guidance:g}).",
    "rules.count": "You can ask for 1 to {high} images at a time (got {count}).",
    "rules.seed": "The seed must be from 0 to {high} (got {seed}).",
    "rules.prompt_chars": "The prompt is too long: keep it under {limit} characters.",
    "rules.negative_chars": "The negative prompt is too long: keep it under {limit} characters.",
    "rules.prompt_tokens": "The prompt is too long ({tokens} tokens): keep it under {limit} tokens.",
    "rules.negative_tokens": "The negative prompt is too long ({tokens} tokens): keep it under {limit} tokens.",
    "rules.no_pixels": "The image has no pixels ({width}×{height}).",
}


class InvalidRequest(CodedError, ValueError):
    """A request breaks a rule; the message tells the user what to change (raised with a code of RULE_TEXTS)."""

    TEXTS = RULE_TEXTS


@dataclass(frozen=True)
class ModelLimits:
    """What sizes a model accepts, derived from its config."""

    native_size: int  # transformer sample_size × VAE scale factor (1024 for CogView4-6B)
    multiple: int  # width and height must be multiples of this
    min_size: int
    max_size: int
    max_area: int
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    count_tokens: Callable[[str], int] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_sizes(cls, sample_size: int, vae_scale_factor: int, patch_size: int) -> ModelLimits:
        native = sample_size * vae_scale_factor
        multiple = vae_scale_factor * patch_size * 2
        return cls(
            native_size=native,
            multiple=multiple,
            min_size=max(multiple, native // 2),
            max_size=native * 2,
            max_area=2 * native * native,
        )

    def size_for_aspect(self, aspect: str) -> tuple[int, int]:
        """The valid (width, height) closest to this aspect ratio at about the native pixel count."""
        if aspect not in ASPECTS:
            raise InvalidRequest(code="rules.aspect", aspects=", ".join(ASPECTS))  # no echo of what was typed
        rw, rh = ASPECTS[aspect]
        target_ratio = math.log(rw / rh)
        native_area = self.native_size * self.native_size
        sizes = range(self.min_size, self.max_size + 1, self.multiple)
        candidates = [(w, h) for w in sizes for h in sizes if w * h <= self.max_area]

        def score(size: tuple[int, int]) -> float:
            w, h = size
            return abs(math.log(w / h) - target_ratio) + 0.5 * abs(math.log(w * h / native_area))

        return min(candidates, key=score)


# CogView4-6B as published; used until the model's own configs can be read.
COGVIEW4_LIMITS = ModelLimits.from_sizes(sample_size=128, vae_scale_factor=8, patch_size=2)


def limits_from_folder(folder: str | Path) -> ModelLimits:
    """Read the limits from a diffusers pipeline folder (a local copy or the HF cache snapshot)."""
    folder = Path(folder)
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae.get("block_out_channels", [1, 1, 1, 1])) - 1)
    limits = ModelLimits.from_sizes(
        sample_size=int(transformer.get("sample_size", 128)),
        vae_scale_factor=scale,
        patch_size=int(transformer.get("patch_size", 2)),
    )
    counter = _token_counter(folder / "tokenizer" / "tokenizer.json")
    if counter is not None:
        limits = ModelLimits(**{**limits.__dict__, "count_tokens": counter})
    return limits


def limits_for_model(model_id: str) -> ModelLimits:
    """The model's limits before loading it: from a local folder's configs when there is one, else
    CogView4-6B's (a hub id is read once the weights are downloaded)."""
    folder = Path(model_id).expanduser()
    if (folder / "transformer" / "config.json").exists():
        try:
            return limits_from_folder(folder)
        except (OSError, ValueError, KeyError):
            log.warning("Could not read limits from %s; using CogView4-6B's", folder, exc_info=True)
    return COGVIEW4_LIMITS


def _token_counter(path: Path) -> Callable[[str], int] | None:
    """Count tokens with the `tokenizers` library (no torch needed)."""
    if not path.exists():
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer we cannot read only disables the token check
        log.warning("Could not read %s; prompt length is checked in characters only", path, exc_info=True)
        return None
    return lambda text: len(tokenizer.encode(text).ids)


def check_size(width: int, height: int, limits: ModelLimits) -> None:
    """What the model can make at all; the engine checks this too, as it may serve a queue filled for
    another model's limits. Raises InvalidRequest."""
    multiple, low, high = limits.multiple, limits.min_size, limits.max_size
    if width % multiple:
        raise InvalidRequest(code="rules.width_multiple", multiple=multiple, value=width)
    if not low <= width <= high:
        raise InvalidRequest(code="rules.width_range", low=low, high=high, value=width)
    if height % multiple:
        raise InvalidRequest(code="rules.height_multiple", multiple=multiple, value=height)
    if not low <= height <= high:
        raise InvalidRequest(code="rules.height_range", low=low, high=high, value=height)
    if width * height > limits.max_area:
        raise InvalidRequest(
            code="rules.area", width=width, height=height, max_area=limits.max_area, native=limits.native_size
        )


def validate_request(request: JobRequest, limits: ModelLimits) -> None:
    """Every rule, checked once where a request comes in; raises InvalidRequest saying what to change."""
    check_size(request.width, request.height, limits)
    if not MIN_STEPS <= request.steps <= MAX_STEPS:
        raise InvalidRequest(code="rules.steps", low=MIN_STEPS, high=MAX_STEPS, steps=request.steps)
    if not MIN_GUIDANCE <= request.guidance <= MAX_GUIDANCE:
        raise InvalidRequest(code="rules.guidance", low=MIN_GUIDANCE, high=MAX_GUIDANCE, guidance=request.guidance)
    if not 1 <= request.count <= MAX_IMAGES_PER_JOB:
        raise InvalidRequest(code="rules.count", high=MAX_IMAGES_PER_JOB, count=request.count)
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(code="rules.seed", high=MAX_SEED, seed=request.seed)
    count, limit = limits.count_tokens, limits.max_prompt_tokens
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(code="rules.prompt_chars", limit=MAX_PROMPT_CHARS)
    if count is not None and request.prompt and (tokens := count(request.prompt)) > limit:
        raise InvalidRequest(code="rules.prompt_tokens", tokens=tokens, limit=limit)
    if len(request.negative_prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(code="rules.negative_chars", limit=MAX_PROMPT_CHARS)
    if count is not None and request.negative_prompt and (tokens := count(request.negative_prompt)) > limit:
        raise InvalidRequest(code="rules.negative_tokens", tokens=tokens, limit=limit)


# The hires pass (Upscale without an upscaler model) re-runs the last 35% of the schedule at the larger
# size: the low end of the usual "hires fix" range (0.3–0.5), so the model adds detail at the new
# resolution while composition, faces and colours stay those of the picture being upscaled; higher values
# start to repaint it. Not yet tuned on the real CogView4 weights (the tests run a random tiny model).
HIRES_STRENGTH = 0.35


def fit_size(width: int, height: int, limits: ModelLimits) -> tuple[int, int]:
    """The size an image of width × height is resized and centre-cropped to for image-to-image: the valid
    size nearest its own aspect and pixel count (capped at the model's largest area; small images grow to
    the smallest valid size). An aspect the model cannot make (beyond 4:1 for CogView4) is cropped to the
    nearest one it can."""
    if width < 1 or height < 1:
        raise InvalidRequest(code="rules.no_pixels", width=width, height=height)
    target_ratio = math.log(width / height)
    target_area = min(width * height, limits.max_area)
    sizes = range(limits.min_size, limits.max_size + 1, limits.multiple)
    candidates = [(w, h) for w in sizes for h in sizes if w * h <= limits.max_area]

    def score(size: tuple[int, int]) -> tuple[float, int, int]:
        w, h = size
        # Aspect weighs most (a wrong aspect crops content away); then the pixel count; ties go to the larger.
        return 4 * abs(math.log(w / h) - target_ratio) + abs(math.log(w * h / target_area)), -w * h, -w

    return min(candidates, key=score)


def output_size(width: int, height: int, upscale: int, limits: ModelLimits) -> tuple[int, int]:
    """The size an image-to-image job (upscale 0) or a hires upscale (2 or 4: the largest size the model
    allows for that aspect, at most `upscale` times the image) is made at from a width × height start image.
    The cogs put it in the request's width and height, so the size class and the ETA are the job's own."""
    factor = max(1, upscale)
    return fit_size(width * factor, height * factor, limits)


def img2img_steps(steps: int, strength: float) -> int:
    """How many of `steps` an image-to-image run denoises: the last ⌊steps × strength⌋ of the schedule, at
    least one (diffusers' Flux/SD3 img2img `get_timesteps`). strength 1 runs them all."""
    start = int(max(steps - min(steps * strength, steps), 0))
    return max(1, steps - start)


def steps_run(request: JobRequest) -> int:
    """Denoising steps a job runs (for the ETA): all of them, or the image-to-image share of them."""
    if request.start_image is None:
        return request.steps
    return img2img_steps(request.steps, HIRES_STRENGTH if request.upscale else request.strength)
