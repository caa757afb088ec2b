"""One job request: what a user asks the engine to make, every limit and default it is held to, and the rules
derived from it (the CFG rule, the seed of each image, the size an image job is made at, the ETA).

Torch-free and below both db/ and engine/: the queue stores a ``JobRequest``, the engine makes it, and each
edge where a request comes in — the Discord side (``cogs.utils.submit``), the command line (``tools.cli``)
— calls ``check`` once, before any slow work (a download, a model load). ``JobRequest.__post_init__`` checks
only its structure (types, the seed space, a start image's digest), which the queue checks again before it
writes. The limits of sizes come from the model's own config (``ModelLimits``; ``engine.rules`` reads them
from a model folder), so the real CogView4-6B gets 512–2048 px and a tiny test model 32–128 px.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

# --- every limit and default -------------------------------------------------------------------------------
MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 1024  # the pipeline's max_sequence_length: longer prompts would be cut silently
MAX_SEED = 2**32 - 1
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 100, 50
MIN_GUIDANCE, MAX_GUIDANCE, DEFAULT_GUIDANCE = 0.0, 20.0, 3.5
MAX_IMAGES_PER_JOB = 4
# Image-to-image: the share of the denoising schedule re-run from the picture (1.0 = a new picture).
MIN_STRENGTH = 0.05
DEFAULT_STRENGTH = 0.7  # /imagine with an image, or `generate --image`, without a strength
SUBTLE_STRENGTH = 0.35  # Vary (Subtle), "Vary this image": composition, colours and subject stay
STRONG_STRENGTH = 0.7  # Vary (Strong): layout and palette stay recognisable; poses, objects and style may change
REMIX_STRENGTH = 0.7  # strong enough for an edited prompt to show, close enough to keep the picture
# The hires pass (Upscale without an upscaler model) re-runs the last 35% of the schedule at the larger size:
# the low end of the usual "hires fix" range (0.3–0.5), so the model adds detail at the new resolution while
# composition, faces and colours stay; higher values start to repaint. Not yet tuned on the real weights.
HIRES_STRENGTH = 0.35
UPSCALE_FACTORS = (2, 4)
UPSCALE_FACTOR = 2  # the Upscale button
# A draft is denoised under the step cache (engine.stepcache.DRAFT_THRESHOLD): its steps take this share of
# the time on average. Provisional, from diffusers' CogView4 figure at that threshold (2.3×, rounded down);
# to be confirmed by bench/draft_bench.py on the real model.
DRAFT_SPEEDUP = 2.0

ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "16:9": (16, 9),
    "9:16": (9, 16),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "3:2": (3, 2),
    "2:3": (2, 3),
}


class CodedError(Exception):
    """An error a user may see. Raised with a code (``QueueFull(limit=3)``, ``InvalidRequest(code="rules.steps",
    ...)``), its message is the English ``TEXTS[code]`` filled with ``fields``, and the Discord side says the
    same code in the user's language from its catalogue (cogs.utils.i18n), which nothing below it imports.
    Raised with a sentence instead, that sentence is the message, in English only."""

    TEXTS: ClassVar[Mapping[str, str]] = {}
    code: str | None = None  # a subclass with a single message names it here

    def __init__(self, message: str | None = None, /, *, code: str | None = None, **fields: object) -> None:
        code = code or (type(self).code if message is None else None)
        if code is not None:
            message = self.TEXTS[code].format(**fields)
        super().__init__(*(() if message is None else (message,)))
        self.code = code
        self.fields = fields


# The English of every rule a request can break, by code (cogs.utils.catalogue.refusals has the Chinese).
RULE_TEXTS: dict[str, str] = {
    "request.empty_prompt": "The prompt is empty: describe the image you want.",
    "request.too_long": "Prompts are limited to {limit} characters.",
    "request.nul": "The prompt contains a NUL character.",
    "request.unreadable_image": "The start image could not be read as a picture.",
    "request.start_image_missing": "The start image of this job is missing.",
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
    "rules.strength": "Strength must be from {low} to 1 (lower keeps more of the image).",
    "rules.prompt_tokens": "The prompt is too long ({tokens} tokens): keep it under {limit} tokens.",
    "rules.negative_tokens": "The negative prompt is too long ({tokens} tokens): keep it under {limit} tokens.",
    "rules.no_pixels": "The image has no pixels ({width}×{height}).",
}


class InvalidRequest(CodedError, ValueError):
    """A request breaks a rule; the message tells the user what to change (raised with a code of RULE_TEXTS,
    or, for a malformed structure only a program can make, with a sentence)."""

    TEXTS = RULE_TEXTS


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """The generation parameters; ``check`` holds them to the limits where the request comes in."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    negative_prompt: str = ""
    seed: int | None = None
    count: int = 1
    start_image: str | None = None  # sha256 hex of the stored start image (PNG bytes): image-to-image
    strength: float = 1.0  # image-to-image: how much of the schedule is re-run (1.0 = text-to-image)
    upscale: int = 0  # 2 or 4: an upscale job of the start image
    draft: bool = False  # denoised under the step cache: about DRAFT_SPEEDUP times faster, a little less exact

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidRequest if the structure is unusable (also run by the queue, in case a caller bypassed
        __init__); the limits are ``check``'s."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest(code="request.empty_prompt")
        if not isinstance(self.negative_prompt, str):
            raise InvalidRequest(f"The negative prompt must be text (got {self.negative_prompt!r}).")
        if len(self.prompt) > MAX_PROMPT_CHARS or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(code="request.too_long", limit=MAX_PROMPT_CHARS)
        if "\x00" in self.prompt or "\x00" in self.negative_prompt:
            raise InvalidRequest(code="request.nul")
        for name in ("width", "height", "steps", "count"):
            value = getattr(self, name)
            if not _whole(value) or value < 1:
                raise InvalidRequest(f"{name} must be a positive whole number (got {value!r}).")
        if not _number(self.guidance) or self.guidance < 0:
            raise InvalidRequest(f"guidance must be a number ≥ 0 (got {self.guidance!r}).")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise InvalidRequest(f"seed must be a whole number from 0 to {MAX_SEED} (got {self.seed!r}).")
        if self.start_image is not None and (
            not isinstance(self.start_image, str)
            or len(self.start_image) != 64
            or any(c not in "0123456789abcdef" for c in self.start_image)
        ):
            raise InvalidRequest("start_image must be the sha256 hex digest of a stored image.")
        if not _number(self.strength) or not 0 < self.strength <= 1:
            raise InvalidRequest(f"strength must be a number above 0 and at most 1 (got {self.strength!r}).")
        if not _whole(self.upscale) or self.upscale not in (0, *UPSCALE_FACTORS):
            raise InvalidRequest(f"upscale must be 0, 2 or 4 (got {self.upscale!r}).")
        if not isinstance(self.draft, bool):
            raise InvalidRequest(f"draft must be true or false (got {self.draft!r}).")
        if self.start_image is None and (self.strength != 1 or self.upscale):
            raise InvalidRequest("strength and upscale need a start image.")


# --- the rules derived from a request ----------------------------------------------------------------------
def uses_cfg(guidance: float) -> bool:
    """Classifier-free guidance runs (and the negative prompt is encoded) only above 1."""
    return guidance > 1.0


def new_seed() -> int:
    return random.randint(0, MAX_SEED)


def image_seed(seed: int, index: int) -> int:
    """The seed of a job's image number `index` (0 first): the job's seed + index, wrapped into the seed space."""
    return (seed + index) % (MAX_SEED + 1)


def strength_used(request: JobRequest) -> float:
    """The share of the schedule an image job re-runs: its strength, or the hires pass's for an upscale."""
    return HIRES_STRENGTH if request.upscale else request.strength


def img2img_steps(steps: int, strength: float) -> int:
    """How many of `steps` an image-to-image run denoises: the last ⌊steps × strength⌋ of the schedule, at
    least one (diffusers' Flux/SD3 img2img `get_timesteps`). strength 1 runs them all."""
    start = int(max(steps - min(steps * strength, steps), 0))
    return max(1, steps - start)


def steps_run(request: JobRequest) -> int:
    """Denoising steps a job runs (for the ETA): all of them, or the image-to-image share of them."""
    if request.start_image is None:
        return request.steps
    return img2img_steps(request.steps, strength_used(request))


def estimate_seconds(request: JobRequest, step_s: float, encode_decode_s: float, native_size: int) -> float:
    """A job's run time from a full step's rate at the model's native size (width × height is the size made);
    a draft's steps take 1 / DRAFT_SPEEDUP of that."""
    area = request.width * request.height / (native_size**2)
    speedup = DRAFT_SPEEDUP if request.draft else 1.0
    return request.count * (steps_run(request) * step_s * area / speedup + encode_decode_s)


# --- sizes ------------------------------------------------------------------------------------------------
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

    def candidates(self) -> list[tuple[int, int]]:
        sizes = range(self.min_size, self.max_size + 1, self.multiple)
        return [(w, h) for w in sizes for h in sizes if w * h <= self.max_area]

    def size_for_aspect(self, aspect: str) -> tuple[int, int]:
        """The valid (width, height) closest to this aspect ratio at about the native pixel count."""
        if aspect not in ASPECTS:
            raise InvalidRequest(code="rules.aspect", aspects=", ".join(ASPECTS))  # no echo of what was typed
        rw, rh = ASPECTS[aspect]
        target_ratio = math.log(rw / rh)
        native_area = self.native_size * self.native_size

        def score(size: tuple[int, int]) -> float:
            w, h = size
            return abs(math.log(w / h) - target_ratio) + 0.5 * abs(math.log(w * h / native_area))

        return min(self.candidates(), key=score)


# CogView4-6B as published; used until the model's own configs can be read.
COGVIEW4_LIMITS = ModelLimits.from_sizes(sample_size=128, vae_scale_factor=8, patch_size=2)


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


def fit_size(width: int, height: int, limits: ModelLimits) -> tuple[int, int]:
    """The size an image of width × height is resized and centre-cropped to for image-to-image: the valid
    size nearest its own aspect and pixel count (capped at the model's largest area; small images grow to
    the smallest valid size). An aspect the model cannot make (beyond 4:1 for CogView4) is cropped to the
    nearest one it can."""
    if width < 1 or height < 1:
        raise InvalidRequest(code="rules.no_pixels", width=width, height=height)
    target_ratio = math.log(width / height)
    target_area = min(width * height, limits.max_area)

    def score(size: tuple[int, int]) -> tuple[float, int, int]:
        w, h = size
        # Aspect weighs most (a wrong aspect crops content away); then the pixel count; ties go to the larger.
        return 4 * abs(math.log(w / h) - target_ratio) + abs(math.log(w * h / target_area)), -w * h, -w

    return min(limits.candidates(), key=score)


def output_size(width: int, height: int, upscale: int, limits: ModelLimits) -> tuple[int, int]:
    """The size an image-to-image job (upscale 0) or a hires upscale (2 or 4: the largest size the model
    allows for that aspect, at most `upscale` times the image) is made at from a width × height start image.
    The edges put it in the request's width and height, so the size class and the ETA are the job's own."""
    factor = max(1, upscale)
    return fit_size(width * factor, height * factor, limits)


def upscale_note(width: int, height: int, upscale: int, limits: ModelLimits) -> str | None:
    """Why a hires upscale of a width × height picture is not `upscale` times larger (the model's sizes cap it),
    or None when it is. An upscaler model (UPSCALER_MODEL) is not capped."""
    made = output_size(width, height, upscale, limits)
    if made == (width * upscale, height * upscale):
        return None
    return (
        f"{width}×{height} × {upscale} is made at {made[0]}×{made[1]}: the largest size this model makes for that "
        f"shape (at most {limits.max_area:,} pixels, sides {limits.min_size}–{limits.max_size} in steps of "
        f"{limits.multiple}). An upscaler model (UPSCALER_MODEL, or --upscaler) makes larger pictures."
    )


# --- the one check at each edge ----------------------------------------------------------------------------
def check(request: JobRequest, limits: ModelLimits) -> JobRequest:
    """Every limit, checked once where a request comes in (before any slow work); raises InvalidRequest saying
    what to change. Returns the request."""
    check_size(request.width, request.height, limits)
    if not MIN_STEPS <= request.steps <= MAX_STEPS:
        raise InvalidRequest(code="rules.steps", low=MIN_STEPS, high=MAX_STEPS, steps=request.steps)
    if not MIN_GUIDANCE <= request.guidance <= MAX_GUIDANCE:
        raise InvalidRequest(code="rules.guidance", low=MIN_GUIDANCE, high=MAX_GUIDANCE, guidance=request.guidance)
    if not 1 <= request.count <= MAX_IMAGES_PER_JOB:
        raise InvalidRequest(code="rules.count", high=MAX_IMAGES_PER_JOB, count=request.count)
    if request.start_image is not None and not request.upscale:
        check_strength(request.strength)
    count, limit = limits.count_tokens, limits.max_prompt_tokens
    if count is not None and (tokens := count(request.prompt)) > limit:
        raise InvalidRequest(code="rules.prompt_tokens", tokens=tokens, limit=limit)
    if count is not None and request.negative_prompt and (tokens := count(request.negative_prompt)) > limit:
        raise InvalidRequest(code="rules.negative_tokens", tokens=tokens, limit=limit)
    return request


def check_strength(strength: float) -> float:
    """A strength a user typed, before an image is fetched: from MIN_STRENGTH to 1."""
    if not _number(strength) or not MIN_STRENGTH <= strength <= 1:
        raise InvalidRequest(code="rules.strength", low=MIN_STRENGTH)
    return float(strength)
